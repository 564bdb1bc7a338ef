"""A dataset is a spec: a typed, serialisable value that opens the same dataset again.

A :class:`DatasetSpec` holds the format, the path, the images ``root``, the
**field map** (which column / JSON key holds the image, caption, id and labels) and
the reader options. Every way of naming a dataset (``--data PATH``, a
``datasets:`` entry, a mapping in an eval set) becomes one; the feature store
records it whole (``store.json: dataset.spec``), so ``distill`` and ``eval`` reopen
the dataset from the store alone. ``--data NEW_PATH`` on a later stage only
relocates it (:meth:`DatasetSpec.relocated`).

The written form (pipelines.yaml, store.json)::

    path: /data/roco/train.jsonl
    format: jsonl                 # mmkd-clip | jsonl | csv | parquet | webdataset (detected when absent)
    root: /data/roco/images       # folder formats: images folder when not the table's folder
    fields: {image: img, caption: text, id: uid, labels: [modality]}
    options: {hash_images: false}

The reader keyword names (``caption_column``, ``caption_field``, ``hash_images``...)
are accepted too, at top level, and mapped into ``fields`` / ``options``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmkd.config import StorageOptions, is_url
from mmkd.data.errors import DatasetError
from mmkd.jsontypes import JSON, JSONDict

FIELD_KEYS = ("image", "caption", "id", "labels")
TABLE_FORMATS = ("mmkd-clip", "jsonl", "csv")
# the reader keyword each field maps to, per format family
_COLUMN_KWARGS = {"image": "image_column", "caption": "caption_column", "id": "id_column", "labels": "label_columns"}
_WDS_KWARGS = {"caption": "caption_field", "id": "id_field", "labels": "label_fields"}
_OPTIONS = {
    "mmkd-clip": ("hash_images", "meta_labels"),
    "jsonl": ("hash_images",),
    "csv": ("hash_images",),
    "parquet": ("batch_rows",),
    "webdataset": ("hash_images",),
}
_LEGACY_FIELDS = {**{v: k for k, v in _COLUMN_KWARGS.items()}, **{v: k for k, v in _WDS_KWARGS.items()}}
_ALL_OPTIONS = sorted({o for opts in _OPTIONS.values() for o in opts})
TOP_KEYS = ("path", "format", "name", "root", "fields", "options", "storage_options")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to open a dataset again, anywhere.

    Attributes:
        path: file, folder or shard pattern (absolute once resolved).
        format: reader format; ``None``: detected from the path when opened.
        name: the dataset's name (``datasets:`` key), used as ``Sample.source``.
        root: folder that image paths are relative to (folder formats only).
        fields: field map, keys among :data:`FIELD_KEYS`.
        options: reader options (``hash_images``, ``batch_rows``, ``meta_labels``).
    """

    path: str
    format: str | None = None
    name: str | None = None
    root: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    # fsspec options of an object-storage dataset (endpoint_url, key, secret, profile...): may hold
    # credentials, so never in repr() and left out of to_dict() (store.json, job records) unless asked
    storage_options: StorageOptions = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, value: DatasetSpec | str | os.PathLike | Mapping[str, JSON], *,
              where: str = "dataset spec") -> DatasetSpec:
        """A spec from a path, a mapping (written form or reader keywords) or a spec.

        Raises:
            DatasetError: a mapping without ``path``, an unknown key, or a field or
                option of the wrong type (the message names ``where``, the key and the valid keys).
        """
        if isinstance(value, DatasetSpec):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls(path=str(value))
        if not isinstance(value, Mapping):
            raise DatasetError(f"{where}: expected a path or a mapping, got {type(value).__name__} {value!r}")
        raw = dict(value)
        if not raw.get("path"):
            raise DatasetError(f"{where} {raw} has no 'path'; give the dataset's file, folder or shard pattern")
        fields = dict(raw.pop("fields", None) or {})
        options = dict(raw.pop("options", None) or {})
        storage = raw.pop("storage_options", None) or {}
        if not isinstance(storage, Mapping):
            raise DatasetError(f"{where}: `storage_options` must be a mapping of fsspec options "
                               f"(e.g. {{endpoint_url: ..., profile: ...}}), got a {type(storage).__name__}")
        for key in list(raw):
            if key in _LEGACY_FIELDS:
                fields.setdefault(_LEGACY_FIELDS[key], raw.pop(key))
            elif key in _ALL_OPTIONS:
                options.setdefault(key, raw.pop(key))
        unknown = sorted(set(raw) - set(TOP_KEYS))
        if unknown:
            raise DatasetError(f"{where}: unknown key(s) {unknown}; valid keys: {list(TOP_KEYS)} (image/caption/id/"
                               f"label columns go under `fields:`, reader options under `options:`)")
        bad = sorted(set(fields) - set(FIELD_KEYS))
        if bad:
            raise DatasetError(f"{where}: unknown field(s) {bad} in `fields:`; valid fields: {list(FIELD_KEYS)}")
        bad = sorted(set(options) - set(_ALL_OPTIONS))
        if bad:
            raise DatasetError(f"{where}: unknown option(s) {bad} in `options:`; valid options: {_ALL_OPTIONS}")
        labels = fields.get("labels")
        if isinstance(labels, str):
            fields["labels"] = [labels]
        elif labels is not None and not (isinstance(labels, (list, tuple)) and all(isinstance(x, str) for x in labels)):
            raise DatasetError(f"{where}: `fields.labels` must be a column name or a list of them, got {labels!r}")
        for key in ("image", "caption", "id"):
            if key in fields and fields[key] is not None and not isinstance(fields[key], str):
                raise DatasetError(f"{where}: `fields.{key}` must be a column / key name, got {fields[key]!r}")
        return cls(path=str(raw["path"]), format=raw.get("format"), name=raw.get("name"),
                   root=None if raw.get("root") is None else str(raw["root"]), fields=fields, options=options,
                   storage_options=dict(storage))

    def reader_kwargs(self, fmt: str) -> dict[str, object]:
        """Keyword arguments of the ``fmt`` reader for this spec.

        Raises:
            DatasetError: a field, option or ``root`` the format does not take.
        """
        kwargs: dict[str, Any] = {}
        names = _WDS_KWARGS if fmt == "webdataset" else _COLUMN_KWARGS
        for key, value in self.fields.items():
            if key not in names:
                raise DatasetError(f"dataset {self.path!r}: a {fmt} dataset has no `{key}` field to map "
                                   f"(mappable: {sorted(names)})")
            kwargs[names[key]] = value
        allowed = _OPTIONS.get(fmt, ())
        for key, value in self.options.items():
            if key not in allowed:
                raise DatasetError(f"dataset {self.path!r}: option {key!r} does not apply to {fmt} datasets "
                                   f"(its options: {list(allowed)})")
            kwargs[key] = value
        if self.root is not None:
            if fmt not in TABLE_FORMATS:
                raise DatasetError(f"dataset {self.path!r}: `root` applies to folder formats {list(TABLE_FORMATS)}, "
                                   f"not {fmt} (its images live inside its files)")
            kwargs["root"] = self.root
        if self.name is not None:
            kwargs["name"] = self.name
        if self.storage_options:
            kwargs["storage_options"] = dict(self.storage_options)
        return kwargs

    def with_storage_options(self, storage_options: StorageOptions) -> DatasetSpec:
        """The same spec with these fsspec ``storage_options``."""
        return replace(self, storage_options=dict(storage_options))

    def to_dict(self, *, with_storage_options: bool = False) -> JSONDict:
        """The written form (JSON/YAML-safe; empty parts left out).

        Args:
            with_storage_options: include ``storage_options`` (credentials, maybe): only for
                shipping the spec to workers, never for anything written down.
        """
        out: dict[str, Any] = {"path": self.path}
        for key in ("format", "name", "root"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.fields:
            out["fields"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.fields.items()}
        if self.options:
            out["options"] = dict(self.options)
        if with_storage_options and self.storage_options:
            out["storage_options"] = dict(self.storage_options)
        return out

    def relocated(self, new_path: str | os.PathLike) -> DatasetSpec:
        """The same dataset read from ``new_path`` (moved to another mount).

        The ``root`` keeps its place relative to the table's folder when it is found
        there (``scans/tables/x.jsonl`` with ``scans/pixels`` moved together as one
        folder, a root inside the table's folder); else the old ``root`` is kept when it
        still exists (only the table moved); else the moved place is used, and the
        reader names it. Give a spec with a new ``root`` when the images moved elsewhere.
        """
        new = str(new_path)
        if is_url(new) or is_url(self.path):
            return self._relocated_url(new)
        if not any(ch in new for ch in "{*?["):
            new = str(Path(new).expanduser().resolve())
        root = self.root
        if root is not None and "://" not in root and "://" not in self.path:
            moved = os.path.normpath(_folder(new) / os.path.relpath(root, _folder(self.path)))
            local = "://" not in new
            root = moved if (not local or Path(moved).is_dir() or not Path(root).is_dir()) else root
        return DatasetSpec(path=new, format=self.format, name=self.name, root=root, fields=dict(self.fields),
                           options=dict(self.options), storage_options=dict(self.storage_options))

    def _relocated_url(self, new: str) -> DatasetSpec:
        """:meth:`relocated` when either place is an object-storage URL (folders compared as text)."""
        if not is_url(new) and not any(ch in new for ch in "{*?["):
            new = str(Path(new).expanduser().resolve())
        root = self.root
        old_dir = str(_folder(self.path)) if not is_url(self.path) else _url_folder(self.path)
        if root is not None and root.startswith(old_dir.rstrip("/") + "/"):
            rel = root[len(old_dir.rstrip("/")) + 1:]
            root = f"{_url_folder(new) if is_url(new) else _folder(new)}/{rel}"
        return DatasetSpec(path=new, format=self.format, name=self.name, root=root, fields=dict(self.fields),
                           options=dict(self.options), storage_options=dict(self.storage_options))


def _url_folder(url: str) -> str:
    """The folder (prefix) a dataset URL stands for: itself for a prefix, the parent of a file or pattern."""
    last = url.rstrip("/").rsplit("/", 1)[-1]
    if any(ch in url for ch in "{*?[") or "." in last:
        return url.rstrip("/").rsplit("/", 1)[0]
    return url.rstrip("/")


def _folder(path: str) -> Path:
    """The folder a dataset path stands for: itself for a folder, the parent of a file or shard pattern."""
    p = Path(path)
    if any(ch in path for ch in "{*?[") or p.suffix:
        return p.parent
    return p
