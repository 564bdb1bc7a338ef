"""Streaming training data from a feature store: images + captions (+ teacher features).

Row order comes from :func:`mmkd.store.chunk_shuffled_batches`: deterministic from
(seed, epoch), global batches split into equal rank slices, batches dealt to
DataLoader workers round robin, resumable from a batch index. Nothing is loaded
whole: captions and image references are read from the store's index one row group
at a time (:meth:`FeatureStore.index_columns`), validity and features one store
block at a time, each through a small LRU cache sized by ``buffer_blocks``.

Rows the store marks as unusable (empty caption, image failed at extract, no valid
teacher: :func:`mmkd.store.masks.untrainable_rows`) never enter a batch, in stage 1
as in stage 2; they are counted and logged once. A row whose image fails to read
at train time is masked out of its batch (``ok``) and warned about once per run.

Per-row randomness (augmentation, the random teacher of ``mmkd-clip``) is a hash of
(seed, epoch, row), so a row gets the same view however the run is sharded,
however many workers there are, and whether or not it was resumed.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmkd.errors import DistillError
from mmkd.jsontypes import JSONDict

if TYPE_CHECKING:
    from mmkd.store import FeatureStore

logger = logging.getLogger(__name__)

_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(x: np.ndarray | int) -> np.ndarray:
    """SplitMix64 finaliser, vectorised over uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def row_hash(seed: int, epoch: int, rows: np.ndarray, salt: int) -> np.ndarray:
    """A uint64 per row from (seed, epoch, row, salt), independent of batching."""
    base = mix64(mix64(np.uint64(seed) * np.uint64(1_000_003) + np.uint64(salt)) + np.uint64(epoch))
    with np.errstate(over="ignore"):
        return mix64(base + np.asarray(rows, dtype=np.uint64))


