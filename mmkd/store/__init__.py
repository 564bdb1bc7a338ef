"""The mmkd feature store: Zarr v3 feature arrays + a Parquet index (docs/store-format.md).

This package never imports ``mmkd.extract`` or ``mmkd.distill``: the store outlives
any one extractor or student, and other projects read it with plain zarr/pyarrow.
"""

import importlib
from typing import Any

from mmkd.store.format import FORMAT_VERSION, StoreError
from mmkd.store.sampler import chunk_shuffled_batches, num_batches
from mmkd.store.reports import store_info
from mmkd.store.store import FeatureStore
from mmkd.store.validate import ValidationReport, validate_store

# the official MMKD-CLIP importer needs torch: on first use
_LAZY = {"import_mmkd": "mmkd.store.importer"}

__all__ = ["FORMAT_VERSION", "FeatureStore", "StoreError", "ValidationReport", "chunk_shuffled_batches",
           "num_batches", "store_info", "validate_store", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
