"""The unit of work: one store block for every teacher of a pass. Both runners run this code.

A :class:`BlockWorker` is built from *specs* (teacher specs, dataset spec, store
path) and loads its teachers itself once; a teacher that fails to load is recorded
in :attr:`BlockWorker.load_errors` and the others go on (unless ``fail_fast``).
Then for each block: it reads the block's rows from the store index and its images'
bytes once, decodes each image once, and gives the one decoded image to every
teacher that still needs the block, each applying its own resize/crop (teachers with
the same resize/crop share that step; ``--resize cascade`` resizes smaller inputs from
the largest; on a thread pool; the next batch is prepared while the current one runs)
and then its own to-tensor + normalise, one op per batch;
captions are read once and tokenised per teacher. Each teacher's block is written
and a small manifest per teacher returned. Features never leave the worker except
into the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmkd.config import ConfigError
from mmkd.config import resolve_device as resolve_config_device
from mmkd.data import open_dataset
from mmkd.data.images import DEFAULT_MAX_PIXELS, BadSample, check_caption, convert_mode, decode_loaded, open_image
from mmkd.data.views import ViewRecipe, draft_request, render_view
from mmkd.data.remote import storage_retries
from mmkd.extract.device_decode import DeviceJpeg, decode_batch, device_decodable
from mmkd.extract.runners.job import ExtractError, views_mismatch
from mmkd.extract.runners.summary import BlockResult
from mmkd.jsontypes import JSONDict
from mmkd.store import FeatureStore, StoreError
from mmkd.teachers import TeacherSpec
from mmkd.store.content import record_block_hashes, sha256_of
from mmkd.store.format import FEATURE_DTYPE
from mmkd.store.images import block_path, cache_path, encode_cached, write_cache_block

if TYPE_CHECKING:  # torch-heavy: the Ray driver imports this module and never needs them
    import torch

    from mmkd.teachers import Teacher
    from mmkd.teachers.base import Preprocessing

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 2
# Attributes that change the features; a resumed run must not mix blocks made with different ones.
_FEATURE_ATTRS = ("weights_sha256", "revision", "preprocessing", "context_length", "tokenizer", "dim", "decode",
                  "text_encoding", "resize")


@dataclass(frozen=True)
class WorkerConfig:
    """Picklable settings of a block worker (shipped to Ray actors).

    Attributes:
        dataset: reader spec (:meth:`mmkd.data.Dataset.spec`).
        store: store folder.
        batch_size: images per forward pass.
        precision: ``fp32``/``fp16``/``bf16`` autocast, used on CUDA only.
        workers: decode threads.
        device: ``auto``, ``cpu`` or ``cuda``.
        overwrite: the job redoes done blocks (allows replacing a teacher's attrs).
        max_pixels: larger images are refused as decompression bombs.
        decode: ``full``, ``reduced`` (JPEG DCT-scaled decode; see :func:`mmkd.data.decode_image`) or
            ``gpu`` (JPEG batches decoded on the teacher's device: :mod:`mmkd.extract.device_decode`).
        resize: ``own`` (each teacher resizes the decoded image itself: the pixels of a run of that teacher
            alone) or ``cascade`` (:func:`cascade_sources`: smaller inputs resized from the largest one).
        views: a :class:`~mmkd.data.views.ViewRecipe` as its ``to_attrs()`` dict: each teacher also
            encodes the recipe's K views of every row (``extract --views K``); ``None``: the plain view only.
        image_cache: ``(short side, JPEG quality)``: also write each block's file of the store's student image
            cache (:mod:`mmkd.store.images`) from the bytes read for the teachers, when it is not there yet.
    """

    dataset: dict[str, Any]
    store: str
    batch_size: int = 256
    precision: str = "fp16"
    workers: int = 4
    device: str = "auto"
    overwrite: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode: str = "full"
    resize: str = "own"
    views: JSONDict | None = None
    image_cache: tuple[int, int] | None = None


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu`` (:func:`mmkd.config.resolve_device`, as every stage)."""
    try:
        return resolve_config_device(device)
    except ConfigError as e:
        raise ExtractError(str(e)) from e


def cascade_sources(pps: dict[str, Preprocessing]) -> dict[str, Preprocessing]:
    """For ``--resize cascade``: which teachers resize from another teacher's input instead of the decoded image.

    Teachers with the same resize mode and image mode form a family; the family's largest input is
    resized from the decoded image (its pixels are those of a run of it alone), and each smaller one
    applies its own resize/crop to that image. One large resize per family instead of one per
    distinct size: at 1.2 MP a resize costs about a decode whatever the output size, and a second
    from 384 px costs a few percent of it. The smaller inputs' pixels differ slightly from their own
    transform's (a two-step downscale); the worker records ``resize: cascade from <side>px`` in their
    attributes, ``own`` in the others'.

    Returns:
        ``{teacher: the Preprocessing whose output it resizes from}``, for the cascaded teachers only.
    """
    largest: dict[tuple[str, str], Preprocessing] = {}
    for pp in pps.values():
        family = (pp.resize_mode, pp.mode)
        if family not in largest or pp.image_size > largest[family].image_size:
            largest[family] = pp
    return {name: largest[(pp.resize_mode, pp.mode)] for name, pp in pps.items()
            if pp.image_size < largest[(pp.resize_mode, pp.mode)].image_size}


class BatchBuffers:
    """Memory reused from batch to batch for the pixel batches a worker builds (8-bit stacks, normalised floats).

    A batch of 16 images at 384 px is 28 MB of float32; allocated afresh, the memory comes back from the
    allocator as new pages, and touching them costs more than normalising into them (measured on the 2-core
    VM while the decode threads ran: 100-300 ms against 7-9 ms a batch, bench/README.md). The worker takes
    its arrays here and gives them back when no teacher of the batch needs them any more (:meth:`give_back`,
    :meth:`release`). Buffers are plain bytes, viewed at the shape and dtype asked for, so the pool holds
    as many buffers as a batch needed at once, each as large as the largest asked of it.
    """

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []  # uint8 buffers
        self._taken: dict[int, np.ndarray] = {}  # address -> buffer

    def take(self, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype`` (its contents undefined) that nothing else uses until
        it is given back: the front of the smallest free buffer large enough, else a new one."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        fits = [i for i, b in enumerate(self._free) if b.nbytes >= nbytes]
        buffer = self._free.pop(min(fits, key=lambda i: self._free[i].nbytes)) if fits else \
            np.empty(max(nbytes, 1), np.uint8)
        self._taken[buffer.ctypes.data] = buffer
        return buffer[:nbytes].view(dtype).reshape(shape)

    def give_back(self, array: np.ndarray) -> None:
        """``array`` (from :meth:`take`, or any view starting where it starts) is free again."""
        buffer = self._taken.pop(array.ctypes.data, None)
        if buffer is not None:
            self._free.append(buffer)

    def release(self) -> None:
        """Everything taken is free again: call once nothing holds the batch's tensors any more."""
        self._free.extend(self._taken.values())
        self._taken.clear()

    def clear(self) -> None:
        """Drop the pool (the next batch allocates again)."""
        self._free.clear()
        self._taken.clear()


@dataclass
class _Slot:
    """One loaded teacher of a worker, with what its blocks need."""

    spec: Any
    teacher: Any
    attrs: dict[str, Any]
    autocast: str | None
    param_bytes: int


def _param_bytes(model: torch.nn.Module) -> int:
    try:
        return int(sum(p.numel() * p.element_size() for p in model.parameters()))
    except (AttributeError, TypeError):
        return 0


class BlockWorker:
    """Runs the teachers of one pass over store blocks (see the module docstring).

    Args:
        specs: a teacher spec or a list of them (:class:`~mmkd.teachers.TeacherSpec` or dicts).
        config: the worker settings.
        fail_fast: a teacher that fails to load raises (default for one teacher); otherwise
            its error is kept in :attr:`load_errors` and the other teachers run.
    """

    def __init__(self, specs: TeacherSpec | JSONDict | Sequence[TeacherSpec | JSONDict], config: WorkerConfig, fail_fast: bool = True) -> None:
        specs = specs if isinstance(specs, (list, tuple)) else [specs]
        self.specs = [TeacherSpec.from_dict(s) if isinstance(s, dict) else s for s in specs]
        self.config = config
        self.device = resolve_device(config.device)
        self.dataset = open_dataset(config.dataset)
        self.store = FeatureStore.open(config.store, mode="a")
        self.slots: dict[str, _Slot] = {}
        self.load_errors: dict[str, str] = {}
        tokenizers: dict[tuple, Any] = {}  # teachers of the pass with the same tokenizer load it once
        self.views = ViewRecipe.from_attrs(config.views) if config.views else None
        if self.views is not None and config.decode == "gpu":
            raise ExtractError("--views with --decode gpu is not supported: the views are cropped on the CPU; "
                               "use --decode reduced or full")
        for spec in self.specs:
            self._load(spec, fail_fast, tokenizers)
        pps = [s.teacher.preprocessing for s in self.slots.values()]
        # one decode covers the largest input of the pass (every teacher then resizes from it)
        self._reduce_to = sorted({(pp.image_size, pp.resize_mode) for pp in pps}) if config.decode == "reduced" \
            else None
        for slot in self.slots.values():  # what each teacher's pixels were decoded to cover (with its pass)
            slot.attrs["decode_covers"] = [list(c) for c in self._reduce_to] if self._reduce_to else None
        self._sources = cascade_sources({n: s.teacher.preprocessing for n, s in self.slots.items()}) \
            if config.resize == "cascade" else {}
        for name in list(self.slots):
            self._register(name, fail_fast)
        # one resize/crop transform per geometry key, built here (the decode threads only read this)
        self._geometries = {pp.geometry_key: pp.build_geometry() for pp in pps + list(self._sources.values())}
        self._on_device = config.decode == "gpu"
        if self._on_device and not self.device.startswith("cuda"):
            log.warning("--decode gpu: teachers %s run on %s, so JPEGs are decoded there by torchvision's CPU "
                        "decoder (the same code path as on a GPU)", list(self.slots), self.device)
        self._pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="mmkd-decode")
        self._buffers = BatchBuffers()  # the main thread's pixel batches (never the decode threads')
        self._next: tuple[int, tuple[str, ...], tuple, deque] | None = None  # (block, teachers, rows, futures)

    def _load(self, spec: TeacherSpec, fail_fast: bool, tokenizers: dict[tuple, Any]) -> None:
        # torch, open_clip, transformers load here, in the worker: the Ray driver imports this module too
        from mmkd.teachers.loaders import load_teacher

        try:
            teacher = load_teacher(spec, self.device, tokenizers=tokenizers)
        except Exception as e:  # noqa: BLE001 - any loader error; the pass goes on without this teacher
            self._load_failed(spec.name, e, fail_fast)
            return
        attrs = {**teacher.store_attrs(), "decode": self.config.decode,
                 "views": self.views.to_attrs() if self.views is not None else None}
        autocast = self.config.precision if self.device.startswith("cuda") and self.config.precision != "fp32" else None
        self.slots[spec.name] = _Slot(spec, teacher, attrs, autocast, _param_bytes(teacher.model))

    def _register(self, name: str, fail_fast: bool) -> None:
        """Add a loaded teacher to the store, with the resize it gets (known once every teacher is loaded)."""
        slot = self.slots[name]
        source = self._sources.get(name)
        slot.attrs["resize"] = "own" if source is None else f"cascade from {source.image_size}px"
        try:
            self._add_teacher(name, slot.teacher.dim, slot.attrs)
        except ExtractError:
            raise  # the store refuses this teacher's settings: never a per-teacher load failure
        except Exception as e:  # noqa: BLE001
            del self.slots[name]
            self._load_failed(name, e, fail_fast)

    def _load_failed(self, name: str, e: Exception, fail_fast: bool) -> None:
        if len(self.specs) == 1:
            raise e
        if fail_fast:
            err = ExtractError(f"teacher {name!r} failed to load, and --fail-fast stops the pass: "
                               f"{type(e).__name__}: {e}")
            err.failed_teacher = name  # named by the runner's message (failed_teacher)
            raise err from e
        self.load_errors[name] = f"{type(e).__name__}: {e}"
        log.warning("teacher %s failed to load (%s); the pass goes on without it", name, e)

    # single-teacher views (a worker with one teacher, as the tests and older callers use it)
    @property
    def spec(self) -> TeacherSpec:
        return self.specs[0]

    @property
    def name(self) -> str:
        return self.specs[0].name

    @property
    def teacher(self) -> Teacher:
        return self.slots[self.name].teacher

    @property
    def attrs(self) -> JSONDict:
        return self.slots[self.name].attrs

    def teacher_attrs(self) -> dict[str, JSONDict]:
        """Store attributes of every loaded teacher, by name."""
        return {name: slot.attrs for name, slot in self.slots.items()}

    def memory(self) -> JSONDict:
        """What the loaded teachers hold: parameter bytes per teacher, and the device's peak when it is CUDA."""
        out: dict[str, Any] = {"params_bytes": {n: s.param_bytes for n, s in self.slots.items()}}
        if self.device.startswith("cuda"):
            import torch

            out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        return out

    def _add_teacher(self, name: str, dim: int, attrs: JSONDict) -> None:
        store = self.store
        if name in store.teachers and store.done_blocks(name):
            old, now = store.attrs(name), json.loads(json.dumps(attrs))  # tuples -> lists, as stored
            diff = [k for k in _FEATURE_ATTRS if None not in (old.get(k), now.get(k)) and old.get(k) != now.get(k)]
            if diff and not self.config.overwrite:
                raise ExtractError(
                    f"teacher {name!r} in store {store.path} was extracted with other {diff} "
                    f"(store: {[old.get(k) for k in diff]}, now: {[now.get(k) for k in diff]}); resuming "
                    "would mix features of two models: pass --overwrite to redo every block, or use a new store")
            self._check_views(name)
        store.add_teacher(name, dim, attrs)
        if self.views is not None:
            store.ensure_views(name, self.views.k)
        elif store.num_views(name):
            store.drop_views(name)  # no done block, or --overwrite: every block is redone without views

    def _check_views(self, name: str) -> None:
        """Resuming a teacher whose done blocks were made with another view recipe would mix them: refuse."""
        why = None if self.config.overwrite else views_mismatch(self.store, name, self.views)
        if why is not None:
            raise ExtractError(why)

    def close(self) -> None:
        """Stop the decode threads."""
        self._drop_prefetched()
        self._pool.shutdown(wait=True)
        self._buffers.clear()

    # ------------------------------------------------------------------ one block
    def run_block(self, block: int, next_block: int | None = None) -> BlockResult:
        """Extract and write ``block`` for the worker's first teacher; return its result (see :meth:`run_pass_block`)."""
        names = (self.name,)
        return self.run_pass_block(block, names, None if next_block is None else (next_block, names))[0]

    def run_pass_block(self, block: int, teachers: Sequence[str] | None = None,
                       next_block: tuple[int, Sequence[str]] | None = None) -> list[BlockResult]:
        """Extract and write ``block`` for ``teachers``, reading and decoding its images once.

        Args:
            block: the block to do.
            teachers: names of the loaded teachers that still need it (default: all loaded).
            next_block: ``(block, teachers)`` this worker will be given next, if known: its first
                batches are decoded while this block is written, so the models do not wait
                for images at block boundaries.

        Returns:
            one result per teacher, in ``teachers`` order (counts, failures by reason, timings;
            ``read_decode_s`` and ``wait_s`` are the block's shared ones); the first also carries the
            images decoded, bytes read and storage retries of the block (once for all its teachers).
        """
        t0, c0, r0 = time.perf_counter(), time.process_time(), storage_retries()
        names = self._names(teachers)
        start, stop = self.store.block_range(block)
        rows, pending = self._take_prefetched(block, names)
        ids, captions, refs = rows or self._block_rows(start, stop)
        n = stop - start
        views = self.views.k if self.views is not None else 0
        out = {name: _BlockOut(n, self.slots[name].teacher.dim, views) for name in names}
        hashes: list[str | None] = [None] * n
        cached: dict[int, tuple] = {}  # row in block -> its image cache entry (--image-cache)
        timings = Counter()
        dct_scales: Counter = Counter()  # --decode reduced: images of the block by the DCT scale they were decoded at
        batches = self._batches(n)
        for k in range(len(batches)):
            while len(pending) < PREFETCH_BATCHES and k + len(pending) < len(batches):
                pending.append(self._submit(batches[k + len(pending)], captions, refs, names, start))
            t = time.perf_counter()
            chunks = [fut.result() for fut in pending.popleft()]
            timings["wait_s"] += time.perf_counter() - t
            for items, seconds, decoded, nbytes, read, entries, scales in chunks:
                dct_scales.update(scales)
                timings["read_decode_s"] += seconds
                timings["decoded"] += decoded
                timings["bytes_read"] += nbytes
                for r, h in read:
                    hashes[r] = h
                cached.update(entries)
            prepared = [item for items, *_ in chunks for item in items]
            shared: dict[tuple, Any] = {}  # this batch's tokens and 8-bit pixels, once for the teachers that share them
            try:
                group = None
                for name in self._forward_order(names):  # the teachers of one normalisation one after another
                    if self._normalisation(name) != group:  # the previous group's float batches are done with
                        group = self._normalisation(name)
                        self._drop_floats(shared)
                    with _blame(name):
                        self._forward(name, prepared, out[name], ids, start, shared)
            finally:
                shared.clear()  # the batch's pixel tensors: their arrays go back to the pool
                self._buffers.release()
        if next_block is not None:
            self._prefetch(next_block[0], self._names(next_block[1]))
        # the block's image hashes recorded (or compared with those recorded) once, for every teacher of the pass
        changed, content = record_block_hashes(self.store, block, hashes)
        if len(cached) == n:
            self._write_cache_block(block, ids, hashes, cached, changed, start)
        results: list[BlockResult] = []
        for name in names:
            o = out[name]
            t = time.perf_counter()
            self._fail_changed(name, changed, ids, start, o.valid, o.failures)
            with _blame(name):
                self.store.write_block(name, block, o.image, o.text, o.valid, o.failures, content_sha256=content,
                                       views=o.views, decode=self._decode_record(dct_scales))
            o.timings["write_s"] += time.perf_counter() - t
            first = not results  # the block's decodes, bytes and object-storage retries are counted once, on it
            results.append(BlockResult(
                teacher=name, block=block, rows=n, valid=int(o.valid.sum()),
                failures=dict(Counter(f["reason"] for f in o.failures)),
                read_decode_s=timings["read_decode_s"], wait_s=timings["wait_s"],
                forward_s=o.timings["forward_s"], write_s=o.timings["write_s"],
                wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
                device=self.device, pid=os.getpid(), host=socket.gethostname(),
                pass_teachers=len(names),
                storage_retries=storage_retries() - r0 if first else 0,
                decoded=int(timings["decoded"]) if first else 0,
                dct_scales=_scale_names(dct_scales),
                bytes_read=int(timings["bytes_read"]) if first else 0,
            ))
        return results

    def _decode_record(self, dct_scales: Counter) -> JSONDict | None:
        """What a block's marker says of its decode: with ``--decode reduced``, the inputs the decode covered and
        how many images were decoded at each DCT scale (the pixels a teacher got depend on both)."""
        if self._reduce_to is None:
            return None
        return {"mode": "reduced", "covers": [list(c) for c in self._reduce_to], "dct_scales": _scale_names(dct_scales)}

    def _names(self, teachers: Sequence[str] | None) -> tuple[str, ...]:
        names = tuple(self.slots) if teachers is None else tuple(teachers)
        unknown = [n for n in names if n not in self.slots]
        if unknown:
            raise ExtractError(f"block worker: teachers {unknown} are not loaded here (loaded: {list(self.slots)}; "
                               f"failed to load: {self.load_errors or 'none'})")
        return names

    @staticmethod
    def _fail_changed(name: str, changed: list[tuple[int, str, str]], ids: list[str], start: int,
                      valid: np.ndarray, failures: list[JSONDict]) -> None:
        """Fail, for teacher ``name``, the rows whose image bytes differ from the hashes recorded before (another
        teacher, the dataset; :func:`record_block_hashes`): their features would describe other images."""
        for row, old, new in changed:
            if valid[row - start]:
                valid[row - start] = False
                failures.append({"sample_id": ids[row - start], "row": row, "reason": "content_changed",
                                 "detail": f"image bytes sha256 {new[:16]}... but {old[:16]}... was recorded "
                                           "(the image changed since the store recorded it)"})
            log.warning("teacher %s, row %d (%s): image changed since the store recorded it (sha256 %s != recorded "
                        "%s); the row is invalid for this teacher", name, row, ids[row - start], new, old)

    def _batches(self, n: int) -> list[range]:
        bs = self.config.batch_size
        return [range(i, min(i + bs, n)) for i in range(0, n, bs)]

    def _prefetch(self, block: int, names: tuple[str, ...]) -> None:
        """Start decoding the first batches of ``block`` (picked up by the next :meth:`run_pass_block`)."""
        self._drop_prefetched()
        start, stop = self.store.block_range(block)
        rows = self._block_rows(start, stop)
        batches = self._batches(stop - start)[:PREFETCH_BATCHES]
        self._next = (block, names, rows, deque(self._submit(b, rows[1], rows[2], names, start) for b in batches))

    def _take_prefetched(self, block: int, names: tuple[str, ...]) -> tuple[tuple | None, deque]:
        if self._next is not None and self._next[0] == block and self._next[1] == names:
            _, _, rows, pending = self._next
            self._next = None
            return rows, pending
        self._drop_prefetched()
        return None, deque()

    def _drop_prefetched(self) -> None:
        if self._next is not None:
            for futures in self._next[3]:
                for f in futures:
                    f.cancel()
            self._next = None

    def _block_rows(self, start: int, stop: int) -> tuple[list[str], list[str], list[str]]:
        # Row groups are block-aligned, so this reads about one row group (through the store's index LRU).
        try:
            table = self.store.index_rows(start, stop, ("row", "sample_id", "caption", "image"))
            rows = table.column("row").to_numpy(zero_copy_only=False)
        except (StoreError, OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise ExtractError(f"store {self.store.path}: cannot read index rows [{start}, {stop}) ({e}); "
                               "the index is damaged (run `mmkd store validate`)") from e
        if table.num_rows != stop - start or not np.array_equal(rows, np.arange(start, stop)):
            raise ExtractError(f"store {self.store.path}: index rows [{start}, {stop}) do not hold row numbers "
                               f"{start}..{stop - 1} in order; the index is damaged (run `mmkd store validate`)")
        return (table.column("sample_id").to_pylist(), table.column("caption").to_pylist(),
                table.column("image").to_pylist())

    def _submit(self, rows: range, captions: list[str], refs: list[str], names: tuple[str, ...],
                start: int) -> list[Future]:
        """Split a batch into one chunk per thread (a reader opens each shard once per chunk)."""
        rows = list(rows)
        step = -(-len(rows) // self.config.workers)
        return [self._pool.submit(self._prepare, rows[i:i + step], captions, refs, names, start)
                for i in range(0, len(rows), step)]

    def _prepare(self, rows: list[int], captions: list[str], refs: list[str], names: tuple[str, ...],
                 start: int) -> tuple[list[tuple], float, int, int, list[tuple[int, str]], list[tuple[int, tuple]],
                                      Counter]:
        """Read and decode ``rows`` once; preprocess each image for every teacher in ``names``.

        Returns:
            ``[(row, {teacher: image | (image, [K view images]) | DeviceJpeg | BadSample}, caption | BadSample)]``
            (the view images when the worker has views), the seconds
            it took, the images decoded, the bytes read, ``(row, sha256)`` of each image's bytes read,
            ``(row, image cache entry)`` of each row when the block's image cache file is to be written, and the
            images decoded by DCT scale (``{s: images}`` for scale 1/s; ``--decode reduced`` only).
        """
        t = time.perf_counter()
        datas = self.dataset.read_many([refs[r] for r in rows], on_error="return")
        cache = self.config.image_cache
        if cache is not None and block_path(cache_path(self.store.path, cache[0]),
                                            start // self.store.block_size).exists():
            cache = None  # written already (an earlier run, or another teacher's pass)
        entries = [(r, encode_cached(data, cache[0], cache[1])) for r, data in zip(rows, datas)] if cache else []
        out, decoded, nbytes, hashes, scales = [], 0, 0, [], Counter()
        for r, data in zip(rows, datas):
            try:
                caption = check_caption(captions[r])
            except BadSample as e:
                caption = e
            if isinstance(data, BadSample):
                out.append((r, dict.fromkeys(names, data), caption))
                continue
            nbytes += len(data)
            hashes.append((r, sha256_of(data)))
            pixels: dict[str, Any] = {}
            cpu = []
            for name in names:
                pp = self.slots[name].teacher.preprocessing
                if self._on_device and device_decodable(data, pp, self.config.max_pixels):
                    pixels[name] = DeviceJpeg(data)  # decoded in _forward's batch, on this teacher's device
                else:
                    cpu.append(name)
            if cpu:
                decoded += 1
                pixels.update(self._cpu_geometry(data, cpu, start + r, scales))
            out.append((r, pixels, caption))
        return out, time.perf_counter() - t, decoded, nbytes, hashes, entries, scales

    def _write_cache_block(self, block: int, ids: list[str], hashes: list[str | None], cached: dict[int, tuple],
                           changed: list[tuple[int, str, str]], start: int) -> None:
        """Write ``block``'s image cache file; an image whose bytes differ from the hashes recorded before (see
        :meth:`_fail_changed`) is left out of it, with that reason."""
        size, _ = self.config.image_cache
        for row, old, new in changed:
            cached[row - start] = (None, 0, 0, f"content_changed: image bytes sha256 {new[:16]}... but {old[:16]}... "
                                               "was recorded")
        order = sorted(cached)
        write_cache_block(cache_path(self.store.path, size), block, [start + r for r in order], ids,
                          [hashes[r] for r in order], [cached[r] for r in order])

    def _cpu_pixels(self, data: bytes, names: list[str]) -> dict[str, Any]:
        """Decode once, then each teacher's mode and transform on the CPU (a tensor, or a BadSample per teacher)."""
        out = self._cpu_geometry(data, names, -1)  # row -1: views are refused with --decode gpu (__init__)
        for name, img in out.items():
            if not isinstance(img, BadSample):
                try:
                    out[name] = self.slots[name].teacher.preprocessing.to_tensor_batch([img])[0]
                except (ValueError, RuntimeError) as e:
                    out[name] = BadSample("corrupt", f"preprocessing failed: {type(e).__name__}: {e}")
        return out

    def _cpu_geometry(self, data: bytes, names: list[str], row: int, scales: Counter | None = None) -> dict[str, Any]:
        """Decode once, then each teacher's mode and resize/crop (a PIL image, or a BadSample per teacher).

        With views, each teacher gets ``(image, [its K views of store row row])``, each view cropped from the
        one decoded image at the teacher's input size (:func:`mmkd.data.views.render_view`)."""
        boxes, frame, draft = None, None, None
        try:
            if self.views is not None:
                frame = open_image(data, max_pixels=self.config.max_pixels).size  # the header: the boxes' frame
                boxes = self.views.boxes(row, frame)
                if self._reduce_to is not None:
                    side = max(self.slots[n].teacher.preprocessing.image_size for n in names)
                    draft = draft_request(frame, boxes, side)
            img = decode_loaded(data, max_pixels=self.config.max_pixels, reduce_to=self._reduce_to, draft=draft)
            if scales is not None and self._reduce_to is not None:
                scales[img.info["dct_scale"]] += 1
        except BadSample as e:
            return dict.fromkeys(names, e)
        by_mode: dict[str, Any] = {}
        resized: dict[tuple, Any] = {}  # teachers with the same resize/crop share it (the same op on the same image)
        viewed: dict[tuple, Any] = {}  # and the same views (mode, side, filter)
        out: dict[str, Any] = {}
        for name in names:
            slot = self.slots[name]
            mode = slot.teacher.image_mode
            try:
                if mode not in by_mode:
                    try:
                        by_mode[mode] = convert_mode(img, mode)
                    except BadSample as e:
                        by_mode[mode] = e
                if isinstance(by_mode[mode], BadSample):
                    raise by_mode[mode]
                try:
                    out[name] = self._resized(slot.teacher.preprocessing, self._sources.get(name), by_mode[mode],
                                              resized)
                    if boxes is not None:
                        pp = slot.teacher.preprocessing
                        key = (mode, pp.image_size, pp.interpolation)
                        if key not in viewed:
                            side = (pp.image_size, pp.image_size)
                            viewed[key] = [render_view(by_mode[mode], b, frame, side, pp.interpolation) for b in boxes]
                        out[name] = (out[name], viewed[key])
                except (ValueError, OSError, RuntimeError) as e:
                    raise BadSample("corrupt", f"preprocessing failed: {type(e).__name__}: {e}") from e
            except BadSample as e:
                out[name] = e
        return out

    def _resized(self, pp: Preprocessing, source: Preprocessing | None, img: Any, resized: dict[tuple, Any]) -> Any:
        """``pp``'s resize/crop of ``img``, or of ``source``'s (``--resize cascade``); each computed once per image."""
        key = (pp.geometry_key, source and source.geometry_key)
        if key not in resized:
            if source is not None:
                img = self._resized(source, None, img, resized)
            resized[key] = self._geometry(pp)(img)
        return resized[key]

    def _geometry(self, pp: Preprocessing) -> Any:
        return self._geometries[pp.geometry_key]

    def _device_pixels(self, name: str, prepared: list[tuple]) -> list[tuple]:
        """Decode the batch's :class:`DeviceJpeg` items of teacher ``name`` on its device; what it refuses goes
        through the CPU path (same bad-sample reasons). Returns ``[(row, pixels | BadSample, caption)]``."""
        teacher = self.slots[name].teacher
        items = [(r, px[name], caption) for r, px, caption in prepared]
        jobs = [i for i, (_, x, _) in enumerate(items) if isinstance(x, DeviceJpeg)]
        if not jobs:
            return items
        decoded = decode_batch([items[i][1].data for i in jobs], teacher.preprocessing, teacher.device)
        for i, pixels in zip(jobs, decoded):
            r, jpeg, caption = items[i]
            items[i] = (r, pixels if pixels is not None else self._cpu_pixels(jpeg.data, [name])[name], caption)
        return items

    def _forward(self, name: str, prepared: list[tuple], o: "_BlockOut", ids: list[str], start: int,
                 shared: dict[tuple, Any]) -> None:
        slot = self.slots[name]
        t = time.perf_counter()
        items = self._device_pixels(name, prepared) if self._on_device else \
            [(r, px[name], caption) for r, px, caption in prepared]
        if self._on_device:  # JPEGs decoded on the device count as forward time
            o.timings["forward_s"] += time.perf_counter() - t
        good = []
        for r, x, caption in items:
            bad = x if isinstance(x, BadSample) else caption if isinstance(caption, BadSample) else None
            if bad is not None:
                o.failures.append({"sample_id": ids[r], "row": start + r, "reason": bad.reason, "detail": bad.detail})
            else:
                good.append((r, x, caption))
        if not good:
            return
        t = time.perf_counter()
        rows = np.array([g[0] for g in good])
        pp = slot.teacher.preprocessing
        pixels = self._pixel_batch(pp, [g[1][0] if isinstance(g[1], tuple) else g[1] for g in good], shared)
        o.image[rows] = slot.teacher.encode_images(pixels.to(slot.teacher.device), autocast=slot.autocast).numpy()
        captions = [g[2] for g in good]
        key = slot.teacher.tokenizer_key
        if key is not None:
            key = ("tokens", key, tuple(rows.tolist()))  # the same tokenizer on the same captions
            if key not in shared:
                shared[key] = slot.teacher.tokenize(captions)
        o.text[rows] = slot.teacher.encode_texts(captions, autocast=slot.autocast,
                                                 tokens=shared[key] if key is not None else None).numpy()
        if o.views is not None:
            o.views[rows] = self._encode_views(slot, [g[1][1] for g in good], shared)
        finite = _finite_rows(o.image[rows], o.text[rows], o.failures, [ids[r] for r in rows], rows + start,
                              None if o.views is None else o.views[rows])
        o.valid[rows[finite]] = True
        o.timings["forward_s"] += time.perf_counter() - t

    def _normalisation(self, name: str) -> tuple:
        """Teachers with equal keys get the same float batches: the same resize/crop (of the same source) and
        the same mean/std."""
        pp = self.slots[name].teacher.preprocessing
        source = self._sources.get(name)
        return pp.geometry_key, source and source.geometry_key, tuple(pp.mean), tuple(pp.std)

    def _forward_order(self, names: tuple[str, ...]) -> list[str]:
        """``names`` with the teachers of one normalisation next to each other (in their first one's place), so
        that a batch holds one normalisation's float tensors at a time (:meth:`_drop_floats`)."""
        first: dict[tuple, int] = {}
        for i, name in enumerate(names):
            first.setdefault(self._normalisation(name), i)
        return sorted(names, key=lambda n: first[self._normalisation(n)])

    def _drop_floats(self, shared: dict[tuple, Any]) -> None:
        """Give the batch's float tensors back to the pool; its 8-bit stacks stay until the batch ends (a teacher
        of another mean/std may have the same resize/crop)."""
        for key in [k for k in shared if k[0] == "float32"]:
            self._buffers.give_back(shared.pop(key).numpy())

    def _pixel_batch(self, pp: Preprocessing, xs: list[Any], shared: dict[tuple, Any]) -> Any:
        """The model input of a batch: resized PIL images (CPU decode) made into one normalised tensor, their
        8-bit stack built once for the teachers given the very same images (same resize/crop), and the
        normalised tensor once for those that also have the same mean/std (the same elementwise ops on the
        same bytes: the same floats; models take their input read-only); tensors (decoded on the device, or
        the CPU fallback of that path) stacked."""
        import torch
        from PIL import Image

        if all(isinstance(x, Image.Image) for x in xs):
            images = tuple(map(id, xs))  # the same image objects (alive while the batch runs): the same bytes
            key = ("float32", tuple(pp.mean), tuple(pp.std), images)
            if key not in shared:
                if ("uint8", images) not in shared:
                    shared["uint8", images] = pp.stack_uint8(xs, alloc=self._buffers.take)
                shared[key] = pp.normalize_uint8(shared["uint8", images], alloc=self._buffers.take)
            return shared[key]
        return torch.stack([pp.to_tensor_batch([x])[0] if isinstance(x, Image.Image) else x for x in xs])


    def _encode_views(self, slot: _Slot, views: list[list[Any]], shared: dict[tuple, Any]) -> np.ndarray:
        """(rows, K, dim) image features of every row's K view images, in forward batches of ``batch_size``."""
        k = len(views[0])
        flat = [v for row in views for v in row]
        pp, bs = slot.teacher.preprocessing, self.config.batch_size
        out = [slot.teacher.encode_images(self._pixel_batch(pp, flat[i:i + bs], shared).to(slot.teacher.device),
                                          autocast=slot.autocast).numpy() for i in range(0, len(flat), bs)]
        return np.concatenate(out).reshape(len(views), k, -1)


@contextlib.contextmanager
def _blame(teacher: str) -> Iterator[None]:
    """Mark an error raised by one teacher's step of a pass block with that teacher (``failed_teacher``),
    so a runner's message names it rather than the whole pass; the error keeps its type."""
    try:
        yield
    except Exception as e:
        if getattr(e, "failed_teacher", None) is None:
            e.failed_teacher = teacher  # pickled with the exception (its __dict__) through Ray
        raise


def _scale_names(scales: Counter) -> dict[str, int]:
    """``{"1/2": 120, "1/4": 8}``: images by the DCT scale 1/s they were decoded at, largest scale first."""
    return {f"1/{s}": int(n) for s, n in sorted(scales.items())}


def failed_teacher(e: BaseException) -> str | None:
    """The teacher an error of :meth:`BlockWorker.run_pass_block` came from, when one did (see :func:`_blame`)."""
    while e is not None:
        name = getattr(e, "failed_teacher", None)
        if name is not None:
            return name
        e = getattr(e, "cause", None) or e.__cause__  # a Ray task error holds the worker's own one in .cause
    return None


class _BlockOut:
    """One teacher's arrays, failures and timings for the block being run."""

    def __init__(self, n: int, dim: int, views: int = 0) -> None:
        self.views = np.zeros((n, views, dim), np.float32) if views else None
        self.image = np.zeros((n, dim), np.float32)
        self.text = np.zeros((n, dim), np.float32)
        self.valid = np.zeros(n, bool)
        self.failures: list[dict[str, Any]] = []
        self.timings: Counter = Counter()


def _finite_rows(image: np.ndarray, text: np.ndarray, failures: list[dict], ids: list[str],
                 rows: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
    """Which rows' features stay finite once stored; the others are recorded as failures (reason ``nonfinite``).

    Checked in the store's dtype (float16), so a float32 value past float16's range (an overflow) counts too.
    With views (rows, K, dim), a row is valid only when every view is finite as well.
    """
    kinds = [("image", image), ("text", text)]
    if views is not None:
        kinds.append(("view", views.reshape(len(views), -1)))
    with np.errstate(over="ignore", invalid="ignore"):
        nonfinite = {kind: ~np.isfinite(x.astype(FEATURE_DTYPE)) for kind, x in kinds}
    bad = np.logical_or.reduce([m.any(axis=1) for m in nonfinite.values()])
    for i in np.flatnonzero(bad):
        detail = "; ".join(f"{kind} features: {int(m[i].sum())} of {m.shape[1]} values NaN/Inf in {FEATURE_DTYPE}"
                           for kind, m in nonfinite.items() if m[i].any())
        failures.append({"sample_id": ids[i], "row": int(rows[i]), "reason": "nonfinite", "detail": detail})
    return ~bad
