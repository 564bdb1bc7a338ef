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

Images go through :class:`mmkd.distill.images.FastImages` when the student's transform is one
open_clip builds (``decode="reduced"``, the default): the crop box is drawn from the header under
the same per-row seed, the JPEG decoded at a DCT-reduced scale, and the batch normalised at once.
``decode="full"`` runs the transform on each fully decoded image, as before. The epoch and start
batch live in shared memory, so DataLoader workers persist across epochs
(:func:`make_loader` ``persistent=True``) and still read the epoch :meth:`StoreBatches.set_epoch` set.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmkd.config import as_path, is_remote
from mmkd.data import open_dataset
from mmkd.data.images import BadSample, decode_image
from mmkd.data.views import ViewRecipe
from mmkd.distill.images import FastImages, ImageNorm
from mmkd.errors import DistillError
from mmkd.jsontypes import JSONDict
from mmkd.store import FeatureStore, StoreError, chunk_shuffled_batches, num_batches
from mmkd.store.content import has_hashes, hashes_lost, recorded_hashes, sha256_of
from mmkd.store.format import VIEWS
from mmkd.store.sampler import fetched_ahead
from mmkd.store.dataset import open_store_dataset
from mmkd.store.images import ImageCache, find_image_cache
from mmkd.store.masks import untrainable_rows
from mmkd.store.trust import has_trust, read_trust

logger = logging.getLogger(__name__)
READ_AHEAD_BATCHES = 16  # object storage: batches whose feature blocks are fetched ahead of the one trained on

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


def draw_view(seed: int, epoch: int, rows: np.ndarray, k: int) -> np.ndarray:
    """Per row, the view (0..k-1) a ``--views`` run trains on in ``epoch``: a hash of (seed, epoch, row) like every
    per-row draw here (salt 3), so the same row gets the same view however the run is sharded or resumed."""
    return np.minimum((uniform(seed, epoch, rows, salt=3) * k).astype(np.int64), k - 1)


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


def images_source(store: FeatureStore, data: str | JSONDict | None = None) -> JSONDict | str:
    """What a worker opens to read ``store``'s images: the recorded dataset spec (relocated to ``data`` and
    fingerprint-checked when given), or ``synthetic://`` for synthetic stores."""
    uri = store.manifest.dataset.uri
    if uri.startswith("synthetic://") and data is None:
        return uri
    return open_store_dataset(store, data).spec().to_dict()


def open_images(source: JSONDict | str):
    """A reader from :func:`images_source`'s value (opened in the process that reads)."""
    if isinstance(source, str) and source.startswith("synthetic://"):
        return SyntheticImages()

    return open_dataset(source)


DECODES = ("reduced", "full")


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
    data: str | dict[str, Any] | None = None
    with_features: bool = False
    teacher_mask: str = "valid"
    teacher_weight: str = "none"
    decode: str = "reduced"
    image_cache: str = "auto"
    views: bool = False
    uint8: bool = False  # images as uint8 batches, normalised by the consumer (StoreBatches.image_norm)


