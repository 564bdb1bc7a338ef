"""The store's index (``index.parquet``): building it, and reading it by rows or columns.

One accessor serves every reader of the index (the extract block worker, the
distiller, validation): :meth:`IndexMixin.index_rows` and
:meth:`IndexMixin.index_columns` read whole row groups of ``index.parquet`` through
a small LRU cache, so a reader walking the store in block order reads each row
group about once and never holds the whole index.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmkd.data import Sample
from mmkd.store import format as fmt
from mmkd.store.format import StoreError

INDEX_COLUMNS = ("sample_id", "row", "caption", "image", "image_sha256", "source", "labels")
DEFAULT_INDEX_CACHE_GROUPS = 16


class IndexMixin:
    """Index access for :class:`~mmkd.store.FeatureStore` (expects ``path`` and ``n``)."""

    path: Path
    n: int
    _index: "pa.Table | None"
    _id_to_row: dict[str, int] | None

    def _init_index(self, cache_groups: int = DEFAULT_INDEX_CACHE_GROUPS) -> None:
        self._index = None
        self._id_to_row = None
        self._pq_file = None
        self._group_starts: np.ndarray | None = None
        self._group_cache: OrderedDict[int, dict[str, "pa.Array"]] = OrderedDict()
        self._group_cache_max = max(int(cache_groups), 1)
        self._index_lock = threading.Lock()

    @property
    def index_path(self) -> Path:
        """The index file (``<store>/index.parquet``)."""
        return self.path / fmt.INDEX

    @property
    def index(self) -> "pa.Table":
        """The whole index as a ``pyarrow.Table`` (row order == array order); prefer :meth:`index_rows`."""
        if self._index is None:
            self._index = fmt.read_parquet(self.index_path)
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

    # ------------------------------------------------------------------ row-group access
    def _parquet(self):
        if self._pq_file is None:
            pf = fmt.parquet_file(self.index_path)
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
            self._group_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
            self._pq_file = pf
        return self._pq_file

    def _check_columns(self, columns: Sequence[str] | None) -> list[str]:
        cols = list(INDEX_COLUMNS if columns is None else columns)
        unknown = [c for c in cols if c not in INDEX_COLUMNS]
        if unknown:
            raise StoreError(f"unknown index column(s) {unknown}; the index has {list(INDEX_COLUMNS)}")
        return cols

    def _index_group(self, g: int, columns: list[str]) -> dict[str, "pa.Array"]:
        """Columns of row group ``g``, read once and kept in the LRU."""
        with self._index_lock:
            pf = self._parquet()
            hit = self._group_cache.get(g)
            if hit is None:
                hit = self._group_cache[g] = {}
            self._group_cache.move_to_end(g)
            need = [c for c in columns if c not in hit]
            if need:
                table = pf.read_row_group(g, columns=need)
                for c in need:
                    hit[c] = table.column(c).combine_chunks()
            while len(self._group_cache) > self._group_cache_max:
                self._group_cache.popitem(last=False)
            return {c: hit[c] for c in columns}

    def index_rows(self, start: int, stop: int, columns: Sequence[str] | None = None) -> "pa.Table":
        """Rows ``[start, stop)`` of the index (the given columns, all when ``None``), through the LRU.

        Raises:
            StoreError: the range is outside ``[0, n]`` or a column is unknown.
        """
        cols = self._check_columns(columns)
        if not 0 <= start <= stop <= self.n:
            raise StoreError(f"index rows [{start}, {stop}) out of range for store {self.path} of {self.n} rows")
        self._parquet()
        starts = self._group_starts
        assert starts is not None
        first = int(np.searchsorted(starts, start, side="right") - 1)
        parts: dict[str, list] = {c: [] for c in cols}
        g = first
        while g < len(starts) - 1 and starts[g] < stop:
            data = self._index_group(g, cols)
            lo, hi = max(start, starts[g]) - starts[g], min(stop, starts[g + 1]) - starts[g]
            for c in cols:
                parts[c].append(data[c].slice(int(lo), int(hi - lo)))
            g += 1
        schema = index_schema(pa)
        return pa.table({c: pa.concat_arrays(parts[c]) if parts[c] else pa.array([], schema.field(c).type)
                         for c in cols})

    def index_columns(self, rows: Sequence[int] | np.ndarray, columns: Sequence[str] | None = None
                      ) -> dict[str, list]:
        """Column -> Python values of ``rows`` (any order, repeats allowed), through the LRU.

        Raises:
            StoreError: a row is outside ``[0, n)`` or a column is unknown.
        """
        cols = self._check_columns(columns)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise StoreError(f"rows out of range [0, {self.n}) in store {self.path}: min {rows.min()}, "
                             f"max {rows.max()}")
        self._parquet()
        starts = self._group_starts
        assert starts is not None
        out: dict[str, list] = {c: [None] * rows.size for c in cols}
        groups = np.searchsorted(starts, rows, side="right") - 1
        for g in np.unique(groups):
            data = self._index_group(int(g), cols)
            sel = np.nonzero(groups == g)[0]
            local = rows[sel] - starts[g]
            for c in cols:
                values = data[c].take(local).to_pylist()
                for i, v in zip(sel.tolist(), values):
                    out[c][i] = v
        return out

    def iter_index(self, columns: Sequence[str] | None = None) -> Iterator["pa.Table"]:
        """The index one row group at a time (bypasses the LRU: a full pass would only flush it)."""
        cols = self._check_columns(columns)
        pf = self._parquet()
        for g in range(pf.num_row_groups):
            yield pf.read_row_group(g, columns=cols)


def index_schema(pa: ModuleType) -> "pa.Schema":
    """The Arrow schema of ``index.parquet``."""
    return pa.schema([
        ("sample_id", pa.string()), ("row", pa.int64()), ("caption", pa.string()), ("image", pa.string()),
        ("image_sha256", pa.string()), ("source", pa.string()), ("labels", pa.string()),
    ])


def sample_rows(samples: Iterable[Sample]) -> dict[str, list]:
    """Index columns of ``samples`` (their order fixes the rows).

    Raises:
        StoreError: a non-Sample item, an empty or duplicate id, or no samples at all.
    """
    cols: dict[str, list] = {c: [] for c in INDEX_COLUMNS}
    seen: dict[str, int] = {}
    for i, s in enumerate(samples):
        if not isinstance(s, Sample):
            raise StoreError(f"sample {i} is a {type(s).__name__}, expected mmkd.data.Sample")
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
        for c in INDEX_COLUMNS:
            cols[c].append(row[c])
    if not seen:
        raise StoreError("cannot create a store with no samples")
    return cols


def fingerprint_tables(tables: Iterable["pa.Table"]) -> str:
    """:func:`mmkd.store.format.index_fingerprint` over index tables read in row order."""
    return fmt.index_fingerprint(
        row for t in tables for row in zip(*(t.column(c).to_pylist()
                                             for c in ("sample_id", "caption", "image", "image_sha256")))
    )
