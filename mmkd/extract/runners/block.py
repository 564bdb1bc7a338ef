"""The unit of work: one teacher over one store block. Both runners run this code.

A :class:`BlockWorker` is built from *specs* (teacher spec, dataset spec, store
path), loads the teacher itself once, and then for each block: reads the block's
rows from the store index, reads + decodes + preprocesses images on a thread pool
(the next batch is prepared while the current one runs), encodes images and
captions, writes the block, and returns a small manifest dict. Features never
leave the worker except into the store.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmkd.config import ConfigError
from mmkd.config import resolve_device as resolve_config_device
from mmkd.data import open_dataset
from mmkd.data.images import DEFAULT_MAX_PIXELS, BadSample, check_caption, decode_image
from mmkd.data.remote import storage_retries
from mmkd.extract.device_decode import DeviceJpeg, decode_batch, device_decodable
from mmkd.extract.runners.job import ExtractError
from mmkd.extract.runners.summary import BlockResult
from mmkd.store import FeatureStore, StoreError
from mmkd.teachers import TeacherSpec

log = logging.getLogger(__name__)

PREFETCH_BATCHES = 2
# Attributes that change the features; a resumed run must not mix blocks made with different ones.
_FEATURE_ATTRS = ("weights_sha256", "revision", "preprocessing", "context_length", "tokenizer", "dim", "decode",
                  "text_encoding")


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


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu`` (:func:`mmkd.config.resolve_device`, as every stage)."""
    try:
        return resolve_config_device(device)
    except ConfigError as e:
        raise ExtractError(str(e)) from e


