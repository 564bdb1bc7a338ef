"""mmkd.demo: the whole method end to end, in miniature, on a synthetic corpus.

:mod:`~mmkd.demo.corpus` draws a seeded biomedical-like image-caption corpus (four
modalities); :mod:`~mmkd.demo.experts` trains small open_clip experts on subsets of
them; :mod:`~mmkd.demo.run` (:func:`run_demo`, behind ``mmkd demo``) extracts them
into a store, distils students and evaluates everything; :mod:`~mmkd.demo.report`
writes the summary. Heavy modules import lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DemoConfig", "run_demo"]


def __getattr__(name: str) -> Any:
    if name == "run_demo":
        from mmkd.demo.run import run_demo

        return run_demo
    if name == "DemoConfig":
        from mmkd.demo.config import DemoConfig

        return DemoConfig
    raise AttributeError(f"module 'mmkd.demo' has no attribute {name!r}")
