"""mmkd.eval: zero-shot, linear probe, retrieval and kNN for students and teachers, as one table.

Layout: :mod:`~mmkd.eval.metrics` (numpy metrics, bootstrap CIs), task modules
:mod:`~mmkd.eval.zeroshot`, :mod:`~mmkd.eval.linear_probe`, :mod:`~mmkd.eval.retrieval`,
:mod:`~mmkd.eval.sets` (eval-set specs), :mod:`~mmkd.eval.encoders` (student, teacher,
store), :mod:`~mmkd.eval.features` (feature cache), :mod:`~mmkd.eval.runner`
(:func:`evaluate`, the call behind ``mmkd eval``) and :mod:`~mmkd.eval.report`.
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
