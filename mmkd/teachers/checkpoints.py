"""Reading a teacher checkpoint safely and matching it to the architecture it is loaded into.

Three things happen between the file and ``load_state_dict``:

1. :func:`read_state_dict` reads tensors only (``torch.load(weights_only=True)`` or
   safetensors), unwraps the training containers upstream code saves
   (``{"state_dict": {"module.*": ...}, "optimizer": ...}``) and refuses pickled objects.
2. :func:`convert_hf_keys` renames the keys of every Hugging Face sub-model with
   transformers' **own** checkpoint conversion table (the one ``from_pretrained`` applies:
   ``transformers.conversion_mapping.get_model_conversion_mapping``), so a checkpoint saved
   under transformers 4.x loads under 5.x (Swin's ``attention.self.query`` ->
   ``attention.q_proj`` ...), and drops the keys that sub-model declares as ignorable
   (``_keys_to_ignore_on_load_unexpected``: buffers that are no longer persistent).
3. :func:`match_state_dict` compares names and shapes and raises one
   :class:`CheckpointError` naming the teacher, the file and the first mismatching key.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmkd.teachers.spec import TeacherError

log = logging.getLogger(__name__)

_WRAPPERS = ("state_dict", "model", "model_state_dict")


class CheckpointError(TeacherError, RuntimeError):
    """A checkpoint cannot be read, or does not match the architecture it is loaded into."""


def _who(teacher: str | None) -> str:
    return f"teacher {teacher!r}: " if teacher else ""


def read_state_dict(path: str | Path, teacher: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (``.safetensors`` or a ``torch.save`` file), loaded tensors-only.

    A ``state_dict`` / ``model`` / ``model_state_dict`` wrapper is unwrapped and a leading
    ``module.`` (DDP) stripped; non-tensor entries (epoch, optimizer...) are dropped.

    Args:
        path: the checkpoint file.
        teacher: teacher name, for error messages.

    Raises:
        CheckpointError: the file is truncated or corrupt, holds pickled Python objects
            (refused: only tensors are loaded), or holds no state dict.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{_who(teacher)}checkpoint {str(path)!r} holds pickled Python objects, which mmkd refuses to load "
            f"(torch.load(weights_only=True): {str(e).splitlines()[0][:300]}). To fix: re-save only the tensors, "
            "e.g. torch.save({'state_dict': model.state_dict()}, path), from a trusted environment.") from e
    except Exception as e:  # truncated zip, bad header, unreadable file: torch/safetensors raise various types
        raise CheckpointError(
            f"{_who(teacher)}checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {str(e)[:300]}); "
            f"it is probably truncated or corrupt ({path.stat().st_size if path.exists() else 0} bytes). "
            "To fix: download it again and compare its sha256 with the release.") from e
    for wrapper in _WRAPPERS:
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{_who(teacher)}checkpoint {str(path)!r} holds {type(sd).__name__} without tensors, "
                              "not a state dict; point the teacher's weights at the model checkpoint")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _hf_submodels(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost transformers ``PreTrainedModel`` sub-modules of ``model``, with their prefixes."""
    from transformers import PreTrainedModel

    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, PreTrainedModel) and not any(name.startswith(p + ".") or p == "" for p, _ in found):
            found.append((name, module))
    return found


def convert_hf_keys(model: nn.Module, sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename checkpoint keys of ``model``'s Hugging Face sub-models the way ``from_pretrained`` would.

    Uses transformers' conversion table for each sub-model (``get_model_conversion_mapping``
    and ``rename_source_key`` from transformers 5), and drops keys matching the sub-model's
    ``_keys_to_ignore_on_load_unexpected``. Under transformers 4.x (no table) keys pass unchanged.

    Args:
        model: the module the checkpoint is loaded into.
        sd: the checkpoint's tensors, keyed as in ``model.state_dict()`` before conversion.

    Returns:
        The converted state dict, and the keys dropped as ignorable.

    Raises:
        CheckpointError: a key would need a tensor-level conversion (fusing, splitting),
            which only ``from_pretrained`` performs.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key
    except ImportError:  # transformers 4.x: its own key names are the checkpoint's
        return sd, []
    out, dropped = dict(sd), []
    for prefix, sub in _hf_submodels(model):
        lead = prefix + "." if prefix else ""
        transforms = get_model_conversion_mapping(sub)
        renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        ignore = [re.compile(p) for p in (getattr(sub, "_keys_to_ignore_on_load_unexpected", None) or ())]
        for key in [k for k in out if k.startswith(lead)]:
            rel = key[len(lead):]
            if any(p.search(rel) for p in ignore):
                dropped.append(key)
                del out[key]
                continue
            new, converter = rename_source_key(rel, renamings, converters)
            if converter is not None:
                raise CheckpointError(f"checkpoint key {key!r} needs transformers' tensor conversion "
                                      f"{converter!r}; load this model with from_pretrained instead")
            if new != rel:
                out[lead + new] = out.pop(key)
    renamed = sum(1 for k in out if k not in sd)
    if renamed or dropped:
        log.info("converted %d checkpoint keys to this transformers version's names; dropped %d ignorable keys",
                 renamed, len(dropped))
    return out, dropped


def match_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], *, path: str | Path, arch: str,
                     teacher: str | None = None, skip_suffixes: tuple[str, ...] = ("position_ids",)) -> None:
    """Load ``sd`` into ``model`` after checking every name and shape.

    Args:
        model: the freshly built architecture.
        sd: checkpoint tensors (already unwrapped, converted and filtered).
        path: the checkpoint file, for the message.
        arch: architecture name, for the message.
        teacher: teacher name, for the message.
        skip_suffixes: keys ending with these are neither required nor loaded (buffers
            that transformers recomputes).

    Raises:
        CheckpointError: names the teacher, the file and the first mismatching key, then
            counts and lists the rest.
    """
    sd = {k: v for k, v in sd.items() if not k.endswith(skip_suffixes)}
    own = {k: v for k, v in model.state_dict().items() if not k.endswith(skip_suffixes)}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(k for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    if not (missing or unexpected or shapes):
        model.load_state_dict(sd, strict=False)  # strictness checked above (skipped buffers excepted)
        return
    if shapes:
        k = shapes[0]
        first = f"{k!r}: checkpoint shape {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
    elif missing:
        first = f"{missing[0]!r}: the model has it, the checkpoint does not"
    else:
        first = f"{unexpected[0]!r}: in the checkpoint, not in the model"
    raise CheckpointError(
        f"{_who(teacher)}checkpoint {str(path)!r} does not match architecture {arch!r} with this model_config. "
        f"First mismatching key {first}. In all: {len(missing)} missing keys {missing[:8]}, {len(unexpected)} "
        f"unexpected keys {unexpected[:8]}, {len(shapes)} shape mismatches {shapes[:4]}. To fix: check that the "
        "file is this teacher's checkpoint and that model_config (dims, layers, vocab) matches it; list "
        "training-only prefixes under model_config.ignore_keys.")
