"""Dataset readers: one interface (:class:`Dataset`), four input formats.

=============  ===============================================================
``mmkd-clip``  official MMKD-CLIP layout: ``meta.jsonl`` (+ BIOMEDICA metadata JSONs)
``jsonl``      a JSONL file next to the images (columns ``image``, ``caption``, ``id``)
``csv``        the same as CSV
``parquet``    HF ``datasets`` style parquet: image bytes (or ``{bytes, path}``) column
``webdataset`` tar shards with ``{key}.jpg|png`` + ``{key}.txt|json`` (BIOMEDICA)
=============  ===============================================================

Example::

    ds = open_dataset("../shared/fixtures/mmkd-clip-demo")
    for sample in ds.samples():
        image = decode_image(ds.read_image_bytes(sample.image))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmkd.data.base import REF_SEP, Dataset, DatasetError, Sample
from mmkd.data.parquet import ParquetDataset
from mmkd.data.tables import (
    CsvDataset,
    JsonlDataset,
    MmkdClipDataset,
    TableDataset,
    is_mmkd_clip_table,
)
from mmkd.data.webdataset import WebDataset

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
    "ParquetDataset", "Sample", "WebDataset", "datasets_from_config", "detect_format", "get_dataset",
    "open_dataset",
]


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of a dataset path (see :data:`FORMATS`).

    Raises:
        DatasetError: the path does not exist or matches no format.
    """
    p = Path(path)
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
    tables = sorted(folder.glob("*.jsonl")) + sorted(folder.glob("*.csv"))
    if len(tables) > 1:
        raise DatasetError(
            f"folder {str(folder)!r} holds several tables {[t.name for t in tables]}; give the file path instead"
        )
    return tables[0] if tables else None


def open_dataset(path: str | os.PathLike | dict[str, Any], format: str | None = None, **options: Any) -> Dataset:
    """Open a dataset.

    Args:
        path: a file, folder or shard pattern; or a spec mapping (as from
            :meth:`Dataset.spec` or a ``datasets:`` entry) holding ``path`` and options.
        format: one of :data:`FORMATS`; detected from the path when ``None``.
        **options: reader options, e.g. ``caption_column``, ``id_column``,
            ``label_columns``, ``image_column``, ``root`` (folder formats),
            ``caption_field``/``id_field``/``label_fields`` (webdataset),
            ``hash_images``, ``name``.

    Raises:
        DatasetError: unknown format, missing path, bad layout or options.
    """
    if isinstance(path, dict):
        spec = dict(path)
        if "path" not in spec:
            raise DatasetError(f"dataset spec {spec} has no 'path'")
        path = spec.pop("path")
        format = format or spec.pop("format", None)
        spec.pop("format", None)
        options = {**spec, **options}
    options = {k: v for k, v in options.items() if v is not None}
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; valid formats: {sorted(FORMATS)}")
    cls = FORMATS[fmt]
    try:
        if issubclass(cls, TableDataset):
            return _open_table(cls, Path(path), options)
        return cls(path, **options)
    except TypeError as e:
        raise DatasetError(f"bad options {sorted(options)} for {fmt} dataset {str(path)!r}: {e}") from e


def _open_table(cls: type[Dataset], path: Path, options: dict[str, Any]) -> Dataset:
    uri = str(path.resolve())
    if path.is_dir():
        table = (path / "meta.jsonl") if cls is MmkdClipDataset else _table_file(path)
        if table is None or not table.is_file():
            raise DatasetError(f"no {cls.format} table found in folder {str(path)!r}")
        path = table
    return cls(path, uri=uri, **options)


def datasets_from_config(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``datasets:`` section as ``name -> spec`` with paths resolved against the pipelines file.

    Raises:
        DatasetError: an entry is not a mapping or has no ``path``.
    """
    from mmkd.config import resolve_path, section

    out: dict[str, dict[str, Any]] = {}
    for name, entry in section(cfg, "datasets").items():
        if not isinstance(entry, dict) or "path" not in entry:
            raise DatasetError(f"datasets entry {name!r} must be a mapping with a 'path' (got {entry!r})")
        spec = dict(entry)
        raw = str(spec["path"])
        resolved = resolve_path(cfg, raw)
        spec["path"] = str(resolved) if "{" not in raw else os.path.normpath(str(resolved))
        if spec.get("root") is not None:
            spec["root"] = str(resolve_path(cfg, spec["root"]))
        spec.setdefault("name", name)
        out[name] = spec
    return out


def get_dataset(name: str, cfg: dict[str, Any], **overrides: Any) -> Dataset:
    """Open the dataset named ``name`` in the ``datasets:`` section (``overrides`` win over the entry).

    Raises:
        DatasetError: unknown name (the message lists the valid ones), or the dataset fails to open.
    """
    specs = datasets_from_config(cfg)
    if name not in specs:
        raise DatasetError(f"unknown dataset {name!r}; valid names: {sorted(specs)} (see the datasets: section)")
    return open_dataset({**specs[name], **overrides})