def uniform(seed: int, epoch: int, rows: np.ndarray, salt: int) -> np.ndarray:
    """Floats in [0, 1) per row (53-bit)."""
    return (row_hash(seed, epoch, rows, salt) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def draw_teacher(valid: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the index of one valid teacher drawn by ``u`` in [0,1) (-1 when none is valid).

    Args:
        valid: (B, T) bool.
        u: (B,) uniforms.
    """
    k = valid.sum(axis=1)
    pick = np.minimum((u * k).astype(np.int64), np.maximum(k - 1, 0))
    cum = np.cumsum(valid, axis=1) - 1
    choice = np.argmax((cum == pick[:, None]) & valid, axis=1)
    return np.where(k > 0, choice, -1)


def draw_weighted_teacher(valid: np.ndarray, weight: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, one valid teacher drawn by ``u`` with probability proportional to ``weight`` (-1 when none is
    valid; uniform among the valid ones when their weights sum to 0).

    Args:
        valid: (B, T) bool.
        weight: (B, T) non-negative floats (NaN counts as 0).
        u: (B,) uniforms.
    """
    w = np.where(valid, np.nan_to_num(np.clip(weight, 0.0, None), nan=0.0), 0.0).astype(np.float64)
    total = w.sum(axis=1)
    cum = np.cumsum(w, axis=1) / np.where(total > 0, total, 1.0)[:, None]
    pick = np.argmax((cum > u[:, None]) & (w > 0), axis=1)
    return np.where(total > 0, pick, draw_teacher(valid, u))


class SyntheticImages:
    """Images for ``synthetic://`` stores: deterministic noise per reference (benchmarks, tests)."""

    def __init__(self, size: int = 64):
        self.size = size

    def read_many(self, refs: list[str], on_error: str = "return") -> list[bytes]:
        from PIL import Image

        out = []
        for ref in refs:
            seed = int.from_bytes(hashlib.sha256(ref.encode()).digest()[:8], "little")
            arr = np.random.default_rng(seed).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            out.append(buf.getvalue())
        return out


def images_source(store: FeatureStore, data: str | None = None) -> JSONDict | str:
    """What a worker opens to read ``store``'s images: the recorded dataset spec (relocated to ``data`` and
    fingerprint-checked when given), or ``synthetic://`` for synthetic stores."""
    from mmkd.store.dataset import open_store_dataset

    uri = store.manifest.dataset.uri
    if uri.startswith("synthetic://") and data is None:
        return uri
    return open_store_dataset(store, data).spec().to_dict()


def open_images(source: JSONDict | str):
    """A reader from :func:`images_source`'s value (opened in the process that reads)."""
    if isinstance(source, str) and source.startswith("synthetic://"):
        return SyntheticImages()
    from mmkd.data import open_dataset

    return open_dataset(source)


@dataclass
class DataSpec:
    """What a :class:`StoreBatches` reads (plain values: safe to send to workers)."""

    store: str
    batch_size: int
    seed: int = 0
    teachers: list[str] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1
    buffer_blocks: int = 8
    data: str | None = None
    with_features: bool = False
    teacher_mask: str = "valid"
    teacher_weight: str = "none"


class StoreBatches(IterableDataset):
    """One epoch of this rank's batches, starting at ``start_batch`` (see :meth:`set_epoch`).

    Each item is a dict: ``rows`` (B,) int64, ``image`` (B,3,H,W) float, ``text``
    (B,ctx) long, ``ok`` (B,) bool (False: image unreadable, row to be ignored); with
    features also ``feats`` {teacher: {"image","text": (B,D_t) float32}},
    ``valid`` (B,T) bool and ``choice`` (B,) long (random valid teacher, -1 none).
    """

    def __init__(self, spec: DataSpec, transform: Callable, tokenizer: Callable):
        super().__init__()
        from mmkd.store import FeatureStore, num_batches

        from mmkd.store.masks import untrainable_rows

        self.spec = spec
        self.transform = transform
        self.tokenizer = tokenizer
        store = FeatureStore.open(spec.store)
        self.n, self.block_size = store.n, store.block_size
        self.dims = {t: store.dim(t) for t in spec.teachers}
        self.images = images_source(store, spec.data)
        self.uri = self.images if isinstance(self.images, str) else self.images["path"]
        excluded = untrainable_rows(store)
        self.exclude = excluded.mask if excluded.total else None
        if excluded.total:
            logger.warning("store %s: %s left out of training: the store records them as unusable "
                           "(`mmkd store info %s` lists failures)", spec.store, excluded.describe(), spec.store)
        if spec.with_features and (spec.teacher_mask == "trusted" or spec.teacher_weight == "trust"):
            from mmkd.store.trust import has_trust

            missing = [t for t in spec.teachers if not has_trust(store, t)]
            if missing:
                raise DistillError(f"--teacher-mask {spec.teacher_mask} / --teacher-weight {spec.teacher_weight} need "
                                 f"the trust of every teacher; store {spec.store!r} has none for {missing}: compute "
                                 f"it with `mmkd store trust {spec.store} " + " ".join(f"--teacher {t}" for t in
                                                                                        missing) + "`")
        self.unreadable: set[int] = set()  # rows whose image failed at train time (warned once)
        self.batches_per_epoch = num_batches(self.n, spec.batch_size, spec.world_size, exclude=self.exclude)
        if self.batches_per_epoch == 0:
            raise DistillError(f"store {spec.store!r} has {self.n - excluded.total} usable rows ({excluded.describe()} "
                             f"left out), fewer than one global batch of {spec.batch_size} x {spec.world_size} "
                             "ranks; lower --batch-size")
        self.epoch, self.start_batch = 0, 0
        self._state: dict[str, Any] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch and the first batch (of this rank) to yield."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def _open(self) -> dict[str, Any]:
        # opened lazily, in the process (worker) that reads
        if self._state is None:
            from mmkd.store import FeatureStore

            cache = (max(self.spec.buffer_blocks, 2) + 2) * self.block_size * 4 * sum(self.dims.values()) + (1 << 20)
            store = FeatureStore.open(self.spec.store, cache_bytes=cache,
                                      index_cache_groups=max(self.spec.buffer_blocks, 2) + 1)
            self._state = {"store": store, "images": open_images(self.images)}
        return self._state

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from mmkd.store import chunk_shuffled_batches

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        s = self.spec
        batches = chunk_shuffled_batches(
            self.n, self.block_size, s.batch_size, seed=s.seed, epoch=self.epoch, rank=s.rank,
            world_size=s.world_size, worker_id=wid, num_workers=nw, buffer_blocks=s.buffer_blocks,
            start_batch=self.start_batch, exclude=self.exclude)
        for rows in batches:
            yield self.load(np.asarray(rows, dtype=np.int64))

    def load(self, rows: np.ndarray) -> dict[str, Any]:
        """Build the batch for ``rows`` (see the class docstring)."""
        st = self._open()
        meta = st["store"].index_columns(rows, ("caption", "image"))
        images, ok = self._images(st["images"], meta["image"], rows)
        batch: dict[str, Any] = {
            "rows": torch.from_numpy(rows.copy()),
            "image": images,
            "text": self.tokenizer([c or "" for c in meta["caption"]]),
            "ok": torch.from_numpy(ok),
        }
        if self.spec.with_features:
            batch.update(self._features(st, rows))
        return batch

    def _images(self, source, refs: list[str], rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        from mmkd.data.images import BadSample, decode_image

        raw = source.read_many(list(refs), on_error="return")
        seeds = row_hash(self.spec.seed, self.epoch, rows, salt=1) >> np.uint64(1)
        out, ok = [], np.ones(len(rows), dtype=bool)
        for i, data in enumerate(raw):
            try:
                if isinstance(data, BaseException):
                    raise data
                img = decode_image(data)
                with torch.random.fork_rng(devices=[]):
                    # the CPU generator only: torch.manual_seed would also seed (lazily) every accelerator
                    torch.random.default_generator.manual_seed(int(seeds[i]))
                    out.append(self.transform(img))
            except BadSample as e:
                if int(rows[i]) not in self.unreadable:
                    self.unreadable.add(int(rows[i]))
                    logger.warning("row %d (image %r) unreadable, masked out of its batches (warned once per "
                                   "run): %s", rows[i], refs[i], e)
                ok[i] = False
                out.append(None)
        shape = next((x.shape for x in out if x is not None), None)
        if shape is None:
            raise RuntimeError(f"no image of batch rows {rows[:8].tolist()}... could be read; check the dataset "
                               f"at {self.uri!r}")
        return torch.stack([x if x is not None else torch.zeros(shape) for x in out]), ok

    def _features(self, st: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
        store = st["store"]
        valid = np.stack([st["store"].read(t, rows, kind="valid") for t in self.spec.teachers], axis=1)
        feats = {}
        for j, t in enumerate(self.spec.teachers):
            img = store.read(t, rows, "image").astype(np.float32)
            txt = store.read(t, rows, "text").astype(np.float32)
            img[~valid[:, j]] = 0.0
            txt[~valid[:, j]] = 0.0
            feats[t] = {"image": torch.from_numpy(img), "text": torch.from_numpy(txt)}
        out: dict[str, Any] = {}
        u = uniform(self.spec.seed, self.epoch, rows, salt=2)
        if self.spec.teacher_mask == "trusted" or self.spec.teacher_weight == "trust":
            from mmkd.store.trust import read_trust

            pairs = [read_trust(store, t, rows) for t in self.spec.teachers]
            trust = np.stack([p[0] for p in pairs], axis=1)
            if self.spec.teacher_mask == "trusted":
                valid = valid & np.stack([p[1] for p in pairs], axis=1)
            if self.spec.teacher_weight == "trust":
                out["trust"] = torch.from_numpy(np.where(valid, np.nan_to_num(trust, nan=0.0), 0.0)
                                                .astype(np.float32))
                choice = draw_weighted_teacher(valid, trust, u)
            else:
                choice = draw_teacher(valid, u)
        else:
            choice = draw_teacher(valid, u)
        return {"feats": feats, "valid": torch.from_numpy(valid), "choice": torch.from_numpy(choice), **out}


class _Loader(DataLoader):
    """A DataLoader that tells its dataset which rows failed to read, so the next epoch's workers
    (fresh copies of the dataset) do not warn about them again."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in super().__iter__():
            if isinstance(self.dataset, StoreBatches) and not bool(batch["ok"].all()):
                self.dataset.unreadable.update(batch["rows"][~batch["ok"]].tolist())
            yield batch


def make_loader(dataset: StoreBatches, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over pre-batched items (``batch_size=None``)."""
    return _Loader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                   prefetch_factor=2 if num_workers > 0 else None)
