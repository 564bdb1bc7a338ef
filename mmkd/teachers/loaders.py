"""``load_teacher``: one loader per kind (open_clip, transformers, custom), same Teacher out."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmkd.teachers.archs import build_declared_open_clip, declared_open_clip, open_clip_create_kwargs
from mmkd.teachers.base import Preprocessing, Teacher
from mmkd.teachers.custom_models import CUSTOM_ARCHS, build_custom_model, load_custom_checkpoint
from mmkd.teachers.spec import TeacherError, TeacherSpec
from mmkd.teachers.weights import (
    OPEN_CLIP_WEIGHT_FILES, _first_cached, cache_revision, cached_file, hub_cache_dir, hub_download_impossible,
    hub_offline, missing_weights_error, resolve_checkpoint, weights_status,
)

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# What each upstream inference path does when the spec does not say otherwise.
CUSTOM_DEFAULTS: dict[str, dict[str, Any]] = {
    "unimed_clip": dict(mean=OPENAI_MEAN, std=OPENAI_STD, context_length=256),
    "pmc_clip": dict(mean=OPENAI_MEAN, std=OPENAI_STD, context_length=77),
    # MedCLIPProcessor (RyanWangZf/MedCLIP medclip/dataset.py) sets model_max_length 77, but the README call
    # processor(text=..., padding=True) does not truncate: captions run to BERT's position limit (512).
    "medclip": dict(mean=(0.5862785803043838,), std=(0.27950088968644304,), context_length=512,
                    resize_mode="pad_square"),
}


def load_teacher(spec: TeacherSpec, device: str | torch.device = "cpu",
                 tokenizers: dict[tuple, Any] | None = None) -> Teacher:
    """Build a teacher from its spec: model on ``device`` in eval mode, own transform and tokenizer.

    Args:
        spec: the teacher spec (see :func:`mmkd.teachers.get_teacher_spec`).
        device: torch device for the model.
        tokenizers: a cache shared by the teachers loaded together (one extract pass): an open_clip
            tokenizer of the same name and context length is built once (building CLIP's BPE
            tokenizer costs ~0.25 s) and used by each, as it holds no per-teacher state.

    Raises:
        WeightsNotFoundError: the weights are not here and cannot be fetched; the
            message names the teacher, the id and where to put the files.
        TeacherError: the model cannot be built (message names teacher and cause).
    """
    device = torch.device(device)
    if spec.loader == "open_clip":
        teacher = _load_open_clip(spec, device, {} if tokenizers is None else tokenizers)
    else:
        teacher = {"transformers": _load_transformers, "custom": _load_custom}[spec.loader](spec, device)
    log.info("loaded %r on %s (dim %d)", teacher, device, teacher.dim)
    return teacher


def _precheck(spec: TeacherSpec) -> None:
    """Fail before any hub call when files are absent and nothing could fetch them."""
    status = weights_status(spec)
    if not status.available and hub_download_impossible(spec):
        raise missing_weights_error(spec)


def _reraise(spec: TeacherSpec, e: Exception) -> TeacherError:
    if not weights_status(spec).available:
        return missing_weights_error(spec, e)
    return TeacherError(f"teacher {spec.name!r}: building the {spec.loader} model from {spec.weights!r} failed: "
                        f"{type(e).__name__}: {e}")


def _preprocessing(spec: TeacherSpec, size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                   interpolation: str | None = None, resize_mode: str | None = None) -> Preprocessing:
    size = size[0] if isinstance(size, (tuple, list)) else size
    return Preprocessing(
        image_size=int(spec.image_size or size), mean=tuple(spec.mean or mean), std=tuple(spec.std or std),
        interpolation=spec.interpolation or interpolation or "bicubic",
        resize_mode=spec.resize_mode or resize_mode or "shortest", grayscale=spec.grayscale)


def _infer_dim(spec: TeacherSpec, model_fn: Callable[[torch.Tensor], object], pp: Preprocessing, device: torch.device) -> int:
    channels = 1 if pp.grayscale else 3
    with torch.inference_mode():
        out = model_fn(torch.zeros(1, channels, pp.image_size, pp.image_size, device=device))
    dim = int(out.shape[-1])
    if spec.dim is not None and spec.dim != dim:
        raise TeacherError(f"teacher {spec.name!r}: pipelines file says dim {spec.dim} but the model "
                           f"{spec.weights!r} outputs {dim}; fix 'dim' or the weights")
    return dim


def _shared_tokenizer(tokenizers: dict[tuple, Any], name: str, context_length: int | None) -> tuple[Any, tuple]:
    """``open_clip.get_tokenizer(name, context_length)``, built once per :func:`_tokenizer_key`; and the key."""
    import open_clip

    key = _tokenizer_key(name, context_length)
    if key not in tokenizers:
        tokenizers[key] = open_clip.get_tokenizer(name, context_length=context_length)
    return tokenizers[key], key


def _tokenizer_key(name: str, context_length: int | None) -> tuple:
    """What ``open_clip.get_tokenizer(name, context_length)`` builds, as a cache key.

    CLIP's BPE tokenizer (``SimpleTokenizer``: no ``hf_tokenizer_name`` in the model's ``text_cfg``, not a
    SigLIP name) is keyed by its context length and kwargs, so teachers saved in different folders share it;
    any other tokenizer by the name it was asked for. Follows open_clip's own resolution in ``get_tokenizer``.
    """
    from open_clip.factory import DEFAULT_CONTEXT_LENGTH, get_model_config, parse_model_name

    schema, ident = parse_model_name(name)
    by_name = ("open_clip", name, context_length)
    if schema == "local-dir":
        try:
            config = json.loads((Path(ident) / "open_clip_config.json").read_text()).get("model_cfg") or {}
        except (OSError, ValueError):
            return by_name  # get_tokenizer raises its own error for it
    elif schema is None and ident and "siglip" not in ident.lower():
        config = get_model_config(ident)
    else:
        return by_name
    text = (config or {}).get("text_cfg", {})
    if text.get("hf_tokenizer_name"):
        return by_name
    ctx = context_length or (text.get("context_length", DEFAULT_CONTEXT_LENGTH) if config is not None
                             else DEFAULT_CONTEXT_LENGTH)
    return ("open_clip-bpe", ctx, json.dumps(text.get("tokenizer_kwargs", {}), sort_keys=True))


def _load_open_clip(spec: TeacherSpec, device: torch.device, tokenizers: dict[tuple, Any]) -> Teacher:
    import open_clip

    _precheck(spec)
    kind = spec.weights_kind
    name, pretrained = (spec.arch, spec.weights) if kind == "file" else (spec.weights, None)
    try:
        if declared_open_clip(spec):
            model, tokenizer, token_key = _declared_open_clip(spec, device, tokenizers)
        else:
            model = open_clip.create_model_from_pretrained(
                name, pretrained=pretrained, device=device, return_transform=False, **open_clip_create_kwargs(spec))
            tokenizer, token_key = _shared_tokenizer(tokenizers, spec.tokenizer or name, spec.context_length)
    except (OSError, RuntimeError, ValueError) as e:
        if isinstance(e, TeacherError):
            raise
        raise _reraise(spec, e) from e
    model.eval()
    pp_cfg = getattr(model.visual, "preprocess_cfg", {}) or spec.model_config.get("preprocess_cfg", {})
    pp = _preprocessing(spec, pp_cfg.get("size", 224), pp_cfg.get("mean", OPENAI_MEAN), pp_cfg.get("std", OPENAI_STD),
                        pp_cfg.get("interpolation"), pp_cfg.get("resize_mode"))
    image_fn = model.encode_image
    revision = None
    if kind == "hf-hub":
        repo = spec.weights[len("hf-hub:"):]
        revision = cache_revision(cached_file(repo, "open_clip_config.json") or _first_cached(repo, OPEN_CLIP_WEIGHT_FILES))
    teacher = Teacher(
        spec, dim=_infer_dim(spec, image_fn, pp, device), logit_scale=model.logit_scale.exp().item(),
        preprocessing=pp, context_length=int(tokenizer.context_length), tokenizer_id=spec.tokenizer or name,
        image_fn=image_fn, tokenize_fn=lambda caps: {"input_ids": tokenizer(caps)},
        text_fn=lambda t: model.encode_text(t["input_ids"]), device=device, revision=revision,
        weights_file=_open_clip_weights_file(spec), model=model)
    teacher.tokenizer_key = token_key
    return teacher


def _declared_open_clip(spec: TeacherSpec, device: torch.device,
                        tokenizers: dict[tuple, Any]) -> tuple[Any, Any, tuple | None]:
    """Model from the architecture pipelines.yaml declares, weights from the spec, HF tokenizer; and the
    tokenizer's sharing key (:func:`_shared_tokenizer`; None for an HF tokenizer)."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    model = build_declared_open_clip(spec, "cpu")
    path = _open_clip_weights_file(spec)
    if path is None:  # hub weights: the cached file, or a download when the hub is online
        from open_clip.pretrained import download_pretrained_from_hf

        repo = spec.weights[len("hf-hub:"):]
        path = _first_cached(repo, OPEN_CLIP_WEIGHT_FILES) or download_pretrained_from_hf(repo, cache_dir=hub_cache_dir())
    incompatible = open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
    log.debug("teacher %r: loaded %s (%s)", spec.name, path, incompatible)
    model.to(device)
    text = declared_open_clip(spec).get("text_cfg", {})
    ctx = spec.context_length or text.get("context_length", 77)
    if spec.tokenizer or not text.get("hf_tokenizer_name"):
        tokenizer, key = _shared_tokenizer(tokenizers, spec.tokenizer or spec.arch, ctx)
    else:
        # the cache the weights were looked up in (HF_HUB_CACHE read now, not at transformers' import)
        tokenizer, key = HFTokenizer(text["hf_tokenizer_name"], context_length=ctx, cache_dir=hub_cache_dir()), None
    return model, tokenizer, key


