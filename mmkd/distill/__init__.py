"""mmkd.distill: train a student from the feature store (stage 1 CLIP, stage 2 KD).

The distiller reads images and captions from the dataset the store was built
from and teacher features from the store; it never imports or builds a teacher
(`tests/test_layers.py` states it: no module of mmkd.distill imports mmkd.teachers). The recipe (torch) loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmkd.distill.config import DistillConfig, load_distill_config

# the recipe pulls torch and open_clip: on first use (parsing a config imports neither)
_LAZY = {"DistillRecipe": "mmkd.distill.recipe", "distill": "mmkd.distill.recipe"}

__all__ = ["DistillConfig", "load_distill_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
