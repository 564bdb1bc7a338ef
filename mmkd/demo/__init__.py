"""mmkd.demo: the whole method end to end, in miniature, on a synthetic corpus.

:mod:`~mmkd.demo.corpus` draws a seeded biomedical-like image-caption corpus (four
modalities); :mod:`~mmkd.demo.experts` trains small open_clip experts on subsets of
them; :mod:`~mmkd.demo.run` (:func:`run_demo`, behind ``mmkd demo``) extracts them
into a store, distils students and evaluates everything; :mod:`~mmkd.demo.report`
writes the summary. Heavy modules import lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

# both pull torch (experts, students): on first use
_LAZY = {"DemoConfig": "mmkd.demo.config", "run_demo": "mmkd.demo.run"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
