"""The reader interface shared by every dataset format.

A :class:`Dataset` yields :class:`~mmkd.data.Sample` records whose ``image`` field
is a *reference* the same dataset can resolve again later
(:meth:`Dataset.read_image_bytes`): a path relative to the dataset root, or
``<shard.tar>::<member>``, or ``<file.parquet>::<row>``.

Fingerprint: a SHA-256 over the format name and, for every sample in order, its
id, caption, image reference, image byte size and labels. Sizes (not mtimes) are
used so that a dataset copied to another machine keeps its fingerprint; content
hashes are not used because computing them means reading every image. Adding,
removing, reordering or editing a sample's id, caption, labels or image (where the
edit changes the image's size) changes the fingerprint; an in-place same-size
image edit does not.
"""

from __future__ import annotations

import abc
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmkd.config import AnyPath, StorageOptions, as_path, is_remote, is_url
from mmkd.data.errors import DatasetError
from mmkd.data.images import BadSample
from mmkd.data.sample import Sample
from mmkd.data.spec import DatasetSpec
from mmkd.jsontypes import JSONDict

REF_SEP = "::"
FINGERPRINT_VERSION = "mmkd-dataset-fp/1"
_LIMITED_FP = re.compile(r"^first-(\d+):(.*)$")


@dataclass
class Entry:
    """A sample plus what the fingerprint needs (``size`` = image bytes, -1 when absent)."""

    sample: Sample
    size: int
    location: str


# BIOMEDICA metadata fields kept as labels (the official metadata JSONs and webdataset JSONs).
BIOMEDICA_LABEL_KEYS = (
    "image_primary_label", "image_secondary_label", "image_panel_type", "image_panel_subtype",
    "primary_label", "secondary_label", "panel_type", "panel_subtype", "label", "labels",
)


def pick_labels(meta: dict, keys: Iterable[str] | None = None) -> dict | None:
    """The label fields of a metadata mapping (``None`` when it has none)."""
    wanted = BIOMEDICA_LABEL_KEYS if keys is None else tuple(keys)
    labels = {k: meta[k] for k in wanted if k in meta and meta[k] is not None}
    return labels or None


def parse_fingerprint(fp: str) -> tuple[int | None, str]:
    """``(limit, digest)`` of a :meth:`Dataset.fingerprint` string (``limit`` is ``None`` unless ``first-N:``)."""
    m = _LIMITED_FP.match(fp or "")
    return (int(m.group(1)), m.group(2)) if m else (None, fp or "")


