"""Parquet datasets in the Hugging Face ``datasets`` style.

The image column holds raw bytes, or a struct ``{"bytes": ..., "path": ...}`` (a
struct with null bytes falls back to the file at ``path``, relative to the parquet
file's folder). ``Sample.image`` is ``<file.parquet>::<row>`` (file relative to the
dataset root, row counted within that file). ``image_sha256`` is always computed:
the bytes are in hand while iterating.

A row whose id or caption is binary that is not UTF-8 is a bad row
(:mod:`mmkd.data.badrows`; ``line`` is the row in its file); Arrow string columns
are valid UTF-8 by construction, so only binary columns can hold such rows.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from mmkd.config import StorageOptions, is_remote
from mmkd.data.badrows import BadRowsMixin
from mmkd.data.images import BadSample
from mmkd.data.base import (
    resolved,
    ContainerDataset,
    DatasetError,
    Entry,
    Sample,
    natural_key,
    path_id,
    relative_ref,
    resolve_ref,
    sha256_hex,
    split_ref,
)


class ParquetDataset(BadRowsMixin, ContainerDataset):
    """One parquet file, or every ``*.parquet`` under a folder (sorted by relative path)."""

    format = "parquet"

    def __init__(
        self,
        path: str | Path,
        *,
        image_column: str = "image",
        caption_column: str = "caption",
        id_column: str | None = "id",
        label_columns: Sequence[str] | None = None,
        batch_rows: int = 1024,
        name: str | None = None,
        on_bad_row: str = "record",
        storage_options: StorageOptions | None = None,
    ) -> None:
        path = resolved(path, storage_options)
        if path.is_dir():
            root = path
            files = sorted(path.rglob("*.parquet"), key=lambda p: natural_key(relative_ref(path, p)))
        elif path.is_file():
            root, files = path.parent, [path]
        else:
            raise DatasetError(f"parquet dataset {str(path)!r} not found (give a .parquet file or a folder of them)")
        if not files:
            raise DatasetError(f"no *.parquet files under {str(path)!r}")
        options = dict(image_column=image_column, caption_column=caption_column, id_column=id_column,
                       label_columns=list(label_columns) if label_columns else None, batch_rows=batch_rows)
        super().__init__(str(path), root, name=name, options=options, storage_options=storage_options)
        self.files = [relative_ref(root, f) for f in files]
        self.image_column, self.caption_column, self.id_column = image_column, caption_column, id_column
        self.label_columns = list(label_columns) if label_columns else []
        self.batch_rows = batch_rows
        self._init_bad_rows(on_bad_row)

    def _open(self, rel: str):
        import pyarrow.parquet as pq

        path = resolve_ref(self.root, rel)
        try:
            if is_remote(path):  # fsspec's file, read by range requests: only the row groups asked for
                return pq.ParquetFile(path.path, filesystem=path.fs)
            return pq.ParquetFile(path)
        except FileNotFoundError as e:
            raise BadSample("missing", f"parquet file {str(path)!r} not found") from e
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet files
            raise DatasetError(f"{str(path)!r} is not a readable parquet file: {e}") from e

    def _columns(self, pf, rel: str) -> list[str]:
        names = pf.schema_arrow.names
        missing = [c for c in (self.image_column, self.caption_column, *self.label_columns) if c not in names]
        if missing:
            raise DatasetError(
                f"parquet file {rel!r} in {self.uri!r} lacks column(s) {missing}; it has {names}. "
                f"Set image_column / caption_column / label_columns to the right names"
            )
        cols = [self.image_column, self.caption_column, *self.label_columns]
        if self.id_column and self.id_column in names:
            cols.append(self.id_column)
        return list(dict.fromkeys(cols))

    def _count(self) -> int:
        return sum(self._open(rel).metadata.num_rows for rel in self.files)

    def _entries(self, *, hashes: bool = True) -> Iterator[Entry]:
        self._reset_bad_rows()
        for rel in self.files:
            pf = self._open(rel)
            cols = self._columns(pf, rel)
            row = 0
            for batch in pf.iter_batches(batch_size=self.batch_rows, columns=cols):
                images = _image_values(batch.column(cols.index(self.image_column)))
                data = batch.to_pydict()
                for i, (img_bytes, img_path) in enumerate(images):
                    values = self._text_values({c: data[c][i] for c in cols}, rel, row)
                    if values is not None:
                        yield self._entry(rel, row, img_bytes, img_path, values, hashes)
                    row += 1

    def _text_values(self, values: dict, rel: str, row: int) -> dict | None:
        """``values`` with binary id/caption decoded; ``None`` (a recorded bad row) when not UTF-8."""
        for c in (self.caption_column, self.id_column):
            if c and isinstance(values.get(c), bytes):
                try:
                    values[c] = values[c].decode("utf-8")
                except UnicodeDecodeError as e:
                    self._bad_row(str(resolve_ref(self.root, rel)), row + 1, f"column {c!r} is not UTF-8 ({e})")
                    return None
        return values

    def _entry(self, rel: str, row: int, img: bytes | None, img_path: str | None, values: dict,
               hashes: bool) -> Entry:
        ref = f"{rel}::{row}"
        sid = values.get(self.id_column) if self.id_column else None
        sid = str(sid) if sid not in (None, "") else path_id(ref)
        caption = values[self.caption_column]
        labels = {c: values[c] for c in self.label_columns} or None
        size = len(img) if img is not None else -1
        sample = Sample(sample_id=sid, caption="" if caption is None else str(caption), image=ref,
                        image_sha256=sha256_hex(img) if hashes and img is not None else None,
                        source=self.source, labels=labels)
        return Entry(sample, size, f"{rel} row {row}" + (f" (path {img_path!r})" if img_path else ""))

    def _split(self, ref: str) -> tuple[str, int]:
        rel, row = split_ref(ref, "file.parquet")
        if not row.isdigit():
            raise DatasetError(f"image reference {ref!r}: row {row!r} is not a row number")
        return rel, int(row)

    def _read_container(self, rel: str, wanted: list[tuple[int, int]], out: list) -> None:
        pf = self._open(rel)
        starts = [0]
        for g in range(pf.metadata.num_row_groups):
            starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
        by_group: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for i, row in wanted:
            if row >= starts[-1]:
                out[i] = BadSample("missing", f"{rel!r} has {starts[-1]} rows; row {row} does not exist")
                continue
            by_group[bisect.bisect_right(starts, row) - 1].append((i, row))
        for g, items in by_group.items():
            column = pf.read_row_group(g, columns=[self.image_column]).column(0)
            values = _image_values(column)
            for i, row in items:
                out[i] = self._bytes_or_file(rel, row, *values[row - starts[g]])

    def _bytes_or_file(self, rel: str, row: int, img: bytes | None, img_path: str | None) -> bytes | BadSample:
        if img is not None:
            return img
        if img_path:
            path = resolve_ref(resolve_ref(self.root, rel).parent, img_path)
            if path.is_file():
                return path.read_bytes()
            return BadSample("missing", f"{rel!r} row {row}: no bytes and {str(path)!r} not found")
        return BadSample("missing", f"{rel!r} row {row}: image is null")


def _image_values(column) -> list[tuple[bytes | None, str | None]]:
    """(bytes, path) pairs from a binary column or a ``{bytes, path}`` struct column."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_struct(column.type):
        names = [column.type.field(k).name for k in range(column.type.num_fields)]
        if "bytes" not in names:
            raise DatasetError(f"image struct column has fields {names}; expected a 'bytes' field")
        fields = dict(zip(names, column.flatten()))  # flatten() honours slicing and null structs
        data = fields["bytes"].to_pylist()
        paths = fields["path"].to_pylist() if "path" in fields else [None] * len(data)
        return list(zip(data, paths))
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return [(v, None) for v in column.to_pylist()]
    raise DatasetError(f"image column has type {column.type}; expected binary or a struct with 'bytes'")

