"""ABMIL training throughput on synthetic slides, streamed from a CLAM folder vs held in memory, in one run.

    python bench/mil_bench.py [--slides 1000] [--patches 5000] [--dim 512] [--epochs 1] [--format h5|pt]
                              [--threads 0] [--max-patches 0] [--device cpu] [--dir /tmp]

Writes SLIDES x PATCHES x DIM float32 bags as a CLAM features folder (h5_files/ or
pt_files/), then trains one gated-ABMIL head (mmkd.eval.mil.train_head, batch of one
bag, AdamW) for EPOCHS over all slides twice:
  stream   every bag read from disk at every step (memory: one bag at a time)
  memory   the same bags from RAM (BagSource memo)  -- the upper bound without I/O
and prints slides/s for each, their ratio, and the peak RSS. With --batch-bags N > 1
(bags per optimizer step, as survival's 32), also, from RAM:
  bag by bag   N forwards and backwards per step (MILConfig.batch_patches=0: before)
  padded       one padded, masked forward and backward per step (the default now) The issue's target
size is 1,000 x 5,000 x 512 (10 GB of features); pass smaller sizes on small machines.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmkd.eval.bags import ClamBags
from mmkd.eval.mil import MILConfig, build_head, train_head


def write_bags(root: Path, slides: int, patches: int, dim: int, fmt: str) -> list[str]:
    """Synthetic bags (one planted patch type in odd slides) as a CLAM folder."""
    rng = np.random.default_rng(0)
    (root / f"{fmt}_files").mkdir(parents=True)
    ids = []
    for i in range(slides):
        x = rng.standard_normal((patches, dim), dtype=np.float32)
        if i % 2:
            x[: max(1, patches // 100), 0] += 6.0
        sid = f"slide-{i:05d}"
        if fmt == "h5":
            import h5py

            with h5py.File(root / "h5_files" / f"{sid}.h5", "w") as f:
                f.create_dataset("features", data=x)
                f.create_dataset("coords", data=np.zeros((patches, 2), np.int32))
        else:
            torch.save(torch.from_numpy(x), root / "pt_files" / f"{sid}.pt")
        ids.append(sid)
    return ids


def run(src: ClamBags, ids: list[str], cfg: MILConfig, batch_bags: int = 1, loss: str = "ce") -> float:
    """slides/s of ABMIL training over ``ids`` for ``cfg.epochs`` epochs (``ce``: diagnosis, ``cox``: survival)."""
    from mmkd.eval.survival import cox_loss

    dev = cfg.device or "cpu"
    labels = torch.tensor([i % 2 for i in range(len(ids))], device=dev)
    times = torch.tensor(np.random.default_rng(1).random(len(ids)), device=dev)
    events = torch.tensor([i % 3 != 0 for i in range(len(ids))], device=dev)
    torch.manual_seed(0)
    model = build_head("abmil", src.dim or src.load(ids[0]).shape[1], 2 if loss == "ce" else 1, cfg)
    t = time.perf_counter()
    if loss == "ce":
        fn = lambda out, b: torch.nn.functional.cross_entropy(out, labels[b])  # noqa: E731
    else:
        fn = lambda out, b: cox_loss(out[:, 0], times[list(b)], events[list(b)])  # noqa: E731
    train_head(model, lambda i: src.load(ids[i]), range(len(ids)), fn, cfg, separable=loss == "ce",
               batch_bags=batch_bags)
    return len(ids) * cfg.epochs / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slides", type=int, default=1000)
    p.add_argument("--patches", type=int, default=5000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--format", choices=("h5", "pt"), default="h5")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-patches", type=int, default=0, help="random patches per training step (0: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-bags", type=int, default=1, help="bags per step for the bag-by-bag vs padded rows")
    p.add_argument("--loss", choices=("ce", "cox"), default="ce", help="bag-by-bag vs padded rows: diagnosis "
                   "(ce) or survival (cox, two passes bag by bag)")
    p.add_argument("--dir", default=None, help="scratch folder (default: system temp)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    scratch = Path(tempfile.mkdtemp(prefix="mil-bench-", dir=a.dir))
    try:
        t = time.perf_counter()
        ids = write_bags(scratch, a.slides, a.patches, a.dim, a.format)
        gb = a.slides * a.patches * a.dim * 4 / 1e9
        print(f"wrote {a.slides} slides x {a.patches} patches x {a.dim}-d ({gb:.2f} GB, {a.format}) "
              f"in {time.perf_counter() - t:.1f}s; torch threads {torch.get_num_threads()}, device {a.device}")
        cfg = MILConfig(epochs=a.epochs, max_patches=a.max_patches or None, device=a.device)
        stream = run(ClamBags(scratch, memo_bytes=0), ids, cfg)
        rss_stream = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(f"stream  {stream:8.1f} slides/s   (peak RSS so far {rss_stream:.0f} MiB; one bag = "
              f"{a.patches * a.dim * 4 / 2**20:.1f} MiB)")
        mem_src = ClamBags(scratch, memo_bytes=1 << 62)
        for s in ids:
            mem_src.load(s)
        memory = run(mem_src, ids, cfg)
        print(f"memory  {memory:8.1f} slides/s")
        print(f"stream / memory = {stream / memory:.2f}")
        if a.batch_bags > 1:
            from dataclasses import replace

            one = run(mem_src, ids, replace(cfg, batch_patches=0), a.batch_bags, a.loss)
            padded = run(mem_src, ids, cfg, a.batch_bags, a.loss)
            print(f"{a.loss}, {a.batch_bags} bags a step: bag by bag {one:8.1f} slides/s, padded {padded:8.1f} slides/s "
                  f"({padded / one:.1f}x)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
