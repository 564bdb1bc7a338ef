"""One pass over the images for every teacher vs one pass per teacher, in one run.

    python bench/scale_bench.py [--mix issue|shipped] [--images 240] [--block-size 128] [--mp 1.2] [--teachers 9]
                                [--sizes 224,336,384] [--decode full|reduced] [--resize own|cascade] [--workers 2]
                                [--tiny] [--json PATH] [--dir PATH]

Builds IMAGES JPEGs of about MP megapixels (smooth noise, about a photo's entropy) and simulated
teachers with a cheap forward (random-weight models, 16 patches, width 32, one layer) so that, as on
a GPU node, reading, decoding, resizing and normalising are the cost. Two teacher mixes:

  issue     (default) TEACHERS teachers whose input sizes cycle through SIZES and whose normalisations
            cycle through OpenAI / ImageNet / 0.5: the issue's 224/336/384 mix, in which no two of the
            nine teachers share a resize/crop + normalisation (3 distinct resizes, 9 normalisations).
  shipped   the nine teachers of mmkd/pipelines.yaml with their real preprocessing: what each entry
            declares, and for what it leaves to the weights' own config the loader's default (OpenAI
            mean/std, 224 px, bicubic, resize shortest side + centre crop; the CLIP-family configs of
            those models say the same). That is 8 RGB teachers at 224 px, bicubic, OpenAI mean/std, and
            MedCLIP (grayscale, pad to a square, 224 px, its own mean/std): 2 distinct resizes and 2
            normalisations for nine teachers, the realistic figure at the paper's scale.

``--tiny`` uses the three tiny test teachers (open_clip, transformers, custom; 32 px) instead, as a
new user's journey does.

Then, on the same images, with the local runner:

  one pass      ``mmkd extract`` with every teacher at once
  per teacher   one ``mmkd extract`` per teacher into one store (what every run did before)
  one teacher   the first teacher alone (the floor a one-pass run is compared with)

Every run uses the same ``--decode`` and ``--resize``. With ``--resize own`` (default) every
teacher of the one pass gets the pixels of its own run (``--decode full``: bit for bit); with
``--resize cascade`` the teachers of a pass resize from its largest input (a recorded mode whose
smaller inputs' pixels differ slightly; a per-teacher run then is the same as ``own``).

Block size: 128 rows by default, 240 images (two blocks, the second one short). The store's default
is 2048 rows a block; what a block costs once per teacher (its write, its marker, its manifest, the
finite check) is paid by both sides, so at tiny blocks (32 rows, the default before) those fixed
costs dilute the ratio in a way a run at the paper's scale never sees; 128 rows keep them small
next to the images while the bench still fits in a few minutes on 2 cores. ``--block-size 32
--images 60`` gives the earlier figures.

Prints wall and CPU seconds (every thread of this process) and their ratios, images decoded per
teacher-row (read from the counter in the decode path, :func:`mmkd.data.images.decode_count`), bytes
of images read, the machine's load average, and what one image costs on one core here: decode, each
distinct resize/crop (shared by the teachers of a pass that have the same one), and each to-tensor +
normalise (shared by the teachers that also have the same mean/std). Not counted on either side:
starting Python and importing torch (a few seconds per ``mmkd extract`` process, paid once per
teacher by per-teacher runs).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent

NORMS = [((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # OpenAI CLIP
         ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
         ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]


def make_teachers(root: Path, n: int, sizes: list[int], tiny: bool, mix: str = "issue") -> dict[str, Any]:
    """Simulated teachers of ``mix`` (``issue``: ``n`` of them, input sizes cycling through ``sizes``; ``shipped``:
    one per teacher of mmkd/pipelines.yaml), or the three tiny test teachers."""
    import dataclasses

    from mmkd.teachers import tiny as tiny_teachers

    if tiny:
        return tiny_teachers.make_tiny_teachers(root, kinds=("open_clip", "transformers", "custom"))
    if mix == "shipped":
        return {f"{name}_sim": _simulated(root, f"{name}_sim", i, pp)
                for i, (name, pp) in enumerate(shipped_preprocessing().items())}
    specs = {}
    for i in range(n):
        size = sizes[i % len(sizes)]
        name = f"sim{i}_{size}px"
        # the tiny open_clip builder at another input size: patch = size / 4, so 16 patches whatever the size
        spec = tiny_teachers._open_clip(root / name, name, "open_clip", i, 32, size, 16)
        mean, std = NORMS[(i // len(sizes)) % len(NORMS)]
        specs[name] = dataclasses.replace(spec, mean=mean, std=std, image_size=size)
    return specs


def shipped_preprocessing() -> dict[str, Any]:
    """The preprocessing of each teacher of mmkd/pipelines.yaml: what its entry declares, the loader's default
    (:mod:`mmkd.teachers.loaders`) for the rest (which, for the hub models, their own config would give)."""
    from mmkd.config import load_pipelines
    from mmkd.teachers.base import Preprocessing
    from mmkd.teachers.loaders import CUSTOM_DEFAULTS, OPENAI_MEAN, OPENAI_STD
    from mmkd.teachers.spec import teachers_from_config

    out = {}
    for name, spec in teachers_from_config(load_pipelines(str(ROOT / "mmkd" / "pipelines.yaml"))).items():
        default = CUSTOM_DEFAULTS.get(spec.arch or "", {}) if spec.loader == "custom" else {}
        out[name] = Preprocessing(image_size=spec.image_size or 224, mean=tuple(spec.mean or default.get("mean", OPENAI_MEAN)),
                                  std=tuple(spec.std or default.get("std", OPENAI_STD)),
                                  interpolation=spec.interpolation or "bicubic",
                                  resize_mode=spec.resize_mode or default.get("resize_mode", "shortest"),
                                  grayscale=bool(spec.grayscale))
    return out


def _simulated(root: Path, name: str, seed: int, pp: Any) -> Any:
    """A cheap random-weight teacher with preprocessing ``pp``: tiny open_clip (16 patches) for RGB, tiny MedCLIP
    (its Swin at patch 16, 14 x 14 tokens) for grayscale input, as MedCLIP is the grayscale teacher."""
    import dataclasses

    import torch

    from mmkd.teachers import TeacherSpec
    from mmkd.teachers import tiny as tiny_teachers
    from mmkd.teachers.custom_models import build_custom_model

    fields = dict(image_size=pp.image_size, mean=pp.mean, std=pp.std, interpolation=pp.interpolation,
                  resize_mode=pp.resize_mode)
    if not pp.grayscale:
        spec = tiny_teachers._open_clip(root / name, name, "open_clip", seed, 32, pp.image_size, 16)
        return dataclasses.replace(spec, **fields)
    cfg = tiny_teachers.tiny_custom_config("medclip", 32, pp.image_size)
    cfg["vision"]["swin"].update(patch_size=16, window_size=7)
    torch.manual_seed(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in build_custom_model("medclip", cfg).state_dict().items()}},
               folder / "checkpoint.pt")
    tiny_teachers.save_tiny_tokenizer(folder / "tokenizer", 16)
    spec = TeacherSpec(name=name, loader="custom", weights=str(folder / "checkpoint.pt"), arch="medclip",
                       model_config=cfg, dim=32, tokenizer=str(folder / "tokenizer"), context_length=16,
                       grayscale=True, license="test-only", source="bench/scale_bench.py: random weights")
    return dataclasses.replace(spec, **fields)


def unit_costs(jsonl: Path, specs: dict[str, Any]) -> dict[str, float]:
    """Milliseconds on one core for one image of the set: its decode, each distinct resize/crop (from the decoded
    image, and from the largest input as ``--resize cascade`` does), and each to-tensor + normalise (per image,
    as the teacher's own transform does; a pass does it per batch)."""
    from PIL import Image

    from mmkd.teachers.base import Preprocessing

    first = json.loads(jsonl.read_text().splitlines()[0])
    data = (jsonl.parent / first["image"]).read_bytes()

    def ms(fn, n: int = 5) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1e3

    out = {"decode_ms": ms(lambda: Image.open(io.BytesIO(data)).convert("RGB"))}
    img = Image.open(io.BytesIO(data)).convert("RGB")
    sizes = sorted({spec.image_size or 32 for spec in specs.values()})

    def pp(size: int) -> Preprocessing:
        return Preprocessing(image_size=size, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic",
                             resize_mode="shortest")

    largest = pp(sizes[-1]).build_geometry()(img)
    for size in sizes:
        out[f"resize_{size}px_ms"] = ms(lambda size=size: pp(size).build_geometry()(img))
        small = pp(size).build_geometry()(img)
        out[f"tensor_{size}px_ms"] = ms(lambda size=size, small=small: pp(size).build_tensor()(small))
        if size < sizes[-1]:  # --resize cascade: from the largest input's image
            out[f"resize_{size}px_from_{sizes[-1]}px_ms"] = ms(lambda size=size: pp(size).build_geometry()(largest))
    return out


def run(jsonl: Path, pipelines: Path, store: Path, teachers: list[str], a: argparse.Namespace,
        limit: int | None = None) -> dict[str, Any]:
    """One ``run_extract`` call; wall and CPU seconds (every thread of this process: less sensitive than the wall to
    other users of the cores), images decoded (process counter), bytes read, teacher-rows."""
    from mmkd.data.images import decode_count
    from mmkd.extract import ExtractJob, run_extract

    job = ExtractJob(data=str(jsonl), teachers=teachers, store=str(store), runner="local", pipeline=str(pipelines),
                     batch_size=a.batch_size, block_size=a.block_size, workers=a.workers, decode=a.decode,
                     resize=a.resize, device="cpu", limit=limit)
    d0, t0, c0 = decode_count(), time.perf_counter(), time.process_time()
    summary = run_extract(job)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "decoded": decode_count() - d0, "bytes_read": summary.bytes_read,
            "teacher_rows": summary.rows, "summary_decoded": summary.decoded}


