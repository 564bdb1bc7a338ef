"""mmkd.distill: train a student from the feature store (stage 1 CLIP, stage 2 KD).

The distiller reads images and captions from the dataset the store was built
from and teacher features from the store; it never imports or builds a teacher
(`tests/test_layers.py` states it: no module of mmkd.distill imports mmkd.teachers). Heavy modules are imported lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DistillConfig", "DistillRecipe", "distill", "load_distill_config"]


def __getattr__(name: str) -> Any:
    if name in ("DistillConfig", "load_distill_config"):
        from mmkd.distill import config

        return getattr(config, name)
    if name in ("DistillRecipe", "distill"):
        from mmkd.distill import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'mmkd.distill' has no attribute {name!r}")
