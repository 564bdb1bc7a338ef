"""A student-resolution image cache beside a store, written once (``mmkd store images STORE --size S``).

Layout: ``STORE/image_cache/s<S>/`` holds one Parquet file per store block,
``block-<b:06d>.parquet``, with columns ``row`` (int64), ``id`` (the sample id), ``sha256`` (hex digest
of the source image bytes, checked against the index's ``image_sha256`` where extract recorded one), ``width``/``height`` (the source's size), and ``jpeg`` (the image with its
short side reduced to S, re-encoded as JPEG; null when the source could not be read, with the
reason in ``error``). ``cache.json`` is written last and says what the folder holds (size,
quality, rows, the store's dataset fingerprint); a folder without it is not a cache. Blocks are
written tmp-then-rename, so an interrupted write resumes where it stopped.

The originals stay the truth: distill reads a cache only when the student's transform is one it
can replay on it (:mod:`mmkd.distill.images`), the cache's short side is at least the student's
input size and the cache covers the store's rows from the same dataset; the crop box is still
drawn in the source's pixel frame (the recorded width/height), so a row gets the same crop either way.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import simplejpeg

from mmkd.config import is_remote
from mmkd.data.images import REASONS, BadSample, decode_image, decode_jpeg_scaled, jpeg_size, resize_uint8
from mmkd.store.dataset import open_store_dataset
from mmkd.store.format import StoreError
from mmkd.store.store import FeatureStore

logger = logging.getLogger(__name__)

CACHE_DIR = "image_cache"
META = "cache.json"
FORMAT = "mmkd-image-cache"
VERSION = 1
CACHE_QUALITY = 90  # JPEG quality of the cached copies (``mmkd store images --quality``'s default)
_SCHEMA = pa.schema([("row", pa.int64()), ("id", pa.string()), ("sha256", pa.string()), ("width", pa.int32()),
                     ("height", pa.int32()), ("jpeg", pa.binary()), ("error", pa.string())])


def cache_path(store_path: str | os.PathLike, size: int) -> Path:
    return Path(store_path) / CACHE_DIR / f"s{int(size)}"


def block_path(out: str | os.PathLike, block: int) -> Path:
    """The cache file of store block ``block`` in the cache folder ``out``."""
    return Path(out) / f"block-{block:06d}.parquet"


def encode_cached(data: bytes | BaseException, size: int, quality: int) -> tuple[bytes | None, int, int, str | None]:
    """(jpeg, source width, source height, error) of one source image's cache entry: decoded at the smallest
    DCT scale that keeps its short side >= ``size``, resized to short side ``size`` (never up), re-encoded.

    A JPEG libjpeg-turbo decodes to RGB is decoded at any scale M/8 (``simplejpeg``), resized by torch's uint8
    antialiased bicubic and encoded by libjpeg-turbo (4:2:0); anything else (PNG, grey or CMYK JPEGs, damaged
    files) goes through Pillow (``draft`` at 1/2, 1/4, 1/8, its bicubic resize), which also names the damage.
    """
    from PIL import Image

    try:
        if isinstance(data, BaseException):
            raise data
        fast = _jpeg_entry(data, size, quality)
        if fast is not None:
            return fast
        img = decode_image(data, reduce_to=(size, "shortest"))
        w0, h0 = Image.open(io.BytesIO(data)).size
    except BadSample as e:
        return None, 0, 0, str(e)
    w, h = img.size
    if min(w, h) > size:
        scale = size / min(w, h)
        new = (size, round(h * scale)) if w <= h else (round(w * scale), size)
        img = img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), w0, h0, None


def _jpeg_entry(data: bytes, size: int, quality: int) -> tuple[bytes, int, int, None] | None:
    """:func:`encode_cached` of a JPEG by libjpeg-turbo, or ``None`` when it is not one it decodes to RGB."""
    full = jpeg_size(data, colours=("YCbCr", "RGB"))
    if full is None:
        return None
    m = next((m for m in range(1, 8) if -(-min(full) * m // 8) >= size), 8)
    pixels = decode_jpeg_scaled(data, full, m)
    if pixels is None:  # refused by libjpeg-turbo's strict mode: Pillow decodes it or names the damage
        return None
    h, w = pixels.shape[:2]
    if min(w, h) > size:
        scale = size / min(w, h)
        new = (size, round(h * scale)) if w <= h else (round(w * scale), size)
        pixels = np.ascontiguousarray(resize_uint8(pixels, (new[1], new[0])))
    return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="RGB", colorsubsampling="420"), *full, None


def write_cache_block(out: str | os.PathLike, block: int, rows: Sequence[int], ids: Sequence[str],
                      sha: Sequence[str | None], entries: Sequence[tuple[bytes | None, int, int, str | None]]) -> int:
    """Write store block ``block``'s cache file (tmp-then-rename: never half there); returns its failed rows."""
    table = pa.table({"row": np.asarray(rows, dtype=np.int64), "id": list(ids), "sha256": list(sha),
                      "width": [e[1] for e in entries], "height": [e[2] for e in entries],
                      "jpeg": [e[0] for e in entries], "error": [e[3] for e in entries]}, schema=_SCHEMA)
    target = block_path(out, block)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="none")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return sum(e[0] is None for e in entries)


