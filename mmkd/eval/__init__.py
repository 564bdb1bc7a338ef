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

__all__ = ["EvalConfig", "evaluate", "load_eval_set"]


def __getattr__(name: str):
    # Keep `import mmkd.eval` light: torch / faiss load with the modules that need them.
    if name in ("EvalConfig", "evaluate"):
        from mmkd.eval import runner

        return getattr(runner, name)
    if name == "load_eval_set":
        from mmkd.eval.sets import load_eval_set

        return load_eval_set
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
