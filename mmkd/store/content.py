"""What each image's bytes were when it was extracted: a sha256 per row.

The index's ``image_sha256`` column holds it when the dataset shipped one (or was
hashed when the store was made). Otherwise extract records it: the first teacher to
finish a block writes ``_content/block-XXXXXX.parquet`` (``row``, ``image_sha256``;
null where the image could not be read); a later teacher compares what it read
with it. distill and eval hash each image they read (the bytes are in memory) and
refuse one whose hash differs, naming the row, the sample id and both hashes.

Why sha256: DataCompDR and other datasets ship it per sample, so a recorded hash
can be checked against theirs, and ``hashlib`` computes it at ~1-2 GB/s per core
(SHA-NI), outside the GIL, far below the cost of decoding the image (bench/README.md,
"content hashes").

Stores made before this have neither: they still open, with a one-line note that
their images are not verified.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmkd.config import as_path, is_remote
from mmkd.store import format as fmt

if TYPE_CHECKING:
    from mmkd.store.store import FeatureStore

CONTENT = "_content"


def sha256_of(data: bytes) -> str:
    """Hex sha256 of an image's bytes."""
    return hashlib.sha256(data).hexdigest()


def block_hashes_path(store_path: str | Path, block: int) -> Path:
    """``<store>/_content/block-XXXXXX.parquet``."""
    return as_path(store_path) / CONTENT / f"{fmt.block_name(block)}.parquet"


def record_block_hashes(store: FeatureStore, block: int, hashes: Sequence[str | None]) -> list[tuple[int, str, str]]:
    """Record the hashes of ``block``'s images read now, or compare them with those already recorded.

    Args:
        store: the store (its index's ``image_sha256`` is compared too, where filled).
        block: the block.
        hashes: per row of the block, the sha256 of the bytes read (``None``: not read).

    Returns:
        ``(row, recorded, now)`` for each row whose bytes differ from the recorded ones.
    """
    import pyarrow as pa
    start, stop = store.block_range(block)
    recorded = recorded_hashes(store, np.arange(start, stop))
    if all(h is None for h in recorded):
        path = block_hashes_path(store.path, block)
        table = pa.table({"row": pa.array(np.arange(start, stop), pa.int64()),
                          "image_sha256": pa.array(list(hashes), pa.string())})
        if is_remote(path):
            fmt.write_parquet(table, path)  # one PUT: atomic
            return []
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fmt.write_parquet(table, tmp)
        fmt.fsync_tree(tmp)
        os.replace(tmp, path)  # two teachers writing the same block write the same bytes
        return []
    return [(start + i, old, new) for i, (old, new) in enumerate(zip(recorded, hashes))
            if old is not None and new is not None and old != new]


def recorded_hashes(store: FeatureStore, rows: np.ndarray) -> list[str | None]:
    """The recorded sha256 of ``rows``' images (``None`` for a row with none recorded)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    out = store.index_columns(rows, ("image_sha256",))["image_sha256"]
    blocks = {}
    for i, r in enumerate(rows.tolist()):
        if out[i] is not None:
            continue
        b = r // store.block_size
        if b not in blocks:
            path = block_hashes_path(store.path, b)
            blocks[b] = fmt.read_parquet(path).column("image_sha256").to_pylist() if path.is_file() else None
        if blocks[b] is not None:
            out[i] = blocks[b][r - b * store.block_size]
    return out


def has_hashes(store: FeatureStore) -> bool:
    """Whether the store records any image hash (a store made before they were recorded has none)."""
    folder = as_path(store.path) / CONTENT
    if folder.is_dir() and any(folder.glob("block-*.parquet")):
        return True
    return any(t.column("image_sha256").null_count < t.num_rows for t in store.iter_index(("image_sha256",)))