class BlockWorker:
    """Runs one teacher over store blocks (see the module docstring).

    Args:
        spec: the teacher spec (a :class:`~mmkd.teachers.TeacherSpec` or its dict).
        config: the worker settings.
    """

    def __init__(self, spec: Any, config: WorkerConfig) -> None:
        # torch, open_clip, transformers load here, in the worker: the Ray driver imports this module too
        from mmkd.teachers.loaders import load_teacher

        self.spec = TeacherSpec.from_dict(spec) if isinstance(spec, dict) else spec
        self.config = config
        self.device = resolve_device(config.device)
        self.autocast = config.precision if self.device.startswith("cuda") and config.precision != "fp32" else None
        self.teacher = load_teacher(self.spec, self.device)
        self.dataset = open_dataset(config.dataset)
        self.store = FeatureStore.open(config.store, mode="a")
        self.attrs = {**self.teacher.store_attrs(), "decode": config.decode}
        pp = self.teacher.preprocessing
        self._reduce_to = (pp.image_size, pp.resize_mode) if config.decode == "reduced" else None
        self._on_device = config.decode == "gpu"
        if self._on_device and not self.device.startswith("cuda"):
            log.warning("--decode gpu: teacher %s runs on %s, so JPEGs are decoded there by torchvision's CPU "
                        "decoder (the same code path as on a GPU)", self.spec.name, self.device)
        self._add_teacher()
        self._pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix=f"mmkd-decode-{self.spec.name}")
        self._next: tuple[int, tuple, deque] | None = None  # (block, its index rows, decode futures)

    @property
    def name(self) -> str:
        return self.spec.name

    def _add_teacher(self) -> None:
        store, name = self.store, self.spec.name
        if name in store.teachers and store.done_blocks(name):
            old, now = store.attrs(name), json.loads(json.dumps(self.attrs))  # tuples -> lists, as stored
            diff = [k for k in _FEATURE_ATTRS if None not in (old.get(k), now.get(k)) and old.get(k) != now.get(k)]
            if diff and not self.config.overwrite:
                raise ExtractError(
                    f"teacher {name!r} in store {store.path} was extracted with other {diff} "
                    f"(store: {[old.get(k) for k in diff]}, now: {[now.get(k) for k in diff]}); resuming "
                    "would mix features of two models: pass --overwrite to redo every block, or use a new store")
        store.add_teacher(name, self.teacher.dim, self.attrs)

    def close(self) -> None:
        """Stop the decode threads."""
        self._drop_prefetched()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ one block
    def run_block(self, block: int, next_block: int | None = None) -> BlockResult:
        """Extract and write ``block``; return its manifest (counts, failures by reason, timings).

        Args:
            block: the block to do.
            next_block: the block this worker will be given next, if known: its first
                batches are decoded while this block is written, so the model does not
                wait for images at block boundaries.
        """
        t0, c0, r0 = time.perf_counter(), time.process_time(), storage_retries()
        start, stop = self.store.block_range(block)
        rows, pending = self._take_prefetched(block)
        ids, captions, refs = rows or self._block_rows(start, stop)
        n, dim = stop - start, self.teacher.dim
        image = np.zeros((n, dim), np.float32)
        text = np.zeros((n, dim), np.float32)
        valid = np.zeros(n, bool)
        failures: list[dict[str, Any]] = []
        timings = Counter()
        batches = self._batches(n)
        for k in range(len(batches)):
            while len(pending) < PREFETCH_BATCHES and k + len(pending) < len(batches):
                pending.append(self._submit(batches[k + len(pending)], captions, refs))
            t = time.perf_counter()
            chunks = [fut.result() for fut in pending.popleft()]
            timings["wait_s"] += time.perf_counter() - t
            timings["read_decode_s"] += sum(seconds for _, seconds in chunks)
            prepared = [item for items, _ in chunks for item in items]
            self._forward(prepared, image, text, valid, failures, timings, ids, start)
        if next_block is not None:
            self._prefetch(next_block)
        t = time.perf_counter()
        self.store.write_block(self.name, block, image, text, valid, failures)
        timings["write_s"] += time.perf_counter() - t
        return BlockResult(
            teacher=self.name, block=block, rows=n, valid=int(valid.sum()),
            failures=dict(Counter(f["reason"] for f in failures)),
            read_decode_s=timings["read_decode_s"], wait_s=timings["wait_s"],
            forward_s=timings["forward_s"], write_s=timings["write_s"],
            wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
            device=self.device, pid=os.getpid(), host=socket.gethostname(),
            storage_retries=storage_retries() - r0,
        )

    def _batches(self, n: int) -> list[range]:
        bs = self.config.batch_size
        return [range(i, min(i + bs, n)) for i in range(0, n, bs)]

    def _prefetch(self, block: int) -> None:
        """Start decoding the first batches of ``block`` (picked up by the next :meth:`run_block`)."""
        self._drop_prefetched()
        start, stop = self.store.block_range(block)
        rows = self._block_rows(start, stop)
        batches = self._batches(stop - start)[:PREFETCH_BATCHES]
        self._next = (block, rows, deque(self._submit(b, rows[1], rows[2]) for b in batches))

    def _take_prefetched(self, block: int) -> tuple[tuple | None, deque]:
        if self._next is not None and self._next[0] == block:
            _, rows, pending = self._next
            self._next = None
            return rows, pending
        self._drop_prefetched()
        return None, deque()

    def _drop_prefetched(self) -> None:
        if self._next is not None:
            for futures in self._next[2]:
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

    def _submit(self, rows: range, captions: list[str], refs: list[str]) -> list[Future]:
        """Split a batch into one chunk per thread (a reader opens each shard once per chunk)."""
        rows = list(rows)
        step = -(-len(rows) // self.config.workers)
        return [self._pool.submit(self._prepare, rows[i:i + step], captions, refs) for i in range(0, len(rows), step)]

    def _prepare(self, rows: list[int], captions: list[str], refs: list[str]) -> tuple[list[tuple], float]:
        """Read, decode and preprocess ``rows``.

        Returns:
            ``[(row, tensor, caption) or (row, BadSample, None)]`` and the seconds it took.
        """
        t = time.perf_counter()
        datas = self.dataset.read_many([refs[r] for r in rows], on_error="return")
        out = []
        for r, data in zip(rows, datas):
            try:
                if isinstance(data, BadSample):
                    raise data
                if self._on_device and device_decodable(data, self.teacher.preprocessing, self.config.max_pixels):
                    out.append((r, DeviceJpeg(data), check_caption(captions[r])))  # decoded in _forward's batch
                    continue
                pixels = self._cpu_pixels(data)
                out.append((r, pixels, check_caption(captions[r])))
            except BadSample as e:
                out.append((r, e, None))
        return out, time.perf_counter() - t

    def _cpu_pixels(self, data: bytes):
        """Decode + the teacher's transform on the CPU (BadSample with the reason when that fails)."""
        pil = decode_image(data, max_pixels=self.config.max_pixels, mode=self.teacher.image_mode,
                           reduce_to=self._reduce_to)
        try:
            return self.teacher.preprocess(pil)
        except (ValueError, OSError, RuntimeError) as e:
            raise BadSample("corrupt", f"preprocessing failed: {type(e).__name__}: {e}") from e

    def _device_pixels(self, prepared: list[tuple]) -> list[tuple]:
        """Decode the batch's :class:`DeviceJpeg` items on the teacher's device; what it refuses goes through the
        CPU path (same bad-sample reasons)."""
        jobs = [i for i, (_, x, _) in enumerate(prepared) if isinstance(x, DeviceJpeg)]
        if not jobs:
            return prepared
        decoded = decode_batch([prepared[i][1].data for i in jobs], self.teacher.preprocessing, self.teacher.device)
        out = list(prepared)
        for i, pixels in zip(jobs, decoded):
            r, jpeg, caption = prepared[i]
            if pixels is None:
                try:
                    pixels = self._cpu_pixels(jpeg.data)
                except BadSample as e:
                    out[i] = (r, e, None)
                    continue
            out[i] = (r, pixels, caption)
        return out

    def _forward(self, prepared: list[tuple], image: np.ndarray, text: np.ndarray, valid: np.ndarray,
                 failures: list[dict], timings: Counter, ids: list[str], start: int) -> None:
        import torch

        if self._on_device:  # JPEGs decoded on the device count as forward time
            t = time.perf_counter()
            prepared = self._device_pixels(prepared)
            timings["forward_s"] += time.perf_counter() - t
        good = []
        for r, x, caption in prepared:
            if isinstance(x, BadSample):
                failures.append({"sample_id": ids[r], "row": start + r, "reason": x.reason, "detail": x.detail})
            else:
                good.append((r, x, caption))
        if not good:
            return
        t = time.perf_counter()
        rows = np.array([g[0] for g in good])
        pixels = torch.stack([g[1].to(self.teacher.device) for g in good])
        image[rows] = self.teacher.encode_images(pixels, autocast=self.autocast).numpy()
        text[rows] = self.teacher.encode_texts([g[2] for g in good], autocast=self.autocast).numpy()
        valid[rows] = True
        timings["forward_s"] += time.perf_counter() - t
