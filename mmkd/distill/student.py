"""Student models: resolve a student spec, build it with open_clip, load and export weights.

A student is any open_clip CLIP architecture, named three ways: an entry of the
``students:`` section of pipelines.yaml, a path to a JSON file holding an open_clip
model config (``embed_dim``, ``vision_cfg``, ``text_cfg``; optionally wrapped as
``{"model_cfg": ..., "preprocess_cfg": ...}``), or a built-in open_clip
architecture name. Students are always built with random weights; pretrained
weights come in afterwards, tower by tower and reported, through
:mod:`mmkd.distill.init` (``--init``). A text config with ``hf_model_pretrained:
true`` makes the Hugging Face text tower start from its pretrained weights when
no init source covers that tower.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmkd.distill.config import InitConfig
from mmkd.distill.rundir import EXPORT_CONFIG, EXPORT_WEIGHTS, RunDir
from mmkd.errors import MMKDError
from mmkd.jsontypes import JSONDict

logger = logging.getLogger(__name__)


class StudentError(MMKDError, ValueError):
    """A student spec cannot be resolved, built or loaded."""


@dataclass
class StudentSpec:
    """What to build: an open_clip model config plus its preprocessing.

    Attributes:
        name: how the user named the student (entry, file or architecture).
        model_cfg: open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...).
        preprocess_cfg: overrides of open_clip's ``PreprocessCfg`` (mean, std, ...).
    """

    name: str
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)


@dataclass
class Student:
    """A built student: the model, its tokenizer and image transforms."""

    spec: StudentSpec
    model: torch.nn.Module
    tokenizer: Callable[..., torch.Tensor]
    train_transform: Callable
    eval_transform: Callable
    preprocess_cfg: dict[str, Any]


def _split_cfg(name: str, data: JSONDict) -> StudentSpec:
    if "model_cfg" in data:
        model_cfg, pp = data["model_cfg"], data.get("preprocess_cfg") or {}
    else:
        model_cfg, pp = {k: v for k, v in data.items() if k != "preprocess_cfg"}, data.get("preprocess_cfg") or {}
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    if missing:
        raise StudentError(
            f"student {name!r}: open_clip model config lacks {missing}; it needs embed_dim, vision_cfg and text_cfg"
        )
    if "multimodal_cfg" in model_cfg:
        raise StudentError(f"student {name!r}: CoCa (multimodal_cfg) students are not supported; use a CLIP config")
    return StudentSpec(name=name, model_cfg=copy.deepcopy(model_cfg), preprocess_cfg=dict(pp))


def resolve_student(value: str | JSONDict, students: JSONDict | None = None,
                    base_dir: Path | None = None) -> StudentSpec:
    """Turn ``--student`` (entry name, JSON path, architecture name or dict) into a spec.

    Args:
        value: the student as the user gave it.
        students: the ``students:`` section of pipelines.yaml (entry name -> entry).
            An entry holds ``arch: <open_clip name>``, ``config: {model config}``
            or ``config_file: <json path>``, and optionally ``preprocess_cfg``.
        base_dir: folder that relative ``config_file`` paths resolve against.

    Raises:
        StudentError: the value names nothing known, or its config is malformed.
    """
    import open_clip

    students = students or {}
    if isinstance(value, dict):
        return _split_cfg("<dict>", value)
    if value in students:
        entry = dict(students[value] or {})
        if "arch" in entry:
            spec = resolve_student(entry["arch"], None, base_dir)
        elif "config" in entry:
            spec = _split_cfg(value, entry["config"])
        elif "config_file" in entry:
            path = Path(entry["config_file"])
            spec = resolve_student(str(path if path.is_absolute() or base_dir is None else base_dir / path))
        else:
            raise StudentError(f"students entry {value!r} needs one of 'arch', 'config' or 'config_file'")
        spec.name = value
        spec.preprocess_cfg.update(entry.get("preprocess_cfg") or {})
        return spec
    path = Path(value)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise StudentError(f"student config file {value!r} not found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise StudentError(f"student config file {value!r} is not valid JSON: {e}") from e
        return _split_cfg(str(path), data)
    cfg = open_clip.get_model_config(value.replace("/", "-"))
    if cfg is None:
        raise StudentError(
            f"unknown student {value!r}: not a students entry {sorted(students)}, not a JSON file, "
            f"not an open_clip architecture (see open_clip.list_models(), e.g. 'ViT-B-16-quickgelu')"
        )
    return StudentSpec(name=value, model_cfg=cfg)


def _is_hf_text(model_cfg: JSONDict) -> bool:
    return "hf_model_name" in (model_cfg.get("text_cfg") or {})


def build_model(spec: StudentSpec) -> torch.nn.Module:
    """Instantiate the open_clip model of a spec with random weights (no weights download).

    ``hf_model_pretrained`` is honoured later by :func:`init_config` so that the
    pretrained text weights are loaded and reported like any other init source.
    """
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(spec.model_cfg)
    custom_text = cfg.pop("custom_text", False) or _is_hf_text(cfg)
    if _is_hf_text(cfg):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    cls = CustomTextCLIP if custom_text else CLIP
    try:
        return cls(**cfg)
    except (TypeError, KeyError, ValueError, OSError) as e:
        raise StudentError(f"student {spec.name!r}: open_clip could not build {cls.__name__} from its config: {e}") from e


def init_config(init: InitConfig, spec: StudentSpec) -> InitConfig:
    """The run's init sources, with ``text: hf`` added when the spec asks for a pretrained HF text tower.

    Args:
        init: the sources the user gave.
        spec: the student; ``text_cfg.hf_model_pretrained: true`` starts the HF text
            tower from its pretrained weights when neither ``text`` nor ``source`` covers it.
    """
    text_cfg = spec.model_cfg.get("text_cfg") or {}
    if _is_hf_text(spec.model_cfg) and text_cfg.get("hf_model_pretrained") and not (init.text or init.source):
        return dataclasses.replace(init, text="hf")
    return init


def build_tokenizer(spec: StudentSpec) -> Callable[..., torch.Tensor]:
    """The tokenizer the spec's text tower expects (open_clip SimpleTokenizer or HFTokenizer)."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text_cfg = spec.model_cfg.get("text_cfg") or {}
    context_length = int(text_cfg.get("context_length", 77))
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    hf_name = text_cfg.get("hf_tokenizer_name")
    if hf_name:
        return HFTokenizer(hf_name, context_length=context_length,
                           tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)
    return SimpleTokenizer(context_length=context_length, **kwargs)


