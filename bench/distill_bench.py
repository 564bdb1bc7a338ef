"""Distiller cost, measured side by side in one run with the same tiny student and batch.

    python bench/distill_bench.py [--steps 20] [--batch-size 32] [--rss-rows 100000 1000000] [--dir /tmp]

Prints:
  store KD step / CLIP step     stage-2 step (mmkd-clip, 9 teachers' features read from the
                                store) over a plain stage-1 CLIP step, both through the real
                                recipe and data path (target <= 1.10)
  online KD step / store step   the same step plus running 9 tiny teachers on the batch
                                (their own preprocessing + image and text forward), i.e. what
                                distilling without a store costs (expected well above 1)
  peak RSS large / small store  distiller peak RSS (fresh process, stage 2) on a synthetic store
                                of the first --rss-rows size vs the second (target growth < 10%)

Step times are medians of the recipe's own samples/s records (warm-up interval left
out), best of --repeats alternating runs, with 1 torch thread by default. The
online-KD ratio adds the measured teacher time per batch to the store step (a lower
bound: the online step would still decode images for the teachers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY_STUDENT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
NINE = {"biomedclip": 32, "bmca_clip": 48, "unimedclip": 32, "quiltnet": 32, "genmedclip": 32, "plip": 32,
        "pubmedclip": 32, "pmc_clip": 48, "medclip": 32}


def _step_seconds(work: Path, store: Path, student: Path, stage: int, steps: int, batch: int) -> float:
    """Median seconds per step over 2-step intervals, the first interval (warm-up) left out."""
    import statistics

    from mmkd.distill.config import load_distill_config
    from mmkd.distill.metrics import read_metrics
    from mmkd.distill.recipe import distill

    out = work / f"stage{stage}"
    shutil.rmtree(out, ignore_errors=True)
    distill(load_distill_config(None, None, dict(
        store=str(store), stage=stage, kd="mmkd-clip", student=str(student), out=str(out), steps=steps,
        batch_size=batch, warmup_steps=1, lr=1e-4, num_workers=0, log_every=2, checkpoint_every=10**9,
        progress=False, device="cpu")))
    return statistics.median(batch / r["samples_per_s"] for r in read_metrics(out)[1:])


def _teacher_seconds(work: Path, store: Path, batch: int, reps: int) -> float:
    """Seconds per batch for 9 tiny teachers: decode, own preprocessing, image + text forward."""
    import numpy as np
    import torch

    from mmkd.distill.data import SyntheticImages
    from mmkd.store import FeatureStore
    from mmkd.data.images import decode_image
    from mmkd.teachers import load_teacher
    from mmkd.teachers.tiny import make_tiny_teachers

    specs = list(make_tiny_teachers(work / "t0", kinds=("all",), seed=0).values())
    specs += list(make_tiny_teachers(work / "t1", kinds=("open_clip", "transformers", "unimed_clip", "pmc_clip"),
                                     seed=1).values())
    teachers = [load_teacher(s, device="cpu") for s in specs[:9]]
    index, images = FeatureStore.open(store), SyntheticImages()
    # the tiny teachers' word-level vocabularies only cover a few words (digits overflow
    # some tiny text towers), so time their text side on in-vocabulary captions
    captions = ["ct scan of the left lung shows a mass"] * batch
    times = []
    for r in range(reps + 1):
        rows = np.arange(r * batch, (r + 1) * batch)
        meta = index.index_columns(rows, ["image"])
        t0 = time.perf_counter()
        pil = [decode_image(b) for b in images.read_many(meta["image"])]
        with torch.inference_mode():
            for t in teachers:
                t.encode_images(torch.stack([t.preprocess(p) for p in pil]))
                t.encode_texts(captions)
        if r:  # first batch is warm-up
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


_HWM_PROBE = """
import atexit, runpy, sys
def _hwm():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print("VMHWM_KB", line.split()[1], file=sys.stderr)
atexit.register(_hwm)
sys.argv = ["mmkd.distill", *sys.argv[1:]]
runpy.run_module("mmkd.distill", run_name="__main__")
"""


def _peak_rss_mb(store: Path, student: Path, out: Path, steps: int, batch: int) -> float:
    """Peak RSS (MiB) of a fresh stage-2 distill process on ``store``.

    Read from the child's own ``VmHWM`` at exit: ``wait4``'s ``ru_maxrss`` would
    carry over the forking parent's peak (Linux keeps it across exec).
    """
    cmd = [sys.executable, "-c", _HWM_PROBE, "--store", str(store), "--stage", "2", "--student", str(student),
           "--out", str(out), "--steps", str(steps), "--batch-size", str(batch), "--num-workers", "0",
           "--device", "cpu", "--no-progress", "--checkpoint-every", "1000000"]
    env = dict(os.environ, MMKD_LOG_LEVEL="WARNING", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    hwm = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VMHWM_KB")]
    if proc.returncode != 0 or not hwm:
        raise RuntimeError(f"distill on {store} failed: {proc.stderr[-2000:]}")
    return int(hwm[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed run (half warm-up)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per step kind")
    ap.add_argument("--rss-rows", type=int, nargs=2, default=[100_000, 1_000_000])
    ap.add_argument("--rss-steps", type=int, default=30)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a shared box)")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from mmkd.store.synthetic import make_synthetic_store

    work = Path(tempfile.mkdtemp(prefix="distill-bench-", dir=args.dir))
    try:
        student = work / "student.json"
        student.write_text(json.dumps(TINY_STUDENT))
        n = args.batch_size * args.steps
        make_synthetic_store(work / "store", n, NINE, block_size=1024, invalid_fraction=0.3)
        # alternate the two runs and keep each one's best median: this box may be shared
        clip, kd = float("inf"), float("inf")
        for _ in range(args.repeats):
            clip = min(clip, _step_seconds(work, work / "store", student, 1, args.steps, args.batch_size))
            kd = min(kd, _step_seconds(work, work / "store", student, 2, args.steps, args.batch_size))
        teach = _teacher_seconds(work, work / "store", args.batch_size, reps=3)
        print(f"batch {args.batch_size}, tiny student, 9 teachers ({n} rows), torch threads {args.threads}, CPU")
        print(f"CLIP step (stage 1)            {clip * 1e3:8.1f} ms")
        print(f"store KD step (stage 2)        {kd * 1e3:8.1f} ms   ratio {kd / clip:.3f}  (target <= 1.10)")
        print(f"9 tiny teachers on the batch   {teach * 1e3:8.1f} ms")
        print(f"online KD step / store step    {(kd + teach) / kd:8.2f}")
        if args.skip_rss:
            return
        rss = []
        for rows in args.rss_rows:
            path = work / f"rss-{rows}"
            t0 = time.perf_counter()
            make_synthetic_store(path, rows, {"ta": 16, "tb": 24}, block_size=4096, invalid_fraction=0.2)
            made = time.perf_counter() - t0
            rss.append(_peak_rss_mb(path, student, work / f"rss-run-{rows}", args.rss_steps, args.batch_size))
            print(f"peak RSS, {rows:>9} rows      {rss[-1]:8.1f} MiB   (store built in {made:.0f} s)")
            shutil.rmtree(path)
        print(f"peak RSS growth                {100 * (rss[1] / rss[0] - 1):8.1f} %   (target < 10%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
