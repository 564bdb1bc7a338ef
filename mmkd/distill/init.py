"""Start a student from pretrained weights, non-strictly, tower by tower, with a report.

The official MMKD-CLIP stage 1 starts from open_clip's ``ViT-B-16-quickgelu``
``metaclip_400m`` checkpoint loaded with ``strict=False`` (its CLIP text tower
fits nothing in the BiomedBERT student) and a pretrained BiomedBERT text tower.
Here each tower names its source:

- an open_clip pretrained reference, ``ARCH:TAG`` (``ViT-B-16-quickgelu:metaclip_400m``)
  or ``hf-hub:ORG/NAME``, resolved by open_clip's own download functions through
  the Hugging Face cache (offline with ``HF_HUB_OFFLINE=1``) or ``cache_dir``;
- a checkpoint file (open_clip ``.pt``/``.bin``/``.safetensors``, or a distill
  checkpoint), a stage-1 run folder or an export folder;
- ``hf`` or ``hf:NAME_OR_FOLDER`` (text tower only): the Hugging Face model's own
  pretrained weights (``AutoModel.from_pretrained``, what open_clip's
  ``hf_model_pretrained`` does), by default the student's ``hf_model_name``.

Only tensors whose name and shape fit are copied (after open_clip's checkpoint
conversions); a tower of which less than ``min_share`` of the parameters loads is
refused unless ``partial``. :func:`initialise` returns the report that the recipe
prints and writes as ``<out>/init_report.json``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmkd.distill.config import InitConfig, is_reference
from mmkd.distill.rundir import EXPORT_WEIGHTS, RunDir
from mmkd.errors import MMKDError
from mmkd.jsontypes import JSONDict

logger = logging.getLogger(__name__)

TOWERS = ("image", "text")


class InitError(MMKDError, ValueError):
    """An init source cannot be resolved or loads too little of a tower."""


@dataclass
class TowerReport:
    """What one source gave one tower (counts are tensors; ``share`` is of parameter elements)."""

    source: str
    resolved: str
    loaded: int = 0
    total: int = 0
    share: float = 0.0
    missing: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def tower_of(key: str) -> str:
    """``image`` for ``visual.*``, ``scale`` for the logit scale/bias, else ``text``."""
    if key.startswith("visual."):
        return "image"
    if key in ("logit_scale", "logit_bias"):
        return "scale"
    return "text"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_pretrained(ref: str, cache_dir: str | None = None) -> Path:
    """Turn ``ARCH:TAG`` / ``hf-hub:ID`` into a local checkpoint file with open_clip's resolvers.

    Raises:
        InitError: unknown architecture or tag, or the weights are not in the cache
            and cannot be downloaded (offline).
    """
    import open_clip
    from open_clip.pretrained import download_pretrained, download_pretrained_from_hf

    if ref.startswith("hf-hub:"):
        model_id = ref[len("hf-hub:"):]
        try:
            return Path(download_pretrained_from_hf(model_id, cache_dir=cache_dir))
        except Exception as e:  # open_clip wraps every hub failure in FileNotFoundError
            raise InitError(
                f"init {ref!r}: no open_clip weights for {model_id!r} in the Hugging Face cache "
                f"({cache_dir or os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'})"
                f"{' and HF_HUB_OFFLINE=1 forbids a download' if _offline() else ''}; download them once "
                f"online (hf download {model_id}) or point HF_HUB_CACHE at a cache that holds them") from e
    arch, tag = ref.split(":", 1)
    arch = arch.replace("/", "-")
    if open_clip.get_model_config(arch) is None:
        raise InitError(f"init {ref!r}: {arch!r} is not an open_clip architecture (see open_clip.list_models()); "
                        f"write ARCH:TAG, e.g. ViT-B-16-quickgelu:metaclip_400m")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise InitError(f"init {ref!r}: open_clip knows no pretrained tag {tag!r} for {arch}; its tags: "
                        f"{open_clip.list_pretrained_tags_by_model(arch)}")
    url_target = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(cfg.get("url", "") or "-")
    if cfg.get("url") and not cfg.get("hf_hub") and _offline() and not url_target.is_file():
        raise InitError(f"init {ref!r}: {url_target} is absent and HF_HUB_OFFLINE=1 forbids downloading "
                        f"{cfg['url']}; place the file there or pass --init with the file's path")
    try:
        path = download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as e:
        raise InitError(
            f"init {ref!r}: its weights ({cfg.get('hf_hub') or cfg.get('url')}) are not in the cache "
            f"({cache_dir or os.environ.get('HF_HUB_CACHE') or 'the default Hugging Face cache'}) and could not be "
            f"downloaded{' (HF_HUB_OFFLINE=1)' if _offline() else ''}: {e}. Download them once online or pass "
            f"the checkpoint file's path") from e
    if not path:
        raise InitError(f"init {ref!r}: open_clip gave no file for this tag; pass the checkpoint file's path")
    return Path(path)


def resolve_source(source: str, cache_dir: str | None = None) -> Path:
    """A run folder, export folder, checkpoint file or pretrained reference -> the weights file.

    Raises:
        InitError: the source names nothing loadable.
    """
    p = Path(os.path.expanduser(source))
    if p.is_dir():
        if (weights := RunDir(p).student_weights()) is not None:
            return weights
        found = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")) + sorted(p.glob("*.pt")) + sorted(
            p.glob("*.pth"))
        if found:
            return found[0]
        raise InitError(f"init {source!r}: the folder holds no weights ({EXPORT_WEIGHTS}, export/, "
                        f"checkpoints/last.pt, *.safetensors/*.bin/*.pt); pass a stage-1 run, an export folder, "
                        f"a checkpoint file or ARCH:TAG")
    if p.is_file():
        return p
    if is_reference(source):
        return resolve_pretrained(source, cache_dir)
    raise InitError(f"init {source!r}: no such file or folder, and not a pretrained reference; pass a stage-1 run, "
                    f"an export folder, a checkpoint file, ARCH:TAG (e.g. ViT-B-16-quickgelu:metaclip_400m) or "
                    f"hf-hub:ORG/NAME")


def read_state(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, converted by open_clip to the model's layout (names, scale shapes, pos-embeds).

    Raises:
        InitError: the file cannot be read as a state dict.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.factory import load_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True) if path.suffix in (".pt", ".pth") else None
        if isinstance(obj, dict) and isinstance(obj.get("student"), dict):
            state = obj["student"]  # a distill checkpoint
        else:
            state = load_state_dict(str(path))
    except Exception as e:
        raise InitError(f"init file {str(path)!r} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not state:
        raise InitError(f"init file {str(path)!r} holds no state dict")
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    for resize in (resize_pos_embed, resize_text_pos_embed):
        try:
            resize(state, model)
        except (AssertionError, AttributeError, RuntimeError, ValueError) as e:  # other layouts: shapes decide
            logger.debug("%s skipped: %s", resize.__name__, e)
    return state


def hf_text_state(model: torch.nn.Module, name: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The pretrained Hugging Face text model's weights, named as in the student (``text.transformer.*``).

    Raises:
        InitError: the student has no HF text tower, or the weights are not in the cache / folder.
    """
    from transformers import AutoModel

    text = getattr(model, "text", None)
    hf_cfg = getattr(text, "config", None)
    if text is None or hf_cfg is None or not hasattr(text, "transformer"):
        raise InitError("init text 'hf': the student's text tower is not a Hugging Face model; "
                        "use a checkpoint for it instead")
    name = name or getattr(hf_cfg, "_name_or_path", None)
    try:
        hf = AutoModel.from_pretrained(name, add_pooling_layer=hasattr(text.transformer, "pooler")
                                       and text.transformer.pooler is not None)
    except TypeError:
        hf = AutoModel.from_pretrained(name)
    except OSError as e:
        raise InitError(f"init text 'hf:{name}': no pretrained weights for {name!r} in the Hugging Face cache or "
                        f"folder{' (HF_HUB_OFFLINE=1)' if _offline() else ''}: {e}. Download them once online, point "
                        f"HF_HUB_CACHE at a cache that holds them, or give a save_pretrained folder") from e
    return {f"text.transformer.{k}": v for k, v in hf.state_dict().items()}, str(name)


