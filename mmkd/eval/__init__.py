"""mmkd.eval: zero-shot, linear probe, retrieval, kNN, slide-level diagnosis and survival, and VQA, as one table.

Layout: :mod:`~mmkd.eval.metrics` (numpy metrics, bootstrap CIs), task modules
:mod:`~mmkd.eval.zeroshot`, :mod:`~mmkd.eval.linear_probe`, :mod:`~mmkd.eval.retrieval`,
:mod:`~mmkd.eval.sets` (eval-set specs), :mod:`~mmkd.eval.encoders` (student, teacher,
store), :mod:`~mmkd.eval.features` (feature cache), :mod:`~mmkd.eval.runner`
(:func:`evaluate`, the call behind ``mmkd eval``) and :mod:`~mmkd.eval.report`. Task sets:
:mod:`~mmkd.eval.slides` / :mod:`~mmkd.eval.slide_tasks` (MIL over :mod:`~mmkd.eval.bags`,
:mod:`~mmkd.eval.mil`, :mod:`~mmkd.eval.survival`, folds in :mod:`~mmkd.eval.cv`),
:mod:`~mmkd.eval.vqa`, :mod:`~mmkd.eval.clip_benchmark`, dispatched by :mod:`~mmkd.eval.tasksets`.
"""

import importlib
from typing import Any

# torch loads with the task modules (MIL heads, linear probes), faiss with retrieval: on first use.
_LAZY = {"EvalConfig": "mmkd.eval.runner", "evaluate": "mmkd.eval.runner", "load_eval_set": "mmkd.eval.sets"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
