"""Folder datasets described by a table: official MMKD-CLIP ``meta.jsonl``, JSONL, CSV.

Images are files; ``Sample.image`` is the image path relative to the dataset root
(the table's folder unless ``root`` is given; absolute when outside it).
``image_sha256`` is ``None`` unless ``hash_images=True`` (hashing reads every image).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmkd.data.images import BadSample
from mmkd.data.base import (
    Dataset,
    DatasetError,
    Entry,
    Sample,
    file_size,
    path_id,
    pick_labels,
    relative_ref,
    resolve_ref,
    sha256_hex,
)


class TableDataset(Dataset):
    """Rows of (id, image path, caption, labels) read from a table file next to the images."""

    def __init__(
        self,
        table: Path,
        *,
        root: str | Path | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
        id_column: str | None = "id",
        label_columns: Sequence[str] | None = None,
        hash_images: bool = False,
        name: str | None = None,
        uri: str | None = None,
    ) -> None:
        table = Path(table).resolve()
        if not table.is_file():
            raise DatasetError(f"{self.format} table {str(table)!r} not found")
        options: dict[str, Any] = dict(image_column=image_column, caption_column=caption_column, id_column=id_column,
                                       label_columns=list(label_columns) if label_columns else None,
                                       hash_images=hash_images)
        if root is not None:
            options["root"] = str(Path(root).resolve())
        super().__init__(uri or str(table), Path(root).resolve() if root is not None else table.parent,
                         name=name, options=options)
        self.table = table
        self.image_column, self.caption_column, self.id_column = image_column, caption_column, id_column
        self.label_columns = list(label_columns) if label_columns else []
        self.hash_images = hash_images

    def _rows(self) -> Iterator[tuple[dict[str, Any], str]]:
        """Yield (row mapping, location) pairs."""
        raise NotImplementedError

    def _check_columns(self, columns: Sequence[str]) -> None:
        missing = [c for c in (self.image_column, self.caption_column, *self.label_columns) if c not in columns]
        if missing:
            raise DatasetError(
                f"{self.format} table {str(self.table)!r} lacks column(s) {missing}; it has {list(columns)}. "
                f"map the right names in the dataset spec: fields: {{image: ..., caption: ..., labels: [...]}}"
            )

    def _entries(self, *, hashes: bool = True) -> Iterator[Entry]:
        for row, location in self._rows():
            yield self._entry(row, location, hashes and self.hash_images)

    def _entry(self, row: dict[str, Any], location: str, hashes: bool) -> Entry:
        ref = self._ref(row.get(self.image_column))
        sid = row.get(self.id_column) if self.id_column else None
        sid = str(sid) if sid not in (None, "") else path_id(ref)
        caption = row.get(self.caption_column)
        labels = {c: row.get(c) for c in self.label_columns} or None
        labels = self._extra_labels(row, labels)
        sha, size = None, file_size(resolve_ref(self.root, ref)) if ref else -1
        if hashes and size >= 0:
            sha = sha256_hex(self.read_image_bytes(ref))
        sample = Sample(sample_id=sid, caption="" if caption is None else str(caption), image=ref,
                        image_sha256=sha, source=self.source, labels=labels)
        return Entry(sample, size, f"{location} (image {ref!r})")

    def _extra_labels(self, row: dict[str, Any], labels: dict | None) -> dict | None:
        return labels

    def _ref(self, value: object) -> str:
        if value in (None, ""):
            return ""
        p = Path(str(value))
        return relative_ref(self.root, p) if p.is_absolute() else p.as_posix()

    def read_image_bytes(self, ref: str) -> bytes:
        if not ref:
            raise BadSample("missing", f"no image path in {self.format} dataset {self.uri!r}")
        path = resolve_ref(self.root, ref)
        try:
            return path.read_bytes()
        except FileNotFoundError as e:
            raise BadSample("missing", f"image file {str(path)!r} not found") from e
        except IsADirectoryError as e:
            raise BadSample("missing", f"image path {str(path)!r} is a folder") from e


class JsonlDataset(TableDataset):
    """A JSON-lines file, one object per sample, with image/caption/id columns."""

    format = "jsonl"

    def _rows(self) -> Iterator[tuple[dict[str, Any], str]]:
        checked = False
        with open(self.table, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{str(self.table)!r} line {lineno} is not valid JSON: {e}") from e
                if not isinstance(row, dict):
                    raise DatasetError(f"{str(self.table)!r} line {lineno} is not a JSON object")
                if not checked:
                    self._check_columns(list(row))
                    checked = True
                yield row, f"{self.table.name} line {lineno}"

    def _count(self) -> int:
        with open(self.table, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())


class CsvDataset(TableDataset):
    """A CSV file with a header row; every column is read as text (ids like ``007`` stay intact)."""

    format = "csv"

    def _read(self):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        with open(self.table, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        if not header:
            raise DatasetError(f"CSV table {str(self.table)!r} is empty; it needs a header row")
        self._check_columns(header)
        try:
            return pacsv.read_csv(self.table, convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header}, strings_can_be_null=False))
        except pa.ArrowInvalid as e:
            raise DatasetError(f"CSV table {str(self.table)!r} cannot be parsed: {e}") from e

    def _rows(self) -> Iterator[tuple[dict[str, Any], str]]:
        table = self._read()
        row_no = 0
        for batch in table.to_batches(max_chunksize=4096):
            for row in batch.to_pylist():
                row_no += 1
                yield row, f"{self.table.name} row {row_no}"

    def _count(self) -> int:
        return self._read().num_rows


class MmkdClipDataset(JsonlDataset):
    """The official MMKD-CLIP layout: ``meta.jsonl`` with ``id``, ``imgpath``, ``txt``, ``metapath``.

    Labels come from the BIOMEDICA metadata JSON named by ``metapath``
    (``image_primary_label`` etc.) unless ``meta_labels=False``.
    """

    format = "mmkd-clip"

    def __init__(self, table: Path, *, meta_labels: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("image_column", "imgpath")
        kwargs.setdefault("caption_column", "txt")
        kwargs.setdefault("id_column", "id")
        super().__init__(table, **kwargs)
        self.meta_labels = meta_labels
        self.options["meta_labels"] = meta_labels

    def _extra_labels(self, row: dict[str, Any], labels: dict | None) -> dict | None:
        if row.get("available_clips") is not None:  # the teachers the official data marks available
            labels = {**(labels or {}), "available_clips": row["available_clips"]}
        metapath = row.get("metapath")
        if not self.meta_labels or not metapath:
            return labels
        path = resolve_ref(self.root, str(metapath))
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(
                f"metadata file {str(path)!r} of sample {row.get('id')!r} is unreadable ({e}); "
                f"fix it or open the dataset with meta_labels=False"
            ) from e
        extra = pick_labels(meta) if isinstance(meta, dict) else None
        return {**(labels or {}), **extra} if extra else labels


def is_mmkd_clip_table(path: Path) -> bool:
    """True when the first record of a JSONL file has the official ``imgpath``/``txt`` keys."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    first = json.loads(line)
                    return isinstance(first, dict) and "imgpath" in first and "txt" in first
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return False
