"""Eval sets beyond labelled / captioned images: slide sets (diagnosis, survival), VQA sets, clip_benchmark folders.

:mod:`mmkd.eval.sets` hands a spec with ``task:`` or ``clip_benchmark:`` to
:func:`build_task_set`; :mod:`mmkd.eval.runner` hands a set with a ``task``
attribute to :func:`run_task_set`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mmkd.config import ConfigError
from mmkd.eval.rows import Metrics
from mmkd.jsontypes import JSONDict

log = logging.getLogger(__name__)

SET_TASKS = ("diagnosis", "survival", "vqa")


def build_task_set(name: str, spec: JSONDict, base: Path, *, source: str = "") -> Any:
    """A slide set, VQA set or clip_benchmark set from a spec mapping.

    Raises:
        ConfigError: an unknown ``task`` (lists the valid ones) or a malformed spec.
    """
    if "clip_benchmark" in spec:
        from mmkd.eval.clip_benchmark import build_clip_benchmark_set

        return build_clip_benchmark_set(name, spec, base)
    task = spec.get("task")
    if task in ("diagnosis", "survival"):
        from mmkd.eval.slides import build_slide_set

        return build_slide_set(name, spec, base)
    if task == "vqa":
        from mmkd.eval.vqa import build_vqa_set

        return build_vqa_set(name, spec, base)
    raise ConfigError(f"eval set {name!r}: unknown task {task!r}; a task set has `task:` one of {list(SET_TASKS)} "
                      "(labelled / captioned image sets have no `task:`)")


def check_task_sets(sets: list[Any], models: list[str]) -> None:
    """Refuse contradictory requests before any model loads (see :func:`mmkd.eval.slides.check_models`)."""
    from mmkd.eval.slides import SlideSet, check_models

    for s in sets:
        if isinstance(s, SlideSet):
            check_models(s, models)


def run_task_set(encoder: Any, tset: Any, ecfg: Any, cache: Any) -> dict[str, Metrics]:
    """Run ``tset``'s task on ``encoder`` when ``ecfg.tasks`` asks for it (else ``{}``)."""
    if tset.task not in ecfg.tasks:
        log.warning("eval set %s is a %s set; skipped (tasks asked: %s)", tset.name, tset.task, list(ecfg.tasks))
        return {}
    boot = {"seed": ecfg.seed, "resamples": ecfg.resamples}
    if tset.task == "vqa":
        from mmkd.eval.vqa import run_vqa

        return run_vqa(encoder, tset, cache=cache, device=ecfg.device, batch_size=ecfg.batch_size, **boot)
    from mmkd.eval.slide_tasks import run_slide_set

    return run_slide_set(encoder, tset, cache=cache, device=ecfg.device, batch_size=ecfg.batch_size, **boot)
