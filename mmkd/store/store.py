"""The feature store: one directory holding teacher features for N samples.

Layout (see docs/store-format.md)::

    <store>/store.json              manifest
    <store>/index.parquet           one row per sample, ``row`` == array row
    <store>/features.zarr/<t>/{image,text,valid}   Zarr v3 arrays, chunked by block
    <store>/_progress/<t>/block-XXXXXX.done        written after the block is durable
    <store>/_failures/<t>/block-XXXXXX.parquet     bad samples of that block, with reasons

Writers own disjoint, block-aligned row ranges; arrays are pre-sized at
``add_teacher`` and never resized, so many processes can write at once.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mmkd import __version__
from mmkd.store import format as fmt
from mmkd.store.format import Sample, StoreError

log = logging.getLogger(__name__)

_INDEX_COLUMNS = ("sample_id", "row", "caption", "image", "image_sha256", "source", "labels")


class FeatureStore:
    """A feature store on local (or network-mounted) disk.

    Create one with :meth:`create`, open one with :meth:`open`. Reads go through a
    small LRU cache of whole blocks, so reading rows in chunk-aware order (see
    :func:`mmkd.store.chunk_shuffled_batches`) costs about one sequential read.
    """

    def __init__(self, path: Path, mode: str, cache_bytes: int) -> None:
        import zarr

        self.path = Path(path)
        self.mode = mode
        self.manifest: dict[str, Any] = json.loads((self.path / fmt.MANIFEST).read_text())
        self._check_manifest()
        self._root = zarr.open_group(
            str(self.path / fmt.FEATURES), mode="r" if mode == "r" else "a", zarr_format=3
        )
        self._index = None
        self._id_to_row: dict[str, int] | None = None
        self._cache: OrderedDict[tuple[str, str, int], np.ndarray] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self._dims: dict[str, int] = {}
        self._arrays: dict[tuple[str, str], Any] = {}
        self._executor = None
        self._done_sets: dict[str, set[int]] = {}
        self._raw_ok: dict[tuple[str, str], bool] = {}

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        samples: Iterable[Sample],
        *,
        block_size: int = fmt.DEFAULT_BLOCK_SIZE,
        dataset_uri: str = "",
        dataset_fingerprint: str = "",
        dataset_spec: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> "FeatureStore":
        """Create a store for ``samples`` (their order fixes the rows).

        The store is built in a temporary sibling folder and renamed into place, so
        a crash never leaves a half-created store at ``path``.

        Args:
            dataset_spec: the whole dataset spec (``mmkd.data.DatasetSpec.to_dict()``),
                so later stages reopen the dataset from the store alone.

        Raises:
            StoreError: ``path`` exists (and not ``overwrite``), no samples, a
                duplicate sample id, or a bad block size.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq
        import zarr

        path = Path(path)
        if block_size <= 0:
            raise StoreError(f"block_size must be a positive number of rows, got {block_size}")
        if path.exists() and not overwrite:
            raise StoreError(f"store path {str(path)!r} already exists; open it, or pass overwrite=True")
        rows = _sample_rows(samples)
        n = len(rows["sample_id"])
        table = pa.table(rows, schema=_index_schema(pa))
        tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        pq.write_table(table, tmp / fmt.INDEX, row_group_size=max(block_size, 1024))
        zarr.open_group(str(tmp / fmt.FEATURES), mode="w", zarr_format=3).attrs.update(
            {"format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION}
        )
        manifest = {
            "format": fmt.FORMAT_NAME,
            "format_version": fmt.FORMAT_VERSION,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "mmkd_version": __version__,
            "num_samples": n,
            "block_size": block_size,
            "num_blocks": -(-n // block_size),
            "feature_dtype": fmt.FEATURE_DTYPE,
            "dataset": {"uri": dataset_uri, "fingerprint": dataset_fingerprint,
                        **({"spec": dataset_spec} if dataset_spec else {})},
            "index_fingerprint": fmt.index_fingerprint(
                zip(rows["sample_id"], rows["caption"], rows["image"], rows["image_sha256"])
            ),
            "teachers": [],
        }
        fmt.atomic_write_json(tmp / fmt.MANIFEST, manifest)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        fmt.fsync_dir(path.parent)
        log.info("created store %s: %d samples, %d blocks of %d", path, n, manifest["num_blocks"], block_size)
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", *, cache_bytes: int = 512 << 20) -> "FeatureStore":
        """Open an existing store; ``mode`` is ``"r"`` (read only) or ``"a"`` (read/write)."""
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        if not (path / fmt.MANIFEST).is_file():
            raise StoreError(
                f"{str(path)!r} is not an mmkd store (no {fmt.MANIFEST}); create one with "
                "`mmkd extract` or `mmkd store import-mmkd`"
            )
        return cls(path, mode, cache_bytes)

    def _check_manifest(self) -> None:
        m = self.manifest
        if m.get("format") != fmt.FORMAT_NAME:
            raise StoreError(f"{self.path}/store.json: format is {m.get('format')!r}, expected {fmt.FORMAT_NAME!r}")
        if m.get("format_version") not in fmt.SUPPORTED_VERSIONS:
            raise StoreError(
                f"{self.path}/store.json: unknown format_version {m.get('format_version')!r}; this mmkd "
                f"({__version__}) reads versions {list(fmt.SUPPORTED_VERSIONS)}: upgrade mmkd"
            )

    # ------------------------------------------------------------------ geometry
    @property
    def n(self) -> int:
        return int(self.manifest["num_samples"])

    @property
    def block_size(self) -> int:
        return int(self.manifest["block_size"])

    @property
    def num_blocks(self) -> int:
        return int(self.manifest["num_blocks"])

    def block_range(self, block: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of ``block``."""
        if not 0 <= block < self.num_blocks:
            raise StoreError(f"block {block} out of range: store {self.path} has blocks 0..{self.num_blocks - 1}")
        start = block * self.block_size
        return start, min(start + self.block_size, self.n)

    # ------------------------------------------------------------------ index
    @property
    def index(self):
        """The index as a ``pyarrow.Table`` (row order == array order)."""
        if self._index is None:
            import pyarrow.parquet as pq

            self._index = pq.read_table(self.path / fmt.INDEX)
        return self._index

    @property
    def sample_ids(self) -> list[str]:
        return self.index.column("sample_id").to_pylist()

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Rows of the given sample ids.

        Raises:
            KeyError: some ids are not in the store (the first few are named).
        """
        if self._id_to_row is None:
            self._id_to_row = {sid: i for i, sid in enumerate(self.sample_ids)}
        out = np.empty(len(ids), dtype=np.int64)
        missing = []
        for i, sid in enumerate(ids):
            r = self._id_to_row.get(sid)
            if r is None:
                missing.append(sid)
            else:
                out[i] = r
        if missing:
            raise KeyError(f"{len(missing)} sample ids not in store {self.path}: {missing[:5]}")
        return out

    # ------------------------------------------------------------------ teachers
    @property
    def teachers(self) -> list[str]:
        return list(self.manifest.get("teachers", []))

    def _group(self, teacher: str):
        if teacher not in self._root:
            self._reload_manifest()
            if teacher not in self.teachers:
                raise StoreError(f"teacher {teacher!r} not in store {self.path}; it holds {self.teachers}")
        return self._root[teacher]

    def dim(self, teacher: str) -> int:
        if teacher not in self._dims:
            self._dims[teacher] = int(self._group(teacher).attrs["dim"])
        return self._dims[teacher]

    def attrs(self, teacher: str) -> dict[str, Any]:
        return dict(self._group(teacher).attrs.asdict())

    def add_teacher(self, teacher: str, dim: int, attrs: dict[str, Any] | None = None) -> None:
        """Pre-size the arrays of ``teacher`` (idempotent for the same ``dim``).

        Raises:
            StoreError: read-only store, bad name, or the teacher exists with another dim.
        """
        self._writable()
        if not teacher or "/" in teacher or teacher.startswith((".", "_")):
            raise StoreError(f"bad teacher name {teacher!r}: use letters, digits, '_' and '-'")
        if int(dim) <= 0:
            raise StoreError(f"teacher {teacher!r}: dim must be positive, got {dim}")
        with fmt.file_lock(self.path / fmt.LOCK):
            if teacher in self._root:
                have = int(self._root[teacher].attrs.get("dim", -1))
                if have != int(dim):
                    raise StoreError(
                        f"teacher {teacher!r} already in store {self.path} with dim {have}, not {dim}; "
                        "use another teacher name or a new store"
                    )
            else:
                self._create_arrays(teacher, int(dim), attrs or {})
            self._reload_manifest()
            if teacher not in self.manifest["teachers"]:
                self.manifest["teachers"] = sorted(self.manifest["teachers"] + [teacher])
                fmt.atomic_write_json(self.path / fmt.MANIFEST, self.manifest)

    def _create_arrays(self, teacher: str, dim: int, attrs: dict[str, Any]) -> None:
        import zarr

        g = self._root.create_group(teacher)
        bs = self.block_size
        for kind in fmt.KINDS:
            # Uncompressed: float16 embeddings barely compress, and raw chunks read
            # and write at disk speed (see bench/store_bench.py).
            g.create_array(kind, shape=(self.n, dim), chunks=(bs, dim), dtype=fmt.FEATURE_DTYPE,
                           fill_value=0.0, compressors=None)
        g.create_array("valid", shape=(self.n,), chunks=(bs,), dtype="bool", fill_value=False,
                       compressors=zarr.codecs.ZstdCodec(level=3))
        g.attrs.update({**attrs, "dim": dim, "dtype": fmt.FEATURE_DTYPE,
                        "normalized": bool(attrs.get("normalized", True))})

    def update_attrs(self, teacher: str, /, **attrs: Any) -> None:
        """Merge ``attrs`` into the teacher's attributes (JSON-serialisable values)."""
        self._writable()
        with fmt.file_lock(self.path / fmt.LOCK):
            g = self._group(teacher)
            g.attrs.update(json.loads(json.dumps(attrs)))

    def _reload_manifest(self) -> None:
        self.manifest = json.loads((self.path / fmt.MANIFEST).read_text())

    def _writable(self) -> None:
        if self.mode != "a":
            raise StoreError(f"store {self.path} is open read-only; open it with mode='a' to write")

    # ------------------------------------------------------------------ writing
    def write_block(
        self,
        teacher: str,
        block: int,
        image: np.ndarray,
        text: np.ndarray,
        valid: np.ndarray,
        failures: list[dict[str, Any]] | None = None,
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
        """
        self._writable()
        start, stop = self.block_range(block)
        dim = self.dim(teacher)
        image, text, valid = self._check_block(teacher, block, image, text, valid, stop - start, dim)
        marker = self.path / fmt.PROGRESS / teacher / f"{fmt.block_name(block)}.done"
        if marker.exists():
            marker.unlink()
            fmt.fsync_dir(marker.parent)  # the un-marking must be durable before new data lands
        # image and text go to disk in parallel: zarr's encode + atomic file write
        # runs mostly outside the GIL, so two threads nearly double the rate.
        jobs = [self._pool().submit(self._put, teacher, kind, block, start, stop, data)
                for kind, data in (("image", image), ("text", text), ("valid", valid))]
        for j in jobs:
            j.result()
        self._write_failures(teacher, block, failures or [])
        for key in [k for k in self._cache if k[0] == teacher and k[2] == block]:
            self._cached -= self._cache.pop(key).nbytes
        self._done_sets.pop(teacher, None)
        fmt.atomic_write_json(marker, {"block": block, "rows": [start, stop], "valid": int(valid.sum()),
                                       "failures": len(failures or []),
                                       "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat()})

    def _put(self, teacher: str, kind: str, block: int, start: int, stop: int, data: np.ndarray) -> None:
        self._array(teacher, kind)[start:stop] = data
        fmt.fsync_tree(self.path / fmt.FEATURES / teacher / kind / "c" / str(block))

    def _pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=3, thread_name_prefix="mmkd-store")
        return self._executor

    def _array(self, teacher: str, kind: str):
        key = (teacher, kind)
        arr = self._arrays.get(key)
        if arr is None:
            arr = self._group(teacher)[kind]
            if kind in fmt.KINDS:
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

    def _write_failures(self, teacher: str, block: int, failures: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.path / fmt.FAILURES / teacher / f"{fmt.block_name(block)}.parquet"
        if not failures:
            path.unlink(missing_ok=True)
            return
        table = pa.table({
            "sample_id": [str(f["sample_id"]) for f in failures],
            "row": pa.array([f.get("row") for f in failures], pa.int64()),
            "reason": [str(f["reason"]) for f in failures],
            "detail": [str(f.get("detail", "")) for f in failures],
        })
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pq.write_table(table, tmp)
        fmt.fsync_tree(tmp)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ progress
    def done_blocks(self, teacher: str) -> set[int]:
        d = self.path / fmt.PROGRESS / teacher
        if not d.is_dir():
            return set()
        return {int(p.name[6:12]) for p in d.glob("block-*.done")}

    def missing_blocks(self, teacher: str) -> list[int]:
        done = self.done_blocks(teacher)
        return [b for b in range(self.num_blocks) if b not in done]

    def is_complete(self, teacher: str) -> bool:
        return teacher in self.teachers and not self.missing_blocks(teacher)

    def failures(self, teacher: str):
        """All recorded bad samples of ``teacher`` as a table (sample_id, row, reason, detail)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = sorted((self.path / fmt.FAILURES / teacher).glob("block-*.parquet"))
        if not files:
            return pa.table({"sample_id": pa.array([], pa.string()), "row": pa.array([], pa.int64()),
                             "reason": pa.array([], pa.string()), "detail": pa.array([], pa.string())})
        return pa.concat_tables([pq.read_table(f) for f in files])

    # ------------------------------------------------------------------ reading
    def read_block(self, teacher: str, block: int, kind: str = "image") -> np.ndarray:
        """One whole block of ``kind`` (``image``, ``text`` or ``valid``), through the LRU cache.

        ``valid`` of a block without a done marker reads as all False. The done set is
        taken when first needed; reopen the store to see blocks finished since.
        """
        if kind not in (*fmt.KINDS, "valid"):
            raise StoreError(f"kind must be one of {(*fmt.KINDS, 'valid')}, got {kind!r}")
        key = (teacher, kind, block)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        start, stop = self.block_range(block)
        if kind == "valid" and block not in self._done(teacher):
            arr = np.zeros(stop - start, bool)
        else:
            arr = self._read_rows(teacher, kind, block, start, stop)
        self._cache[key] = arr
        self._cached += arr.nbytes
        while self._cached > self._cache_bytes and len(self._cache) > 1:
            self._cached -= self._cache.popitem(last=False)[1].nbytes
        return arr

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
        raw = self._raw_ok.get((teacher, kind))
        if raw is None:
            raw = self._raw_ok[(teacher, kind)] = _is_raw_layout(arr)
        if not raw:
            return arr[start:stop]
        key = arr.metadata.chunk_key_encoding.encode_chunk_key((block,) + (0,) * (arr.ndim - 1))
        path = self.path / fmt.FEATURES / teacher / kind / key
        rows = stop - start
        try:
            data = np.fromfile(path, dtype=arr.dtype)
        except FileNotFoundError:  # chunk equal to the fill value everywhere: zarr does not write it
            return np.full((rows,) + arr.shape[1:], arr.metadata.fill_value, dtype=arr.dtype)
        return data.reshape((-1,) + arr.shape[1:])[:rows]

    def _done(self, teacher: str) -> set[int]:
        if teacher not in self._done_sets:
            self._done_sets[teacher] = self.done_blocks(teacher)
        return self._done_sets[teacher]

    def read(self, teacher: str, rows: Sequence[int] | np.ndarray, kind: str = "image") -> np.ndarray:
        """``kind`` of ``rows`` (any order, repeats allowed).

        Returns:
            float16 ``(len(rows), dim)`` for ``image``/``text``; bool ``(len(rows),)`` for ``valid``.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise StoreError(f"rows out of range [0, {self.n}) in store {self.path}: min {rows.min()}, max {rows.max()}")
        if kind == "valid":
            out = np.empty(rows.size, dtype=bool)
        else:
            out = np.empty((rows.size, self.dim(teacher)), dtype=np.float16)
        blocks = rows // self.block_size
        for b in np.unique(blocks):
            sel = np.nonzero(blocks == b)[0]
            out[sel] = self.read_block(teacher, int(b), kind)[rows[sel] - b * self.block_size]
        return out

    def valid(self, teacher: str) -> np.ndarray:
        """``(N,)`` bools: rows holding real features for ``teacher`` (False for blocks not yet done)."""
        v = self._array(teacher, "valid")[:]
        done = self.done_blocks(teacher)
        for b in range(self.num_blocks):
            if b not in done:
                s, e = self.block_range(b)
                v[s:e] = False
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

    # ------------------------------------------------------------------ reports
    def info(self) -> dict[str, Any]:
        """A summary: samples, blocks, and per teacher its dim, progress, valid rows and failures."""
        from mmkd.store.validate import disk_usage

        teachers = {}
        for t in self.teachers:
            done = self.done_blocks(t)
            teachers[t] = {
                "dim": self.dim(t),
                "dtype": fmt.FEATURE_DTYPE,
                "blocks_done": len(done),
                "blocks_total": self.num_blocks,
                "valid_rows": int(self.valid(t).sum()),
                "failures": self.failures(t).num_rows,
                "complete": len(done) == self.num_blocks,
            }
        return {
            "path": str(self.path),
            "format_version": self.manifest["format_version"],
            "created_at": self.manifest["created_at"],
            "num_samples": self.n,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "dataset": self.manifest.get("dataset", {}),
            "teachers": teachers,
            "size_bytes": disk_usage(self.path),
        }

    def validate(self) -> list[str]:
        """Every problem found (empty list: the store is whole and sound). See :mod:`mmkd.store.validate`."""
        from mmkd.store.validate import validate_store

        return validate_store(self)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, n={self.n}, teachers={self.teachers})"


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


def _index_schema(pa):
    return pa.schema([
        ("sample_id", pa.string()), ("row", pa.int64()), ("caption", pa.string()), ("image", pa.string()),
        ("image_sha256", pa.string()), ("source", pa.string()), ("labels", pa.string()),
    ])


def _sample_rows(samples: Iterable[Sample]) -> dict[str, list]:
    cols: dict[str, list] = {c: [] for c in _INDEX_COLUMNS}
    seen: dict[str, int] = {}
    for i, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise StoreError(f"sample {i} is a {type(s).__name__}, expected mmkd.store.Sample")
        if not s.sample_id:
            raise StoreError(f"sample {i} has an empty sample_id")
        if s.sample_id in seen:
            raise StoreError(
                f"duplicate sample_id {s.sample_id!r} at positions {seen[s.sample_id]} and {i}; "
                "sample ids must be unique within a store"
            )
        seen[s.sample_id] = i
        row = s.to_row()
        row["row"] = i
        for c in _INDEX_COLUMNS:
            cols[c].append(row[c])
    if not seen:
        raise StoreError("cannot create a store with no samples")
    return cols
