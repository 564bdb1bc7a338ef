"""Creating the store on the first extract, checking the dataset on later ones, job records.

The store records ``dataset.fingerprint``: the reader's fingerprint of the dataset,
prefixed ``first-N:`` when the store holds only the first N samples (``--limit``).
A later extract computes the same string and refuses to go on when it differs,
because rows would no longer line up with the samples they were extracted from.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import os
import socket
from pathlib import Path

from mmkd.config import as_path, is_remote
from mmkd.data import Dataset
from mmkd.extract.runners.job import ExtractError, ExtractJob
from mmkd.jsontypes import JSONDict
from mmkd.store import FeatureStore, StoreError
from mmkd.store import format as fmt
from mmkd.store.format import atomic_write_json
from mmkd.store.manifest import check_dataset

log = logging.getLogger(__name__)

JOBS_DIR = "_jobs"


def store_exists(store: str | os.PathLike) -> bool:
    """Whether the job's store is there: a folder, or on object storage a ``store.json``.

    Raises:
        StoreError: an object-storage URL cannot be reached (bucket, endpoint, credentials).
    """
    path = as_path(store)
    if not is_remote(path):
        return path.exists()
    return fmt.probe(path / fmt.MANIFEST) is not None


def absolute(path: str | os.PathLike) -> str:
    """``path`` as workers on other machines open it: an absolute local path, or the URL as is."""
    return str(path) if is_remote(path) else str(Path(path).resolve())


def open_or_create_store(job: ExtractJob, ds: Dataset) -> tuple[FeatureStore, bool]:
    """Open the job's store, or create it from the dataset's samples.

    Returns:
        ``(store, created)``.

    Raises:
        ExtractError: the store exists but was made from another dataset (or
            another ``--limit``); the message says what differs and what to do.
    """
    path = as_path(job.store)
    fp = ds.fingerprint(job.limit)
    if not store_exists(path):
        samples = ds.samples() if job.limit is None else itertools.islice(ds.samples(), job.limit)
        kwargs = {} if job.block_size is None else {"block_size": job.block_size}
        try:
            store = FeatureStore.create(path, samples, dataset_uri=ds.uri, dataset_fingerprint=fp,
                                        dataset_spec=ds.spec().to_dict(),
                                        dataset_failures=lambda: getattr(ds, "bad_rows", []), **kwargs)
        except StoreError:
            if not path.exists():
                raise
            # another extract (say, of another teacher) created it first: use that one, as a later run would
            log.info("store %s was created by another extract meanwhile; using it", path)
        else:
            log.info("created store %s from %s (%d samples)", path, ds.uri, store.n)
            return store, True
    store = FeatureStore.open(path, mode="a")
    _check_same_dataset(store, ds, fp, job)
    if job.block_size is not None and job.block_size != store.block_size:
        log.warning("store %s already exists with block_size %d; --block-size %d is ignored",
                    path, store.block_size, job.block_size)
    return store, False


def _check_same_dataset(store: FeatureStore, ds: Dataset, fp: str, job: ExtractJob) -> None:
    fix = f"extract into a new --store, or delete {store.path} to rebuild it"
    check_dataset(store.path, store.manifest.dataset, ds.uri, fp, fix=fix, error=ExtractError)


def write_job_record(store_path: str | Path, teacher: str, record: JSONDict, stamp: str) -> Path:
    """Save the resolved job (and later its summary) as ``<store>/_jobs/<stamp>-<teacher>.json``."""
    path = as_path(store_path) / JOBS_DIR / f"{stamp}-{teacher}.json"
    atomic_write_json(path, {"host": socket.gethostname(), "pid": os.getpid(), **record})
    return path


def utc_stamp() -> str:
    """A sortable UTC timestamp for job record names."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