def _open_clip_weights_file(spec: TeacherSpec) -> str | None:
    if spec.weights_kind == "file":
        return spec.weights
    if spec.weights_kind == "local-dir":
        from open_clip.factory import _find_checkpoint_in_dir

        return _find_checkpoint_in_dir(Path(spec.weights[len("local-dir:"):]))
    return None  # hub weights are pinned by their commit (revision) instead


def _features(out: object) -> torch.Tensor:
    """transformers 5 returns a ModelOutput from get_*_features; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _hf_preprocessing(spec: TeacherSpec, src: str, kw: dict, config: Any) -> Preprocessing:
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(src, **kw)
    except (OSError, ValueError) as e:
        vision = getattr(config, "vision_config", config)
        log.warning("teacher %r: no image processor in %s (%s); using image_size from the config and CLIP "
                    "mean/std unless the spec gives them", spec.name, src, e)
        return _preprocessing(spec, getattr(vision, "image_size", 224), OPENAI_MEAN, OPENAI_STD)
    size, crop = dict(getattr(proc, "size", None) or {}), dict(getattr(proc, "crop_size", None) or {})
    center = bool(getattr(proc, "do_center_crop", True)) and crop
    side = crop.get("height") if center else size.get("shortest_edge", size.get("height"))
    resample = getattr(proc, "resample", 3)
    resample = getattr(resample, "value", resample)
    interp = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(resample, resample if isinstance(resample, str) else None)
    mode = "shortest" if center or "shortest_edge" in size else "squash"
    return _preprocessing(spec, side or 224, proc.image_mean, proc.image_std, interp, mode)


def _load_transformers(spec: TeacherSpec, device: torch.device) -> Teacher:
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPModel

    _precheck(spec)
    src = spec.weights
    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.revision:
        kw["revision"] = spec.revision
    if spec.weights_kind == "hub-id" and hub_offline():
        kw["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(src, **kw)
        model = (CLIPModel if config.model_type == "clip" else AutoModel).from_pretrained(src, **kw)
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer or src, **kw)
        pp = _hf_preprocessing(spec, src, kw, config)
    except (OSError, ValueError, RuntimeError) as e:
        raise _reraise(spec, e) from e
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise TeacherError(f"teacher {spec.name!r}: {type(model).__name__} from {src!r} has no "
                           "get_image_features/get_text_features; use loader 'custom' or 'open_clip'")
    model.to(device).eval()
    text_cfg = getattr(config, "text_config", config)
    ctx = int(spec.context_length or getattr(text_cfg, "max_position_embeddings", 0) or tokenizer.model_max_length)

    def image_fn(pixels: torch.Tensor) -> torch.Tensor:
        return _features(model.get_image_features(pixel_values=pixels))

    def text_fn(t: dict[str, torch.Tensor]) -> torch.Tensor:
        return _features(model.get_text_features(input_ids=t["input_ids"], attention_mask=t["attention_mask"]))

    revision = spec.revision
    if spec.weights_kind == "hub-id":
        revision = cache_revision(cached_file(src, "config.json", spec.revision)) or spec.revision
    scale = model.logit_scale.exp().item() if hasattr(model, "logit_scale") else 100.0
    return Teacher(spec, dim=_infer_dim(spec, image_fn, pp, device), logit_scale=scale, preprocessing=pp,
                   context_length=ctx, tokenizer_id=spec.tokenizer or src, image_fn=image_fn,
                   tokenize_fn=_hf_tokenize(tokenizer, ctx), text_fn=text_fn, device=device, revision=revision,
                   weights_file=_hf_weights_file(src) if spec.weights_kind == "dir" else None, model=model)


def _hf_weights_file(folder: str) -> str | None:
    return next((str(p) for n in ("model.safetensors", "pytorch_model.bin") if (p := Path(folder) / n).is_file()), None)


def _hf_tokenize(tokenizer: Any, ctx: int, *, pad_to_context: bool = True, clean: Any = None):
    """Tokenize to ``ctx`` tokens at most; ``clean`` is applied to each caption first.

    ``pad_to_context`` pads every caption to ``ctx``: for models that attend to padding it
    keeps each caption's features independent of its batch. Otherwise captions are padded
    to the longest in the batch (the model must mask the padding).
    """
    padding = "max_length" if pad_to_context else "longest"

    def tokenize(captions: list[str]) -> dict[str, torch.Tensor]:
        if clean is not None:
            captions = [clean(c) for c in captions]
        enc = tokenizer(captions, padding=padding, truncation=True, max_length=ctx, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return tokenize


def _load_custom(spec: TeacherSpec, device: torch.device) -> Teacher:
    from transformers import AutoTokenizer

    if spec.arch not in CUSTOM_ARCHS:
        raise TeacherError(f"teacher {spec.name!r}: unknown custom arch {spec.arch!r}; valid: {sorted(CUSTOM_ARCHS)}")
    if not spec.tokenizer:
        raise TeacherError(f"teacher {spec.name!r}: loader 'custom' needs 'tokenizer' (a hub id or a local folder)")
    _precheck(spec)
    weights = resolve_checkpoint(spec) or spec.weights
    try:
        model = build_custom_model(spec.arch, spec.model_config)
        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer, local_files_only=hub_offline())
    except (KeyError, ValueError, TypeError) as e:
        raise TeacherError(f"teacher {spec.name!r}: bad model_config for {spec.arch!r}: {e}") from e
    except OSError as e:
        raise _reraise(spec, e) from e
    load_custom_checkpoint(model, spec.arch, weights, spec.model_config, teacher=spec.name)
    model.to(device).eval()
    d = CUSTOM_DEFAULTS[spec.arch]
    vision = spec.model_config.get("vision", {})
    size = vision.get("image_size", vision.get("swin", {}).get("image_size", 224))
    pp = _preprocessing(spec, size, d["mean"], d["std"], None, d.get("resize_mode"))
    ctx = int(spec.context_length or d["context_length"])
    return Teacher(spec, dim=_infer_dim(spec, model.encode_image, pp, device), logit_scale=model.logit_scale.exp().item(),
                   preprocessing=pp, context_length=ctx, tokenizer_id=spec.tokenizer, image_fn=model.encode_image,
                   tokenize_fn=_hf_tokenize(tokenizer, ctx, pad_to_context=model.pad_to_context,
                                            clean=model.clean_text),
                   text_fn=lambda t: model.encode_text(t["input_ids"], t["attention_mask"]), device=device,
                   weights_file=weights, model=model, text_encoding=_custom_text_encoding(model, ctx))


def _custom_text_encoding(model: Any, ctx: int) -> dict[str, Any]:
    clean = getattr(model.clean_text, "__name__", None) if model.clean_text else None
    return {"max_tokens": ctx, "padding": "max_length" if model.pad_to_context else "longest",
            "attention_mask": getattr(model, "uses_attention_mask", True), "clean": clean}
