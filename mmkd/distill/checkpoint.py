"""Run checkpoints: written atomically (tmp then rename), restored exactly on resume.

A checkpoint holds the student and the KD adaptors, optimizer, scheduler, the
position in the data (epoch, batch within the epoch), the step, and every RNG
state, so a resumed run continues as if it had never stopped.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch

from mmkd.distill.rundir import RunDir
from mmkd.errors import DistillError

# what a checkpoint holds: tensors, optimizer and RNG states, counters, the run's settings
State: TypeAlias = "dict[str, object]"

logger = logging.getLogger(__name__)


class NoCheckpointError(DistillError, FileNotFoundError):
    """``--resume`` found no checkpoint in the run folder."""


def rng_state() -> State:
    """The Python, NumPy, torch (and CUDA, when present) RNG states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # plain types and tensors only, so checkpoints load with torch.load(weights_only=True)
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: State) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: State, path: str | Path) -> Path:
    """``torch.save`` to ``<path>.tmp``, fsync, then rename over ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    return p


def save_checkpoint(out: str | Path, state: dict[str, Any], keep_step_copy: bool = False) -> Path:
    """Write ``<out>/checkpoints/last.pt`` (and ``step-XXXXXXXX.pt`` when ``keep_step_copy``)."""
    run = RunDir(out)
    path = save_atomic(state, run.last_checkpoint)
    if keep_step_copy:
        save_atomic(state, run.step_checkpoint(state["step"]))
    logger.info("checkpoint at step %d -> %s", state["step"], path)
    return path


def load_checkpoint(path: str | Path) -> State:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain types only).

    Raises:
        NoCheckpointError: (a FileNotFoundError) no checkpoint at ``path``; start without ``--resume``.
    """
    p = Path(path)
    if p.is_dir():
        p = RunDir(p).last_checkpoint
    if not p.is_file():
        raise NoCheckpointError(f"no checkpoint at {str(p)!r}; run without --resume to start fresh")
    return torch.load(p, map_location="cpu", weights_only=True)