def finish_image_cache(store: FeatureStore, size: int, quality: int) -> list[int]:
    """Write ``cache.json`` (the cache is then complete) when every block's file is there.

    Returns:
        the blocks still missing (empty: complete, ``cache.json`` written).
    """
    out = cache_path(store.path, size)
    if (out / META).exists():
        return []
    missing = [b for b in range(store.num_blocks) if not block_path(out, b).exists()]
    if missing:
        return missing
    # a row failed iff its error is set (and its jpeg null): read the small column, not every cached image
    errors = [pq.read_table(block_path(out, b), columns=["error"]).column("error") for b in range(store.num_blocks)]
    failed = sum(len(e) - e.null_count for e in errors)
    meta = {"format": FORMAT, "version": VERSION, "size": int(size), "quality": int(quality), "rows": store.n,
            "block_size": store.block_size, "blocks": store.num_blocks, "failed": failed,
            "dataset_fingerprint": store.manifest.dataset.fingerprint}
    tmp = out / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / META)
    logger.info("image cache %s: %d rows, %d failed", out, store.n, failed)
    return []


def write_image_cache(store: FeatureStore, size: int, *, quality: int = 90, data: str | None = None,
                      progress: Callable[[int], None] | None = None) -> Path:
    """Write (or finish) the image cache of short side ``size`` for ``store`` (a path or FeatureStore).

    Blocks already written (by an interrupted run, or by ``mmkd extract --image-cache``) are kept.

    Args:
        size: short side of the cached images (at least the students' input size, e.g. 256 for 224 px).
        quality: JPEG quality of the re-encoded images.
        data: where the store's dataset is now, if it moved (as ``mmkd distill --data``).
        progress: called with the number of rows done after each block.

    Returns:
        The cache folder.
    """
    if isinstance(store, (str, os.PathLike)):
        store = FeatureStore.open(store)
    check_cache_size(size)
    out = cache_path(store.path, size)
    if (out / META).exists():
        logger.info("image cache %s already complete", out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    reader = open_store_dataset(store, data)
    for b in range(store.num_blocks):
        start, end = store.block_range(b)
        if not block_path(out, b).exists():
            rows = np.arange(start, end, dtype=np.int64)
            meta = store.index_columns(rows, ("sample_id", "image", "image_sha256"))
            raw = reader.read_many(list(meta["image"]), on_error="return")
            sha = [hashlib.sha256(d).hexdigest() if isinstance(d, (bytes, bytearray)) else None for d in raw]
            for r, have, want in zip(rows.tolist(), sha, meta["image_sha256"]):
                if have is not None and want and have != want:
                    raise StoreError(f"row {r} (image {meta['image'][r - start]!r}): sha256 {have[:16]} != "
                                     f"{want[:16]} recorded in store {store.path}; the dataset changed since "
                                     "extract: point --data at the original images")
            write_cache_block(out, b, rows, list(meta["sample_id"]), sha,
                              [encode_cached(d, size, quality) for d in raw])
        if progress is not None:
            progress(end)
    finish_image_cache(store, size, quality)
    return out


def check_cache_size(size: int) -> None:
    """Refuse a cache short side too small to be one (ValueError naming the value)."""
    if size < 16:
        raise ValueError(f"image cache size {size} is too small; give the short side in pixels, e.g. --size 256")


def find_image_cache(store: FeatureStore, min_size: int) -> Path | None:
    """The smallest complete cache of ``store`` with short side >= ``min_size`` from the store's own
    dataset and rows, or None (always None on object storage: the cache is written on local disk only)."""
    if is_remote(store.path):
        return None
    root = Path(store.path) / CACHE_DIR
    found = []
    fp = store.manifest.dataset.fingerprint
    for meta_path in root.glob(f"s*/{META}") if root.is_dir() else []:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            continue
        if meta.get("rows") != store.n or meta.get("block_size") != store.block_size or \
                meta.get("dataset_fingerprint", "") != fp:
            logger.warning("image cache %s does not match store %s (rows, blocks or dataset differ); not used",
                           meta_path.parent, store.path)
            continue
        if int(meta["size"]) >= min_size:
            found.append((int(meta["size"]), meta_path.parent))
    return min(found)[1] if found else None


class ImageCache:
    """Reads a cache folder row by row, one block (Parquet file) at a time through a small LRU."""

    def __init__(self, path: str | os.PathLike, blocks: int = 4):
        self.path = Path(path)
        self.meta = json.loads((self.path / META).read_text())
        self.size = int(self.meta["size"])
        self.block_size = int(self.meta["block_size"])
        self._lru: OrderedDict[int, dict[str, list]] = OrderedDict()
        self._blocks = max(1, blocks)

    def _block(self, b: int) -> dict[str, list]:
        hit = self._lru.get(b)
        if hit is None:
            t = pq.read_table(self.path / f"block-{b:06d}.parquet", columns=["jpeg", "width", "height", "error"])
            hit = {c: t.column(c).to_pylist() for c in t.column_names}
            self._lru[b] = hit
            while len(self._lru) > self._blocks:
                self._lru.popitem(last=False)
        else:
            self._lru.move_to_end(b)
        return hit

    def read(self, rows: np.ndarray) -> tuple[list[bytes | BadSample], list[tuple[int, int]]]:
        """Per row: the cached JPEG bytes (or the BadSample its source raised) and the source's (width, height)."""
        data, sizes = [], []
        for r in np.asarray(rows, dtype=np.int64).tolist():
            blk = self._block(r // self.block_size)
            k = r % self.block_size
            jpeg = blk["jpeg"][k]
            if jpeg is None:
                reason = str(blk["error"][k]).split(":")[0]
                jpeg = BadSample(reason if reason in REASONS else "corrupt", f"(image cache) {blk['error'][k]}")
            data.append(jpeg)
            sizes.append((int(blk["width"][k]), int(blk["height"][k])))
        return data, sizes
