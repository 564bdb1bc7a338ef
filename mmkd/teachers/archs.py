"""Building a teacher's architecture without its weights, and ``mmkd teachers --check``.

An architecture is *declared* when ``pipelines.yaml`` alone says how to build it:

* ``custom``: ``arch`` + ``model_config`` (:mod:`mmkd.teachers.custom_models`);
* ``open_clip``: ``arch`` (a built-in open_clip model name), or ``model_config.model_cfg``
  (an open_clip ``model_cfg``, as in a hub ``open_clip_config.json``) plus, for a Hugging
  Face text tower, ``model_config.text_config`` (the transformers config of that tower,
  ``model_type`` included), so no hub file is needed to build it;
* ``transformers``: ``model_config`` (``CLIPConfig`` keyword arguments).

:func:`check_teachers` builds each declared architecture on the ``meta`` device (no
memory, no weights) and reports separately what is missing: architecture config,
tokenizer, weights.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmkd.jsontypes import JSONDict
from mmkd.teachers.custom_models import build_custom_model
from mmkd.teachers.spec import TeacherError, TeacherSpec
from mmkd.teachers.weights import (
    OPEN_CLIP_WEIGHT_FILES, TOKENIZER_FILES, _first_cached, _tokenizer_status, cached_file, checkpoint_missing,
    repo_cache_path, weights_status,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

OPEN_CLIP_DECLARED_KEYS = ("model_cfg", "text_config", "preprocess_cfg")


def declared_open_clip(spec: TeacherSpec) -> JSONDict | None:
    """The open_clip ``model_cfg`` declared in ``spec.model_config``, or None."""
    cfg = spec.model_config.get("model_cfg") if spec.loader == "open_clip" else None
    return copy.deepcopy(cfg) if cfg else None


def open_clip_create_kwargs(spec: TeacherSpec) -> dict[str, Any]:
    """``model_config`` entries that are ``create_model`` keyword arguments (declarations removed)."""
    return {k: v for k, v in spec.model_config.items() if k not in OPEN_CLIP_DECLARED_KEYS}


def _stored_config(spec: TeacherSpec) -> tuple[dict[str, Any] | None, str]:
    """The architecture config stored with the weights on this machine (local folder or hub cache), and where."""
    kind = spec.weights_kind
    name = "open_clip_config.json" if spec.loader == "open_clip" else "config.json"
    if kind in ("local-dir", "dir"):
        path: str | None = str(Path(spec.weights.removeprefix("local-dir:")) / name)
    else:
        path = cached_file(spec.weights.removeprefix("hf-hub:"), name, spec.revision)
    where = path or f"{name} of {spec.weights} in {repo_cache_path(spec.weights.removeprefix('hf-hub:'))}"
    if path and Path(path).is_file():
        return json.loads(Path(path).read_text()), path
    return None, where


def build_declared_open_clip(spec: TeacherSpec, device: str | torch.device = "cpu",
                             model_cfg: JSONDict | None = None) -> torch.nn.Module:
    """Build an open_clip model from the ``model_cfg`` declared in the spec, offline and without weights.

    A Hugging Face text tower (``text_cfg.hf_model_name``) is built from
    ``model_config.text_config`` written to a temporary folder, so open_clip's
    ``HFTextEncoder`` finds its config without the hub; its structure is the one
    ``from_pretrained`` would give (no BERT pooler for the ``cls_last_hidden_state`` pooler).

    Raises:
        TeacherError: the declaration is incomplete or inconsistent.
    """
    import torch
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg) if model_cfg is not None else declared_open_clip(spec)
    if cfg is None:
        raise TeacherError(f"teacher {spec.name!r}: no model_config.model_cfg declared")
    text = cfg.get("text_cfg", {})
    vision = cfg.get("vision_cfg", {})
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    try:
        with tempfile.TemporaryDirectory() as tmp, torch.device(device):
            if text.get("hf_model_name") and not Path(text["hf_model_name"]).is_dir():
                text_config = spec.model_config.get("text_config")
                if not text_config or "model_type" not in text_config:
                    raise TeacherError(
                        f"teacher {spec.name!r}: text_cfg.hf_model_name {text['hf_model_name']!r} needs "
                        "model_config.text_config (its transformers config, with model_type) to build offline")
                from transformers import AutoConfig

                kw = dict(text_config)
                AutoConfig.for_model(kw.pop("model_type"), **kw).save_pretrained(tmp)
                text.update(hf_model_name=tmp, hf_model_pretrained=False)
            if text.get("hf_model_name"):
                return CustomTextCLIP(**cfg)
            return CLIP(**cfg)
    except (TypeError, ValueError, KeyError) as e:
        raise TeacherError(f"teacher {spec.name!r}: declared open_clip model_cfg does not build: "
                           f"{type(e).__name__}: {e}") from e


def build_architecture(spec: TeacherSpec, device: str | torch.device = "meta") -> torch.nn.Module:
    """The teacher's model with random (``meta``: no) weights, from what ``pipelines.yaml`` declares.

    Raises:
        TeacherError: the architecture is not declared (the message says what to add)
            or its declaration does not build.
    """
    import torch

    if spec.loader == "custom":
        with torch.device(device):
            return build_custom_model(spec.arch, spec.model_config)
    if spec.loader == "open_clip":
        if declared_open_clip(spec):
            return build_declared_open_clip(spec, device)
        if spec.arch:
            import open_clip

            with torch.device(device):
                return open_clip.create_model(spec.arch, device=device, **open_clip_create_kwargs(spec))
        stored, where = _stored_config(spec)
        if stored is None:
            raise _not_here(spec, f"teacher {spec.name!r}: architecture not declared and {where} is not here; add "
                               "'arch' (an open_clip model name) or model_config.model_cfg to pipelines.yaml")
        return build_declared_open_clip(spec, device, stored["model_cfg"])
    from transformers import CLIPConfig, CLIPModel

    if spec.model_config:
        config = CLIPConfig(**spec.model_config)
    else:
        stored, where = _stored_config(spec)
        if stored is None:
            raise _not_here(spec, f"teacher {spec.name!r}: architecture not declared and {where} is not here; add "
                               "model_config (CLIPConfig keyword arguments) to pipelines.yaml")
        config = CLIPConfig(**{k: v for k, v in stored.items() if k in ("text_config", "vision_config",
                                                                          "projection_dim", "logit_scale_init_value")})
    with torch.device(device):
        return CLIPModel(config)


class ArchOnHub(TeacherError):
    """The architecture is not declared and its config ships with the hub weights, which are not here yet."""


def _not_here(spec: TeacherSpec, message: str) -> TeacherError:
    hub = spec.weights_kind in ("hf-hub", "hub-id")
    return (ArchOnHub if hub else TeacherError)(message + (" (or download the weights: the config comes with them)"
                                                           if hub else ""))


class _NoRandomInitWarning(logging.Filter):
    """open_clip warns that a model built without weights is random: that is what --check builds."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@dataclass
