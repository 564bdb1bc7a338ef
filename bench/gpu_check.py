"""One GPU check, no downloads, no weights: extract, distill and eval throughput on the real ViT-B/16 architecture.

    python bench/gpu_check.py [--out gpu_check.json] [--device cuda] [--smoke]

Run by ``bench/gpu_check.sh`` (under 8 minutes on one H100/H200). Prints and writes as JSON:

  extract   ViT-B/16 (open_clip architecture, random weights) fp16: the whole ``mmkd extract``
            pipeline (read + decode + preprocess on a thread pool + forward + store write) on
            >= 1 MP JPEGs, images/s, divided by the bare forward on pre-decoded batches, for
            each ``--decode`` mode: full, reduced, gpu (target: ``gpu`` >= 0.9 of the forward and
            >= 3,000 img/s)
  distill   a stage-2 ``mmkd-clip`` step reading 9 teachers' features (real dims 512/768)
            from a store, divided by a plain stage-1 CLIP step, ViT-B/16 student, bf16
            (target <= 1.10)
  multi     one ``mmkd extract`` pass with three ViT-B/16-class teachers on one GPU (each image
            read and decoded once, ``--decode reduced``) vs the same pass with one teacher: wall
            ratio (1.0 = the extra teachers are free; 3.0 = no better than three passes), and peak GPU memory
  eval      ``mmkd eval`` retrieval on the extract images with the exported student: images/s
  memory    peak GPU memory of each part

``--smoke`` runs the same code path with a tiny model and a few images (CPU is fine):
what the test of this script runs, so the GPU run does not fail on a typo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

NINE = {"biomedclip": 512, "bmca_clip": 768, "unimedclip": 512, "quiltnet": 512, "genmedclip": 512, "plip": 512,
        "pubmedclip": 512, "pmc_clip": 768, "medclip": 512}
TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def check_extract(work: Path, a: argparse.Namespace, device: str) -> dict[str, Any]:
    """Pipeline vs bare forward per decode mode."""
    from extract_bench import forward_pass, make_dataset, make_teacher

    from mmkd.data import open_dataset
    from mmkd.extract import ExtractJob, run_extract
    from mmkd.extract.runners.summary import BlockResult
    from mmkd.teachers.tiny import write_pipelines

    jsonl = make_dataset(work / "data", a.rows, a.image_px)
    spec = make_teacher(work / "teachers", a.model)
    pipelines = write_pipelines(work / "pipelines.yaml", {spec.name: spec})
    precision = "fp16" if device.startswith("cuda") else "fp32"
    _peak_reset(device)
    fwd_s, n = forward_pass(spec, open_dataset(jsonl), a.batch_size, device, precision)()
    out: dict[str, Any] = {"rows": n, "image_px": a.image_px, "model": a.model, "precision": precision,
                           "forward_img_s": n / fwd_s, "modes": {}}
    for decode in ("full", "reduced", "gpu"):  # gpu: nvJPEG on CUDA; torchvision's CPU decoder in --smoke on CPU
        manifests: list[BlockResult] = []
        job = ExtractJob(data=str(jsonl), teachers=[spec.name], store=str(work / f"store-{decode}"), runner="local",
                         pipeline=str(pipelines), batch_size=a.batch_size, block_size=a.block_size,
                         workers=a.workers, device=device, precision=precision, decode=decode)
        summary = run_extract(job, on_block=manifests.append)
        ts = summary.teachers[0]
        block_wall = sum(m.wall_s for m in manifests)
        out["modes"][decode] = {"pipeline_img_s": ts.rows / block_wall, "ratio_to_forward": fwd_s / block_wall,
                                "decode_img_s_per_thread": ts.decode_per_core_s, "wall_side": ts.wall_side}
    out["peak_gpu_gib"] = _peak_gib(device)
    return out


def check_multi(work: Path, a: argparse.Namespace, device: str) -> dict[str, Any]:
    """Three ViT-B/16-class teachers in one pass on one GPU vs one teacher, same images and settings."""
    import dataclasses

    from extract_bench import make_teacher

    from mmkd.extract import ExtractJob, run_extract
    from mmkd.teachers.tiny import write_pipelines

    base = make_teacher(work / "teachers", a.model)
    specs = {f"{base.name}_{i}": dataclasses.replace(base, name=f"{base.name}_{i}") for i in range(3)}
    pipelines = write_pipelines(work / "pipelines-multi.yaml", specs)
    precision = "fp16" if device.startswith("cuda") else "fp32"
    out: dict[str, Any] = {"rows": a.rows, "teachers": list(specs), "decode": "reduced"}
    for key, names in (("one_teacher", list(specs)[:1]), ("three_teachers", list(specs))):
        _peak_reset(device)
        job = ExtractJob(data=str(work / "data" / "data.jsonl"), teachers=names, store=str(work / f"store-{key}"),
                         runner="local", pipeline=str(pipelines), batch_size=a.batch_size, block_size=a.block_size,
                         workers=a.workers, device=device, precision=precision, decode="reduced")
        t = time.perf_counter()
        summary = run_extract(job)
        wall = time.perf_counter() - t
        out[key] = {"wall_s": wall, "teacher_rows_s": summary.rows / wall, "decoded": summary.decoded,
                    "peak_gpu_gib": _peak_gib(device)}
    out["wall_ratio"] = out["three_teachers"]["wall_s"] / out["one_teacher"]["wall_s"]
    out["peak_gpu_gib"] = out["three_teachers"]["peak_gpu_gib"]
    return out


def _step_s(work: Path, store: Path, student: str, stage: int, a: argparse.Namespace, device: str) -> float:
    import statistics

    from mmkd.distill.config import load_distill_config
    from mmkd.distill.metrics import read_metrics
    from mmkd.distill.recipe import distill

    out = work / f"distill-stage{stage}"
    shutil.rmtree(out, ignore_errors=True)
    distill(load_distill_config(None, None, dict(
        store=str(store), stage=stage, kd="mmkd-clip", student=student, out=str(out), steps=a.steps,
        batch_size=a.distill_batch, warmup_steps=1, lr=1e-5, num_workers=a.loader_workers, log_every=2,
        checkpoint_every=10**9, progress=False, device=device,
        precision="bf16" if device.startswith("cuda") else "fp32")))
    return statistics.median(a.distill_batch / r["samples_per_s"] for r in read_metrics(out)[1:])


def check_distill(work: Path, a: argparse.Namespace, device: str) -> dict[str, Any]:
    """Stage-2 store step over a plain CLIP step, same student and batch."""
    import open_clip

    from mmkd.store.synthetic import make_synthetic_store

    cfg = TINY if a.model == "tiny" else open_clip.get_model_config("ViT-B-16")
    student = work / "student.json"
    student.write_text(json.dumps(cfg))
    dims = {t: (32 if a.model == "tiny" else d) for t, d in NINE.items()}
    store = make_synthetic_store(work / "kd-store", a.distill_batch * a.steps, dims, block_size=1024,
                                 invalid_fraction=0.3)
    _peak_reset(device)
    clip = _step_s(work, store.path, str(student), 1, a, device)
    kd = _step_s(work, store.path, str(student), 2, a, device)
    return {"batch": a.distill_batch, "clip_step_ms": clip * 1e3, "kd_step_ms": kd * 1e3, "ratio": kd / clip,
            "peak_gpu_gib": _peak_gib(device), "export": str(work / "distill-stage2" / "export")}


def check_eval(work: Path, a: argparse.Namespace, device: str, export: str) -> dict[str, Any]:
    """``mmkd eval`` retrieval over the extract images with the exported student: images/s."""
    from mmkd.eval.runner import EvalConfig, evaluate
    from mmkd.eval.sets import eval_set_from_data

    evalset = eval_set_from_data(str(work / "data" / "data.jsonl"))
    _peak_reset(device)
    t = time.perf_counter()
    evaluate([export], [evalset], work / "eval", ecfg=EvalConfig(tasks=("retrieval",), resamples=0, device=device,
                                                                   batch_size=a.batch_size))
    wall = time.perf_counter() - t
    return {"images": len(evalset.items), "img_s": len(evalset.items) / wall, "wall_s": wall,
            "peak_gpu_gib": _peak_gib(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true", help="tiny model and data: checks the script runs (CPU is fine)")
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir, removed after)")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from mmkd.config import resolve_device

    device = resolve_device(a.device)
    big = not a.smoke
    a.model = "vitb16" if big else "tiny"
    a.rows, a.image_px = (4096, 1100) if big else (24, 96)
    a.batch_size, a.block_size = (512, 2048) if big else (8, 8)
    a.workers = max(1, (os.cpu_count() or 2) - 2) if big else 1
    a.steps, a.distill_batch = (20, 128) if big else (4, 6)
    a.loader_workers = min(8, max(0, (os.cpu_count() or 2) - 4)) if big else 0
    if big and not device.startswith("cuda"):
        raise SystemExit("gpu_check: no CUDA device here; run with --smoke to check the script on CPU")
    work = Path(a.dir or tempfile.mkdtemp(prefix="mmkd-gpu-check-"))
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else
                              platform.processor() or "cpu", "torch": torch.__version__, "smoke": a.smoke}
    try:
        t0 = time.perf_counter()
        report["extract"] = check_extract(work, a, device)
        report["multi"] = check_multi(work, a, device)
        report["distill"] = check_distill(work, a, device)
        report["eval"] = check_eval(work, a, device, report["distill"].pop("export"))
        report["wall_s"] = time.perf_counter() - t0
    finally:
        if a.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    ex, di, ev = report["extract"], report["distill"], report["eval"]
    print(f"device {report['device']}, torch {report['torch']}, {report['wall_s']:.0f} s")
    print(f"extract  {ex['model']} {ex['precision']}, {ex['rows']} JPEGs of {ex['image_px']} px: bare forward "
          f"{ex['forward_img_s']:.0f} img/s")
    for mode, m in ex["modes"].items():
        print(f"  --decode {mode:<8} pipeline {m['pipeline_img_s']:.0f} img/s = {m['ratio_to_forward']:.2f} of the "
              f"forward; decode {m['decode_img_s_per_thread']:.0f} img/s per thread; wall: {m['wall_side']}")
    mu = report["multi"]
    print(f"multi    3 {ex['model']} teachers in one pass {mu['three_teachers']['wall_s']:.1f} s vs one teacher "
          f"{mu['one_teacher']['wall_s']:.1f} s = {mu['wall_ratio']:.2f}x ({mu['three_teachers']['decoded']} images "
          f"decoded for {3 * mu['rows']} teacher-rows; peak {mu['three_teachers']['peak_gpu_gib']} GiB)")
    print(f"distill  stage-2 store step {di['kd_step_ms']:.1f} ms / CLIP step {di['clip_step_ms']:.1f} ms = "
          f"{di['ratio']:.2f} (batch {di['batch']})")
    print(f"eval     {ev['img_s']:.0f} img/s over {ev['images']} images (retrieval, whole mmkd eval run)")
    print("peak GPU memory (GiB): " + ", ".join(f"{k} {report[k]['peak_gpu_gib']}" for k in ("extract", "multi",
                                                                                             "distill", "eval")))
    print(f"written: {a.out}")


if __name__ == "__main__":
    main()
