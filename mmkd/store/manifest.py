"""``store.json``, the store's manifest: the one module that reads, writes and checks it.

The manifest records the store's geometry (samples, block size, blocks), the dataset
its rows came from (uri, fingerprint, spec), the fingerprint of its index and its
teachers. Everything else reads it as a :class:`StoreManifest`; keys this mmkd does
not know are kept as read and written back unchanged.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmkd import __version__
from mmkd.config import as_path
from mmkd.data.base import parse_fingerprint
from mmkd.jsontypes import JSONDict
from mmkd.store import format as fmt
from mmkd.store.format import StoreError

log = logging.getLogger(__name__)

_KNOWN = ("format", "format_version", "created_at", "mmkd_version", "num_samples", "block_size", "num_blocks",
          "feature_dtype", "dataset", "index_fingerprint", "teachers")


def short_fingerprint(fp: str) -> str:
    """A fingerprint as mmkd prints it everywhere: the first 16 hex digits (after any ``first-N:``)."""
    limit, digest = parse_fingerprint(fp)
    return digest[:16] if limit is None else f"first-{limit}:{digest[:16]}"


@dataclass
class DatasetRecord:
    """The dataset a store's rows were extracted from.

    Attributes:
        uri: where it was read.
        fingerprint: :meth:`mmkd.data.Dataset.fingerprint` at creation (``first-N:`` when limited).
        spec: its :class:`~mmkd.data.DatasetSpec` as a dict (format, root, field map), ``None`` for old stores.
    """

    uri: str = ""
    fingerprint: str = ""
    spec: dict[str, Any] | None = None

    def to_dict(self) -> JSONDict:
        return {"uri": self.uri, "fingerprint": self.fingerprint, **({"spec": self.spec} if self.spec else {})}

    @classmethod
    def from_dict(cls, d: object, legacy_uri: object = None) -> DatasetRecord:
        """From ``store.json``'s ``dataset`` value (older stores: a bare top-level ``dataset_uri``)."""
        d = d if isinstance(d, dict) else {}
        return cls(uri=str(d.get("uri") or legacy_uri or ""), fingerprint=str(d.get("fingerprint") or ""),
                   spec=d.get("spec") or None)