def path_id(ref: str) -> str:
    """Stable sample id derived from an image reference (first 20 hex of its SHA-256)."""
    return hashlib.sha256(ref.encode("utf-8")).hexdigest()[:20]


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers inside names by value: ``shard-2`` before ``shard-10``.

    Shards and tables found by a folder or a glob are read in this order (sorted as
    strings, ``0, 1, 10, 11, ..., 2`` would change which samples fall in which fold).
    """
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def json_labels(labels: dict | None) -> str:
    """Canonical JSON of a labels mapping (``""`` for none), used in fingerprints."""
    return "" if not labels else json.dumps(labels, sort_keys=True, ensure_ascii=False, default=str)


class Dataset(abc.ABC):
    """A readable image-caption dataset.

    Subclasses set ``format`` and implement :meth:`_entries`,
    :meth:`read_image_bytes` and, where it is cheap, :meth:`_count`.

    Attributes:
        uri: absolute path the dataset was opened from (file, folder or pattern).
        root: folder that image references are relative to.
        format: the format name (``mmkd-clip``, ``jsonl``, ``csv``, ``parquet``, ``webdataset``).
        name: the configured dataset name (defaults to the format).
        options: the reader options it was opened with (see :meth:`spec`).
    """

    format: str = ""

    def __init__(self, uri: str, root: Path, *, name: str | None = None, options: JSONDict | None = None,
                 storage_options: StorageOptions | None = None) -> None:
        self.uri = uri
        self.root = root
        self.name = name or self.format
        self.options = dict(options or {})
        # fsspec options of an object-storage dataset (endpoint, credentials): kept for spec(), never logged
        self.storage_options = dict(storage_options or {})

    @property
    def source(self) -> str:
        """Value for ``Sample.source``: the dataset name, else the format."""
        return self.name

    def spec(self) -> DatasetSpec:
        """The :class:`~mmkd.data.spec.DatasetSpec` that ``open_dataset`` turns back into this dataset.

        Ship ``spec().to_dict()`` to workers; the store records it whole.
        """
        spec = DatasetSpec.parse({"path": self.uri, "format": self.format, "name": self.name, **self.options},
                                 where=f"{self.format} dataset {self.uri!r}")
        return spec.with_storage_options(self.storage_options) if self.storage_options else spec

    def __repr__(self) -> str:
        return f"{type(self).__name__}(uri={self.uri!r}, name={self.name!r})"

    @abc.abstractmethod
    def _entries(self, *, hashes: bool = True) -> Iterator[Entry]:
        """Yield every sample with its image size and a human-readable location.

        ``hashes=False`` (used by :meth:`fingerprint`) lets a reader skip reading
        image bytes just to fill ``image_sha256``.
        """

    def _count(self) -> int | None:
        """Number of samples when cheap to know, else ``None``."""
        return None

    def __bool__(self) -> bool:  # truthiness must not depend on a (possibly unknown) length
        return True

    def __len__(self) -> int:
        n = self._count()
        if n is None:
            raise TypeError(f"{self.format} dataset {self.uri!r} has no cheap length; count samples() instead")
        return n

    def samples(self) -> Iterator[Sample]:
        """Yield the samples in a stable order.

        Raises:
            DatasetError: two samples share an id (the message names both locations).
        """
        for entry in self._checked_entries():
            yield entry.sample

    def _checked_entries(self, *, hashes: bool = True) -> Iterator[Entry]:
        seen: dict[str, str] = {}
        for entry in self._entries(hashes=hashes):
            sid = entry.sample.sample_id
            if sid in seen:
                first = seen[sid]
                raise DatasetError(
                    f"duplicate sample id {sid!r} in {self.format} dataset {self.uri!r}: "
                    f"first at {first}, again at {entry.location}; make ids unique (or drop the id column "
                    f"to derive ids from image paths)"
                )
            seen[sid] = entry.location
            yield entry

    def fingerprint(self, limit: int | None = None) -> str:
        """Stable hash of the dataset's identity (see the module docstring for what it covers).

        Args:
            limit: hash only the first ``limit`` samples (a trial store made with
                ``--limit``); the result is then prefixed ``first-N:``.
        """
        h = hashlib.sha256(f"{FINGERPRINT_VERSION}\n{self.format}\n".encode())
        entries = self._checked_entries(hashes=False)
        for e in (entries if limit is None else itertools.islice(entries, limit)):
            s = e.sample
            record = [s.sample_id, s.caption, s.image, str(e.size), json_labels(s.labels)]
            h.update(json.dumps(record, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest() if limit is None else f"first-{limit}:{h.hexdigest()}"

    @abc.abstractmethod
    def read_image_bytes(self, ref: str) -> bytes:
        """Bytes of the image a ``Sample.image`` reference points to.

        Raises:
            BadSample: ``missing`` when the reference resolves to nothing.
            DatasetError: the reference is malformed for this format.
        """

    def read_many(self, refs: Iterable[str], *, on_error: str = "raise") -> list[bytes | BadSample]:
        """Bytes for many references, in order (subclasses open each shard/file once).

        Args:
            refs: image references.
            on_error: ``"raise"`` re-raises the first :class:`BadSample`; ``"return"``
                puts the exception object in that position and continues.
        """
        _check_on_error(on_error)
        refs = list(refs)
        if is_remote(getattr(self, "root", None)):
            return self._fetch_many(refs, on_error)
        out: list[bytes | BadSample] = []
        for ref in refs:
            try:
                out.append(self.read_image_bytes(ref))
            except BadSample as e:
                if on_error == "raise":
                    raise
                out.append(e)
        return out

    def _fetch_many(self, refs: list[str], on_error: str) -> list[bytes | BadSample]:
        """Images under an object-storage root, fetched concurrently by fsspec (one ``cat`` of the batch),
        so a batch costs about one round trip, not one per image."""
        out: list[Any] = [None] * len(refs)
        paths = {i: resolve_ref(self.root, ref) for i, ref in enumerate(refs) if ref}
        fs = self.root.fs
        same_fs = [i for i, p in paths.items() if is_remote(p) and p.fs is fs]
        got = fs.cat([paths[i].path for i in same_fs], on_error="return") if same_fs else {}
        for i, ref in enumerate(refs):
            if i in same_fs:
                data = got.get(paths[i].path, FileNotFoundError(paths[i].path))
                if isinstance(data, FileNotFoundError):
                    data = BadSample("missing", f"image file {str(paths[i])!r} not found")
                elif isinstance(data, BaseException):  # the store or network failed, not the sample: stop
                    raise OSError(f"image {paths[i]} cannot be read ({type(data).__name__}: {data})") from data
            else:
                try:
                    data = self.read_image_bytes(ref)
                except BadSample as e:
                    data = e
            if isinstance(data, BadSample) and on_error == "raise":
                raise data
            out[i] = data
        return out


class ContainerDataset(Dataset):
    """A dataset whose images live inside containers (tar shards, parquet files).

    :meth:`read_many` groups references by container and hands each group to
    :meth:`_read_container`, so each container is opened once; one reference is a
    batch of one. Subclasses implement :meth:`_split` and :meth:`_read_container`.
    """

    def read_image_bytes(self, ref: str) -> bytes:
        out = self.read_many([ref])[0]
        assert isinstance(out, bytes)  # read_many(on_error="raise") raises instead of returning BadSample
        return out

    def read_many(self, refs: Iterable[str], *, on_error: str = "raise") -> list[bytes | BadSample]:
        """Bytes for many references, in order; each container is read once."""
        _check_on_error(on_error)
        refs = list(refs)
        out: list[bytes | BadSample | None] = [None] * len(refs)
        by_container: dict[str, list[tuple[int, Any]]] = {}
        for i, ref in enumerate(refs):
            rel, key = self._split(ref)
            by_container.setdefault(rel, []).append((i, key))
        for rel, wanted in by_container.items():
            try:
                self._read_container(rel, wanted, out)
            except BadSample as e:
                for i, _ in wanted:
                    out[i] = e
        for value in out:
            if isinstance(value, BadSample) and on_error == "raise":
                raise value
        return out  # type: ignore[return-value]

    @abc.abstractmethod
    def _split(self, ref: str) -> tuple[str, str | int]:
        """``(container, key inside it)`` of a reference; DatasetError when malformed."""

    @abc.abstractmethod
    def _read_container(self, rel: str, wanted: list[tuple[int, str | int]], out: list) -> None:
        """Fill ``out[i]`` with bytes or a BadSample for each ``(i, key)`` of container ``rel``."""


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "return"):
        raise ValueError(f"on_error={on_error!r}; use 'raise' or 'return'")


def split_ref(ref: str, what: str) -> tuple[str, str]:
    """Split ``<container>::<inner>``; DatasetError when the separator is absent."""
    container, sep, inner = ref.rpartition(REF_SEP)
    if not sep or not container or not inner:
        raise DatasetError(f"image reference {ref!r} is not of the form '<{what}>{REF_SEP}<item>'")
    return container, inner


def resolved(value: str | os.PathLike, storage_options: StorageOptions | None = None) -> AnyPath:
    """An absolute local ``Path``, or a ``UPath`` for an object-storage URL (``s3://...``)."""
    p = as_path(value, storage_options)
    return p if is_remote(p) else Path(p).resolve()


def relative_ref(root: Path, path: Path) -> str:
    """POSIX path of ``path`` relative to ``root`` (absolute when outside it)."""
    if is_remote(path) or is_remote(root):
        text, base = str(path), str(root).rstrip("/") + "/"
        return text[len(base):] if text.startswith(base) else text
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def resolve_ref(root: Path, ref: str) -> Path:
    """Absolute path (or URL) for a relative (or absolute, or URL) reference."""
    if is_url(ref):
        return as_path(ref)
    p = Path(ref)
    return p if p.is_absolute() else root / ref


def file_size(path: Path) -> int:
    """Size in bytes, -1 when the file is absent."""
    try:
        return path.stat().st_size if is_remote(path) else os.stat(path).st_size
    except OSError:
        return -1
