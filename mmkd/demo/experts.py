"""Small expert CLIP teachers, each trained contrastively on a subset of the synthetic modalities.

Each expert is a plain open_clip :class:`open_clip.model.CLIP` built from a config
dict, trained with open_clip's :class:`~open_clip.loss.ClipLoss` and torch AdamW,
and saved as an open_clip ``local-dir`` folder (``open_clip_config.json`` with
``model_cfg`` + ``preprocess_cfg``, and ``open_clip_model.safetensors``), so it
loads through :func:`mmkd.teachers.load_teacher` like any real teacher.

The experts learn from their own data (``make_batch`` streams seeded apart from
the distillation corpus), as the real teachers learned from data the student's
corpus does not hold.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmkd.demo.corpus import Batch, get_modality, make_batch
from mmkd.errors import DemoError
from mmkd.jsontypes import JSONDict
from mmkd.distill.config import OptimConfig
from mmkd.distill.optim import build_optimizer, build_scheduler
from mmkd.teachers.spec import TeacherSpec

log = logging.getLogger(__name__)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
PREPROCESS_CFG = {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic", "resize_mode": "shortest"}


def clip_config(image_size: int = 48, patch: int = 8, width: int = 64, layers: int = 2, embed_dim: int = 64,
                text_width: int = 64, text_layers: int = 1, context_length: int = 24) -> JSONDict:
    """An open_clip CLIP ``model_cfg`` for a tiny ViT image tower and transformer text tower."""
    return {"embed_dim": embed_dim,
            "vision_cfg": {"image_size": image_size, "patch_size": patch, "width": width, "layers": layers,
                           "head_width": 32, "mlp_ratio": 2.0},
            "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width,
                         "heads": max(1, text_width // 32), "layers": text_layers, "mlp_ratio": 2.0}}


@dataclass
class ExpertSpec:
    """One expert to train.

    Attributes:
        name: teacher name (registry key in the generated pipelines file).
        modalities: the modalities it is trained on (and so knows).
        model_cfg: open_clip model config (default :func:`clip_config`).
        n_per_class: its private training samples per class and modality.
        steps, batch_size, lr, warmup, weight_decay: training schedule (AdamW, cosine).
        seed: data and init seed.
    """

    name: str
    modalities: tuple[str, ...]
    model_cfg: dict[str, Any] = field(default_factory=clip_config)
    n_per_class: int = 400
    steps: int = 400
    batch_size: int = 128
    lr: float = 5e-3
    warmup: int = 40
    weight_decay: float = 0.1
    seed: int = 0


DEFAULT_EXPERTS: dict[str, tuple[str, ...]] = {
    "expert_xray_fundus": ("xray", "fundus"),
    "expert_histo_derm": ("histology", "dermoscopy"),
    "expert_derm_xray": ("dermoscopy", "xray"),
}


def to_tensor(images: np.ndarray):
    """uint8 (n, S, S, 3) -> normalised float (n, 3, S, S), as the saved ``preprocess_cfg`` does it."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _augment(x, gen):
    """Random horizontal flip and a small translation (rolled), per batch."""
    import torch

    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(-1)
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def train_expert(spec: ExpertSpec, data: Batch | None = None):
    """Train one expert contrastively on its modalities; returns the open_clip model (eval mode).

    Args:
        spec: what to train.
        data: its training samples (default: ``make_batch(spec.modalities, ...)`` on a
            seed stream apart from the distillation corpus's).
    """
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    data = data or make_batch(spec.modalities, spec.n_per_class, seed=spec.seed + 10_000)
    torch.manual_seed(spec.seed)
    model = open_clip.model.CLIP(**copy.deepcopy(spec.model_cfg))
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=spec.model_cfg["text_cfg"]["context_length"])
    images, texts = to_tensor(data.images), tok(data.captions)
    # the distiller's optimizer and schedule: AdamW with open_clip's no-decay groups, cosine with warmup
    optim_cfg = OptimConfig(lr=spec.lr, weight_decay=spec.weight_decay, warmup_steps=spec.warmup)
    opt = build_optimizer({"model": model}, optim_cfg)
    sched = build_scheduler(opt, optim_cfg, spec.steps)
    loss_fn, gen = ClipLoss(), torch.Generator().manual_seed(spec.seed)
    model.train()
    t0 = time.perf_counter()
    for step in range(spec.steps):
        idx = torch.randint(0, len(data), (spec.batch_size,), generator=gen)
        img_f, txt_f, scale = model(_augment(images[idx], gen), texts[idx])
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == spec.steps - 1:
            log.info("expert %s step %d/%d loss %.3f", spec.name, step + 1, spec.steps, loss.item())
    log.info("expert %s trained in %.1fs (%d samples of %s)", spec.name, time.perf_counter() - t0, len(data),
             "+".join(spec.modalities))
    return model.eval()


def save_expert(model, folder: str | Path, spec: ExpertSpec) -> Path:
    """Save as an open_clip ``local-dir`` folder; returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": spec.model_cfg, "preprocess_cfg": PREPROCESS_CFG,
              "mmkd_demo": {"modalities": list(spec.modalities), "steps": spec.steps, "seed": spec.seed,
                            "n_per_class": spec.n_per_class}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def teacher_spec(name: str, folder: str | Path, spec: ExpertSpec | None = None):
    """The :class:`~mmkd.teachers.TeacherSpec` that loads a saved expert."""
    mods = "+".join(spec.modalities) if spec else "?"
    return TeacherSpec(name=name, loader="open_clip", weights=f"local-dir:{Path(folder).resolve()}",
                       dim=int((spec.model_cfg if spec else clip_config())["embed_dim"]), license="demo-only",
                       source=f"mmkd.demo.experts: trained on synthetic {mods}")


def zeroshot_accuracy(model, modality: str, data: Batch) -> float:
    """Zero-shot accuracy of an open_clip model on ``data``'s samples of ``modality`` (quick in-memory check)."""
    import open_clip
    import torch

    mod = get_modality(modality)
    sel = np.array([m == modality for m in data.modalities])
    if not sel.any():
        raise DemoError(f"no {modality!r} samples in the data (has {sorted(set(data.modalities))})")
    ctx = int(model.context_length)
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
    with torch.inference_mode():
        img = torch.nn.functional.normalize(model.encode_image(to_tensor(data.images[sel])), dim=-1)
        classes = []
        for c in mod.classes:
            t = model.encode_text(tok([tpl.format(mod.class_prompts[c]) for tpl in mod.templates]))
            classes.append(torch.nn.functional.normalize(torch.nn.functional.normalize(t, dim=-1).mean(0), dim=0))
        pred = (img @ torch.stack(classes).T).argmax(1).numpy()
    return float((pred == data.labels[sel]).mean())


def expert_job(spec: ExpertSpec, folder: str, modalities: tuple[str, ...], seed: int, image_size: int,
               threads: int) -> JSONDict:
    """Train, save and check one expert (in a pool process, which imports this module only)."""
    import torch

    torch.set_num_threads(threads)
    model = train_expert(spec)
    save_expert(model, folder, spec)
    check = make_batch(modalities, 30, seed + 2, image_size)
    return {"modalities": list(spec.modalities), "folder": folder,
            "quick_zeroshot": {m: zeroshot_accuracy(model, m, check) for m in modalities}}
