"""The mmkd feature store: Zarr v3 feature arrays + a Parquet index (docs/store-format.md).

This package never imports ``mmkd.extract`` or ``mmkd.distill``: the store outlives
any one extractor or student, and other projects read it with plain zarr/pyarrow.
"""

import importlib
from typing import Any

from mmkd.store.format import FORMAT_VERSION, Sample, StoreError
from mmkd.store.sampler import chunk_shuffled_batches, num_batches
from mmkd.store.store import FeatureStore

# the official MMKD-CLIP importer needs torch: on first use
_LAZY = {"import_mmkd": "mmkd.store.importer"}

__all__ = ["FORMAT_VERSION", "FeatureStore", "Sample", "StoreError", "chunk_shuffled_batches", "num_batches",
           *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