def load_towers(model: torch.nn.Module, state: dict[str, torch.Tensor], towers: tuple[str, ...],
                source: str, resolved: str, scope: str = "") -> dict[str, TowerReport]:
    """Copy into ``model`` the tensors of ``towers`` whose name and shape fit; report per tower.

    The logit scale (and bias) comes along with the image tower but is not counted
    in its report: a scalar fits any CLIP and says nothing about the towers.
    ``scope`` limits the counted keys to a prefix (a pretrained HF text model
    provides ``text.transformer.*``; the projection head is the student's own).
    """
    own = model.state_dict()
    reports = {t: TowerReport(source=source, resolved=resolved) for t in towers}
    keep: dict[str, torch.Tensor] = {}
    loaded_numel = {t: 0 for t in towers}
    total_numel = {t: 0 for t in towers}
    for key, tensor in own.items():
        tower, src = tower_of(key), state.get(key)
        if tower == "scale":
            if "image" in reports and src is not None and src.numel() == tensor.numel():
                keep[key] = src.reshape(tensor.shape).to(tensor.dtype)
            continue
        if tower not in reports or not key.startswith(scope):
            continue
        rep = reports[tower]
        rep.total += 1
        total_numel[tower] += tensor.numel()
        if src is None:
            rep.missing.append(key)
        elif tuple(src.shape) != tuple(tensor.shape):
            rep.mismatched.append({"key": key, "checkpoint": list(src.shape), "model": list(tensor.shape)})
        else:
            keep[key] = src.to(tensor.dtype)
            rep.loaded += 1
            loaded_numel[tower] += tensor.numel()
    for key in state:
        tower = tower_of(key)
        if tower in reports and key not in own:
            reports[tower].unexpected.append(key)
    model.load_state_dict(keep, strict=False)
    for t, rep in reports.items():
        rep.share = loaded_numel[t] / total_numel[t] if total_numel[t] else 0.0
    return reports


