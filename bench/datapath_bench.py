"""The student data path alone, in images per second per core, side by side in one run.

    python bench/datapath_bench.py [--fixtures ../shared/fixtures] [--rows 96] [--batch-size 32]
                                   [--image-size 224] [--repeats 3] [--workers 1] [--json PATH]

Images: every JPEG of the shared fixtures upscaled to about 1.2 MP and re-encoded at quality 90
(as bench/decode_bench.py), repeated to --rows rows of an image folder, with a feature store over
it. The student is open_clip's transform at --image-size. One process, one torch thread, rows
read from disk each time (the page cache holds them); each figure is the best of --repeats
alternating passes over all rows, in images per second of the process's CPU time (per core: on a
shared box other processes stretch a pass's wall clock, much less its CPU time; the wall-clock rate
is printed beside it, and the loader row, two processes, has only that, against the plain path's):

  plain PIL + transform   read, full PIL decode, open_clip's train transform, one image at a
                          time (the baseline the issue names)
  data path, full         StoreBatches.load (captions, tokens, per-row seeded transform, batch
                          assembly) with --decode full: what distill did before
  data path, reduced      the same with --decode reduced (the default now), normalised float batches
  data path, reduced, uint8
                          the same, uint8 batches (``DataSpec(uint8=True)``, what distill's trainer asks for:
                          ToTensor + Normalize then run in the trainer, on its device, after the transfer)
  normalise only          that trainer-side step alone on this CPU (on a GPU node it runs on the GPU)
  data path, cache S      the same reading the store's student image cache (``mmkd store images``)
                          when one of short side >= --image-size is present (float, and uint8)
  loader, W workers       wall img/s of one persistent DataLoader with --workers workers over four
                          whole epochs after one that starts them (the main process only collects),
                          reduced decode (float, and uint8)

Prints the table (img/s per core and the ratio to the baseline) and writes it as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def make_images(fixtures: Path, rows: int, root: Path) -> Path:
    """An image folder of ``rows`` ~1.2 MP JPEGs (the fixture JPEGs upscaled) with captions.jsonl."""
    from PIL import Image

    files = sorted(p for p in fixtures.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no JPEGs under {fixtures}; pass --fixtures DIR (the shared fixtures folder)")
    big = []
    for p in files:
        img = Image.open(p).convert("RGB")
        scale = (1.2e6 / (img.width * img.height)) ** 0.5
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        big.append(buf.getvalue())
    (root / "img").mkdir(parents=True, exist_ok=True)
    with open(root / "captions.jsonl", "w") as f:
        for i in range(rows):
            (root / "img" / f"{i:05d}.jpg").write_bytes(big[i % len(big)])
            f.write(json.dumps({"id": f"r{i:05d}", "image": f"img/{i:05d}.jpg", "caption": f"figure {i}"}) + "\n")
    return root / "captions.jsonl"


def make_store(table: Path, out: Path) -> Path:
    from mmkd.data import open_dataset
    from mmkd.store import FeatureStore

    ds = open_dataset(str(table))
    FeatureStore.create(out, ds.samples(), block_size=64, dataset_uri=ds.uri, dataset_fingerprint=ds.fingerprint(),
                        dataset_spec=ds.spec().to_dict())
    return out


def student(image_size: int):
    from mmkd.distill.student import build_student, resolve_student

    return build_student(resolve_student({"embed_dim": 32, "text_cfg": TINY_TEXT, "vision_cfg": {
        "image_size": image_size, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}}))


def plain(table: Path, transform) -> int:
    """Baseline pass: one image at a time, full decode + open_clip's transform."""
    from PIL import Image

    n = 0
    for line in open(table):
        ref = json.loads(line)["image"]
        transform(Image.open(io.BytesIO((table.parent / ref).read_bytes())).convert("RGB"))
        n += 1
    return n


def datapath(ds, batch_size: int) -> int:
    """One pass of StoreBatches.load over every row, in batches, in this process."""
    n = 0
    for start in range(0, ds.n, batch_size):
        rows = np.arange(start, min(start + batch_size, ds.n), dtype=np.int64)
        batch = ds.load(rows, epoch=0)
        n += int(batch["ok"].sum())
    return n


def cache_cost(table: Path, size: int) -> dict[str, float]:
    """CPU ms per image: extract's full decode of an original, and what ``extract --image-cache`` adds to it in the
    same pass (the cache entry from bytes already read: reduced decode, resize, re-encode)."""
    from mmkd.data.images import decode_image
    from mmkd.store.images import encode_cached

    datas = [(table.parent / json.loads(line)["image"]).read_bytes() for line in open(table)]
    out = {}
    for name, fn in (("full_decode_ms", lambda d: decode_image(d)), ("cache_entry_ms", lambda d: encode_cached(d, size, 90))):
        c0 = time.process_time()
        for d in datas:
            fn(d)
        out[name] = (time.process_time() - c0) / len(datas) * 1e3
    return out


def normalise(norm, batch, rows: int) -> int:
    """``rows`` images through the trainer's ToTensor + Normalize of a uint8 batch (ImageNorm), on the CPU."""
    n = 0
    while n < rows:
        norm(batch["image"], batch["ok"])
        n += len(batch["rows"])
    return n


