"""Block I/O of the feature store: writing a block durably, reading blocks through an LRU.

A block is rows ``[b * block_size, ...)`` = exactly chunk ``b`` of every array of a
teacher (docs/store-format.md, rules 2-4). Writers mark a block done only after its
chunks and failures table are durable; readers treat blocks without a marker as
invalid.
"""

from __future__ import annotations

import datetime as _dt
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmkd.config import is_remote
from mmkd.jsontypes import JSONDict
from mmkd.store import format as fmt
from mmkd.store.failures import read_failures_tables, write_failures_table
from mmkd.store.format import StoreError


def block_crc32(data: np.ndarray) -> int:
    """CRC-32 of a block's values as stored (float16 features, bool valid), in row order.

    Recorded in the block's marker (``crc32``) and recomputed by ``validate --deep`` from
    the values read back, so a flipped bit in a chunk file is caught whatever the chunk
    layout; markers without it (older stores) are simply not checked.
    """
    import zlib

    return zlib.crc32(np.ascontiguousarray(data).view(np.uint8).reshape(-1))


REMOTE_READ_THREADS = 16  # reads in flight per store on object storage (each waits on a round trip, not a core)
MAX_AHEAD = 512  # block reads started ahead and not yet used; the oldest are dropped beyond it

class BlocksMixin:
    """Block reads and writes for :class:`~mmkd.store.FeatureStore`."""

    path: Path
    n: int
    block_size: int
    num_blocks: int

    def _init_blocks(self, cache_bytes: int) -> None:
        self._cache: OrderedDict[tuple[str, str, int], np.ndarray] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._arrays: dict[tuple[str, str], Any] = {}
        self._executor = None
        self._done_sets: dict[str, set[int]] = {}
        self._raw_ok: dict[tuple[str, str], bool] = {}
        self._ahead: dict[tuple[str, str, int], Any] = {}  # read-ahead: key -> Future of the block's rows

    # ------------------------------------------------------------------ writing
    def write_block(
        self,
        teacher: str,
        block: int,
        image: np.ndarray,
        text: np.ndarray,
        valid: np.ndarray,
        failures: list[JSONDict] | None = None,
        content_sha256: str | None = None,
        views: np.ndarray | None = None,
        decode: JSONDict | None = None,
    ) -> None:
        """Write one block of features; the block is marked done only once durable.

        Idempotent: rewriting a block first removes its marker, so a crash during a
        rewrite leaves it not-done rather than half old, half new. Invalid rows are
        stored as zeros.

        Args:
            teacher: a teacher added with :meth:`add_teacher`.
            block: block number; the arrays must hold exactly its rows.
            image: ``(rows, dim)`` image embeddings.
            text: ``(rows, dim)`` text embeddings.
            valid: ``(rows,)`` bools, False where the sample failed.
            failures: dicts with at least ``sample_id`` and ``reason`` (``row``
                and ``detail`` optional) for this block's bad samples.
            content_sha256: digest of the block's recorded image hashes
                (:func:`mmkd.store.content.content_digest`), kept in the marker so that
                ``validate`` can tell when ``_content/`` lost or changed them.
            views: ``(rows, K, dim)`` image embeddings of the K views of each row; required
                when the teacher has an ``image_views`` array (:meth:`ensure_views`), so a
                block is marked done only with its views.
            decode: how the block's images were decoded, when that is more than the teacher's ``decode``
                attribute says (``--decode reduced``: the inputs covered and the images per DCT scale);
                kept in the marker.
        """
        self._writable()
        start, stop = self.block_range(block)
        dim = self.dim(teacher)
        image, text, valid = self._check_block(teacher, block, image, text, valid, stop - start, dim)
        views = self._check_views(teacher, block, views, valid, stop - start, dim)
        marker = self.marker_path(teacher, block)
        if marker.exists():
            marker.unlink()
            fmt.fsync_dir(marker.parent)  # the un-marking must be durable before new data lands
        # image and text go to disk in parallel: zarr's encode + atomic file write
        # runs mostly outside the GIL, so two threads nearly double the rate.
        jobs = [self._pool().submit(self._put, teacher, kind, block, start, stop, data)
                for kind, data in (("image", image), ("text", text), ("valid", valid),
                                   *(((fmt.VIEWS, views),) if views is not None else ()))]
        for j in jobs:
            j.result()
        self._write_failures(teacher, block, failures or [])
        for key in [k for k in self._cache if k[0] == teacher and k[2] == block]:
            self._cached -= self._cache.pop(key).nbytes
        self._done_sets.pop(teacher, None)
        fmt.atomic_write_json(marker, {"block": block, "rows": [start, stop], "valid": int(valid.sum()),
                                       "failures": len(failures or []),
                                       "crc32": {"image": block_crc32(image), "text": block_crc32(text),
                                                 "valid": block_crc32(valid),
                                                 **({fmt.VIEWS: block_crc32(views)} if views is not None else {})},
                                       **({"content_sha256": content_sha256} if content_sha256 else {}),
                                       **({"decode": decode} if decode else {}),
                                       "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat()})

    def marker_path(self, teacher: str, block: int) -> Path:
        """The done marker of ``block`` of ``teacher``."""
        return self.path / fmt.PROGRESS / teacher / f"{fmt.block_name(block)}.done"

    def _put(self, teacher: str, kind: str, block: int, start: int, stop: int, data: np.ndarray) -> None:
        self._array(teacher, kind)[start:stop] = data
        fmt.fsync_tree(self.path / fmt.FEATURES / teacher / kind / "c" / str(block))

    def _pool(self):
        if self._executor is None:
            # object storage: each read is a round trip of tens of ms, so many are kept in flight
            workers = REMOTE_READ_THREADS if is_remote(self.path) else 3
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmkd-store")
        return self._executor

    def _array(self, teacher: str, kind: str):
        key = (teacher, kind)
        arr = self._arrays.get(key)
        if arr is None:
            arr = self._group(teacher)[kind]
            if kind in (*fmt.KINDS, fmt.VIEWS):
                # zarr by default compares every chunk with the fill value to skip
                # writing empty ones; for float16 that check alone costs more than
                # the write (2.6x slower overall), and empty blocks are rare.
                arr = arr.with_config({"write_empty_chunks": True})
            self._arrays[key] = arr
        return arr

    def _check_block(self, teacher, block, image, text, valid, rows, dim):
        image = np.asarray(image)
        text = np.asarray(text)
        valid = np.asarray(valid, dtype=bool).reshape(-1)
        for name, arr in (("image", image), ("text", text)):
            if arr.shape != (rows, dim):
                raise StoreError(
                    f"write_block({teacher!r}, {block}): {name} has shape {arr.shape}, expected {(rows, dim)}"
                )
        if valid.shape != (rows,):
            raise StoreError(f"write_block({teacher!r}, {block}): valid has shape {valid.shape}, expected {(rows,)}")
        if valid.all():
            return image.astype(np.float16, copy=False), text.astype(np.float16, copy=False), valid
        image = np.where(valid[:, None], image, 0).astype(np.float16)
        text = np.where(valid[:, None], text, 0).astype(np.float16)
        return image, text, valid

    def _check_views(self, teacher: str, block: int, views: np.ndarray | None, valid: np.ndarray, rows: int,
                     dim: int) -> np.ndarray | None:
        k = self.num_views(teacher)
        if k == 0:
            if views is not None:
                raise StoreError(f"write_block({teacher!r}, {block}): views given, but the teacher has no "
                                 f"{fmt.VIEWS} array in store {self.path} (create it with ensure_views)")
            return None
        if views is None:
            raise StoreError(f"write_block({teacher!r}, {block}): teacher {teacher!r} has {k} views per row in store "
                             f"{self.path}; a block is done only with its views: pass views of shape {(rows, k, dim)}")
        views = np.asarray(views)
        if views.shape != (rows, k, dim):
            raise StoreError(f"write_block({teacher!r}, {block}): views has shape {views.shape}, expected "
                             f"{(rows, k, dim)}")
        if valid.all():
            return views.astype(np.float16, copy=False)
        return np.where(valid[:, None, None], views, 0).astype(np.float16)

    def _write_failures(self, teacher: str, block: int, failures: list[JSONDict]) -> None:
        path = self.path / fmt.FAILURES / teacher / f"{fmt.block_name(block)}.parquet"
        if not failures:
            path.unlink(missing_ok=True)
            return
        write_failures_table(path, failures)

    # ------------------------------------------------------------------ progress
    def done_blocks(self, teacher: str) -> set[int]:
        d = self.path / fmt.PROGRESS / teacher
        if is_remote(d):
            # other machines write markers: list afresh, never from fsspec's listing cache
            try:
                names = [k.rsplit("/", 1)[-1] for k in d.fs.ls(d.path, detail=False, refresh=True)]
            except FileNotFoundError:
                return set()
        elif not d.is_dir():
            return set()
        else:
            names = [p.name for p in d.glob("block-*.done")]
        return {int(name[6:12]) for name in names
                if len(name) == 17 and name.startswith("block-") and name.endswith(".done") and name[6:12].isdigit()}

    def missing_blocks(self, teacher: str) -> list[int]:
        done = self.done_blocks(teacher)
        return [b for b in range(self.num_blocks) if b not in done]

    def is_complete(self, teacher: str) -> bool:
        return teacher in self.teachers and not self.missing_blocks(teacher)

    def failures(self, teacher: str):
        """All recorded bad samples of ``teacher`` as a table (sample_id, row, reason, detail)."""
        return read_failures_tables(sorted((self.path / fmt.FAILURES / teacher).glob("block-*.parquet")))

    # ------------------------------------------------------------------ reading
    def read_block(self, teacher: str, block: int, kind: str = "image") -> np.ndarray:
        """One whole block of ``kind`` (``image``, ``text`` or ``valid``), through the LRU cache.

        ``valid`` of a block without a done marker reads as all False. The done set is
        taken when first needed; reopen the store to see blocks finished since.

        Raises:
            StoreError: a chunk file is truncated or cannot be decoded (the message
                names the file and how to redo the block).
        """
        if kind not in (*fmt.KINDS, "valid", fmt.VIEWS):
            raise StoreError(f"kind must be one of {(*fmt.KINDS, 'valid', fmt.VIEWS)}, got {kind!r}")
        key = (teacher, kind, block)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        start, stop = self.block_range(block)
        pending = self._ahead.pop(key, None)
        if kind == "valid" and block not in self._done(teacher):
            arr = np.zeros(stop - start, bool)
        elif pending is not None:
            arr = pending.result()
        else:
            arr = self._read_rows(teacher, kind, block, start, stop)
        self._cache[key] = arr
        self._cached += arr.nbytes
        while self._cached > self._cache_bytes and len(self._cache) > 1:
            self._cached -= self._cache.popitem(last=False)[1].nbytes
        return arr

    def read_ahead(self, teacher: str, rows: Sequence[int] | np.ndarray, kinds: Sequence[str] = fmt.KINDS) -> int:
        """Start reading, in the background, the blocks of ``rows`` not yet cached; returns how many.

        For object storage: a reader that knows its next batch calls this before
        working on the current one, so the next :meth:`read` finds its blocks fetched
        instead of waiting on a round trip. The LRU itself is only touched by
        :meth:`read_block`, in the caller's thread.
        """
        blocks = np.unique(np.asarray(rows, dtype=np.int64) // self.block_size)
        started = 0
        for b in blocks.tolist():
            for kind in kinds:
                key = (teacher, kind, b)
                if key in self._cache or key in self._ahead or (kind == "valid" and b not in self._done(teacher)):
                    continue
                start, stop = self.block_range(b)
                self._ahead[key] = self._pool().submit(self._read_rows, teacher, kind, b, start, stop)
                started += 1
        while len(self._ahead) > MAX_AHEAD:  # never used (the reader went elsewhere): drop the oldest
            self._ahead.pop(next(iter(self._ahead)))
        return started

    def chunk_path(self, teacher: str, kind: str, block: int) -> Path:
        """The file holding chunk ``block`` of ``teacher``'s ``kind`` array."""
        arr = self._array(teacher, kind)
        key = arr.metadata.chunk_key_encoding.encode_chunk_key((block,) + (0,) * (arr.ndim - 1))
        return self.path / fmt.FEATURES / teacher / kind / key

    def raw_chunk_bytes(self, teacher: str, kind: str) -> int | None:
        """Size every chunk file of ``kind`` must have when stored raw (``None``: encoded, size unknown)."""
        arr = self._array(teacher, kind)
        if not self._is_raw(teacher, kind):
            return None
        return int(np.prod(arr.chunks)) * np.dtype(arr.dtype).itemsize

    def _is_raw(self, teacher: str, kind: str) -> bool:
        raw = self._raw_ok.get((teacher, kind))
        if raw is None:
            raw = self._raw_ok[(teacher, kind)] = _is_raw_layout(self._array(teacher, kind))
        return raw

    def _read_rows(self, teacher: str, kind: str, block: int, start: int, stop: int) -> np.ndarray:
        """Rows of one block; uncompressed little-endian chunks are read straight from their file.

        zarr-python costs ~1 ms of per-call machinery for each 2 MiB chunk (1.7 GB/s
        from page cache against 6+ GB/s for the file itself: bench/store_bench.py).
        For arrays whose only codec is little-endian ``bytes`` with the default chunk
        key encoding (what :meth:`add_teacher` creates), the chunk file *is* the C-order
        array, as the Zarr v3 spec defines it, so we read it with numpy. Any other
        encoding goes through zarr.
        """
        arr = self._array(teacher, kind)
        redo = (f"redo the block: delete {self.marker_path(teacher, block)} and rerun `mmkd extract "
                f"--teacher {teacher}` on this store (`mmkd store validate {self.path}` lists every damaged chunk)")
        if not self._is_raw(teacher, kind):
            try:
                return arr[start:stop]
            except Exception as e:  # zarr/numcodecs raise many types for a damaged chunk
                raise StoreError(f"chunk {block} of {teacher}/{kind} in store {self.path} cannot be decoded "
                                 f"({type(e).__name__}: {e}); {redo}") from e
        path = self.chunk_path(teacher, kind, block)
        rows = stop - start
        try:
            if is_remote(path):  # one GET (opening the object as a file would first ask for its size)
                data = np.frombuffer(bytearray(path.fs.cat_file(path.path)), dtype=arr.dtype)
            else:
                data = np.fromfile(path, dtype=arr.dtype)
        except FileNotFoundError:  # chunk equal to the fill value everywhere: zarr does not write it
            return np.full((rows,) + arr.shape[1:], arr.metadata.fill_value, dtype=arr.dtype)
        expected = int(np.prod(arr.chunks))
        if data.size != expected:
            raise StoreError(f"chunk file {path} holds {data.nbytes} bytes, expected "
                             f"{expected * data.itemsize}: it is truncated or damaged; {redo}")
        return data.reshape((-1,) + arr.shape[1:])[:rows]

    def _done(self, teacher: str) -> set[int]:
        if teacher not in self._done_sets:
            self._done_sets[teacher] = self.done_blocks(teacher)
        return self._done_sets[teacher]

    def read(self, teacher: str, rows: Sequence[int] | np.ndarray, kind: str = "image") -> np.ndarray:
        """``kind`` of ``rows`` (any order, repeats allowed).

        Returns:
            float16 ``(len(rows), dim)`` for ``image``/``text``; bool ``(len(rows),)`` for ``valid``;
            float16 ``(len(rows), K, dim)`` for ``image_views``.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise StoreError(f"rows out of range [0, {self.n}) in store {self.path}: min {rows.min()}, max {rows.max()}")
        if kind == "valid":
            out = np.empty(rows.size, dtype=bool)
        elif kind == fmt.VIEWS:
            out = np.empty((rows.size, self.num_views(teacher), self.dim(teacher)), dtype=np.float16)
        else:
            out = np.empty((rows.size, self.dim(teacher)), dtype=np.float16)
        blocks = rows // self.block_size
        for b in np.unique(blocks):
            sel = np.nonzero(blocks == b)[0]
            out[sel] = self.read_block(teacher, int(b), kind)[rows[sel] - b * self.block_size]
        return out

    def valid(self, teacher: str) -> np.ndarray:
        """``(N,)`` bools: rows holding real features for ``teacher`` (False for blocks not yet done)."""
        v = np.zeros(self.n, dtype=bool)
        for b in sorted(self.done_blocks(teacher)):
            if b < self.num_blocks:  # read block by block: a damaged chunk is named (StoreError), not a codec error
                s, e = self.block_range(b)
                v[s:e] = self.read_block(teacher, b, "valid")
        return v

    # ------------------------------------------------------------------ stats
    def compute_stats(self, teacher: str) -> None:
        """Store per-dimension mean/std of valid rows (``image_mean`` ... ``text_std``) in the attrs."""
        dim = self.dim(teacher)
        valid = self.valid(teacher)
        stats: dict[str, Any] = {"stats_rows": int(valid.sum())}
        for kind in fmt.KINDS:
            s = np.zeros(dim, np.float64)
            ss = np.zeros(dim, np.float64)
            for b in range(self.num_blocks):
                start, stop = self.block_range(b)
                x = self.read_block(teacher, b, kind)[valid[start:stop]].astype(np.float64)
                s += x.sum(0)
                ss += (x * x).sum(0)
            cnt = max(int(valid.sum()), 1)
            mean = s / cnt
            std = np.sqrt(np.maximum(ss / cnt - mean * mean, 0.0))
            stats[f"{kind}_mean"] = mean.astype(np.float32).tolist()
            stats[f"{kind}_std"] = std.astype(np.float32).tolist()
        self.update_attrs(teacher, **stats)


def _is_raw_layout(arr) -> bool:
    """True when chunks of ``arr`` are plain little-endian C-order bytes, one file per chunk."""
    from zarr.codecs import BytesCodec

    m = getattr(arr, "metadata", None)
    try:
        return (
            m is not None and len(m.codecs) == 1 and isinstance(m.codecs[0], BytesCodec)
            and str(getattr(m.codecs[0].endian, "value", m.codecs[0].endian)) in ("little", "None")
            and type(m.chunk_key_encoding).__name__ == "DefaultChunkKeyEncoding"
            and m.chunk_key_encoding.separator == "/"
            and arr.chunks[1:] == arr.shape[1:] and np.dtype(arr.dtype).byteorder in ("<", "=", "|")
        )
    except AttributeError:  # another zarr metadata layout: let zarr read it
        return False