def _check(reports: dict[str, TowerReport], cfg: InitConfig) -> None:
    if not any(r.loaded for r in reports.values()):
        srcs = sorted({r.resolved for r in reports.values()})
        raise InitError(f"init refused: nothing in {srcs} fits the student (0 tensors of "
                        f"{sum(r.total for r in reports.values())} load; e.g. "
                        f"{next((m for r in reports.values() for m in r.mismatched), None) or 'no shared names'}). "
                        f"It is a checkpoint of another architecture; pass one of this student, or per tower with "
                        f"--init-image/--init-text")
    low = {t: r for t, r in reports.items() if r.share < cfg.min_share}
    if low and not cfg.partial:
        parts = "; ".join(
            f"{t} tower from {r.source!r}: {r.share:.1%} of its parameters loaded ({r.loaded}/{r.total} tensors, "
            f"{len(r.missing)} missing, {len(r.mismatched)} shape-mismatched"
            + (f", e.g. {r.mismatched[0]['key']} {r.mismatched[0]['checkpoint']} vs {r.mismatched[0]['model']}"
               if r.mismatched else f", e.g. {r.missing[0]}" if r.missing else "") + ")"
            for t, r in low.items())
        raise InitError(f"init refused, less than {cfg.min_share:.0%} of a tower loads: {parts}. Pick a source "
                        f"that fits the student (or another source per tower with --init-image/--init-text), or "
                        f"accept it with --init-partial")


def initialise(model: torch.nn.Module, cfg: InitConfig) -> JSONDict:
    """Load every tower from its source into ``model`` (in place); nothing is changed when refused.

    Returns:
        The report: ``{"towers": {tower: TowerReport as dict}, "min_share", "partial"}``.

    Raises:
        InitError: a source names nothing loadable, or a tower loads less than
            ``min_share`` without ``partial``.
    """
    by_source: dict[str, list[str]] = {}
    for tower, src in cfg.sources().items():
        by_source.setdefault(src, []).append(tower)
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    reports: dict[str, TowerReport] = {}
    try:
        for src, towers in by_source.items():
            if src == "hf" or src.startswith("hf:"):
                if towers != ["text"]:
                    raise InitError(f"init {src!r} names a Hugging Face text model; give it to the text tower only "
                                    f"(--init-text {src})")
                state, resolved = hf_text_state(model, src[3:] or None)
                scope = "text.transformer."
            else:
                path = resolve_source(src, cfg.cache_dir)
                state, resolved, scope = read_state(path, model), str(path), ""
            reports.update(load_towers(model, state, tuple(towers), src, resolved, scope))
        _check(reports, cfg)
    except Exception:
        model.load_state_dict(backup)
        raise
    for t, r in reports.items():
        logger.info("init %s tower from %s (%s): %d/%d tensors, %.1f%% of parameters; %d missing, %d mismatched, "
                    "%d unexpected", t, r.source, r.resolved, r.loaded, r.total, 100 * r.share, len(r.missing),
                    len(r.mismatched), len(r.unexpected))
    return {"towers": {t: asdict(r) for t, r in reports.items()}, "min_share": cfg.min_share,
            "partial": cfg.partial}


def summary_lines(report: JSONDict) -> list[str]:
    """One line per tower, for the console."""
    lines = []
    for t, r in report["towers"].items():
        lines.append(f"init {t} tower <- {r['source']}: {r['share']:.1%} of parameters ({r['loaded']}/{r['total']} "
                     f"tensors), missing {len(r['missing'])}, shape-mismatched {len(r['mismatched'])}, "
                     f"unexpected {len(r['unexpected'])}")
    return lines
