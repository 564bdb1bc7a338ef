"""Eval sets beyond labelled / captioned images: slide sets (diagnosis, survival), VQA sets, clip_benchmark folders.

:mod:`mmkd.eval.sets` hands a spec with ``task:`` or ``clip_benchmark:`` to
:func:`build_task_set`; :mod:`mmkd.eval.runner` hands a set with a ``task``
attribute to :func:`run_task_set`. :data:`SET_KINDS` is the registry: one
:class:`~mmkd.eval.types.SetKind` per ``task:`` value, naming how its spec is built
and how its task runs; a new kind of task set is one entry here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mmkd.config import ConfigError
from mmkd.eval.clip_benchmark import build_clip_benchmark_set
from mmkd.eval.encoders import Encoder
from mmkd.eval.features import FeatureCache
from mmkd.eval.rows import Metrics
from mmkd.eval.slide_tasks import run_slide_set
from mmkd.eval.slides import SlideSet, build_slide_set, check_models
from mmkd.eval.types import EvalSet, RunOptions, SetKind, TaskSet
from mmkd.eval.vqa import build_vqa_set, run_vqa
from mmkd.jsontypes import JSONDict

if TYPE_CHECKING:
    from mmkd.eval.runner import EvalConfig

log = logging.getLogger(__name__)

_SLIDES = SetKind(tasks=("diagnosis", "survival"), build=build_slide_set, run=run_slide_set)
_VQA = SetKind(tasks=("vqa",), build=build_vqa_set, run=run_vqa)
SET_KINDS: dict[str, SetKind] = {task: kind for kind in (_SLIDES, _VQA) for task in kind.tasks}
SET_TASKS = tuple(SET_KINDS)


def build_task_set(name: str, spec: JSONDict, base: Path, *, source: str = "") -> TaskSet | EvalSet:
    """A slide set, VQA set or clip_benchmark set from a spec mapping.

    Raises:
        ConfigError: an unknown ``task`` (lists the valid ones) or a malformed spec.
    """
    if "clip_benchmark" in spec:
        return build_clip_benchmark_set(name, spec, base)
    task = spec.get("task")
    if task in SET_KINDS:
        return SET_KINDS[task].build(name, spec, base)
    raise ConfigError(f"eval set {name!r}: unknown task {task!r}; a task set has `task:` one of {list(SET_TASKS)} "
                      "(labelled / captioned image sets have no `task:`)")


def check_task_sets(sets: Sequence[TaskSet | EvalSet], models: list[str]) -> None:
    """Refuse contradictory requests before any model loads (see :func:`mmkd.eval.slides.check_models`)."""
    for s in sets:
        if isinstance(s, SlideSet):
            check_models(s, models)


def run_task_set(encoder: Encoder, tset: TaskSet, ecfg: EvalConfig,
                 cache: FeatureCache | None) -> dict[str, Metrics]:
    """Run ``tset``'s task on ``encoder`` when ``ecfg.tasks`` asks for it (else ``{}``)."""
    if tset.task not in ecfg.tasks:
        log.warning("eval set %s is a %s set; skipped (tasks asked: %s)", tset.name, tset.task, list(ecfg.tasks))
        return {}
    opts = RunOptions(cache=cache, device=ecfg.device, batch_size=ecfg.batch_size, seed=ecfg.seed,
                      resamples=ecfg.resamples)
    return SET_KINDS[tset.task].run(encoder, tset, opts)
