"""Chunk-aware shuffled row order for training from a store.

Reading rows in a fully random order touches a different chunk for nearly every
row; reading them in order is not shuffled. The middle way (as in litdata or
webdataset shuffle buffers): shuffle the order of blocks, then shuffle rows within a
window of ``buffer_blocks`` blocks. A reader with a block cache of that size then
reads each block about once per epoch.

Rows can be left out (``exclude``: e.g. samples whose image failed at extract,
:func:`mmkd.store.masks.untrainable_rows`). They are dropped from each shuffled
window *after* it is drawn, so the random draws are the same with or without an
exclusion mask, the order stays a function of ``(seed, epoch, exclude)``, and
every global batch is still full and split equally across ranks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Iterator

import numpy as np


def num_batches(n: int, batch_size: int, world_size: int = 1, drop_last: bool = True,
                exclude: np.ndarray | None = None) -> int:
    """Batches per rank per epoch for :func:`chunk_shuffled_batches` (``n`` rows, less ``exclude``)."""
    global_bs = batch_size * world_size
    if exclude is not None:
        n = n - int(np.count_nonzero(_check_exclude(exclude, n)))
    return n // global_bs if drop_last else -(-n // global_bs)


def _check_exclude(exclude: np.ndarray, n: int) -> np.ndarray:
    exclude = np.asarray(exclude, dtype=bool)
    if exclude.shape != (n,):
        raise ValueError(f"exclude must be a bool mask of shape ({n},), got shape {exclude.shape}")
    return exclude


def _global_order(n: int, block_size: int, rng: np.random.Generator, buffer_blocks: int,
                  exclude: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Shuffled rows, one window of ``buffer_blocks`` shuffled blocks at a time (less excluded rows)."""
    nb = -(-n // block_size)
    blocks = rng.permutation(nb)
    for i in range(0, nb, buffer_blocks):
        rows = np.concatenate([
            np.arange(b * block_size, min((b + 1) * block_size, n), dtype=np.int64) for b in blocks[i:i + buffer_blocks]
        ])
        rows = rows[rng.permutation(rows.size)]
        yield rows if exclude is None else rows[~exclude[rows]]


def chunk_shuffled_batches(
    n: int,
    block_size: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    worker_id: int = 0,
    num_workers: int = 1,
    buffer_blocks: int = 8,
    start_batch: int = 0,
    drop_last: bool = True,
    exclude: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """Yield this rank's (and DataLoader worker's) batches of row indices for one epoch.

    The order is a function of ``(seed, epoch)`` only. Each global batch of
    ``batch_size * world_size`` rows is split into equal per-rank slices, so every
    rank gets the same number of batches (no DDP hangs). Batch ``j`` of a rank goes
    to worker ``j % num_workers``, the order in which a torch DataLoader
    interleaves its workers, so the rank sees the same sequence whatever the
    worker count.

    Args:
        n: rows in the store.
        block_size: the store's block (chunk) size in rows.
        batch_size: rows per batch per rank.
        seed: base seed.
        epoch: epoch number (a new order each epoch).
        rank: this DDP rank.
        world_size: number of DDP ranks.
        worker_id: this DataLoader worker.
        num_workers: DataLoader workers per rank (1 when loading in the main process).
        buffer_blocks: blocks shuffled together; bounds the reader's cache.
        start_batch: skip this rank's first ``start_batch`` batches (resume mid-epoch).
        drop_last: drop the final short global batch.
        exclude: ``(n,)`` bools, True for rows never to yield (see the module docstring).
    """
    if not (0 <= rank < world_size and 0 <= worker_id < num_workers):
        raise ValueError(f"bad shard: rank {rank} of {world_size}, worker {worker_id} of {num_workers}")
    if batch_size <= 0 or block_size <= 0 or buffer_blocks <= 0:
        raise ValueError(f"batch_size, block_size and buffer_blocks must be positive: {batch_size}, {block_size}, {buffer_blocks}")
    if exclude is not None:
        exclude = _check_exclude(exclude, n)
    rng = np.random.default_rng([seed, epoch])
    global_bs = batch_size * world_size
    carry = np.empty(0, dtype=np.int64)
    j = 0
    for window in _global_order(n, block_size, rng, buffer_blocks, exclude):
        rows = np.concatenate([carry, window])
        full = rows.size // global_bs * global_bs
        for gb in rows[:full].reshape(-1, global_bs):
            if j >= start_batch and (j - start_batch) % num_workers == worker_id:
                yield gb[rank * batch_size:(rank + 1) * batch_size]
            j += 1
        carry = rows[full:]
    if carry.size and not drop_last:
        part = np.array_split(carry, world_size)[rank]
        if j >= start_batch and (j - start_batch) % num_workers == worker_id and part.size:
            yield part


def fetched_ahead(batches: Iterable[np.ndarray], fetch: Callable[[np.ndarray], object],
                  horizon: int) -> Iterator[np.ndarray]:
    """Yield ``batches`` in order, calling ``fetch`` on each one ``horizon`` batches before it is yielded.

    The first ``horizon + 1`` batches are fetched before the first is yielded, so their
    reads run at once instead of one after another. With ``fetch`` starting background
    reads (:meth:`FeatureStore.read_ahead`), a reader on object storage finds a batch's
    blocks fetched when it gets there, as long as the reads of ``horizon`` batches take no
    longer than the work done on them (``bench/readahead_bench.py``).
    """
    window: deque[np.ndarray] = deque()
    for rows in batches:
        rows = np.asarray(rows, dtype=np.int64)
        fetch(rows)
        window.append(rows)
        if len(window) > horizon:
            yield window.popleft()
    while window:
        yield window.popleft()

