"""Which teachers share a worker (a GPU) in one extract pass, decided before anything starts.

Every teacher of a pass runs on the same decoded batch inside one worker, so the
worker's device must hold all of them. Each teacher's need is its declared
``memory`` (GiB, in the teacher spec) or an estimate: its weights' bytes (the
parameter count, read from the checkpoint's size on disk) plus the activations of
one batch at its input size. Teachers are packed first-fit, largest first, into as
few passes as the device holds; a teacher larger than the device is refused with
an error before any worker starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmkd.extract.runners.job import ExtractError
from mmkd.teachers.weights import repo_cache_path, resolve_checkpoint

if TYPE_CHECKING:
    from mmkd.teachers import TeacherSpec

log = logging.getLogger(__name__)

GIB = 1 << 30
DEFAULT_WEIGHTS_BYTES = 600 * (1 << 20)  # a CLIP ViT-B/16 in fp32 (~150M parameters), when no file says otherwise
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# activations kept alive during one ViT forward, per image token: width 768 x ~8 live tensors x 4 bytes
_BYTES_PER_TOKEN = 768 * 8 * 4


@dataclass
class Pass:
    """Teachers that share each worker, with their estimated memory."""

    teachers: list[Any]
    need: dict[str, int] = field(default_factory=dict)

    @property
    def estimated_bytes(self) -> int:
        return sum(self.need.values())


def weights_bytes(spec: TeacherSpec) -> int:
    """Bytes of the teacher's weights on disk (about 4 per parameter), or the ViT-B/16 default when unknown."""

    try:
        if spec.weights_kind == "file":
            path = resolve_checkpoint(spec)
            return Path(path).stat().st_size if path else DEFAULT_WEIGHTS_BYTES
        if spec.weights_kind in ("local-dir", "dir"):
            folder = Path(spec.weights.removeprefix("local-dir:"))
        else:
            repo = spec.weights.removeprefix("hf-hub:")
            folder = Path(repo_cache_path(repo))
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
        return size or DEFAULT_WEIGHTS_BYTES
    except OSError:
        return DEFAULT_WEIGHTS_BYTES


def teacher_memory(spec: TeacherSpec, batch_size: int) -> int:
    """Device bytes the teacher needs: its declared ``memory``, else weights + one batch of activations."""
    if spec.memory is not None:
        return int(spec.memory * GIB)
    side = spec.image_size or 224
    tokens = (side // 16) ** 2 + 1
    return weights_bytes(spec) + batch_size * tokens * _BYTES_PER_TOKEN


def device_capacity(gpu_memory: float | None, device: str) -> int | None:
    """Bytes one worker's device holds: ``gpu_memory`` GiB when given, else this machine's first GPU
    when the pass runs on CUDA here, else ``None`` (no limit: CPU memory, or a cluster's GPUs unknown here)."""
    if gpu_memory is not None:
        return int(gpu_memory * GIB)
    if device == "cpu":
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory * 0.9)  # the rest: CUDA context, fragments
    except (ImportError, RuntimeError):
        pass
    return None


def plan_passes(specs: list[TeacherSpec], batch_size: int, capacity: int | None) -> list[Pass]:
    """Pack teachers into passes whose teachers fit one worker's device together.

    Raises:
        ExtractError: a teacher needs more than ``capacity`` on its own (names it, its need and the capacity).
    """
    need = {s.name: teacher_memory(s, batch_size) for s in specs}
    if capacity is None:
        return [Pass(list(specs), need)]
    too_big = [s for s in specs if need[s.name] > capacity]
    if too_big:
        what = ", ".join(f"{s.name} needs {need[s.name] / GIB:.2f} GiB "
                         f"({'declared memory' if s.memory is not None else 'estimated'})" for s in too_big)
        raise ExtractError(f"cannot place every teacher: {what}, more than the {capacity / GIB:.2f} GiB of one GPU; "
                           "nothing was started. Use a smaller --batch-size, a GPU with more memory (--gpu-memory "
                           "GIB states it), or drop the teacher from this run")
    passes: list[Pass] = []
    for spec in sorted(specs, key=lambda s: -need[s.name]):
        target = next((p for p in passes if p.estimated_bytes + need[spec.name] <= capacity), None)
        if target is None:
            target = Pass([])
            passes.append(target)
        target.teachers.append(spec)
        target.need[spec.name] = need[spec.name]
    order = {s.name: i for i, s in enumerate(specs)}
    for p in passes:  # the job's teacher order inside a pass
        p.teachers.sort(key=lambda s: order[s.name])
    return passes
