"""The feature store: one directory holding teacher features for N samples.

Layout (see docs/store-format.md)::

    <store>/store.json              manifest
    <store>/index.parquet           one row per sample, ``row`` == array row
    <store>/features.zarr/<t>/{image,text,valid}   Zarr v3 arrays, chunked by block
    <store>/_progress/<t>/block-XXXXXX.done        written after the block is durable
    <store>/_failures/<t>/block-XXXXXX.parquet     bad samples of that block, with reasons
    <store>/_failures/dataset.parquet              dataset rows that never became samples

Writers own disjoint, block-aligned row ranges; arrays are pre-sized at
``add_teacher`` and never resized, so many processes can write at once.

This module holds creation, opening, geometry and teachers; the index accessor is
:mod:`mmkd.store.index`, block I/O :mod:`mmkd.store.blocks`, summaries and checks
:mod:`mmkd.store.reports`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from mmkd.config import AnyPath, as_path, is_remote
from mmkd.data import Sample
from mmkd.data.badrows import BadRow
from mmkd.jsontypes import JSON, JSONDict
from mmkd.store import format as fmt
from mmkd.store.blocks import BlocksMixin
from mmkd.store.failures import read_dataset_failures, write_dataset_failures
from mmkd.store.format import StoreError
from mmkd.store.index import DEFAULT_INDEX_CACHE_GROUPS, IndexMixin, index_schema, sample_rows
from mmkd.store.manifest import DatasetRecord, StoreManifest, read_manifest, write_manifest

if TYPE_CHECKING:
    from zarr.storage import FsspecStore

log = logging.getLogger(__name__)


class FeatureStore(IndexMixin, BlocksMixin):
    """A feature store on local (or network-mounted) disk, or on object storage (any fsspec URL).

    Create one with :meth:`create`, open one with :meth:`open`. Reads go through a
    small LRU cache of whole blocks, so reading rows in chunk-aware order (see
    :func:`mmkd.store.chunk_shuffled_batches`) costs about one sequential read;
    index rows go through an LRU of ``index.parquet`` row groups
    (:meth:`index_rows`, :meth:`index_columns`). What it holds and whether it is
    sound are plain functions over it: :func:`mmkd.store.store_info`,
    :func:`mmkd.store.validate_store`.
    """

    def __init__(self, path: Path, mode: str, cache_bytes: int,
                 index_cache_groups: int = DEFAULT_INDEX_CACHE_GROUPS) -> None:
        import zarr

        self.path = as_path(path)
        self.mode = mode
        self.manifest: StoreManifest = read_manifest(self.path)
        try:
            self._root = zarr.open_group(zarr_location(self.path / fmt.FEATURES, read_only=mode == "r"),
                                         mode="r" if mode == "r" else "a", zarr_format=3)
        except Exception as e:  # zarr raises several types for a missing or damaged group
            raise StoreError(f"{self.path}/{fmt.FEATURES} cannot be opened as a Zarr v3 group "
                             f"({type(e).__name__}: {e}); the store is damaged: rebuild it with `mmkd extract`") from e
        self._dims: dict[str, int] = {}
        self._init_index(index_cache_groups)
        self._init_blocks(cache_bytes)

    def dataset_failures(self):
        """Dataset rows that never became samples (``file``, ``line``, ``reason``, ``detail``), as a table."""
        return read_dataset_failures(self.path)

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
        dataset_spec: JSONDict | None = None,
        overwrite: bool = False,
        dataset_failures: Iterable[BadRow] | Callable[[], Iterable[BadRow]] | None = None,
    ) -> "FeatureStore":
        """Create a store for ``samples`` (their order fixes the rows).

        The store is built in a temporary sibling folder and renamed into place, so
        a crash never leaves a half-created store at ``path``.

        Args:
            dataset_spec: the whole dataset spec (``mmkd.data.DatasetSpec.to_dict()``),
                so later stages reopen the dataset from the store alone.
            dataset_failures: dataset rows that never became samples (``file``,
                ``line``, ``reason``, ``detail``: e.g. a reader's ``bad_rows``), or a
                callable returning them; read after ``samples`` is consumed, and
                recorded in ``_failures/dataset.parquet``.

        Raises:
            StoreError: ``path`` exists (and not ``overwrite``), no samples, a
                duplicate sample id, or a bad block size.
        """
        import zarr

        path = as_path(path)
        remote = is_remote(path)
        if block_size <= 0:
            raise StoreError(f"block_size must be a positive number of rows, got {block_size}")
        if (fmt.probe(path / fmt.MANIFEST) is not None) if remote else path.exists():
            if not overwrite:
                raise StoreError(f"store path {str(path)!r} already exists; open it, or pass overwrite=True")
        rows = sample_rows(samples)
        n = len(rows["sample_id"])
        table = pa.table(rows, schema=index_schema(pa))
        if remote:
            # No rename on object storage: the store is written in place and is a store
            # only once store.json (written last) exists; leftovers of a crash are replaced.
            if path.exists():
                path.fs.rm(path.path, recursive=True)
            tmp = path
        else:
            tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        fmt.write_parquet(table, tmp / fmt.INDEX, row_group_size=max(block_size, 1024))
        zarr.open_group(zarr_location(tmp / fmt.FEATURES), mode="w", zarr_format=3).attrs.update(
            {"format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION}
        )
        manifest = StoreManifest.new(
            n, block_size, DatasetRecord(uri=dataset_uri, fingerprint=dataset_fingerprint, spec=dataset_spec),
            fmt.index_fingerprint(zip(rows["sample_id"], rows["caption"], rows["image"], rows["image_sha256"])))
        if dataset_failures is not None:
            bad = list(dataset_failures() if callable(dataset_failures) else dataset_failures)
            if write_dataset_failures(tmp, bad):
                log.warning("store %s: %d dataset row(s) could not be read and are not in the index; "
                            "see `mmkd store info %s`", path, len(bad), path)
        write_manifest(tmp, manifest)
        if not remote:
            if path.exists() and overwrite:
                shutil.rmtree(path)
            try:
                os.replace(tmp, path)  # fails when another process created ``path`` meanwhile (a non-empty folder)
            except OSError as e:
                shutil.rmtree(tmp, ignore_errors=True)
                if path.exists():
                    raise StoreError(f"store path {str(path)!r} was created by another process meanwhile; "
                                     "open it") from e
                raise
            fmt.fsync_dir(path.parent)
        log.info("created store %s: %d samples, %d blocks of %d", path, n, manifest.num_blocks, block_size)
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", *, cache_bytes: int = 512 << 20,
             index_cache_groups: int = DEFAULT_INDEX_CACHE_GROUPS) -> "FeatureStore":
        """Open an existing store; ``mode`` is ``"r"`` (read only) or ``"a"`` (read/write).

        Args:
            cache_bytes: bound of the LRU of feature blocks.
            index_cache_groups: row groups of ``index.parquet`` kept by the index LRU.

        Raises:
            StoreError: not a store, or its manifest is unreadable or of an unknown version.
        """
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        path = as_path(path)
        if not (fmt.probe(path / fmt.MANIFEST) is not None if is_remote(path) else (path / fmt.MANIFEST).is_file()):
            raise StoreError(
                f"{str(path)!r} is not an mmkd store (no {fmt.MANIFEST}); create one with "
                "`mmkd extract` or `mmkd store import-mmkd`"
            )
        return cls(path, mode, cache_bytes, index_cache_groups)

    # ------------------------------------------------------------------ geometry
    @property
    def n(self) -> int:
        return self.manifest.num_samples

    @property
    def block_size(self) -> int:
        return self.manifest.block_size

    @property
    def num_blocks(self) -> int:
        return self.manifest.num_blocks

    def block_range(self, block: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of ``block``."""
        if not 0 <= block < self.num_blocks:
            raise StoreError(f"block {block} out of range: store {self.path} has blocks 0..{self.num_blocks - 1}")
        start = block * self.block_size
        return start, min(start + self.block_size, self.n)

    # ------------------------------------------------------------------ teachers
    @property
    def teachers(self) -> list[str]:
        return list(self.manifest.teachers)

    def _group(self, teacher: str):
        if teacher not in self._root:
            self._reload_manifest()
            if teacher not in self.teachers:
                raise StoreError(f"teacher {teacher!r} not in store {self.path}; it holds {self.teachers}")
        try:
            return self._root[teacher]
        except KeyError:
            raise StoreError(f"store {self.path}: teacher {teacher!r} is listed but its arrays "
                             f"({fmt.FEATURES}/{teacher}) are missing or unreadable; re-extract it with `mmkd extract "
                             f"--teacher {teacher} --overwrite` (`mmkd store validate {self.path}` lists every "
                             "problem)") from None

    def dim(self, teacher: str) -> int:
        if teacher not in self._dims:
            self._dims[teacher] = int(self._group(teacher).attrs["dim"])
        return self._dims[teacher]

    def attrs(self, teacher: str) -> JSONDict:
        """The teacher's attributes (an older store's ``normalised`` is read as ``normalized``)."""
        out = dict(self._group(teacher).attrs.asdict())
        if "normalised" in out:
            out.setdefault("normalized", out.pop("normalised"))
        return out

    def add_teacher(self, teacher: str, dim: int, attrs: JSONDict | None = None) -> None:
        """Pre-size the arrays of ``teacher`` (idempotent for the same ``dim``).

        Raises:
            StoreError: read-only store, bad name, or the teacher exists with another dim.
        """
        self._writable()
        if not teacher or "/" in teacher or teacher.startswith((".", "_")) or teacher == fmt.DATASET_FAILURES:
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
            if teacher not in self.manifest.teachers:
                self.manifest.teachers = sorted(self.manifest.teachers + [teacher])
                write_manifest(self.path, self.manifest)

    def _create_arrays(self, teacher: str, dim: int, attrs: JSONDict) -> None:
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
        attrs = dict(attrs)
        legacy = attrs.pop("normalised", None)  # the spelling of stores before 0.2; one spelling is kept
        g.attrs.update({**attrs, "dim": dim, "dtype": fmt.FEATURE_DTYPE,
                        "normalized": bool(attrs.get("normalized", True if legacy is None else legacy))})

    def update_attrs(self, teacher: str, /, **attrs: JSON) -> None:
        """Merge ``attrs`` into the teacher's attributes (JSON-serialisable values)."""
        self._writable()
        with fmt.file_lock(self.path / fmt.LOCK):
            g = self._group(teacher)
            g.attrs.update(json.loads(json.dumps(attrs)))

    def _reload_manifest(self) -> None:
        self.manifest = read_manifest(self.path)

    def _writable(self) -> None:
        if self.mode != "a":
            raise StoreError(f"store {self.path} is open read-only; open it with mode='a' to write")

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, n={self.n}, teachers={self.teachers})"


def zarr_location(path: AnyPath, read_only: bool = False) -> str | FsspecStore:
    """What ``zarr.open_group`` takes for ``path``: the folder as a string, or zarr's fsspec store for a URL."""
    if not is_remote(path):
        return str(path)
    from zarr.storage import FsspecStore

    # from_url builds its own asynchronous filesystem, as zarr needs (a UPath's is synchronous)
    return FsspecStore.from_url(str(path), storage_options=dict(path.storage_options), read_only=read_only)

