"""The dataset a store was built from, reopened from the store alone.

``store.json`` records ``dataset: {uri, fingerprint, spec}``; :func:`open_store_dataset`
turns it back into a reader (``distill`` streams its images, ``eval`` reads it).
``data=NEW_PATH`` relocates it (moved to another mount) and the fingerprint is then
checked, so a path that points at other images is refused instead of training on
mismatched rows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mmkd.data import Dataset, DatasetError, DatasetSpec, open_dataset
from mmkd.data.base import parse_fingerprint
from mmkd.jsontypes import JSONDict
from mmkd.store.format import StoreError
from mmkd.store.manifest import StoreManifest, check_dataset

if TYPE_CHECKING:
    from mmkd.store.store import FeatureStore


def recorded_spec(manifest: StoreManifest) -> DatasetSpec | None:
    """The dataset spec a store manifest records (stores from before specs: the bare URI), ``None`` when none."""
    rec = manifest.dataset
    if rec.spec:
        return DatasetSpec.parse(rec.spec, where="the store's dataset spec")
    return DatasetSpec(path=rec.uri) if rec.uri else None


def open_store_dataset(store: FeatureStore, data: str | os.PathLike | JSONDict | DatasetSpec | None = None, *,
                       verify: bool | None = None) -> Dataset:
    """Open the dataset ``store`` was built from.

    Args:
        store: a :class:`~mmkd.store.FeatureStore`.
        data: where the dataset is now, when it moved (``--data PATH``); the rest
            of the recorded spec (format, root, field map, options) is kept.
        verify: check the dataset's fingerprint against the store's; default: only
            when relocated (a full check reads every sample's size once).

    Raises:
        StoreError: the store records no dataset and none is given, the recorded
            one cannot be opened, or the fingerprint differs (both are named).
    """
    spec = recorded_spec(store.manifest)
    if spec is None and data is None:
        raise StoreError(f"store {store.path} records no dataset; pass --data PATH to say where its images are")
    if isinstance(data, (DatasetSpec, Mapping)):  # a whole spec (a `datasets:` entry): its root and fields win
        spec = DatasetSpec.parse(data, where="--data")
    elif data is not None:
        spec = spec.relocated(data) if spec is not None else DatasetSpec(path=str(data))
    _check_root(store, spec, data)
    try:
        ds = open_dataset(spec)
    except DatasetError as e:
        hint = ("check --data" if data is not None else
                "if the data moved, pass --data NEW_PATH (format, root and field map are kept from the store)")
        raise StoreError(f"store {store.path} reads its images from dataset {spec.path!r}, which cannot be opened: "
                         f"{e}; {hint}") from e
    if verify if verify is not None else data is not None:
        check_fingerprint(store, ds)
    return ds


def _check_root(store: FeatureStore, spec: DatasetSpec, data: str | os.PathLike | JSONDict | DatasetSpec | None) -> None:
    """Name a missing image root before anything reads (or writes) a thing."""
    root = spec.root
    if root is None or "://" in root or os.path.isdir(root):
        return
    how = ("--data moved the table but not the images there" if data is not None else
           "the images moved or were removed")
    raise StoreError(f"store {store.path}: the images' root {root} does not exist ({how}); pass --data with a "
                     f"dataset spec (a `datasets:` name, or a mapping) whose `root` is where the images are now")


def check_fingerprint(store: FeatureStore, ds: Dataset) -> None:
    """Refuse a dataset whose samples are not the ones the store's rows were extracted from.

    Raises:
        StoreError: the fingerprints differ; the message names both.
    """
    recorded = store.manifest.dataset
    now = ds.fingerprint(parse_fingerprint(recorded.fingerprint)[0]) if recorded.fingerprint else ""
    check_dataset(store.path, recorded, ds.uri, now, fix="point --data at the dataset the store was extracted from")