class CheckResult:
    """What one teacher needs on this machine, in three parts.

    Attributes:
        teacher: the teacher's name.
        loader: its loader.
        arch_ok: the architecture built from pipelines.yaml alone.
        arch_on_hub: not declared, its config comes with the hub weights (not checkable offline; not a failure).
        params: parameter count of the built architecture.
        arch_missing, tokenizer_missing, weights_missing: what is absent, in words ('' when present).
        upstream: the upstream reference the teacher follows ({repo, file, function}).
    """

    teacher: str
    loader: str
    arch_ok: bool
    params: int | None
    arch_missing: str
    tokenizer_missing: str
    weights_missing: str
    upstream: dict[str, str]
    arch_on_hub: bool = False

    def to_dict(self) -> JSONDict:
        """JSON-able form."""
        return asdict(self)


def _hub_tokenizer(repo: str | None) -> str:
    if not repo:
        return ""
    return "" if _first_cached(repo, TOKENIZER_FILES) else f"tokenizer {repo} in {repo_cache_path(repo)}"


def tokenizer_missing(spec: TeacherSpec) -> str:
    """What the teacher's tokenizer needs that is not here ('' when it is, or bundled)."""
    if spec.tokenizer:
        return _tokenizer_status(spec.tokenizer)
    if spec.loader == "open_clip":
        declared = declared_open_clip(spec)
        if declared:
            return _hub_tokenizer(declared.get("text_cfg", {}).get("hf_tokenizer_name"))
        if spec.arch:
            return ""  # built-in open_clip models use the bundled BPE tokenizer
    if spec.weights_kind in ("hf-hub", "hub-id"):
        repo = spec.weights.removeprefix("hf-hub:")
        return _hub_tokenizer(repo)
    folder = Path(spec.weights.removeprefix("local-dir:"))
    return "" if any((folder / f).is_file() for f in TOKENIZER_FILES + ("open_clip_config.json",)) \
        else f"tokenizer files in {folder}"


