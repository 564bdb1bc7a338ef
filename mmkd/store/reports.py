"""What a store holds: :func:`store_info`, a plain function over a :class:`~mmkd.store.FeatureStore` (``mmkd store info``).

Whether it is sound is :func:`mmkd.store.validate.validate_store`.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmkd.config import is_remote
from mmkd.jsontypes import JSONDict
from mmkd.store import format as fmt
from mmkd.store.store import FeatureStore


def disk_usage(path: Path) -> int:
    """Bytes used by all files (or objects) under ``path``."""
    if is_remote(path):
        return int(path.fs.du(path.path, total=True))
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def store_info(store: FeatureStore) -> JSONDict:
    """A summary: samples, blocks, dataset bad rows, and per teacher its dim, progress, valid rows, failures."""
    teachers = {}
    for t in store.teachers:
        done = store.done_blocks(t)
        teachers[t] = {
            "dim": store.dim(t),
            "dtype": fmt.FEATURE_DTYPE,
            "blocks_done": len(done),
            "blocks_total": store.num_blocks,
            "valid_rows": int(store.valid(t).sum()),
            "failures": store.failures(t).num_rows,
            "complete": len(done) == store.num_blocks,
        }
    bad = store.dataset_failures()
    return {
        "path": str(store.path),
        "format_version": store.manifest.format_version,
        "created_at": store.manifest.created_at,
        "num_samples": store.n,
        "block_size": store.block_size,
        "num_blocks": store.num_blocks,
        "dataset": store.manifest.dataset.to_dict(),
        "dataset_bad_rows": bad.num_rows,
        "dataset_bad_rows_sample": bad.slice(0, 5).to_pylist(),
        "teachers": teachers,
        "size_bytes": disk_usage(store.path),
    }
