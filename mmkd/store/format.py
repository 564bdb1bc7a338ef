"""Constants and small helpers that define the on-disk store format (docs/store-format.md).

Kept free of zarr/torch imports so that anything (including readers in other
projects) can import the names cheaply.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from mmkd.config import AnyPath, is_remote
from mmkd.data.remote import storage_error  # noqa: F401  (also re-exported: the store's error lines)
from mmkd.errors import MMKDError
from mmkd.jsontypes import JSON, JSONDict

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from fsspec import AbstractFileSystem
    from upath import UPath

log = logging.getLogger(__name__)

FORMAT_NAME = "mmkd-feature-store"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

MANIFEST = "store.json"
INDEX = "index.parquet"
FEATURES = "features.zarr"
PROGRESS = "_progress"
FAILURES = "_failures"
DATASET_FAILURES = "dataset.parquet"  # under FAILURES: table rows that never became samples (bad_row)
LOCK = ".lock"
# On object storage the lock is an object created only if absent; a holder that dies
# leaves it, so it says when it expires and a waiter may take it after that.
LOCK_EXPIRY_S = 120.0
LOCK_WAIT_S = 600.0

FEATURE_DTYPE = "float16"
KINDS = ("image", "text")
VIEWS = "image_views"  # (N, K, dim) image features of K augmented views per row (mmkd extract --views K)
DEFAULT_BLOCK_SIZE = 2048


class StoreError(MMKDError, RuntimeError):
    """A store is missing, malformed, or asked to do something unsound."""


def block_name(block: int) -> str:
    return f"block-{block:06d}"


def index_fingerprint(rows: Iterable[tuple[str, str, str, str | None]]) -> str:
    """sha256 over (sample_id, caption, image, image_sha256) of every row, in row order.

    Each field is hashed as its UTF-8 length (8 bytes, little-endian) then its bytes;
    ``None`` hashes as ``""``. Fed to sha256 in large pieces: one update per field
    costs more than the hash itself on millions of rows.
    """
    h = hashlib.sha256()
    buf: list[bytes] = []
    for row in rows:
        for part in row:
            b = (part or "").encode("utf-8")  # a null field (a damaged index) hashes as ""
            buf.append(len(b).to_bytes(8, "little"))
            buf.append(b)
        if len(buf) >= 1 << 16:
            h.update(b"".join(buf))
            buf.clear()
    h.update(b"".join(buf))
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: tmp file, fsync, rename, fsync the folder.

    On object storage one PUT is atomic and durable once it returns, so the object
    is written in place.
    """
    if is_remote(path):
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no debris beside the file
        raise
    fsync_dir(path.parent)


class DiskFullError(StoreError):
    """A write failed because the filesystem is full (or over quota); the message names where and what to do."""


def disk_full(e: BaseException) -> OSError | None:
    """The "no space left" / "quota exceeded" error in ``e``'s chain (causes, contexts, Ray's ``cause``), if any.

    zarr, pyarrow and torch raise it from their own frames, often wrapped: the chain is searched.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        if isinstance(err, OSError) and "[Errno 28]" in str(err):  # pyarrow's IOError carries the errno in its text
            return err
        todo += [err.__cause__, err.__context__, getattr(err, "cause", None)]
    return None


def disk_full_error(e: OSError, folder: str | os.PathLike[str], what: str, then: str) -> DiskFullError:
    """One line for a full disk: which folder, how much is free on it now, what to free, and what a rerun does.

    Args:
        e: the ENOSPC/EDQUOT error (:func:`disk_full`).
        folder: the folder being written (a store, a run folder).
        what: what was being written, in words (``"store"``, ``"run folder"``).
        then: what the rerun does once space is freed.
    """
    folder = Path(str(folder))
    mount = _mount_point(next((p for p in (folder, *folder.parents) if p.exists()), Path("/")))
    try:
        free = f"{shutil.disk_usage(mount).free / 2**20:.1f} MiB free there now"
    except OSError:
        free = "free space unknown"
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return DiskFullError(
        f"disk full while writing {what} {folder}{where}: {e.strerror or e} on the filesystem mounted at {mount} "
        f"({free}); free space there (`du -xsh {mount}/*` shows what is large) or point the output at another "
        f"disk, then rerun the same command: {then}")


def _mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding ``path`` (the last folder up on the same device)."""
    path = path.resolve()
    try:
        dev = path.stat().st_dev
        while path.parent != path and path.parent.stat().st_dev == dev:
            path = path.parent
    except OSError:
        pass
    return path


def atomic_write_json(path: Path, obj: JSON) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def probe(path: UPath) -> dict[str, object] | None:
    """The object ``path``'s info (``None``: absent), asked afresh; a provider error becomes one clear line.

    The first call on a store URL goes through here, so a missing bucket, refused
    credentials or an endpoint that does not answer fail at once, before anything is written.

    Raises:
        StoreError: the bucket or endpoint cannot be read; names the URL and the provider's error.
    """
    try:
        path.fs.invalidate_cache(path.path)
        return path.fs.info(path.path)
    except FileNotFoundError:
        bucket = path.path.split("/", 1)[0]
        try:
            path.fs.info(bucket)
        except Exception as e:  # the provider's error for the bucket itself
            raise StoreError(storage_error(path, e)) from e
        return None
    except Exception as e:  # botocore/aiohttp/gcsfs raise many types: all are "cannot reach"
        raise StoreError(storage_error(path, e)) from e


def write_parquet(table: pa.Table, path: AnyPath, **kwargs: object) -> None:
    """``pyarrow.parquet.write_table`` to a local path, or through a URL's fsspec filesystem (one PUT)."""
    import pyarrow.parquet as pq

    if is_remote(path):
        pq.write_table(table, path.path, filesystem=path.fs, **kwargs)
    else:
        pq.write_table(table, path, **kwargs)


