"""Writer locks of a store's teachers: one extract per teacher at a time.

Two extracts of *different* teachers into one store run side by side (their
arrays, markers and failure tables are disjoint; the manifest is updated under the
store's ``.lock``). Two of the *same* teacher would redo each other's blocks, so
the second is refused, naming the owner of the lock. The lock is an ``flock`` on
``_locks/<teacher>.lock``: the kernel drops it when its process dies, so a killed
extract never leaves a stale lock.
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

from mmkd.config import is_remote
from mmkd.store.format import StoreError

log = logging.getLogger(__name__)

LOCKS = "_locks"


class TeacherLocked(StoreError):
    """Another process is writing this teacher into this store."""


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
            o = json.loads(owner)
            who = f"pid {o['pid']} on {o['host']} ({o.get('command', 'mmkd')}), since {o['since']}"
        except (ValueError, KeyError, TypeError):
            who = "another process"
        raise TeacherLocked(f"{what} is being extracted by {who}; wait for it to finish (the blocks it writes are "
                            f"kept), or stop it and rerun") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": "mmkd extract",
                        "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}))
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
        # Object storage has no lock a crashed holder releases by itself (flock); a lease object would have
        # to be renewed for hours. Two extracts of one teacher there are not excluded: each block's objects
        # are written before its marker, with the same bytes, so they duplicate work but cannot corrupt.
        log.info("store %s is on object storage: teacher locks are not taken (docs/object-storage.md)", store_path)
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
