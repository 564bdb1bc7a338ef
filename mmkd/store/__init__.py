"""The mmkd feature store: Zarr v3 feature arrays + a Parquet index (docs/store-format.md).

This package never imports ``mmkd.extract`` or ``mmkd.distill``: the store outlives
any one extractor or student, and other projects read it with plain zarr/pyarrow.
"""

from mmkd.store.format import FORMAT_VERSION, StoreError
from mmkd.store.sampler import chunk_shuffled_batches, num_batches
from mmkd.store.store import FeatureStore

__all__ = ["FORMAT_VERSION", "FeatureStore", "StoreError", "chunk_shuffled_batches", "num_batches",
           "import_mmkd"]


def import_mmkd(*args, **kwargs):
    """See :func:`mmkd.store.importer.import_mmkd` (imported lazily: it needs torch)."""
    from mmkd.store.importer import import_mmkd as _impl

    return _impl(*args, **kwargs)
