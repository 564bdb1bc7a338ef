"""Extract throughput: the whole ``mmkd extract`` pipeline vs the teacher's bare forward, in one run.

    python bench/extract_bench.py [--model tiny|small|vitb16] [--rows 512] [--image-px 256]
                                  [--batch-size 64] [--workers 2] [--runner local|ray] [--device auto] [--repeats 3]

Builds a JPEG dataset of ROWS synthetic images (IMAGE_PX square, with captions) and a
random-weight open_clip teacher, then measures on the same images and batches:

  forward   teacher.encode_images + encode_texts on pre-decoded, pre-processed batches
            (model only: the ceiling the pipeline can reach)
  extract   run_extract: read + decode + preprocess (threads) + forward + store write,
            rows / summed block wall time, and rows / whole-run wall (with model load
            and store creation)

and prints the ratio extract / forward (issue 3 target: >= 0.9 on CPU) and the
pipeline's per-stage seconds. ``tiny`` is the test teacher (32 px, 1 layer): its
forward is so cheap that JPEG decoding dominates; ``small`` (ViT 224 px, width 256,
4 layers) is closer to a real teacher's compute/decode balance on CPU; ``vitb16`` is
open_clip ViT-B-16 with random weights (use on a GPU with --precision fp16).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ["chest", "x", "ray", "ct", "mri", "scan", "showing", "a", "mass", "lesion", "in", "the", "right", "left", "lung", "liver", "brain", "tissue", "stained"]


def make_dataset(root: Path, rows: int, px: int, seed: int = 0) -> Path:
    """ROWS smooth-noise JPEGs (about the entropy of a photo) and a JSONL index."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    yy, xx = np.mgrid[0:px, 0:px] / px
    for i in range(rows):
        base = np.stack([np.sin(xx * rng.uniform(2, 9) + c) * np.cos(yy * rng.uniform(2, 9)) for c in range(3)], -1)
        img = np.clip((base * 0.5 + 0.5) * 200 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i:06d}.jpg", quality=90)
        caption = " ".join(rng.choice(WORDS, size=rng.integers(6, 20)))
        lines.append(json.dumps({"id": f"s{i:06d}", "image": f"{i:06d}.jpg", "caption": caption}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl"


def make_teacher(root: Path, model: str):
    """A random-weight open_clip teacher saved as a local-dir model; returns its spec."""
    from mmkd.teachers import TeacherSpec

    if model == "tiny":
        from mmkd.teachers.tiny import make_tiny_teachers

        return make_tiny_teachers(root, kinds=("open_clip",))["tiny_open_clip"]
    import open_clip
    import torch
    from safetensors.torch import save_file

    if model == "small":
        cfg = {"embed_dim": 256, "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 256, "layers": 4},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4}}
    elif model == "vitb16":
        cfg = open_clip.get_model_config("ViT-B-16")
    else:
        raise SystemExit(f"unknown --model {model!r}; use tiny, small or vitb16")
    torch.manual_seed(0)
    net = open_clip.model.CLIP(**cfg)
    folder = root / f"bench_{model}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return TeacherSpec(name=f"bench_{model}", loader="open_clip", weights=f"local-dir:{folder}")


def forward_pass(spec, ds, batch_size: int, device: str, precision: str):
    """A function timing encode_images + encode_texts over pre-decoded batches (returns seconds, rows)."""
    import torch

    from mmkd.data.images import decode_image
    from mmkd.extract.runners.block import resolve_device
    from mmkd.teachers import load_teacher

    device = resolve_device(device)
    autocast = precision if device.startswith("cuda") and precision != "fp32" else None
    teacher = load_teacher(spec, device)
    samples = list(ds.samples())
    pixels = [teacher.preprocess(decode_image(ds.read_image_bytes(s.image), mode=teacher.image_mode)) for s in samples]
    batches = [(torch.stack(pixels[i:i + batch_size]), [s.caption for s in samples[i:i + batch_size]])
               for i in range(0, len(samples), batch_size)]
    teacher.encode_images(batches[0][0], autocast=autocast)  # warm-up

    def run() -> tuple[float, int]:
        t = time.perf_counter()
        for x, caps in batches:
            teacher.encode_images(x, autocast=autocast)
            teacher.encode_texts(caps, autocast=autocast)
        return time.perf_counter() - t, len(samples)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", choices=["tiny", "small", "vitb16"])
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--image-px", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runner", default="local", choices=["local", "ray"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir, removed after)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from mmkd.extract import ExtractJob, run_extract
    from mmkd.extract.runners.summary import BlockResult
    from mmkd.data import open_dataset
    from mmkd.teachers.tiny import write_pipelines

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="mmkd-extract-bench-"))
    try:
        t = time.perf_counter()
        jsonl = make_dataset(scratch / "data", args.rows, args.image_px)
        spec = make_teacher(scratch / "teachers", args.model)
        pipelines = write_pipelines(scratch / "pipelines.yaml", {spec.name: spec})
        print(f"setup: {args.rows} JPEGs of {args.image_px}px, teacher {args.model} ({time.perf_counter() - t:.1f}s)")

        forward = forward_pass(spec, open_dataset(jsonl), args.batch_size, args.device, args.precision)
        job = ExtractJob(data=str(jsonl), teachers=[spec.name], store=str(scratch / "store"), runner=args.runner,
                         pipeline=str(pipelines), batch_size=args.batch_size, block_size=args.block_size,
                         workers=args.workers, device=args.device, precision=args.precision)
        best = {"fwd": float("inf"), "ext": float("inf"), "run": float("inf")}
        for rep in range(args.repeats):  # interleaved, best of each: the two see the same machine load
            fwd_s, n = forward()
            manifests: list[BlockResult] = []
            job.overwrite = rep > 0
            summary = run_extract(job, on_block=manifests.append)
            ts = summary.teachers[0]
            # Local blocks run one after another: their summed wall is the pipeline's time without
            # model load; Ray blocks overlap, so there the teacher's wall (with actor start-up) is used.
            block_wall = sum(m.wall_s for m in manifests) if args.runner == "local" else ts.wall_s
            if block_wall < best["ext"]:
                best_ts = ts
            best = {"fwd": min(best["fwd"], fwd_s), "ext": min(best["ext"], block_wall),
                    "run": min(best["run"], summary.wall_s)}
        ts = best_ts
        fwd_rate, ext_rate, run_rate = n / best["fwd"], ts.rows / best["ext"], ts.rows / best["run"]
        print(f"forward only : {fwd_rate:9.1f} rows/s  ({best['fwd']:.2f}s for {n} rows, batch {args.batch_size}, "
              f"best of {args.repeats})")
        print(f"extract      : {ext_rate:9.1f} rows/s  (blocks: read+decode+forward+write, {args.workers} threads, "
              f"{args.runner} runner on {'/'.join(ts.devices)})")
        print(f"extract, run : {run_rate:9.1f} rows/s  (whole run_extract incl. model load, {best['run']:.2f}s)")
        print(f"ratio extract / forward = {ext_rate / fwd_rate:.2f}   (whole run: {run_rate / fwd_rate:.2f}; "
              "target >= 0.9)")
        st = ts.stages
        print(f"stages (s): read+decode {st['read_decode_s']:.2f} (thread time over {args.workers} threads), "
              f"forward {st['forward_s']:.2f}, write {st['write_s']:.2f}, forward loop waiting for decode "
              f"{st['wait_s']:.2f}; worker CPU {ts.cpu_s:.2f}s")
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)



if __name__ == "__main__":
    main()