def loader_rate(ds, workers: int, epochs: int = 4) -> float:
    """Wall img/s of one persistent loader: an untimed epoch starts its workers, then ``epochs`` epochs are
    timed whole, from ``set_epoch`` to their last batch in the main process (prefetch does not cross epochs)."""
    from mmkd.distill.data import make_loader

    loader = make_loader(ds, workers, persistent=True, prefetch=4)
    n, spent = 0, 0.0
    for epoch in range(epochs + 1):
        t0 = time.perf_counter()
        ds.set_epoch(epoch)
        got = sum(len(batch["rows"]) for batch in loader)
        if epoch:
            n, spent = n + got, spent + time.perf_counter() - t0
    return n / spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"))
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="loader row: DataLoader workers (0: skip the row)")
    ap.add_argument("--cache-size", type=int, default=256, help="short side of the image cache to write and read")
    ap.add_argument("--no-cache", action="store_true", help="skip the image cache row")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    from mmkd.distill.data import DataSpec, StoreBatches

    work = Path(tempfile.mkdtemp(prefix="datapath-bench-", dir=args.dir))
    table = make_images(Path(args.fixtures), args.rows, work / "data")
    store = make_store(table, work / "store")
    st = student(args.image_size)
    spec = dict(store=str(store), batch_size=args.batch_size, seed=0)
    orig = dict(spec, image_cache="off")
    runs = {  # the originals' rows read the originals: image_cache="off"
        "plain PIL + transform": lambda: plain(table, st.train_transform),
        "data path, full": (lambda ds: lambda: datapath(ds, args.batch_size))(
            StoreBatches(DataSpec(**orig, decode="full"), st.train_transform, st.tokenizer)),
        "data path, reduced": (lambda ds: lambda: datapath(ds, args.batch_size))(
            StoreBatches(DataSpec(**orig, decode="reduced"), st.train_transform, st.tokenizer)),
        "data path, reduced, uint8": (lambda ds: lambda: datapath(ds, args.batch_size))(
            StoreBatches(DataSpec(**orig, decode="reduced", uint8=True), st.train_transform, st.tokenizer)),
    }
    if not args.no_cache:
        from mmkd.store.images import write_image_cache

        t0, c0 = time.perf_counter(), time.process_time()
        write_image_cache(store, args.cache_size)
        standalone = (time.process_time() - c0) / args.rows
        print(f"image cache (short side {args.cache_size}) written in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        extra = cache_cost(table, args.cache_size)
        cached = StoreBatches(DataSpec(**spec, decode="reduced", image_cache="auto"), st.train_transform, st.tokenizer)
        if cached.cache_dir is None:
            raise SystemExit(f"the s{args.cache_size} cache does not serve {args.image_size} px; raise --cache-size")
        runs[f"data path, cache {args.cache_size}"] = (lambda ds: lambda: datapath(ds, args.batch_size))(cached)
        cached8 = StoreBatches(DataSpec(**spec, decode="reduced", image_cache="auto", uint8=True), st.train_transform,
                               st.tokenizer)
        runs[f"data path, cache {args.cache_size}, uint8"] = (lambda ds: lambda: datapath(ds, args.batch_size))(cached8)
    norm_ds = StoreBatches(DataSpec(**orig, decode="reduced", uint8=True), st.train_transform, st.tokenizer)
    u8 = norm_ds.load(np.arange(min(args.batch_size, norm_ds.n), dtype=np.int64), epoch=0)
    runs["normalise only (trainer side)"] = lambda: normalise(norm_ds.image_norm, u8, args.rows)
    best = {k: 0.0 for k in runs}
    wall = {k: 0.0 for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            n = fn()
            # per core = per second of this process's CPU time: a shared box's other processes stretch the wall
            # clock of a one-thread pass, much less the CPU time it takes
            best[name] = max(best[name], n / max(time.process_time() - c0, 1e-9))
            wall[name] = max(wall[name], n / (time.perf_counter() - t0))
    base, wall_base = best["plain PIL + transform"], wall["plain PIL + transform"]
    rows = [{"path": k, "img_per_s_per_core": round(v, 1), "img_per_s_wall": round(wall[k], 1),
             "vs_plain": round(v / base, 2)} for k, v in best.items()]
    if args.workers:
        for uint8 in (False, True):
            ds = StoreBatches(DataSpec(**orig, decode="reduced", uint8=uint8), st.train_transform, st.tokenizer)
            rate = loader_rate(ds, args.workers)
            rows.append({"path": f"loader, {args.workers} worker(s), reduced" + (", uint8" if uint8 else ""),
                         "img_per_s_per_core": None, "img_per_s_wall": round(rate, 1),
                         "vs_plain": round(rate / wall_base, 2)})
    load = os.getloadavg()[0]
    print(f"{args.rows} rows of ~1.2 MP JPEG -> {args.image_size} px, batch {args.batch_size}, 1 torch thread, "
          f"best of {args.repeats}; load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"{'path':<36} {'img/s/core':>10} {'wall img/s':>10} {'x plain':>8}")
    for r in rows:
        core = f"{r['img_per_s_per_core']:.1f}" if r["img_per_s_per_core"] is not None else "-"
        print(f"{r['path']:<36} {core:>10} {r['img_per_s_wall']:>10.1f} {r['vs_plain']:>8.2f}")
    cache = None
    if not args.no_cache:
        cache = {**extra, "standalone_ms_per_row": standalone * 1e3}
        print(f"image cache s{args.cache_size}, CPU per image: extract --image-cache adds {extra['cache_entry_ms']:.1f} ms "
              f"to the pass ({extra['cache_entry_ms'] / extra['full_decode_ms']:.2f}x the pass's own full decode, "
              f"{extra['full_decode_ms']:.1f} ms); `mmkd store images` afterwards: {standalone * 1e3:.1f} ms per row "
              "(it reads and hashes each image again)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load_average": load, "image_cache": cache,
                                               "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
