"""Folder datasets described by a table: official MMKD-CLIP ``meta.jsonl``, JSONL, CSV.

Images are files; ``Sample.image`` is the image path relative to the dataset root
(the table's folder unless ``root`` is given; absolute when outside it).
``image_sha256`` is ``None`` unless ``hash_images=True`` (hashing reads every image).

A line that is not UTF-8, not valid JSON/CSV or not a record is a bad row
(:mod:`mmkd.data.badrows`): recorded with its file and line and skipped, or, with
``on_bad_row="fail"``, an error naming ``file:line``.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmkd.config import StorageOptions, is_url
from mmkd.data.badrows import BadRowsMixin
from mmkd.data.images import BadSample
from mmkd.data.base import (
    resolved,
    Dataset,
    DatasetError,
    Entry,
    file_size,
    path_id,
    pick_labels,
    relative_ref,
    resolve_ref,
    sha256_hex,
)
from mmkd.data.sample import Sample
from mmkd.jsontypes import JSON, JSONDict


class TableDataset(BadRowsMixin, Dataset):
    """Rows of (id, image path, caption, labels) read from a table file next to the images.

    ``on_bad_row`` (``record`` or ``fail``) is how unusable lines are handled; it is
    a policy of this run, not part of the dataset, so :meth:`spec` leaves it out.
    """

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
        on_bad_row: str = "record",
        storage_options: StorageOptions | None = None,
    ) -> None:
        table = resolved(table, storage_options)
        if not table.is_file():
            raise DatasetError(f"{self.format} table {str(table)!r} not found")
        options: dict[str, Any] = dict(image_column=image_column, caption_column=caption_column, id_column=id_column,
                                       label_columns=list(label_columns) if label_columns else None,
                                       hash_images=hash_images)
        if root is not None:
            options["root"] = str(resolved(root, storage_options))
        super().__init__(uri or str(table), resolved(root, storage_options) if root is not None else table.parent,
                         name=name, options=options, storage_options=storage_options)
        self.table = table
        self.image_column, self.caption_column, self.id_column = image_column, caption_column, id_column
        self.label_columns = list(label_columns) if label_columns else []
        self.hash_images = hash_images
        self._init_bad_rows(on_bad_row)

    def _rows(self) -> Iterator[tuple[JSONDict, str]]:
        """Yield (row mapping, location) pairs."""
        raise NotImplementedError

    def _count_rows(self) -> int:
        """Usable rows (a full pass; leaves ``bad_rows`` of the last real pass alone)."""
        saved = self.bad_rows
        self._reset_bad_rows()
        try:
            return sum(1 for _ in self._rows())
        finally:
            self.bad_rows = saved

    def _check_columns(self, columns: Sequence[str]) -> None:
        missing = [c for c in (self.image_column, self.caption_column, *self.label_columns) if c not in columns]
        if missing:
            raise DatasetError(
                f"{self.format} table {str(self.table)!r} lacks column(s) {missing}; it has {list(columns)}. "
                f"map the right names in the dataset spec: fields: {{image: ..., caption: ..., labels: [...]}}"
            )

    def _entries(self, *, hashes: bool = True) -> Iterator[Entry]:
        self._reset_bad_rows()
        for row, location in self._rows():
            yield self._entry(row, location, hashes and self.hash_images)

    def _entry(self, row: JSONDict, location: str, hashes: bool) -> Entry:
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

    def _extra_labels(self, row: JSONDict, labels: dict | None) -> dict | None:
        return labels

    def _ref(self, value: object) -> str:
        if value in (None, ""):
            return ""
        if is_url(value):
            return relative_ref(self.root, str(value))
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

    def _rows(self) -> Iterator[tuple[JSONDict, str]]:
        checked = False
        for lineno, row in self._records():
            if not checked:
                self._check_columns(list(row))
                checked = True
            yield row, f"{self.table.name} line {lineno}"

    def _records(self) -> Iterator[tuple[int, JSONDict]]:
        """(line number, JSON object) of every usable line; the others go to :meth:`_bad_row`."""
        with self.table.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):  # a Windows export's byte-order mark
                    raw = raw[len(codecs.BOM_UTF8):]
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    self._bad_row(str(self.table), lineno, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                                           f"{e.start + 1})")
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    self._bad_row(str(self.table), lineno, f"not valid JSON ({e})")
                    continue
                if not isinstance(row, dict):
                    self._bad_row(str(self.table), lineno, f"a JSON {type(row).__name__}, not an object")
                    continue
                yield lineno, row

    def _count(self) -> int:
        return self._count_rows()


class CsvDataset(TableDataset):
    """A CSV file with a header row; every column is read as text (ids like ``007`` stay intact)."""

    format = "csv"

    def _rows(self) -> Iterator[tuple[JSONDict, str]]:
        # surrogateescape keeps going past bytes that are not UTF-8; the rows holding
        # them are then told apart and recorded as bad rows.
        with self.table.open("r", newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise DatasetError(f"CSV table {str(self.table)!r} is empty; it needs a header row")
            if not _is_utf8(header):
                raise DatasetError(f"CSV table {str(self.table)!r}: the header row is not UTF-8; save the file "
                                   "as UTF-8")
            self._check_columns(header)
            row_no = 0
            while True:
                start = reader.line_num + 1
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    self._bad_row(str(self.table), start, f"not valid CSV ({e})")
                    continue
                if not values:
                    continue
                row_no += 1
                if not _is_utf8(values):
                    self._bad_row(str(self.table), start, "not UTF-8")
                elif len(values) != len(header):
                    self._bad_row(str(self.table), start,
                                  f"{len(values)} fields, the header has {len(header)}")
                else:
                    yield dict(zip(header, values)), f"{self.table.name} row {row_no} (line {start})"

    def _count(self) -> int:
        return self._count_rows()


def _is_utf8(values: list[str]) -> bool:
    try:
        for v in values:
            v.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: an undecodable byte kept by surrogateescape
        return False
    return True


class MmkdClipDataset(JsonlDataset):
    """The official MMKD-CLIP layout: ``meta.jsonl`` with ``id``, ``imgpath``, ``txt``, ``metapath``.

    Labels come from the BIOMEDICA metadata JSON named by ``metapath``
    (``image_primary_label`` etc.) unless ``meta_labels=False``.
    """

    format = "mmkd-clip"

    def __init__(self, table: Path, *, meta_labels: bool = True, **kwargs: JSON) -> None:
        kwargs.setdefault("image_column", "imgpath")
        kwargs.setdefault("caption_column", "txt")
        kwargs.setdefault("id_column", "id")
        super().__init__(table, **kwargs)
        self.meta_labels = meta_labels
        self.options["meta_labels"] = meta_labels

    def _extra_labels(self, row: JSONDict, labels: dict | None) -> dict | None:
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
        with path.open("r", encoding="utf-8-sig") as f:
            for line in f:
                if line.strip():
                    first = json.loads(line)
                    return isinstance(first, dict) and "imgpath" in first and "txt" in first
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return False