@dataclass
class StoreManifest:
    """``store.json`` as a typed value.

    Attributes:
        num_samples, block_size, num_blocks: the geometry (``num_blocks`` = ceil(samples / block size)).
        dataset: the dataset the rows came from.
        index_fingerprint: :func:`mmkd.store.format.index_fingerprint` of the index at creation.
        teachers: teachers added so far, sorted.
        created_at, mmkd_version, format, format_version, feature_dtype: provenance and format.
        extra: keys this mmkd does not know, kept as read.
        geometry_error: why the geometry as read is unusable (missing or not a number), ``""`` when sound.
    """

    num_samples: int
    block_size: int
    num_blocks: int
    dataset: DatasetRecord = field(default_factory=DatasetRecord)
    index_fingerprint: str = ""
    teachers: list[str] = field(default_factory=list)
    created_at: str = ""
    mmkd_version: str = __version__
    format: str = fmt.FORMAT_NAME
    format_version: int = fmt.FORMAT_VERSION
    feature_dtype: str = fmt.FEATURE_DTYPE
    extra: dict[str, Any] = field(default_factory=dict)
    geometry_error: str = field(default="", compare=False)

    @classmethod
    def new(cls, num_samples: int, block_size: int, dataset: DatasetRecord, index_fingerprint: str) -> StoreManifest:
        """The manifest of a store being created now."""
        return cls(num_samples=num_samples, block_size=block_size, num_blocks=-(-num_samples // block_size),
                   dataset=dataset, index_fingerprint=index_fingerprint,
                   created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> JSONDict:
        return {**self.extra, "format": self.format, "format_version": self.format_version,
                "created_at": self.created_at, "mmkd_version": self.mmkd_version, "num_samples": self.num_samples,
                "block_size": self.block_size, "num_blocks": self.num_blocks, "feature_dtype": self.feature_dtype,
                "dataset": self.dataset.to_dict(), "index_fingerprint": self.index_fingerprint,
                "teachers": list(self.teachers)}

    @classmethod
    def from_dict(cls, d: JSONDict) -> StoreManifest:
        """From parsed JSON; a damaged geometry is kept (as 0) and named in ``geometry_error`` for validate."""
        try:
            geometry = [int(d[k]) for k in ("num_samples", "block_size", "num_blocks")]
            error = ""
        except (KeyError, TypeError, ValueError) as e:
            geometry, error = [0, 0, 0], f"store.json lacks a valid num_samples/block_size/num_blocks ({e!r})"
        n, bs, nb = geometry
        if not error and (bs <= 0 or nb != -(-n // bs)):
            error = f"store.json says num_blocks={nb}, but ceil(num_samples {n} / block_size {bs}) = {-(-n // max(bs, 1))}"
        extra = {k: v for k, v in d.items() if k not in _KNOWN}
        return cls(num_samples=n, block_size=bs, num_blocks=nb,
                   dataset=DatasetRecord.from_dict(d.get("dataset"), d.get("dataset_uri")),
                   index_fingerprint=str(d.get("index_fingerprint") or ""), teachers=list(d.get("teachers") or []),
                   created_at=str(d.get("created_at") or ""), mmkd_version=str(d.get("mmkd_version") or ""),
                   format=d.get("format"), format_version=d.get("format_version"),
                   feature_dtype=str(d.get("feature_dtype") or fmt.FEATURE_DTYPE), extra=extra, geometry_error=error)


def read_manifest(store_path: Path) -> StoreManifest:
    """Read and check ``<store_path>/store.json``.

    Raises:
        StoreError: unreadable, not a JSON object, another format or an unknown format version.
    """
    where = as_path(store_path) / fmt.MANIFEST
    try:
        raw = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{where} is unreadable ({type(e).__name__}: {e}); the store is damaged: "
                         "restore store.json from a backup or rebuild the store with `mmkd extract`") from e
    if not isinstance(raw, dict):
        raise StoreError(f"{where} holds a {type(raw).__name__}, not a JSON object; the store is damaged")
    m = StoreManifest.from_dict(raw)
    if m.format != fmt.FORMAT_NAME:
        raise StoreError(f"{where}: format is {m.format!r}, expected {fmt.FORMAT_NAME!r}")
    if m.format_version not in fmt.SUPPORTED_VERSIONS:
        raise StoreError(f"{where}: unknown format_version {m.format_version!r}; this mmkd ({__version__}) reads "
                         f"versions {list(fmt.SUPPORTED_VERSIONS)}: upgrade mmkd")
    return m


def write_manifest(store_path: Path, manifest: StoreManifest) -> None:
    """Write ``<store_path>/store.json`` atomically (sorted keys, two-space indent)."""
    fmt.atomic_write_json(as_path(store_path) / fmt.MANIFEST, manifest.to_dict())


def check_dataset(store_path: str | Path, recorded: DatasetRecord, uri: str, fingerprint: str, *, fix: str,
                  error: type[Exception] = StoreError) -> None:
    """The one check that a dataset holds the samples a store's rows were extracted from.

    Args:
        recorded: the store's dataset record.
        uri, fingerprint: the dataset now (fingerprint limited as the store's, ``first-N:``, or not).
        fix: what the user should do on a mismatch (the message ends with it).
        error: the error type raised (``ExtractError`` when extract checks before adding rows).

    Raises:
        error: the fingerprints differ; the message names both (or both sample limits).
    """
    old_fp, old_uri = recorded.fingerprint, recorded.uri
    if not old_fp:
        log.warning("store %s records no dataset fingerprint; cannot check that %s holds its samples", store_path, uri)
        return
    if old_fp == fingerprint:
        if old_uri != uri:
            log.info("dataset moved: store %s was made from %s, now reading the same samples at %s",
                     store_path, old_uri, uri)
        return
    old_limit, new_limit = parse_fingerprint(old_fp)[0], parse_fingerprint(fingerprint)[0]
    if old_limit != new_limit:
        def said(n: int | None) -> str:
            return "all samples" if n is None else f"the first {n} samples (--limit {n})"
        raise error(
            f"store {store_path} holds {said(old_limit)} of {old_uri}, but this run asks for {said(new_limit)}; "
            f"rerun with {'no --limit' if old_limit is None else f'--limit {old_limit}'}, or {fix}")
    where = f"dataset {uri}" if old_uri == uri else f"dataset {uri} (the store was made from {old_uri})"
    raise error(
        f"{where} does not match store {store_path}: dataset fingerprint {short_fingerprint(fingerprint)} != "
        f"recorded {short_fingerprint(old_fp)} (samples were added, removed, reordered or edited since the store was "
        f"created, or it is another dataset); rows would no longer line up with their samples: {fix}")
