"""Dataset readers: one interface (:class:`Dataset`), four input formats.

=============  ===============================================================
``mmkd-clip``  official MMKD-CLIP layout: ``meta.jsonl`` (+ BIOMEDICA metadata JSONs)
``jsonl``      a JSONL file next to the images (columns ``image``, ``caption``, ``id``)
``csv``        the same as CSV
``parquet``    HF ``datasets`` style parquet: image bytes (or ``{bytes, path}``) column
``webdataset`` tar shards with ``{key}.jpg|png`` + ``{key}.txt|json`` (BIOMEDICA)
=============  ===============================================================

:func:`open_dataset` opens any of them from a path or a :class:`~mmkd.data.spec.DatasetSpec`;
:func:`resolve_data` turns what ``--data`` names (a ``datasets:`` entry, a path, a mapping)
into a spec. Usage: see :mod:`mmkd.data`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from mmkd.config import Pipelines, StorageOptions, as_path, expand, is_remote, is_url, resolve_path, section
from mmkd.data.base import REF_SEP, Dataset, DatasetError, natural_key, resolved
from mmkd.data.remote import storage_error
from mmkd.data.sample import Sample
from mmkd.data.spec import DatasetSpec
from mmkd.data.parquet import ParquetDataset
from mmkd.data.tables import (
    CsvDataset,
    JsonlDataset,
    MmkdClipDataset,
    TableDataset,
    is_mmkd_clip_table,
)
from mmkd.data.webdataset import WebDataset
from mmkd.jsontypes import JSON, JSONDict

FORMATS: dict[str, type[Dataset]] = {
    "mmkd-clip": MmkdClipDataset,
    "jsonl": JsonlDataset,
    "csv": CsvDataset,
    "parquet": ParquetDataset,
    "webdataset": WebDataset,
}
_TABLE_NAMES = ("meta.jsonl", "metadata.jsonl", "metadata.csv", "data.jsonl", "data.csv")

__all__ = [
    "FORMATS", "REF_SEP", "CsvDataset", "Dataset", "DatasetError", "JsonlDataset", "MmkdClipDataset",
    "DatasetSpec", "ParquetDataset", "Sample", "WebDataset", "datasets_from_config", "detect_format", "get_dataset",
    "open_dataset", "resolve_data",
]


def detect_format(path: str | os.PathLike, storage_options: StorageOptions | None = None) -> str:
    """Guess the format of a dataset path (see :data:`FORMATS`).

    Raises:
        DatasetError: the path does not exist or matches no format.
    """
    p = as_path(path, storage_options)
    text = str(path)
    if any(ch in text for ch in "{*?[") and not p.exists():
        return "webdataset"
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".jsonl":
            return "mmkd-clip" if is_mmkd_clip_table(p) else "jsonl"
        by_suffix = {".csv": "csv", ".parquet": "parquet", ".tar": "webdataset"}
        if suffix in by_suffix:
            return by_suffix[suffix]
        raise DatasetError(f"cannot tell the format of {text!r} from its suffix {suffix!r}; pass format=")
    if not p.is_dir():
        raise DatasetError(f"dataset path {text!r} not found")
    if (p / "meta.jsonl").is_file() and is_mmkd_clip_table(p / "meta.jsonl"):
        return "mmkd-clip"
    found = _table_file(p)
    if found is not None:
        return "jsonl" if found.suffix == ".jsonl" else "csv"
    if next(p.rglob("*.parquet"), None) is not None:
        return "parquet"
    if next(p.rglob("*.tar"), None) is not None:
        return "webdataset"
    raise DatasetError(
        f"cannot tell the format of folder {text!r}: no meta.jsonl, single *.jsonl/*.csv, *.parquet or *.tar "
        f"found; pass format= (one of {sorted(FORMATS)})"
    )


def _table_file(folder: Path) -> Path | None:
    """The table describing a folder dataset: a well-known name, else the only *.jsonl/*.csv."""
    for name in _TABLE_NAMES:
        if (folder / name).is_file():
            return folder / name
    tables = sorted(folder.glob("*.jsonl"), key=lambda p: natural_key(p.name)) + sorted(
        folder.glob("*.csv"), key=lambda p: natural_key(p.name))
    if len(tables) > 1:
        raise DatasetError(
            f"folder {str(folder)!r} holds several tables {[t.name for t in tables]}; give the file path instead"
        )
    return tables[0] if tables else None


def open_dataset(path: str | os.PathLike | Mapping[str, JSON] | DatasetSpec, format: str | None = None,
                 **options: JSON) -> Dataset:
    """Open a dataset.

    Args:
        path: a file, folder or shard pattern; a :class:`DatasetSpec`; or a spec
            mapping (as from :meth:`Dataset.spec` or a ``datasets:`` entry).
        format: one of :data:`FORMATS`; detected from the path when ``None``.
        **options: spec keys or reader keywords, e.g. ``root``, ``fields``,
            ``caption_column``, ``label_columns``, ``caption_field``, ``hash_images``, ``name``;
            and ``on_bad_row`` (``record``/``fail``), a run policy kept out of the spec.

    Raises:
        DatasetError: unknown format, missing path, bad layout, unknown key or option.
    """
    on_bad_row = options.pop("on_bad_row", None)
    if isinstance(path, DatasetSpec) and not format and not options:
        spec = path
    else:
        base = path.to_dict() if isinstance(path, DatasetSpec) else (
            dict(path) if isinstance(path, Mapping) else {"path": str(path)})
        extra = {k: v for k, v in options.items() if v is not None}
        if format:
            extra["format"] = format
        spec = DatasetSpec.parse({**base, **extra})
    try:
        fmt = spec.format or detect_format(spec.path, spec.storage_options)
        if fmt not in FORMATS:
            raise DatasetError(f"unknown dataset format {fmt!r}; valid formats: {sorted(FORMATS)}")
        cls = FORMATS[fmt]
        kwargs = spec.reader_kwargs(fmt)
        if on_bad_row is not None:
            kwargs["on_bad_row"] = on_bad_row
        try:
            if issubclass(cls, TableDataset):
                return _open_table(cls, as_path(spec.path, spec.storage_options), kwargs)
            return cls(spec.path, **kwargs)
        except TypeError as e:
            raise DatasetError(f"bad options {sorted(kwargs)} for {fmt} dataset {spec.path!r}: {e}") from e
    except DatasetError:
        raise
    except Exception as e:  # on object storage: botocore/aiohttp/gcsfs raise many types, all "cannot reach"
        if not is_url(spec.path):
            raise
        raise DatasetError(f"dataset {spec.path}: {storage_error(spec.path, e)}") from e


def _open_table(cls: type[Dataset], path: Path, options: JSONDict) -> Dataset:
    if not path.exists():
        raise DatasetError(f"dataset path {str(path)!r} not found")
    uri = str(resolved(path))
    if path.is_dir():
        table = (path / "meta.jsonl") if cls is MmkdClipDataset else _table_file(path)
        if table is None or not table.is_file():
            raise DatasetError(f"no {cls.format} table found in folder {str(path)!r}")
        path = table
    return cls(path, uri=uri, **options)


def datasets_from_config(pipelines: Pipelines) -> dict[str, DatasetSpec]:
    """The ``datasets:`` section as ``name -> spec``, paths resolved against the file that declared each.

    Raises:
        DatasetError: an entry is not a mapping, has no ``path`` or has an unknown key.
    """
    out: dict[str, DatasetSpec] = {}
    for name, entry in section(pipelines, "datasets").items():
        if not isinstance(entry, dict):
            raise DatasetError(f"datasets entry {name!r} must be a mapping with a 'path' (got {entry!r})")
        spec = DatasetSpec.parse({"name": name, **entry}, where=f"datasets entry {name!r}")
        out[name] = _resolved(spec, lambda v, n=name: resolve_path(pipelines, v, section="datasets", entry=n))
    return out


def _resolved(spec: DatasetSpec, resolve: Callable[[str], str | os.PathLike]) -> DatasetSpec:
    raw = spec.path
    path = str(resolve(raw))
    if ("{" in raw or "*" in raw) and not is_url(path):
        path = os.path.normpath(path)
    root = None if spec.root is None else str(resolve(spec.root))
    return DatasetSpec(path=path, format=spec.format, name=spec.name, root=root, fields=dict(spec.fields),
                       options=dict(spec.options), storage_options=dict(spec.storage_options))


def resolve_data(value: str | os.PathLike | Mapping[str, JSON] | DatasetSpec, pipelines: Pipelines | None = None, *,
                 base: Path | None = None) -> DatasetSpec:
    """What ``--data VALUE`` names, as a spec: a ``datasets:`` name, a path or pattern, or a spec mapping.

    Relative paths in a mapping resolve against ``base`` (the file that declared
    it), else the working directory.

    Raises:
        DatasetError: not a declared name and not an existing path (the message
            lists the declared names), or a malformed mapping.
    """
    pipelines = Pipelines.of(pipelines)
    if isinstance(value, DatasetSpec):
        return value
    if isinstance(value, Mapping):
        return _resolved(DatasetSpec.parse(value), lambda v: resolve_path(None, v, base=base or Path.cwd()))
    text = str(value)
    declared = section(pipelines, "datasets")
    if text in declared:
        return datasets_from_config(pipelines)[text]
    resolved = resolve_path(None, text, base=base or Path.cwd())
    if not resolved.exists() and not any(ch in text for ch in "{*?["):
        raise DatasetError(f"--data {text!r}: no such file or folder ({resolved}), and no dataset of that name is "
                           f"declared under `datasets:` (declared: {sorted(declared)}); give an existing path or a "
                           f"declared name")
    if is_remote(resolved):
        return DatasetSpec(path=str(resolved))
    path = str(resolved.resolve()) if resolved.exists() else os.path.normpath(expand(str(resolved)))
    return DatasetSpec(path=path)


def get_dataset(name: str, pipelines: Pipelines, **overrides: JSON) -> Dataset:
    """Open the dataset named ``name`` in the ``datasets:`` section (``overrides`` win over the entry).

    Raises:
        DatasetError: unknown name (the message lists the valid ones), or the dataset fails to open.
    """
    specs = datasets_from_config(pipelines)
    if name not in specs:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {sorted(specs)} (see the datasets: section)")
    return open_dataset(specs[name], **overrides)
