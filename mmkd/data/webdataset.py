"""Webdataset tar shards (BIOMEDICA style): ``{key}.jpg|jpeg|png`` + ``{key}.txt|json``.

A sample is a run of consecutive members sharing a key (the member path up to the
first dot of its file name). The caption is the ``.txt`` member, else the JSON's
``caption_field``; labels are the BIOMEDICA label fields of the JSON; the id is the
key (or the JSON's ``id_field`` when set). ``Sample.image`` is
``<shard.tar>::<member>`` with the shard relative to the dataset root.

``image_sha256`` is ``None`` unless ``hash_images=True``: without it, iterating only
reads tar headers and the small text members (image data is skipped by seeking).

A sample whose ``.txt`` is not UTF-8 or whose ``.json`` is not UTF-8 JSON is a bad
row (:mod:`mmkd.data.badrows`, recorded as ``<shard>::<member>``) and is skipped,
or with ``on_bad_row="fail"`` stops the job.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import json
import re
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

from mmkd.config import AnyPath, StorageOptions, as_path, is_remote, is_url

from mmkd.data.badrows import BadRowsMixin
from mmkd.data.images import BadSample
from mmkd.data.base import (
    ContainerDataset,
    DatasetError,
    Entry,
    natural_key,
    pick_labels,
    relative_ref,
    resolve_ref,
    sha256_hex,
    split_ref,
)
from mmkd.data.sample import Sample

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp")
_BRACE = re.compile(r"\{([^{}]*)\}")
_SHARD_CACHE = 8


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` lists and ``{000..009}`` zero-padded ranges (webdataset shard syntax)."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        choices = body.split(",")
    head, tail = pattern[: m.start()], pattern[m.end():]
    return [out for c in choices for out in expand_braces(head + c + tail)]


def find_shards(path: str, storage_options: StorageOptions | None = None) -> tuple[Path, list[Path]]:
    """(root, shard files) for a folder, a tar file, or a brace/glob pattern of shards (local or a URL)."""
    if is_url(path):
        return _find_remote_shards(path, storage_options or {})
    p = Path(path)
    if p.is_dir():
        root = p.resolve()
        return root, sorted(root.rglob("*.tar"), key=lambda s: natural_key(s.relative_to(root).as_posix()))
    if p.is_file():
        return p.resolve().parent, [p.resolve()]
    if not any(ch in path for ch in "{*?["):
        raise DatasetError(f"webdataset {path!r} not found (give a folder, a .tar shard, or a shard pattern)")
    literal = re.split(r"[{*?\[]", path, maxsplit=1)[0]
    root = Path(literal if literal.endswith(("/", "\\")) else Path(literal).parent or ".").resolve()
    shards: list[Path] = []
    for pat in expand_braces(path):
        matches = sorted(glob.glob(pat), key=natural_key) if any(ch in pat for ch in "*?[") else [pat]
        for m in matches:
            if not Path(m).is_file():
                raise DatasetError(f"shard {m!r} of pattern {path!r} not found")
            shards.append(Path(m).resolve())
    return root, list(dict.fromkeys(shards))


def _find_remote_shards(path: str, storage_options: StorageOptions) -> tuple[AnyPath, list[AnyPath]]:
    """:func:`find_shards` on object storage: fsspec lists and globs the bucket."""
    p = as_path(path, storage_options)
    if not any(ch in path for ch in "{*?["):
        if p.is_file():
            return p.parent, [p]
        if p.is_dir():
            return p, sorted((s for s in p.rglob("*.tar")), key=str)
        raise DatasetError(f"webdataset {path!r} not found (give a folder, a .tar shard, or a shard pattern)")
    literal = re.split(r"[{*?\[]", path, maxsplit=1)[0]
    root = as_path(literal.rstrip("/") if literal.endswith("/") else literal.rsplit("/", 1)[0], storage_options)
    protocol = path.split("://", 1)[0]
    shards: list[AnyPath] = []
    for pat in expand_braces(path):
        if any(ch in pat for ch in "*?["):
            matches = [f"{protocol}://{m}" for m in sorted(p.fs.glob(pat))]
        else:
            matches = [pat]
        for m in matches:
            shard = as_path(m, storage_options)
            if not shard.is_file():
                raise DatasetError(f"shard {m!r} of pattern {path!r} not found")
            shards.append(shard)
    return root, list({str(s): s for s in shards}.values())


@contextlib.contextmanager
def _open_tar(path: AnyPath) -> Iterator[tarfile.TarFile]:
    """A shard opened for random access (on object storage through fsspec's read-ahead file)."""
    if not is_remote(path):
        with tarfile.open(path, "r:") as tf:
            yield tf
        return
    with path.open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
        yield tf


def split_member(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: the key ends at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class WebDataset(BadRowsMixin, ContainerDataset):
    """Samples from tar shards, in shard order then member order (``on_bad_row``: see the module doc)."""

    format = "webdataset"

    def __init__(
        self,
        path: str | Path,
        *,
        caption_field: str = "caption",
        id_field: str | None = None,
        label_fields: Sequence[str] | None = None,
        hash_images: bool = False,
        name: str | None = None,
        on_bad_row: str = "record",
        storage_options: StorageOptions | None = None,
    ) -> None:
        spec_path = str(path)
        root, shards = find_shards(spec_path, storage_options)
        if not shards:
            raise DatasetError(f"no .tar shards found for webdataset {spec_path!r}")
        if is_url(spec_path):
            uri = spec_path
        else:
            uri = spec_path if any(ch in spec_path for ch in "{*?[") else str(Path(spec_path).resolve())
        if not is_url(uri) and not Path(uri).is_absolute():
            uri = str(Path.cwd() / uri)
        options = dict(caption_field=caption_field, id_field=id_field,
                       label_fields=list(label_fields) if label_fields else None, hash_images=hash_images)
        super().__init__(uri, root, name=name, options=options, storage_options=storage_options)
        self.shards = [relative_ref(root, s) for s in shards]
        self.caption_field, self.id_field = caption_field, id_field
        self.label_fields = list(label_fields) if label_fields else None
        self.hash_images = hash_images
        self._index_cache: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
        self._lock = threading.Lock()  # read_many may be called from several decode threads
        self._init_bad_rows(on_bad_row)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_lock"], state["_index_cache"] = None, OrderedDict()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _entries(self, *, hashes: bool = True) -> Iterator[Entry]:
        self._reset_bad_rows()
        for rel in self.shards:
            path = resolve_ref(self.root, rel)
            try:
                with _open_tar(path) as tf:
                    members = (m for m in tf if m.isfile())
                    for key, group in itertools.groupby(members, key=lambda m: split_member(m.name)[0]):
                        entry = self._entry(rel, tf, key, list(group), hashes and self.hash_images)
                        if entry is not None:
                            yield entry
            except (tarfile.TarError, OSError) as e:
                raise DatasetError(f"shard {str(path)!r} of {self.uri!r} is unreadable: {e}") from e

    def _entry(self, rel: str, tf: tarfile.TarFile, key: str, group: list[tarfile.TarInfo],
               hashes: bool) -> Entry | None:
        """The sample of one key; ``None`` (a recorded bad row) when its text members are unusable."""
        by_ext = {split_member(m.name)[1]: m for m in group}
        image = next((by_ext[e] for e in IMAGE_EXTS if e in by_ext), None)
        meta: dict = {}
        if "json" in by_ext:
            try:
                meta = json.loads(tf.extractfile(by_ext["json"]).read().decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                self._bad_row(f"{rel}::{by_ext['json'].name}", None, f"not valid UTF-8 JSON ({e})")
                return None
            meta = meta if isinstance(meta, dict) else {}
        if "txt" in by_ext:
            try:
                caption = tf.extractfile(by_ext["txt"]).read().decode("utf-8")
            except UnicodeDecodeError as e:
                self._bad_row(f"{rel}::{by_ext['txt'].name}", None, f"caption is not UTF-8 ({e})")
                return None
        else:
            caption = meta.get(self.caption_field)
        sid = meta.get(self.id_field) if self.id_field else None
        sha = sha256_hex(tf.extractfile(image).read()) if hashes and image is not None else None
        ref = f"{rel}::{image.name if image is not None else key}"
        sample = Sample(sample_id=str(sid) if sid not in (None, "") else key,
                        caption="" if caption is None else str(caption), image=ref, image_sha256=sha,
                        source=self.source, labels=pick_labels(meta, self.label_fields))
        return Entry(sample, image.size if image is not None else -1, f"{rel} key {key!r}")

    def _shard_index(self, rel: str) -> dict[str, tuple[int, int]]:
        """member name -> (data offset, size) for one shard (a few shards kept cached)."""
        with self._lock:
            if rel in self._index_cache:
                self._index_cache.move_to_end(rel)
                return self._index_cache[rel]
        path = resolve_ref(self.root, rel)
        try:
            with _open_tar(path) as tf:
                index = {m.name: (m.offset_data, m.size) for m in tf if m.isfile()}
        except FileNotFoundError as e:
            raise BadSample("missing", f"shard {str(path)!r} not found") from e
        except tarfile.TarError as e:
            raise DatasetError(f"shard {str(path)!r} is unreadable: {e}") from e
        with self._lock:
            self._index_cache[rel] = index
            if len(self._index_cache) > _SHARD_CACHE:
                self._index_cache.popitem(last=False)
        return index

    def _split(self, ref: str) -> tuple[str, str]:
        return split_ref(ref, "shard.tar")

    def _read_container(self, rel: str, wanted: list[tuple[int, str]], out: list) -> None:
        index = self._shard_index(rel)
        path = resolve_ref(self.root, rel)
        with (path.open("rb") if is_remote(path) else open(path, "rb")) as f:
            for i, member in sorted(wanted, key=lambda w: index.get(w[1], (-1, 0))[0]):
                if member not in index:
                    out[i] = BadSample("missing", f"no image member {member!r} in shard {rel!r}")
                    continue
                offset, size = index[member]
                f.seek(offset)
                data = f.read(size)
                out[i] = data if len(data) == size else BadSample(
                    "truncated", f"{rel}::{member}: {len(data)} of {size} bytes in the shard")