class StoreBatches(IterableDataset):
    """One epoch of this rank's batches, starting at ``start_batch`` (see :meth:`set_epoch`).

    Each item is a dict: ``rows`` (B,) int64, ``image`` (B,3,H,W) float (uint8 when the spec asks for it and
    :attr:`image_norm` is not ``None``: normalise with it after moving the batch), ``text``
    (B,ctx) long, ``ok`` (B,) bool (False: image unreadable, row to be ignored); with
    features also ``feats`` {teacher: {"image","text": (B,D_t) float32}},
    ``valid`` (B,T) bool, ``choice`` (B,) long (random valid teacher, -1 none) and
    ``nonfinite`` (B,T) bool (valid at extract, but a NaN/Inf target: left out, as not valid).
    With ``views`` (a store extracted with ``--views K``) also ``view`` (B,) long: the view drawn for
    each row this epoch (:func:`draw_view`); the image is that view's crop and ``feats[t]["image"]``
    its targets.
    """

    def __init__(self, spec: DataSpec, transform: Callable, tokenizer: Callable):
        super().__init__()

        self.spec = spec
        self.transform = transform
        self.tokenizer = tokenizer
        store = FeatureStore.open(spec.store)
        self.n, self.block_size = store.n, store.block_size
        self.dims = {t: store.dim(t) for t in spec.teachers}
        self.images = images_source(store, spec.data)
        self.uri = self.images if isinstance(self.images, str) else self.images["path"]
        synthetic = isinstance(self.images, str)
        self.verify = not synthetic and has_hashes(store)
        if not self.verify and not synthetic and hashes_lost(store):
            raise StoreError(f"store {spec.store}: its image hashes ({store.path}/_content/) are gone, though its "
                             "blocks were written with them, so the images read cannot be verified: restore "
                             f"_content/ from a backup, or see `mmkd store validate {spec.store}`")
        if not self.verify and not synthetic:
            logger.warning("store %s records no image hashes (made before extract recorded them): the images read "
                           "are not verified against the ones extracted", spec.store)
        excluded = untrainable_rows(store)
        self.exclude = excluded.mask if excluded.total else None
        if excluded.total:
            logger.warning("store %s: %s left out of training: the store records them as unusable "
                           "(`mmkd store info %s` lists failures)", spec.store, excluded.describe(), spec.store)
        if spec.with_features and (spec.teacher_mask == "trusted" or spec.teacher_weight == "trust"):
            missing = [t for t in spec.teachers if not has_trust(store, t)]
            if missing:
                raise DistillError(f"--teacher-mask {spec.teacher_mask} / --teacher-weight {spec.teacher_weight} need "
                                 f"the trust of every teacher; store {spec.store!r} has none for {missing}: compute "
                                 f"it with `mmkd store trust {spec.store} " + " ".join(f"--teacher {t}" for t in
                                                                                        missing) + "`")
        if not synthetic:
            self._probe_images(store)
        self.unreadable: set[int] = set()  # rows whose image failed at train time (warned once)
        self.batches_per_epoch = num_batches(self.n, spec.batch_size, spec.world_size, exclude=self.exclude)
        if self.batches_per_epoch == 0:
            raise DistillError(f"store {spec.store!r} has {self.n - excluded.total} usable rows ({excluded.describe()} "
                             f"left out), fewer than one global batch of {spec.batch_size} x {spec.world_size} "
                             "ranks; lower --batch-size")
        if spec.decode not in DECODES:
            raise DistillError(f"decode {spec.decode!r} is unknown; use one of {list(DECODES)}")
        self.fast = FastImages.plan(transform) if spec.decode == "reduced" else None
        self.views = self._view_recipe(store, transform) if spec.views else None
        self.cache_dir = self._find_cache(store)
        # (epoch, start batch) in shared memory: persistent workers read what set_epoch wrote
        self._position = multiprocessing.get_context().RawArray("q", 2)
        self._state: dict[str, Any] | None = None

    def _probe_images(self, store: FeatureStore) -> None:
        """Read one image before anything is written: images that moved or were removed are named at once, not
        after the first batches (nor as a worker's traceback)."""
        rows = np.flatnonzero(~self.exclude)[:1] if self.exclude is not None else np.arange(min(1, self.n))
        if not rows.size:
            return
        ref = store.index_columns(rows, ("image",))["image"][0]
        data = open_images(self.images).read_many([ref], on_error="return")[0]
        if isinstance(data, BaseException) and getattr(data, "reason", "") == "missing":
            raise ImagesMissingError(f"store {self.spec.store}: the image of row {int(rows[0])} is not where the "
                                    f"dataset {self.uri} says ({data}); the images moved or were removed: pass --data "
                                    "with where they are now (a path, or a `datasets:` name whose `root` is their "
                                    "folder)")

    def _view_recipe(self, store: FeatureStore, transform: Callable) -> ViewRecipe:
        """The view recipe every teacher's views were extracted with (one recipe: the student sees one crop per
        row, so every teacher's view ``v`` must be the same box); raises naming the store, teacher and fix."""
        if not self.spec.with_features:
            raise DistillError("--views gives the student the crops the teachers' view targets were computed on: it "
                             "applies to stage 2 (--stage 2), not to stage 1")
        recipes: dict[str, ViewRecipe] = {}
        for t in self.spec.teachers:
            stored = store.attrs(t).get("views")
            if not stored or not store.num_views(t):
                raise DistillError(f"--views: teacher {t!r} in store {self.spec.store} has no view features; extract "
                                 f"them with `mmkd extract --teacher {t} --store {self.spec.store} --views K "
                                 "--overwrite`, or train without --views")
            try:
                recipes[t] = ViewRecipe.from_attrs(stored)
            except ValueError as e:
                raise DistillError(f"--views: teacher {t!r} in store {self.spec.store}: {e}") from e
        first, recipe = next(iter(recipes.items()))
        other = [t for t, r in recipes.items() if not r.same_views(recipe)]
        if other:
            raise DistillError(f"--views: teachers {other} in store {self.spec.store} were extracted with other views "
                             f"than {first!r} ({[recipes[t].to_attrs() for t in other][0]} vs {recipe.to_attrs()}); "
                             "the student sees one crop per row: re-extract them with the same --views, --view-scale "
                             "and --view-seed, or pass --teacher for those that match")
        self.view_plan = FastImages.plan(transform)
        if self.view_plan is None:
            raise DistillError("--views needs the student's image transform to be open_clip's (RandomResizedCrop or "
                             "Resize + CenterCrop, then ToTensor + Normalize) to learn its input size and "
                             "normalisation; this student has another one")
        logger.info("view-matched targets: %d views per row (scale %s, ratio %s, flip %s, seed %d); the student "
                    "sees the drawn view's crop", recipe.k, list(recipe.scale), [round(x, 4) for x in recipe.ratio],
                    recipe.flip, recipe.seed)
        return recipe

    def _find_cache(self, store: FeatureStore) -> str | None:
        """The image cache to read (``mmkd store images``), or None: the originals; says which."""
        if self.spec.image_cache not in ("auto", "off"):
            raise DistillError(f"image_cache {self.spec.image_cache!r} is unknown; use auto or off")
        found = None
        if self.spec.image_cache == "auto" and self.views is not None:
            found = self._find_view_cache(store)
        elif self.spec.image_cache == "auto":
            if self.fast is not None:
                found = find_image_cache(store, max(self.fast.size))
            elif find_image_cache(store, 0) is not None:
                logger.info("store %s has an image cache, not used: decode=%s or a student transform it cannot "
                            "replay", self.spec.store, self.spec.decode)
        if found is not None:
            logger.info("student images: image cache %s", found)
        else:
            logger.info("student images: originals at %s (%s decode)", self.uri,
                        "DCT-reduced" if self.fast is not None or (self.views is not None and
                                                   self.spec.decode == "reduced") else "full")
        return str(found) if found is not None else None

    def _find_view_cache(self, store: Any) -> Path | None:
        """A cache whose copies still hold every view's box at the student's size (else None, saying why)."""
        side = max(self.view_plan.size)
        need = math.ceil(side / self.views.min_side_fraction())
        found = find_image_cache(store, need)
        if found is None and find_image_cache(store, 0) is not None:
            logger.info("store %s has an image cache, not used for --views: a view's crop (scale >= %s) at %d px "
                        "needs cached copies of short side >= %d (`mmkd store images %s --size %d`); reading the "
                        "originals", self.spec.store, self.views.scale[0], side, need, self.spec.store, need)
        return found

    @property
    def image_norm(self) -> ImageNorm | None:
        """The normalisation the consumer applies to ``batch["image"]`` when the spec asks for uint8 batches and
        the fast path makes them (``None``: the batches hold normalised float images)."""
        plan = self.view_plan if self.views is not None else self.fast
        return plan.norm if self.spec.uint8 and plan is not None else None

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    @property
    def start_batch(self) -> int:
        return int(self._position[1])

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch and the first batch (of this rank) to yield (seen by running workers too)."""
        self._position[0], self._position[1] = int(epoch), int(start_batch)

    def _open(self) -> dict[str, Any]:
        # opened lazily, in the process (worker) that reads
        if self._state is None:
            per_dim = 4 + (2 * self.views.k if self.views is not None else 0)  # fp16 image + text (+ K views)
            cache = (max(self.spec.buffer_blocks, 2) + 2) * self.block_size * per_dim * sum(self.dims.values()) + \
                (1 << 20)
            store = FeatureStore.open(self.spec.store, cache_bytes=cache,
                                      index_cache_groups=max(self.spec.buffer_blocks, 2) + 1)
            self._state = {"store": store, "images": open_images(self.images)}
            if self.cache_dir is not None:
                self._state["cache"] = ImageCache(self.cache_dir, blocks=max(self.spec.buffer_blocks, 2) + 1)
        return self._state

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        s = self.spec
        epoch = self.epoch
        batches = chunk_shuffled_batches(
            self.n, self.block_size, s.batch_size, seed=s.seed, epoch=epoch, rank=s.rank,
            world_size=s.world_size, worker_id=wid, num_workers=nw, buffer_blocks=s.buffer_blocks,
            start_batch=self.start_batch, exclude=self.exclude)
        if s.with_features and is_remote(as_path(s.store)):
            # object storage: the feature blocks of the batches READ_AHEAD_BATCHES ahead are fetched in the
            # background while this one is built and trained on
            store = self._open()["store"]

            def fetch(rows: np.ndarray) -> None:
                for t in s.teachers:
                    store.read_ahead(t, rows, ("image" if self.views is None else VIEWS, "text", "valid"))

            batches = fetched_ahead(batches, fetch, READ_AHEAD_BATCHES)
        for rows in batches:
            yield self.load(np.asarray(rows, dtype=np.int64), epoch)

    def load(self, rows: np.ndarray, epoch: int | None = None) -> dict[str, Any]:
        """Build the batch for ``rows`` of ``epoch`` (default: the one set; see the class docstring)."""
        epoch = self.epoch if epoch is None else int(epoch)
        st = self._open()
        meta = st["store"].index_columns(rows, ("caption", "image"))
        images, ok, changed = self._images(st, meta["image"], rows, epoch)
        batch: dict[str, Any] = {
            "rows": torch.from_numpy(rows.copy()),
            "image": images,
            "text": self.tokenizer([c or "" for c in meta["caption"]]),
            "ok": torch.from_numpy(ok),
        }
        if changed:
            batch["content_changed"] = changed  # raised by the loader in the main process (one line there)
        if self.views is not None:
            batch["view"] = torch.from_numpy(draw_view(self.spec.seed, epoch, rows, self.views.k))
        if self.spec.with_features:
            batch.update(self._features(st, rows, epoch, batch.get("view")))
        return batch

    def _images(self, st: dict[str, Any], refs: list[str], rows: np.ndarray, epoch: int
                ) -> tuple[torch.Tensor, np.ndarray, str | None]:
        changed = None
        if "cache" in st:  # re-encoded copies: their bytes are not the extracted ones, so not hashed here
            raw, sizes = st["cache"].read(rows)
        else:
            raw, sizes = st["images"].read_many(list(refs), on_error="return"), [None] * len(rows)
            changed = self._verify(st["store"], raw, rows) if self.verify else None
        seeds = row_hash(self.spec.seed, epoch, rows, salt=1) >> np.uint64(1)
        view = draw_view(self.spec.seed, epoch, rows, self.views.k) if self.views is not None else None
        out, ok = [], np.ones(len(rows), dtype=bool)
        # the CPU generator only: torch.manual_seed would also seed (lazily) every accelerator
        with torch.random.fork_rng(devices=[]):
            for i, data in enumerate(raw):
                try:
                    if isinstance(data, BaseException):
                        raise data
                    torch.random.default_generator.manual_seed(int(seeds[i]))
                    if view is not None:  # the box extract's teachers saw for this (row, view)
                        out.append(self.view_plan.decode_view(data, self.views, int(rows[i]), int(view[i]),
                                                              sizes[i], reduce=self.spec.decode == "reduced"))
                    else:
                        out.append(self.fast.decode(data, sizes[i]) if self.fast is not None
                                   else self.transform(decode_image(data)))
                except BadSample as e:
                    if int(rows[i]) not in self.unreadable:
                        self.unreadable.add(int(rows[i]))
                        logger.warning("row %d (image %r) unreadable, masked out of its batches (warned once per "
                                       "run): %s", rows[i], refs[i], e)
                    ok[i] = False
                    out.append(None)
        shape = next((x.shape for x in out if x is not None), None)
        if shape is None:
            raise DistillError(f"no image of batch rows {rows[:8].tolist()}... could be read; check the dataset "
                               f"at {self.uri!r}")
        plan = self.view_plan if view is not None else self.fast
        if plan is not None:
            return (plan.stack(out) if self.spec.uint8 else plan.normalize(out)), ok, changed
        return torch.stack([x if x is not None else torch.zeros(shape) for x in out]), ok, changed

    def _verify(self, store: FeatureStore, raw: list, rows: np.ndarray) -> str | None:
        """The error for the first image whose bytes differ from the ones extracted (``None`` when all match)."""
        recorded = recorded_hashes(store, rows)
        for i, data in enumerate(raw):
            if isinstance(data, bytes) and recorded[i] is not None:
                now = sha256_of(data)
                if now != recorded[i]:
                    sid = store.index_columns(rows[i:i + 1], ("sample_id",))["sample_id"][0]
                    return (f"row {int(rows[i])} (sample {sid!r}): its image is not the one extracted: sha256 {now} "
                            f"!= recorded {recorded[i]} (in {self.uri}); point --data at the images the store "
                            "was extracted from, or extract a new store from these")
        return None

    def _features(self, st: dict[str, Any], rows: np.ndarray, epoch: int,
                  view: torch.Tensor | None = None) -> dict[str, Any]:
        store = st["store"]
        valid = np.stack([st["store"].read(t, rows, kind="valid") for t in self.spec.teachers], axis=1)
        feats = {}
        nonfinite = np.zeros_like(valid)
        for j, t in enumerate(self.spec.teachers):
            if view is not None:  # the targets of the view the student sees
                img = store.read(t, rows, VIEWS)[np.arange(len(rows)), view.numpy()].astype(np.float32)
            else:
                img = store.read(t, rows, "image").astype(np.float32)
            txt = store.read(t, rows, "text").astype(np.float32)
            # a NaN/Inf target (a store from before extract checked, or edited) leaves the row out of this teacher
            nonfinite[:, j] = valid[:, j] & ~(np.isfinite(img).all(axis=1) & np.isfinite(txt).all(axis=1))
            valid[:, j] &= ~nonfinite[:, j]
            img[~valid[:, j]] = 0.0
            txt[~valid[:, j]] = 0.0
            feats[t] = {"image": torch.from_numpy(img), "text": torch.from_numpy(txt)}
        out: dict[str, Any] = {}
        u = uniform(self.spec.seed, epoch, rows, salt=2)
        if self.spec.teacher_mask == "trusted" or self.spec.teacher_weight == "trust":
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
        return {"feats": feats, "valid": torch.from_numpy(valid), "choice": torch.from_numpy(choice),
                "nonfinite": torch.from_numpy(nonfinite), **out}


class ContentChangedError(DistillError):
    """An image read now differs from the one its row was extracted from."""


class ImagesMissingError(DistillError, FileNotFoundError):
    """The store's images are not where its dataset says (moved or removed); nothing was written."""


class _Loader(DataLoader):
    """A DataLoader that tells its dataset which rows failed to read, so workers started later
    (fresh copies of the dataset) do not warn about them again."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in super().__iter__():
            if "content_changed" in batch:
                raise ContentChangedError(batch["content_changed"])
            if isinstance(self.dataset, StoreBatches) and not bool(batch["ok"].all()):
                self.dataset.unreadable.update(batch["rows"][~batch["ok"]].tolist())
            yield batch


def make_loader(dataset: StoreBatches, num_workers: int, pin_memory: bool = False, persistent: bool = False,
                prefetch: int = 2) -> DataLoader:
    """A DataLoader over pre-batched items (``batch_size=None``).

    Args:
        persistent: keep the workers between epochs: iterate the same loader again after
            :meth:`StoreBatches.set_epoch` (workers read the epoch from shared memory).
        prefetch: batches each worker prepares ahead.
    """
    return _Loader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                   prefetch_factor=prefetch if num_workers > 0 else None,
                   persistent_workers=persistent and num_workers > 0)