def weights_missing(spec: TeacherSpec) -> str:
    """What the teacher's weights need that is not here ('' when present)."""
    if spec.loader == "custom":
        return checkpoint_missing(spec)
    if spec.weights_kind == "hf-hub" and declared_open_clip(spec):
        repo = spec.weights[len("hf-hub:"):]
        return "" if _first_cached(repo, OPEN_CLIP_WEIGHT_FILES) else \
            f"{' or '.join(OPEN_CLIP_WEIGHT_FILES)} of {repo} in {repo_cache_path(repo)}"
    status = weights_status(spec)
    return status.missing


def check_teachers(specs: dict[str, TeacherSpec]) -> list[CheckResult]:
    """Build every declared architecture offline without weights; list what else is missing."""
    rows = []
    for name, spec in specs.items():
        params, arch_missing, on_hub = None, "", False
        quiet = _NoRandomInitWarning()
        logging.getLogger().addFilter(quiet)
        try:
            model = build_architecture(spec)
            params = sum(p.numel() for p in model.parameters())
            del model
        except ArchOnHub as e:
            arch_missing, on_hub = str(e), True
        except TeacherError as e:
            arch_missing = str(e)
        except Exception as e:  # an architecture that does not build is the finding, not a crash
            arch_missing = f"building {spec.loader} architecture failed: {type(e).__name__}: {e}"
        finally:
            logging.getLogger().removeFilter(quiet)
        rows.append(CheckResult(teacher=name, loader=spec.loader, arch_ok=not arch_missing, params=params,
                                arch_missing=arch_missing, tokenizer_missing=tokenizer_missing(spec),
                                weights_missing=weights_missing(spec), upstream=dict(spec.upstream or {}),
                                arch_on_hub=on_hub))
    return rows


def format_check(rows: list[CheckResult]) -> str:
    """A table (architecture / tokenizer / weights per teacher), then what is missing."""
    width = max([len(r.teacher) for r in rows] + [7])
    lines = [f"{'teacher':<{width}}  {'loader':<12}  {'architecture':<14}  {'tokenizer':<9}  weights"]
    for r in rows:
        arch = f"ok {r.params / 1e6:.1f}M" if r.arch_ok else "from hub" if r.arch_on_hub else "MISSING"
        lines.append(f"{r.teacher:<{width}}  {r.loader:<12}  {arch:<14}  "
                     f"{'ok' if not r.tokenizer_missing else 'MISSING':<9}  "
                     f"{'ok' if not r.weights_missing else 'MISSING'}")
    on_hub = [r for r in rows if r.arch_on_hub]
    if on_hub:
        lines.append(f"\narchitecture comes with the hub weights (not checkable offline) for {len(on_hub)} of "
                     f"{len(rows)} teachers:")
        lines.extend(f"  {r.teacher}: {r.arch_missing}" for r in on_hub)
    for part, attr in (("architecture config", "arch_missing"), ("tokenizer", "tokenizer_missing"),
                       ("weights", "weights_missing")):
        missing = [r for r in rows if getattr(r, attr) and not (attr == "arch_missing" and r.arch_on_hub)]
        if missing:
            lines.append(f"\n{part} missing for {len(missing)} of {len(rows)} teachers:")
            lines.extend(f"  {r.teacher}: {getattr(r, attr)}" for r in missing)
    return "\n".join(lines)
