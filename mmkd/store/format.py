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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

FORMAT_NAME = "mmkd-feature-store"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

MANIFEST = "store.json"
INDEX = "index.parquet"
FEATURES = "features.zarr"
PROGRESS = "_progress"
FAILURES = "_failures"
LOCK = ".lock"

FEATURE_DTYPE = "float16"
KINDS = ("image", "text")
DEFAULT_BLOCK_SIZE = 2048


class StoreError(RuntimeError):
    """A store is missing, malformed, or asked to do something unsound."""


@dataclass
class Sample:
    """One image-caption pair as the store's index records it.

    Attributes:
        sample_id: unique, stable id of the sample in its dataset.
        caption: the caption text.
        image: a reference the dataset's reader can resolve again: a path relative
            to the dataset root, ``<shard.tar>::<member>`` or ``<file.parquet>::<row>``.
        image_sha256: sha256 of the image bytes, when known.
        source: dataset name or format the sample came from.
        labels: optional labels (JSON-serialisable mapping).
    """

    sample_id: str
    caption: str
    image: str
    image_sha256: str | None = None
    source: str = ""
    labels: dict[str, Any] | None = field(default=None)

    def to_row(self) -> dict[str, Any]:
        # (dataclasses.asdict deep-copies: 50x slower on millions of samples)
        return {"sample_id": self.sample_id, "caption": self.caption, "image": self.image,
                "image_sha256": self.image_sha256, "source": self.source,
                "labels": None if self.labels is None else json.dumps(self.labels, sort_keys=True)}


def block_name(block: int) -> str:
    return f"block-{block:06d}"


def index_fingerprint(rows: Iterable[tuple[str, str, str, str | None]]) -> str:
    """sha256 over (sample_id, caption, image, image_sha256) of every row, in row order."""
    h = hashlib.sha256()
    for sid, cap, img, sha in rows:
        for part in (sid, cap, img, sha or ""):
            b = part.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
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


def atomic_write_json(path: Path, obj: Any) -> None:
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
