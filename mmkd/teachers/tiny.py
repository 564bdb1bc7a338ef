"""Tiny random teachers, saved to disk and loaded back through the real loaders.

For tests, benchmarks and the demo: every kind of teacher the registry knows, at
toy size (a batch of 8 images runs in milliseconds on CPU), with seeded weights
so two builds with the same arguments are identical.

    specs = make_tiny_teachers(tmp_path, kinds=("open_clip", "transformers", "custom"))
    write_pipelines(tmp_path / "pipelines.yaml", specs)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

from mmkd.jsontypes import JSONDict
import yaml

from mmkd.teachers.custom_models import build_custom_model
from mmkd.teachers.spec import TeacherSpec

log = logging.getLogger(__name__)

KINDS = ("open_clip", "transformers", "unimed_clip", "pmc_clip", "medclip")
ALIASES = {"custom": ("unimed_clip",), "all": KINDS}
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = ("a an the of and or in on with to for from by is are was this that image images figure shows showing "
         "left right upper lower ct mri x ray xray chest lung heart brain liver kidney bone tumor tumour lesion mass "
         "cell cells tissue stained staining scale bar arrow arrows patient patients case normal abnormal axial "
         "sagittal coronal view scan scans ultrasound fundus retina retinal oct pathology histology h e dermatology "
         "skin endoscopy colon gastric no sign of disease cancer carcinoma benign malignant").split()


def _expand_kinds(kinds: Iterable[str]) -> list[str]:
    out: list[str] = []
    for k in kinds:
        for kind in ALIASES.get(k, (k,)):
            if kind not in KINDS:
                raise ValueError(f"unknown tiny teacher kind {k!r}; valid: {list(KINDS) + list(ALIASES)}")
            if kind not in out:
                out.append(kind)
    return out


def make_tiny_teachers(root: str | Path, kinds: Iterable[str] = ("open_clip", "transformers", "custom"), *,
                       seed: int = 0, dim: int = 32, image_size: int = 32,
                       context_length: int = 16) -> dict[str, TeacherSpec]:
    """Build tiny seeded teachers under ``root`` and return their specs.

    Args:
        root: folder to write into (one sub-folder per teacher).
        kinds: any of ``open_clip``, ``transformers``, ``unimed_clip``,
            ``pmc_clip``, ``medclip``; ``custom`` means ``unimed_clip``, ``all``
            means every kind.
        seed: weights seed (same seed and arguments -> identical weights).
        dim: embedding dimension of every teacher.
        image_size: input side in pixels (a multiple of 32).
        context_length: tokenizer max length.

    Returns:
        ``tiny_<kind>`` -> spec, ready for :func:`mmkd.teachers.load_teacher`.
    """
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (ResNet and Swin strides), got {image_size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    builders = {"open_clip": _open_clip, "transformers": _transformers, "unimed_clip": _custom,
                "pmc_clip": _custom, "medclip": _custom}
    specs = {}
    for kind in _expand_kinds(kinds):
        name = f"tiny_{kind}"
        specs[name] = builders[kind](root / name, name, kind, seed, dim, image_size, context_length)
    return specs


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _save_safetensors(model: Any, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))


def _open_clip(folder: Path, name: str, kind: str, seed: int, dim: int, size: int, ctx: int) -> TeacherSpec:
    from open_clip.model import CLIP

    model_cfg = {"embed_dim": dim, "vision_cfg": {"image_size": size, "patch_size": size // 4, "width": 32,
                                                   "layers": 1, "head_width": 16},
                 "text_cfg": {"context_length": ctx, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    _seed(seed)
    model = CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD),
                                                          "interpolation": "bicubic", "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    _save_safetensors(model, folder / "open_clip_model.safetensors")
    return TeacherSpec(name=name, loader="open_clip", weights=f"local-dir:{folder}", dim=dim,
                       license="test-only", source="mmkd.teachers.tiny: random seeded weights")


def _word_vocab() -> dict[str, int]:
    # de-duplicate the whole list first: a word that is also a single character
    # ("a") must not leave a gap, or ids would run past vocab_size = len(vocab)
    tokens = dict.fromkeys([*SPECIALS, *WORDS, *"abcdefghijklmnopqrstuvwxyz0123456789"])
    return {w: i for i, w in enumerate(tokens)}


def _tokenizer_object(vocab: dict[str, int]) -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tok


def save_tiny_tokenizer(folder: str | Path, context_length: int = 16) -> Path:
    """Write a small word-level tokenizer (BERT-style special tokens) that loads with AutoTokenizer offline."""
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    tok = PreTrainedTokenizerFast(tokenizer_object=_tokenizer_object(_word_vocab()), unk_token="[UNK]",
                                  pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                  bos_token="[CLS]", eos_token="[SEP]", model_max_length=context_length)
    tok.save_pretrained(str(folder))
    return folder


def _transformers(folder: Path, name: str, kind: str, seed: int, dim: int, size: int, ctx: int) -> TeacherSpec:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    vocab = _word_vocab()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=ctx, pad_token_id=vocab["[PAD]"],
                         bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=size, patch_size=size // 4),
        projection_dim=dim)
    _seed(seed)
    model = CLIPModel(config)
    model.save_pretrained(str(folder))
    save_tiny_tokenizer(folder, ctx)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(MEAN), image_std=list(STD), resample=3).save_pretrained(str(folder))
    return TeacherSpec(name=name, loader="transformers", weights=str(folder), dim=dim,
                       license="test-only", source="mmkd.teachers.tiny: random seeded weights")


def tiny_custom_config(arch: str, dim: int = 32, image_size: int = 32) -> JSONDict:
    """A toy ``model_config`` for a custom architecture (see :mod:`mmkd.teachers.custom_models`)."""
    bert = {"vocab_size": len(_word_vocab()), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64}
    if arch == "unimed_clip":
        return {"embed_dim": dim, "vision": {"image_size": image_size, "patch_size": image_size // 4, "width": 32,
                                             "layers": 1, "head_width": 16}, "text": {"bert": bert, "proj": "mlp"}}
    if arch == "pmc_clip":
        return {"embed_dim": dim, "vision": {"layers": [1, 1, 1, 1], "width": 8, "image_size": image_size,
                                             "head_width": 64}, "text": {"bert": bert}}
    if arch == "medclip":
        swin = {"image_size": image_size, "patch_size": 4, "embed_dim": 12, "depths": [1, 1], "num_heads": [1, 2],
                "window_size": 4}
        return {"embed_dim": dim, "vision": {"swin": swin}, "text": {"bert": bert}}
    raise ValueError(f"no tiny config for custom architecture {arch!r}")


def _custom(folder: Path, name: str, arch: str, seed: int, dim: int, size: int, ctx: int) -> TeacherSpec:
    import torch

    cfg = tiny_custom_config(arch, dim, size)
    _seed(seed)
    model = build_custom_model(arch, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "checkpoint.pt"
    # The real checkpoints are DDP torch.save files wrapped in {"state_dict": {"module.*": ...}}.
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    save_tiny_tokenizer(folder / "tokenizer", ctx)
    return TeacherSpec(name=name, loader="custom", weights=str(checkpoint), arch=arch, model_config=cfg, dim=dim,
                       tokenizer=str(folder / "tokenizer"), context_length=ctx, grayscale=(arch == "medclip"),
                       license="test-only", source="mmkd.teachers.tiny: random seeded weights")


def pipelines_fragment(specs: dict[str, TeacherSpec]) -> JSONDict:
    """``{"teachers": {...}}`` for ``specs``, with default-valued fields left out."""
    defaults = TeacherSpec(name="x", loader="open_clip", weights="hf-hub:x/y").to_dict()
    out = {}
    for name, spec in specs.items():
        d = spec.to_dict()
        out[name] = {k: v for k, v in d.items() if k != "name" and (k in ("loader", "weights") or v != defaults[k])}
    return {"teachers": out}


def write_pipelines(path: str | Path, specs: dict[str, TeacherSpec], extra: JSONDict | None = None) -> Path:
    """Write a pipelines file declaring ``specs`` (plus any ``extra`` top-level sections)."""
    path = Path(path)
    data = {"version": 1, **pipelines_fragment(specs), **(extra or {})}
    path.write_text("# Tiny test teachers written by mmkd.teachers.tiny.write_pipelines\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return path
