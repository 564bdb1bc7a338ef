"""The demo's distill runs, each in a process of its own.

This module imports :mod:`mmkd.distill` and nothing that reaches a teacher, so the
process a student trains in never imports ``mmkd.teachers``, as on a real
distillation machine; :func:`student_job` reports whether it did, and
:func:`mmkd.demo.run.train_students` refuses a run that did.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from mmkd.distill.config import load_distill_config
from mmkd.distill.recipe import distill
from mmkd.distill.rundir import RunDir


def distill_run(store: str, out: Path, student: str, stage: int, steps: int, base: dict[str, Any],
                kd: str | None = None, init: str | None = None, **extra: Any) -> str:
    """One ``mmkd distill`` run on CPU; ``base`` holds the demo's shared settings (lr, batch size...).

    Returns:
        The run's export folder.

    Raises:
        RuntimeError: the run stopped before its last step.
    """
    overrides = {"store": store, "stage": stage, "student": student, "out": str(out), "steps": steps, **base,
                 "checkpoint_every": 10 ** 9, "log_every": 10, "progress": False, "device": "cpu", "init": init,
                 "kd": kd}
    if kd == "multi":
        overrides["standardize"] = False
    overrides.update(extra)
    summary = distill(load_distill_config(None, None, overrides))
    if not summary.finished:
        raise RuntimeError(f"distill run {out} stopped at step {summary.step} of {summary.total_steps}")
    return str(RunDir(out).export)


def student_job(store: str, out: str, student: str, base: dict[str, Any], stage: int, steps: int, batch_size: int,
                threads: int, settings: dict[str, Any]) -> tuple[str, bool]:
    """One distill run in a pool process; returns its export and whether the process imported a teacher."""
    torch.set_num_threads(threads)
    export = distill_run(store, Path(out), student, stage, steps, base, batch_size=batch_size, **settings)
    return export, "mmkd.teachers" in sys.modules


def warm_job() -> bool:
    """Import what a distill run imports (the recipe, open_clip, matplotlib for the loss curve) in a pool process
    before its first run; returns whether the process imported a teacher (it must not)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import open_clip  # noqa: F401

    return "mmkd.teachers" in sys.modules

