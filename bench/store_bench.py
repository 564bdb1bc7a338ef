"""Feature store throughput, measured side by side with the raw numpy limits, in one run.

    python bench/store_bench.py [--rows 200000] [--dim 512] [--dir /tmp]

Prints, for ROWS x DIM float16 on the same disk:
  write      store.write_block over all blocks (chunk files fsync'd, markers)  / np.save (+ fsync)
  seq read   store.read_block over all blocks          / np.load(mmap_mode="r"), same blocks copied out
  train read chunk-aware shuffled batches through store.read (cache = buffer)   / store sequential read
             (whole blocks, and in-order batches through the same read() call)
  naive read random rows straight from zarr (no block cache)                    / store sequential read
Targets (issue 2): write >= 0.8, seq read >= 0.8, train read >= 0.5.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mmkd.data import Sample
from mmkd.store import FeatureStore, chunk_shuffled_batches


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _np_save(path: Path, x: np.ndarray, fsync: bool) -> None:
    with open(path, "wb") as f:
        np.save(f, x)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def _store_create(path: Path, n: int, dim: int, block: int) -> FeatureStore:
    store = FeatureStore.create(path, (Sample(f"s{i}", "", "") for i in range(n)), block_size=block)
    store.add_teacher("t", dim)
    return store


def _store_write(store: FeatureStore, img: np.ndarray, txt: np.ndarray, block: int) -> None:
    valid = np.ones(block, bool)
    for b in range(store.num_blocks):
        s, e = store.block_range(b)
        store.write_block("t", b, img[s:e], txt[s:e], valid[: e - s])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--buffer-blocks", type=int, default=8)
    ap.add_argument("--dir", default=None, help="Folder on the disk to measure (default: system temp).")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mmkd-bench-", dir=args.dir))
    try:
        run(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, args: argparse.Namespace) -> None:
    n, dim, bs = args.rows, args.dim, args.block_size
    rng = np.random.default_rng(0)
    img = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)
    txt = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)
    mb = 2 * img.nbytes / 2**20  # image + text, as the store writes both
    print(f"{n} rows x {dim}-d float16, image+text = {mb:.0f} MiB, block {bs}, in {root}")

    t_np = _timed(lambda: (_np_save(root / "img.npy", img, False), _np_save(root / "txt.npy", txt, False)))
    t_npf = _timed(lambda: (_np_save(root / "img2.npy", img, True), _np_save(root / "txt2.npy", txt, True)))
    t_create = _timed(lambda: _store_create(root / "store", n, dim, bs))
    store = FeatureStore.open(root / "store", mode="a")
    t_st = _timed(lambda: _store_write(store, img, txt, bs))
    print(f"create      index of {n} samples + pre-sized arrays: {t_create:.2f} s (once per store)")
    print(f"write       np.save {mb / t_np:8.0f} MiB/s | np.save+fsync {mb / t_npf:8.0f} MiB/s | "
          f"store {mb / t_st:8.0f} MiB/s | ratio vs np.save {t_np / t_st:.2f}, vs np.save+fsync {t_npf / t_st:.2f}")

    # Both sides materialise the same block-sized arrays in memory (a copy out of the
    # page cache for the memory map), which is what a consumer of the features gets.
    def np_read():
        maps = [np.load(root / f, mmap_mode="r") for f in ("img.npy", "txt.npy")]
        for s in range(0, n, bs):
            for m in maps:
                np.array(m[s:s + bs])

    def st_seq():
        store = FeatureStore.open(root / "store", cache_bytes=0)
        for b in range(store.num_blocks):
            for kind in ("image", "text"):
                store.read_block("t", b, kind)

    t_npr, t_seq = _timed(np_read), _timed(st_seq)
    print(f"seq read    np.load(mmap) {mb / t_npr:8.0f} MiB/s | store {mb / t_seq:8.0f} MiB/s | "
          f"ratio {t_npr / t_seq:.2f}")

    def st_train():
        cache = (args.buffer_blocks + 2) * bs * dim * 2 * 2
        store = FeatureStore.open(root / "store", cache_bytes=cache)
        for rows in chunk_shuffled_batches(n, bs, args.batch_size, seed=0, epoch=0,
                                           buffer_blocks=args.buffer_blocks):
            store.read("t", rows, "image")
            store.read("t", rows, "text")

    def st_seq_batches():
        cache = (args.buffer_blocks + 2) * bs * dim * 2 * 2
        store = FeatureStore.open(root / "store", cache_bytes=cache)
        for s in range(0, n - args.batch_size + 1, args.batch_size):
            rows = np.arange(s, s + args.batch_size)
            store.read("t", rows, "image")
            store.read("t", rows, "text")

    t_train, t_seqb = _timed(st_train), _timed(st_seq_batches)
    print(f"train read  chunk-aware shuffled {mb / t_train:8.0f} MiB/s | ratio vs store sequential blocks "
          f"{t_seq / t_train:.2f}, vs store sequential batches of {args.batch_size} rows (same read() path) "
          f"{t_seqb / t_train:.2f}")

    import zarr

    arr_i = zarr.open_group(str(root / "store" / "features.zarr"), mode="r")["t"]["image"]
    arr_t = zarr.open_group(str(root / "store" / "features.zarr"), mode="r")["t"]["text"]
    k = max(4, min(40, n // args.batch_size // 20))
    sample = [np.sort(rng.choice(n, args.batch_size, replace=False)) for _ in range(k)]
    t_rand = _timed(lambda: [(arr_i.oindex[r, :], arr_t.oindex[r, :]) for r in sample])
    mb_rand = k * args.batch_size * dim * 2 * 2 / 2**20
    print(f"naive read  random rows from zarr {mb_rand / t_rand:8.1f} MiB/s | ratio vs store sequential "
          f"{(mb_rand / t_rand) / (mb / t_seq):.3f}   ({k} batches of {args.batch_size})")


if __name__ == "__main__":
    main()
