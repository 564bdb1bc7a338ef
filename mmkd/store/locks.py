"""Writer locks of a store's teachers: one extract per teacher at a time.

Two extracts of *different* teachers into one store run side by side (their
arrays, markers and failure tables are disjoint; the manifest is updated under the
store's ``.lock``). Two of the *same* teacher would redo each other's blocks, so
the second is refused, naming the owner of the lock. The lock is an ``flock`` on
``_locks/<teacher>.lock``: the kernel drops it when its process dies, so a killed
extract never leaves a stale lock.

On object storage (no ``flock``) it is the object ``_locks/<teacher>.lock``, created only
if absent (:func:`mmkd.store.format.object_lock`), naming its owner and an expiry that a
thread of the holder pushes ahead while it runs (:data:`TEACHER_LOCK_EXPIRY_S`,
:data:`TEACHER_LOCK_RENEW_S`). A holder that was killed leaves it: it is taken once
expired, or at once by a run on the same host when the holder's process is gone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from mmkd.config import as_path, is_remote
from mmkd.store.format import LockHeld, StoreError, lock_is_stale, lock_owner_is_us, object_lock, read_lock

log = logging.getLogger(__name__)

LOCKS = "_locks"
# Object storage: a teacher lock expires this long after its last renewal (its holder died on another
# host); the holder renews it every TEACHER_LOCK_RENEW_S, so a renewal may fail a few times in a row.
TEACHER_LOCK_EXPIRY_S = 600.0
TEACHER_LOCK_RENEW_S = 60.0


class TeacherLocked(StoreError):
    """Another process is writing this teacher into this store."""


def _owner_info() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": "mmkd extract",
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _describe(o: dict) -> str:
    try:
        return f"pid {o['pid']} on {o['host']} ({o.get('command', 'mmkd')}), since {o['since']}"
    except (KeyError, TypeError):
        return "another process"


def _locked(what: str, who: str, extra: str = "") -> TeacherLocked:
    return TeacherLocked(f"{what} is being extracted by {who}; wait for it to finish (the blocks it writes are "
                         f"kept), or stop it and rerun{extra}")


def _acquire(path: Path, what: str) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip()
        f.close()
        try:
            who = _describe(json.loads(owner))
        except ValueError:
            who = "another process"
        raise _locked(what, who) from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps(_owner_info()))
    f.flush()
    return f


@contextlib.contextmanager
def teacher_locks(store_path: str | Path, teachers: Sequence[str]) -> Iterator[None]:
    """Hold the writer lock of every teacher in ``teachers`` (all or none).

    Raises:
        TeacherLocked: one of them is held by another process (the message names it).
    """
    held: list[IO[str]] = []
    if is_remote(store_path):
        with contextlib.ExitStack() as stack:
            for t in teachers:
                stack.enter_context(_object_teacher_lock(store_path, t))
            yield
        return
    try:
        for t in teachers:
            held.append(_acquire(Path(store_path) / LOCKS / f"{t}.lock", f"teacher {t!r} in store {store_path}"))
        yield
    finally:
        for f in held:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()


@contextlib.contextmanager
def _object_teacher_lock(store_path: object, teacher: str) -> Iterator[None]:
    """The teacher lock on object storage: a lock object (module docstring)."""
    lock = as_path(store_path) / LOCKS / f"{teacher}.lock"
    what = f"teacher {teacher!r} in store {store_path}"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(object_lock(lock, expiry_s=TEACHER_LOCK_EXPIRY_S, wait_s=0, info=_owner_info(),
                                            renew_s=TEACHER_LOCK_RENEW_S))
        except LockHeld as e:
            expires = _dt.datetime.fromtimestamp(float(e.holder.get("expires", 0)), _dt.timezone.utc)
            raise _locked(what, _describe(e.holder), f" (if that process is gone, its lock object {lock} expires "
                          f"at {expires.isoformat(timespec='seconds')}, or delete it)") from None
        yield


def teacher_lock_holders(store_path: object) -> list[str]:
    """Teachers of the store whose writer lock another process holds now (flock files, or live lock objects)."""
    out = []
    root = as_path(store_path) / LOCKS
    if is_remote(store_path):
        try:
            keys = root.fs.ls(root.path, detail=False)
        except FileNotFoundError:
            return []
        for key in keys:
            holder = read_lock(root.fs, key)
            if holder is not None and not lock_is_stale(holder) and not lock_owner_is_us(holder):
                out.append(key.rsplit("/", 1)[-1].removesuffix(".lock"))
        return out
    for lock in root.glob("*.lock"):
        try:
            text = lock.read_text().strip()
            if text and int(json.loads(text)["pid"]) != os.getpid():
                out.append(lock.stem)
        except (ValueError, KeyError, TypeError):
            out.append(lock.stem)  # unreadable: assume held
        except OSError:
            continue
    return out