def read_parquet(path: AnyPath, **kwargs: object) -> pa.Table:
    """``pyarrow.parquet.read_table`` of a local path or a URL."""
    import pyarrow.parquet as pq

    if is_remote(path):
        return pq.read_table(path.path, filesystem=path.fs, **kwargs)
    return pq.read_table(path, **kwargs)


def parquet_file(path: AnyPath) -> pq.ParquetFile:
    """``pyarrow.parquet.ParquetFile`` of a local path or a URL (row groups read on demand)."""
    import pyarrow.parquet as pq

    if is_remote(path):
        return pq.ParquetFile(path.path, filesystem=path.fs)
    return pq.ParquetFile(str(path))


def fsync_dir(path: Path) -> None:
    if is_remote(path):
        return  # no folders to sync on object storage
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` (used on a block's chunk files before its marker).

    Nothing to do on object storage: a PUT has returned only once the object is stored.
    """
    if is_remote(path):
        return
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    if not path.exists():
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(root))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes: flock on one machine or NFSv4, a lock object on object storage.

    See :func:`object_lock` for the latter.
    """
    if is_remote(path):
        with object_lock(path):
            yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class LockHeld(MMKDError, TimeoutError):
    """A lock object is held by another owner that is alive (or not known to be dead) and has not expired.

    Attributes:
        holder: what the holder wrote into the lock object (``owner``, ``expires``, and its ``info``).
    """

    def __init__(self, message: str, holder: JSONDict) -> None:
        super().__init__(message)
        self.holder = holder


@contextlib.contextmanager
def object_lock(path: UPath, expiry_s: float = LOCK_EXPIRY_S, wait_s: float = LOCK_WAIT_S,
                info: JSONDict | None = None, renew_s: float | None = None) -> Iterator[None]:
    """An exclusive lock on object storage: the object ``path``, created only if absent.

    The object is written with a conditional create (S3 ``If-None-Match: *``), so of
    two writers exactly one gets it; it holds ``owner`` (host, pid, a random id),
    ``expires`` (epoch seconds) and ``info``. A waiter polls; a lock past its expiry, or
    whose owner is a process of this host that no longer exists, is deleted and taken.
    With ``renew_s`` a thread pushes the expiry ``expiry_s`` ahead every ``renew_s``
    seconds while the lock is held (a long job keeps a short expiry). The holder deletes
    it on exit if it is still its own.

    Raises:
        LockHeld: the lock was held by another owner for ``wait_s`` seconds (0: not waiting).
    """
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    fs, key = path.fs, path.path

    def body() -> bytes:
        return json.dumps({"owner": owner, **(info or {}), "expires": time.time() + expiry_s}).encode()

    deadline = time.monotonic() + wait_s
    while True:
        try:
            fs.pipe_file(key, body(), mode="create")
            break
        except FileExistsError:
            pass
        holder = read_lock(fs, key)
        if holder is not None and lock_is_stale(holder):
            log.warning("lock %s held by %s is stale (expired, or its process is gone); taking it", path,
                        holder.get("owner"))
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(key)
            continue
        if holder is None:
            time.sleep(0.05)
            continue  # released meanwhile: try again
        if time.monotonic() >= deadline:
            raise LockHeld(f"lock {path} is held by {holder.get('owner')} (expires {holder.get('expires')}); wait, "
                           "or delete the object if its holder is gone", holder)
        time.sleep(0.2)
    stop = threading.Event()
    renewer = None
    if renew_s:
        renewer = threading.Thread(target=_renew, args=(fs, key, owner, body, renew_s, stop), daemon=True,
                                   name=f"mmkd-lock-renew-{path.name}")
        renewer.start()
    try:
        yield
    finally:
        stop.set()
        if renewer is not None:
            renewer.join()
        holder = read_lock(fs, key)
        if holder is not None and holder.get("owner") == owner:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(key)


def _renew(fs: AbstractFileSystem, key: str, owner: str, body: Callable[[], bytes], every_s: float,
           stop: threading.Event) -> None:
    """Rewrite the lock object with a later expiry while it is still ``owner``'s (not taken over, not deleted)."""
    while not stop.wait(every_s):
        try:
            holder = read_lock(fs, key)
            if holder is None or holder.get("owner") != owner:
                log.warning("lock object %s is no longer ours (now %s); not renewing it", key,
                            holder and holder.get("owner"))
                return
            fs.pipe_file(key, body())
        except OSError as e:  # a failed renewal is retried at the next tick; the expiry leaves room for it
            log.warning("renewing lock object %s failed: %s", key, e)


def lock_owner_is_us(holder: JSONDict) -> bool:
    """The lock object was written by this process."""
    host, pid = _owner_host_pid(holder)
    return host == socket.gethostname() and pid == os.getpid()


def _owner_host_pid(holder: JSONDict) -> tuple[str | None, int | None]:
    try:
        host, pid, _ = str(holder.get("owner", "")).rsplit(":", 2)
        return host, int(pid)
    except ValueError:
        return None, None


def lock_is_stale(holder: JSONDict) -> bool:
    """Past its expiry, or written by a process of this host that no longer exists."""
    if float(holder.get("expires", 0)) < time.time():
        return True
    host, pid = _owner_host_pid(holder)
    if host != socket.gethostname() or pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def read_lock(fs: AbstractFileSystem, key: str) -> JSONDict | None:
    """What the lock object ``key`` holds (``{}`` when unreadable), or None when there is none."""
    try:
        fs.invalidate_cache(key)
        out = json.loads(fs.cat_file(key))
        return out if isinstance(out, dict) else {}
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return {}