def add(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: sum(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mix", default="issue", choices=["issue", "shipped"],
                    help="teacher mix: the issue's 224/336/384 one, or the shipped teachers' preprocessing")
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--mp", type=float, default=1.2, help="megapixels per image")
    ap.add_argument("--teachers", type=int, default=9)
    ap.add_argument("--sizes", default="224,336,384", help="teacher input sizes, cycled over the teachers")
    ap.add_argument("--tiny", action="store_true", help="the three tiny test teachers (32 px) instead")
    ap.add_argument("--decode", default="full", choices=["full", "reduced"])
    ap.add_argument("--resize", default="own", choices=["own", "cascade"])
    ap.add_argument("--workers", type=int, default=2, help="decode threads")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=128, help="rows per store block (see the docstring)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir, removed after)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from extract_bench import make_dataset
    from PIL import Image

    from mmkd.teachers.tiny import write_pipelines

    scratch = Path(a.dir or tempfile.mkdtemp(prefix="mmkd-scale-bench-"))
    try:
        t = time.perf_counter()
        px = round((a.mp * 1e6) ** 0.5)
        jsonl = scratch / "data" / "data.jsonl"
        if not (jsonl.exists() and len(jsonl.read_text().splitlines()) == a.images
                and Image.open(jsonl.parent / "000000.jpg").size == (px, px)):  # --dir: the images of a run before
            jsonl = make_dataset(scratch / "data", a.images, px)
        for folder in ("teachers", "warm-up", "one-pass", "per-teacher", "one-teacher"):  # stores: never resumed
            shutil.rmtree(scratch / folder, ignore_errors=True)
        specs = make_teachers(scratch / "teachers", a.teachers, [int(s) for s in a.sizes.split(",")], a.tiny, a.mix)
        pipelines = write_pipelines(scratch / "pipelines.yaml", specs)
        names = list(specs)
        print(f"setup: {a.images} JPEGs of {px}x{px} ({px * px / 1e6:.2f} MP), block size {a.block_size}, "
              f"batch size {a.batch_size}, mix {'tiny' if a.tiny else a.mix}: {len(names)} teachers "
              f"{names}, --decode {a.decode} --resize {a.resize}, {a.workers} decode threads, {os.cpu_count()} cores "
              f"({time.perf_counter() - t:.1f}s)")
        costs = unit_costs(jsonl, specs)
        run(jsonl, pipelines, scratch / "warm-up", names, a, limit=2)  # imports and first-call costs, not measured
        one = run(jsonl, pipelines, scratch / "one-pass", names, a)
        each = add([run(jsonl, pipelines, scratch / "per-teacher", [n], a) for n in names])
        alone = run(jsonl, pipelines, scratch / "one-teacher", names[:1], a)
        report = {"mix": "tiny" if a.tiny else a.mix, "images": a.images, "block_size": a.block_size,
                  "batch_size": a.batch_size, "megapixels": px * px / 1e6, "teachers": names, "decode": a.decode,
                  "resize": a.resize, "load_average": os.getloadavg(),
                  "workers": a.workers, "cores": os.cpu_count(), "unit_costs_ms": costs, "one_pass": one,
                  "per_teacher": each, "one_teacher": alone,
                  "speedup_one_pass_vs_per_teacher": each["wall_s"] / one["wall_s"],
                  "cpu_ratio_one_pass_vs_per_teacher": each["cpu_s"] / one["cpu_s"],
                  "one_pass_vs_one_teacher": one["wall_s"] / alone["wall_s"]}
        for key in ("one_pass", "per_teacher", "one_teacher"):
            r = report[key]
            print(f"{key:12s} wall {r['wall_s']:7.2f}s  cpu {r['cpu_s']:7.2f}s  {r['decoded']:5d} images decoded for {r['teacher_rows']:5d} "
                  f"teacher-rows ({r['decoded'] / max(r['teacher_rows'], 1):.3f} per teacher-row), "
                  f"{r['bytes_read'] / 1e6:7.1f} MB read")
        print(f"one pass is {report['speedup_one_pass_vs_per_teacher']:.2f}x faster than one pass per teacher "
              f"(wall; {report['cpu_ratio_one_pass_vs_per_teacher']:.2f}x less CPU); it takes "
              f"{report['one_pass_vs_one_teacher']:.2f}x the wall of one teacher alone")
        print(f"row: mix {report['mix']}, --decode {a.decode} --resize {a.resize}: wall ratio "
              f"{report['speedup_one_pass_vs_per_teacher']:.2f}x, CPU ratio {report['cpu_ratio_one_pass_vs_per_teacher']:.2f}x, "
              f"decodes per teacher-row {one['decoded'] / max(one['teacher_rows'], 1):.3f} (one pass) vs "
              f"{each['decoded'] / max(each['teacher_rows'], 1):.3f} (per teacher)")
        print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in report["load_average"]))
        print("one image on one core: " + ", ".join(f"{k.removesuffix('_ms')} {v:.1f} ms" for k, v in costs.items()))
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=2))
    finally:
        if not a.dir:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
