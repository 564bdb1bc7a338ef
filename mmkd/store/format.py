"""Constants and small helpers that define the on-disk store format (docs/store-format.md).

Kept free of zarr/torch imports so that anything (including readers in other
projects) can import the names cheaply.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from mmkd.errors import MMKDError
from mmkd.jsontypes import JSON

FORMAT_NAME = "mmkd-feature-store"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

MANIFEST = "store.json"
INDEX = "index.parquet"
FEATURES = "features.zarr"
PROGRESS = "_progress"
FAILURES = "_failures"
DATASET_FAILURES = "dataset.parquet"  # under FAILURES: table rows that never became samples (bad_row)
LOCK = ".lock"

FEATURE_DTYPE = "float16"
KINDS = ("image", "text")
DEFAULT_BLOCK_SIZE = 2048


class StoreError(MMKDError, RuntimeError):
    """A store is missing, malformed, or asked to do something unsound."""


def block_name(block: int) -> str:
    return f"block-{block:06d}"


def index_fingerprint(rows: Iterable[tuple[str, str, str, str | None]]) -> str:
    """sha256 over (sample_id, caption, image, image_sha256) of every row, in row order.

    Each field is hashed as its UTF-8 length (8 bytes, little-endian) then its bytes;
    ``None`` hashes as ``""``. Fed to sha256 in large pieces: one update per field
    costs more than the hash itself on millions of rows.
    """
    h = hashlib.sha256()
    buf: list[bytes] = []
    for row in rows:
        for part in row:
            b = (part or "").encode("utf-8")  # a null field (a damaged index) hashes as ""
            buf.append(len(b).to_bytes(8, "little"))
            buf.append(b)
        if len(buf) >= 1 << 16:
            h.update(b"".join(buf))
            buf.clear()
    h.update(b"".join(buf))
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: tmp file, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: JSON) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` (used on a block's chunk files before its marker)."""
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    if not path.exists():
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) across processes on one machine or NFSv4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