def resolved_preprocess_cfg(spec: StudentSpec, model: torch.nn.Module) -> JSONDict:
    """open_clip's default preprocessing, sized to the model's image tower, with spec overrides."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = asdict(PreprocessCfg())
    size = getattr(getattr(model, "visual", None), "image_size", None)
    if size is not None:
        cfg["size"] = size
    cfg = merge_preprocess_dict(cfg, spec.preprocess_cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def build_student(spec: StudentSpec) -> Student:
    """Build model, tokenizer and train/eval transforms for a spec."""
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    model = build_model(spec)
    pp = resolved_preprocess_cfg(spec, model)
    set_model_preprocess_cfg(model, pp)
    pp_cfg = PreprocessCfg(**pp)
    return Student(
        spec=spec, model=model, tokenizer=build_tokenizer(spec),
        train_transform=image_transform_v2(pp_cfg, is_train=True),
        eval_transform=image_transform_v2(pp_cfg, is_train=False),
        preprocess_cfg=pp,
    )


def load_student_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load student weights from a run checkpoint, an export folder or a weights file.

    Args:
        model: the built student.
        path: a run folder (its export, else its last checkpoint), a distill
            checkpoint file, an export folder holding ``open_clip_model.safetensors``,
            or a safetensors / torch state-dict file.

    Raises:
        StudentError: the path is absent or its weights do not fit the model.
    """
    p = Path(path)
    if p.is_dir():
        p = RunDir(p).student_weights() or p
    if not p.is_file():
        raise StudentError(f"init checkpoint {str(path)!r} not found; pass a distill checkpoint, export folder or weights file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        obj = torch.load(p, map_location="cpu", weights_only=True)
        state = obj.get("student", obj.get("state_dict", obj)) if isinstance(obj, dict) else obj
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise StudentError(f"init checkpoint {str(p)!r} does not fit the student architecture: {e}") from e
    logger.info("student initialised from %s", p)


def export_student(student: Student, out_dir: str | Path) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` for ``local-dir:`` loading.

    For a Hugging Face text tower, its config and tokenizer files are saved in the
    same folder and the config points at that folder, so the export loads offline.

    Returns:
        The export folder.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = copy.deepcopy(student.spec.model_cfg)
    if _is_hf_text(model_cfg):
        hf = getattr(student.model.text, "config", None)
        if hf is not None:
            hf.save_pretrained(out)
        tok = getattr(student.tokenizer, "tokenizer", None)
        if tok is not None:
            tok.save_pretrained(out)
        model_cfg["text_cfg"]["hf_model_name"] = str(out.resolve())
    config = {"model_cfg": model_cfg, "preprocess_cfg": student.preprocess_cfg}
    state = {k: v.detach().cpu().contiguous() for k, v in student.model.state_dict().items()}
    tmp = out / (EXPORT_WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(out / EXPORT_WEIGHTS)
    (out / EXPORT_CONFIG).write_text(json.dumps(config, indent=2))
    logger.info("exported student to %s", out)
    return out
