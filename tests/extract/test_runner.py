"""run_extract with the local runner: correctness against the teachers, bad samples, resume, config, CLI, kill."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_runner_support import BAD, assert_same_store, direct_features, modality_dataset, snapshot, tiny_pipelines

from mmkd.config import load_pipelines
from mmkd.extract import ExtractError, ExtractJob, job_from_config, run_extract
from mmkd.data import open_dataset
from mmkd.teachers import load_teacher
from mmkd.store import FeatureStore, validate_store

REPO = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def setup(tmp_path_factory, mmkd_demo_dir, modality_dir):
    root = tmp_path_factory.mktemp("extract")
    jsonl = modality_dataset(modality_dir, root / "modality")
    pipelines, specs = tiny_pipelines(root, mmkd_demo_dir, jsonl)
    return {"root": root, "pipelines": str(pipelines), "specs": specs, "jsonl": jsonl, "demo": mmkd_demo_dir}


@pytest.fixture(scope="module")
def teachers(setup):
    return {name: load_teacher(spec) for name, spec in setup["specs"].items()}


def _job(setup, store, **kw) -> ExtractJob:
    values = dict(data="demo", teachers=["all"], store=str(store), runner="local", pipeline=setup["pipelines"],
                  block_size=3, batch_size=2, workers=2)
    return ExtractJob(**{**values, **kw})


@pytest.fixture(scope="module")
def demo_store(setup):
    store = setup["root"] / "demo-store"
    summary = run_extract(_job(setup, store))
    return store, summary


def _check_against_direct(store_path: Path, teachers: dict, dataset) -> int:
    store = FeatureStore.open(store_path)
    samples = {s.sample_id: s for s in dataset.samples()}
    checked = 0
    for name, teacher in teachers.items():
        valid = store.valid(name)
        for row, sid in enumerate(store.sample_ids):
            if not valid[row]:
                continue
            s = samples[sid]
            img, txt = direct_features(teacher, dataset.root / s.image, s.caption)
            np.testing.assert_allclose(store.read(name, [row], "image")[0], img, atol=2e-3, err_msg=f"{name} {sid}")
            np.testing.assert_allclose(store.read(name, [row], "text")[0], txt, atol=2e-3, err_msg=f"{name} {sid}")
            checked += 1
    return checked


def test_demo_features_equal_teachers_run_directly(setup, teachers, demo_store):
    path, summary = demo_store
    store = FeatureStore.open(path)
    assert store.n == 8 and store.num_blocks == 3 and summary.created_store
    assert sorted(store.teachers) == sorted(setup["specs"])
    assert [t.blocks_run for t in summary.teachers] == [3] * 4
    assert summary.rows == 32 and summary.failures == {}
    assert _check_against_direct(path, teachers, open_dataset(setup["demo"])) == 32
    assert validate_store(store).messages == []
    for name, teacher in teachers.items():
        attrs = store.attrs(name)
        assert attrs["logit_scale"] == pytest.approx(teacher.logit_scale)
        assert attrs["preprocessing"]["grayscale"] == (name == "tiny_medclip")
        assert len(attrs["image_mean"]) == teacher.dim and attrs["stats_rows"] == 8
    record = [json.loads(p.read_text()) for p in sorted((path / "_jobs").glob("*-tiny_open_clip.json"))]
    assert record[-1]["status"] == "done" and record[-1]["summary"]["rows"] == 8
    assert record[-1]["job"]["batch_size"] == 2 and record[-1]["teacher"]["loader"] == "open_clip"


def test_modality_images_and_bad_samples(setup, teachers):
    path = setup["root"] / "modality-store"
    pick = {k: teachers[k] for k in ("tiny_open_clip", "tiny_medclip", "tiny_transformers")}
    summary = run_extract(_job(setup, path, data="modality", teachers=list(pick), block_size=4))
    store = FeatureStore.open(path)
    assert store.n == 16
    for t in summary.teachers:
        assert t.failures == {"missing": 1, "corrupt": 1, "truncated": 1, "empty_caption": 1}
        assert t.valid == 12 and t.rows == 16
    for name in pick:
        fails = {f["sample_id"]: f["reason"] for f in store.failures(name).to_pylist()}
        assert fails == BAD
        valid = dict(zip(store.sample_ids, store.valid(name)))
        assert all(valid[sid] == (sid not in BAD) for sid in valid)
        bad_rows = store.rows(list(BAD))
        assert not store.read(name, bad_rows, "image").any()  # invalid rows hold zeros
    assert _check_against_direct(path, pick, open_dataset(setup["jsonl"])) == 36


def test_rerun_is_noop_and_overwrite_redoes(setup, demo_store, tmp_path):
    path, _ = demo_store
    copy = tmp_path / "store"
    shutil.copytree(path, copy)
    markers = {p: p.stat().st_mtime_ns for p in (copy / "_progress").rglob("*.done")}
    again = run_extract(_job(setup, copy))
    assert again.noop and not again.created_store and "nothing to do" in again.format()
    assert {p: p.stat().st_mtime_ns for p in (copy / "_progress").rglob("*.done")} == markers
    redo = run_extract(_job(setup, copy, teachers=["tiny_open_clip"], overwrite=True))
    assert [t.blocks_run for t in redo.teachers] == [3]
    assert_same_store(path, copy)


def test_resume_after_lost_blocks(setup, demo_store, tmp_path):
    path, _ = demo_store
    copy = tmp_path / "store"
    shutil.copytree(path, copy)
    for marker in sorted((copy / "_progress" / "tiny_transformers").glob("*.done"))[1:]:
        marker.unlink()
    summary = run_extract(_job(setup, copy))
    assert {t.teacher: t.blocks_run for t in summary.teachers} == {
        "tiny_open_clip": 0, "tiny_transformers": 2, "tiny_unimed_clip": 0, "tiny_medclip": 0}
    assert summary.teachers[1].blocks_skipped == 1
    assert_same_store(path, copy)


def test_other_weights_refused_on_resume(setup, demo_store, tmp_path):
    path, _ = demo_store
    copy = tmp_path / "store"
    shutil.copytree(path, copy)
    (copy / "_progress" / "tiny_open_clip" / "block-000002.done").unlink()
    from mmkd.teachers.tiny import make_tiny_teachers, write_pipelines

    specs = make_tiny_teachers(tmp_path / "seed1", kinds=("open_clip",), seed=1, dim=24, image_size=32,
                               context_length=16)
    other = write_pipelines(tmp_path / "seed1.yaml", specs, extra={"datasets": {"demo": {"path": str(setup["demo"])}}})
    job = _job(setup, copy, teachers=["tiny_open_clip"], pipeline=str(other))
    with pytest.raises(ExtractError, match="weights_sha256.*--overwrite"):
        run_extract(job)
    job.overwrite = True
    assert run_extract(job).teachers[0].blocks_run == 3


def test_fingerprint_and_limit_mismatch_refused(setup, tmp_path, modality_dir):
    jsonl = modality_dataset(modality_dir, tmp_path / "data", bad=False)
    store = tmp_path / "store"
    first = run_extract(_job(setup, store, data=str(jsonl), teachers=["tiny_open_clip"], limit=5))
    assert first.num_samples == 5 and FeatureStore.open(store).n == 5
    assert run_extract(_job(setup, store, data=str(jsonl), teachers=["tiny_open_clip"], limit=5)).noop
    with pytest.raises(ExtractError, match=r"first 5 samples \(--limit 5\).*asks for all samples.*--limit 5"):
        run_extract(_job(setup, store, data=str(jsonl), teachers=["tiny_open_clip"]))
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows[2]["caption"] = "an edited caption"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ExtractError, match="does not match store.*new --store"):
        run_extract(_job(setup, store, data=str(jsonl), teachers=["tiny_transformers"], limit=5))


def test_extract_into_imported_store(setup, teachers, tmp_path):
    """A store made by `mmkd store import-mmkd` (another fingerprint scheme) accepts new teachers."""
    from mmkd.store import import_mmkd

    store = tmp_path / "imported"
    import_mmkd(setup["demo"], store, block_size=4)
    summary = run_extract(_job(setup, store, teachers=["tiny_open_clip"]))
    assert summary.teachers[0].blocks_run == 2
    s = FeatureStore.open(store)
    assert "tiny_open_clip" in s.teachers and len(s.teachers) > 1
    one = {"tiny_open_clip": teachers["tiny_open_clip"]}
    assert _check_against_direct(store, one, open_dataset(setup["demo"])) == 8


def test_job_from_config_runs_and_overrides(setup, tmp_path):
    extract = {"demo-run": {"data": "demo", "teachers": ["tiny_open_clip"], "store": "stores/demo",
                            "runner": "local", "batch_size": 4, "precision": "fp32", "workers": 1},
               "path-run": {"data": "modality/data.jsonl", "teachers": "all", "store": "/abs/store"}}
    pipelines, _ = tiny_pipelines(tmp_path, setup["demo"], extract=extract, kinds=("open_clip",))
    cfg = load_pipelines(pipelines)
    job = job_from_config(cfg, "demo-run", batch_size=8, store=None)
    assert job.batch_size == 8 and job.workers == 1 and job.precision == "fp32" and job.name == "demo-run"
    assert job.store == str(tmp_path / "stores" / "demo") and job.pipeline == str(pipelines.resolve())
    path_job = job_from_config(cfg, "path-run", runner="local")
    assert path_job.data == str(tmp_path / "modality" / "data.jsonl") and path_job.teachers == ["all"]
    assert path_job.runner == "local" and path_job.store == "/abs/store"
    with pytest.raises(ExtractError, match=r"unknown extract run 'nope'.*\['demo-run', 'path-run'\]"):
        job_from_config(cfg, "nope")
    bad = tiny_pipelines(tmp_path / "bad", extract={"x": {"data": "d", "teachers": ["t"], "store": "s",
                                                         "batchsize": 3}}, kinds=("open_clip",))[0]
    with pytest.raises(ExtractError, match=r"unknown keys \['batchsize'\]"):
        job_from_config(load_pipelines(bad), "x")
    with pytest.raises(ExtractError, match="precision 'fp8'"):
        job_from_config(cfg, "demo-run", precision="fp8")


def test_repo_pipelines_extract_entries_resolve():
    """Every extract run in the shipped pipelines.yaml names a declared dataset and declared teachers."""
    from mmkd.extract.runners.job import resolve_teachers

    cfg = load_pipelines(REPO / "pipelines.yaml")
    runs = cfg["extract"]
    assert runs, "pipelines.yaml declares no extract runs"
    text = (REPO / "pipelines.yaml").read_text()
    for name in runs:
        job = job_from_config(cfg, name)
        assert job.data in cfg["datasets"], (name, job.data)
        assert resolve_teachers(job, cfg)
        assert f"# mmkd extract --run {name}\n" in text, f"run {name!r} lacks its command comment"


def test_cli_extract_run_and_rerun(setup, tmp_path):
    store = tmp_path / "cli-store"
    extract = {"tiny": {"data": "demo", "teachers": ["tiny_open_clip", "tiny_unimed_clip"],
                        "store": str(store), "runner": "ray", "block_size": 4}}
    pipelines, _ = tiny_pipelines(tmp_path, setup["demo"], extract=extract, kinds=("open_clip", "unimed_clip"))
    from mmkd.cli import main

    args = ["extract", "--run", "tiny", "--pipeline", str(pipelines), "--runner", "local", "--no-progress"]
    first = CliRunner().invoke(main, args + ["--limit", "6"])
    assert first.exit_code == 0, first.output
    assert "tiny_open_clip: 6 rows in 2 blocks" in first.output and "failures: none" in first.output
    assert "read+decode" in first.output and "forward" in first.output and "rows/s" in first.output
    again = CliRunner().invoke(main, args + ["--limit", "6", "--json"])
    assert again.exit_code == 0 and json.loads(again.output)["noop"] is True
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "--limit 6" in refused.output
    unknown = CliRunner().invoke(main, ["extract", "--teacher", "nope", "--data", "demo", "--store", str(store),
                                        "--pipeline", str(pipelines)])
    assert unknown.exit_code == 1 and "unknown teacher 'nope'" in unknown.output and "tiny_open_clip" in unknown.output


@pytest.mark.slow  # ~27 s: two extract subprocesses (the S3 variant, tests/s3/test_s3_ray.py, is slow too)
def test_sigkill_whole_extract_then_rerun_gives_identical_store(setup, tmp_path):
    reference = tmp_path / "reference"
    job = dict(data="modality", teachers=["tiny_open_clip", "tiny_transformers"], block_size=1, batch_size=1)
    run_extract(_job(setup, reference, **job))
    store = tmp_path / "killed"
    cmd = [sys.executable, "-c", "from mmkd.cli import main; main()", "extract", "--pipeline", setup["pipelines"],
           "--data", "modality", "--teacher", "tiny_open_clip", "--teacher", "tiny_transformers", "--store",
           str(store), "--runner", "local", "--block-size", "1", "--batch-size", "1", "--workers", "2",
           "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = store / "_progress"
    deadline = time.monotonic() + 120
    while not any(progress.rglob("*.done")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 0.3))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"extract ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    done = len(list(progress.rglob("*.done")))
    assert 0 < done < 32, done
    rerun = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_store(reference, store)
    assert validate_store(FeatureStore.open(store)).messages == []
    assert snapshot(store)["tiny_transformers"]["failures"] == snapshot(reference)["tiny_transformers"]["failures"]


def test_block_worker_prefetch_hint_out_of_order(setup, demo_store, tmp_path):
    """A wrong next-block hint is dropped; blocks come out the same in any order."""
    from mmkd.extract.runners import BlockWorker, WorkerConfig

    path, _ = demo_store
    copy = tmp_path / "store"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "_progress" / "tiny_open_clip")
    config = WorkerConfig(dataset=open_dataset(setup["demo"]).spec().to_dict(), store=str(copy), batch_size=2, workers=2)
    worker = BlockWorker(setup["specs"]["tiny_open_clip"], config)
    try:
        manifests = [worker.run_block(2, next_block=0), worker.run_block(1, next_block=0), worker.run_block(0)]
    finally:
        worker.close()
    assert [m.block for m in manifests] == [2, 1, 0] and [m.rows for m in manifests] == [2, 3, 3]
    assert_same_store(path, copy)


def test_decode_mode_is_recorded_and_never_mixed(setup, tmp_path):
    """--decode reduced lands in the teacher's attrs; resuming that teacher with --decode full is refused."""
    store = tmp_path / "st"
    run_extract(_job(setup, store, teachers=["tiny_open_clip"], decode="reduced", limit=6))
    fs = FeatureStore.open(store)
    assert fs.attrs("tiny_open_clip")["decode"] == "reduced" and fs.is_complete("tiny_open_clip")
    (store / "_progress" / "tiny_open_clip" / "block-000001.done").unlink()  # an unfinished block to resume
    with pytest.raises(ExtractError, match=r"other \['decode'\].*'reduced'.*'full'.*--overwrite"):
        run_extract(_job(setup, store, teachers=["tiny_open_clip"], decode="full", limit=6))
    with pytest.raises(ExtractError, match="decode 'nvdec' not in"):
        _job(setup, store, decode="nvdec")


def test_decode_gpu_path_on_cpu_keeps_bad_sample_reasons_and_features(setup, tmp_path):
    """--decode gpu (run on the CPU device here): same rows valid, same failure reasons, near-equal features."""
    full = run_extract(_job(setup, tmp_path / "full", data="modality", teachers=["tiny_open_clip"], block_size=4))
    dev = run_extract(_job(setup, tmp_path / "dev", data="modality", teachers=["tiny_open_clip"], block_size=4,
                           decode="gpu"))
    assert dev.teachers[0].failures == full.teachers[0].failures and dev.teachers[0].failures  # BAD samples
    a, b = FeatureStore.open(tmp_path / "full"), FeatureStore.open(tmp_path / "dev")
    assert b.attrs("tiny_open_clip")["decode"] == "gpu"
    va, vb = a.valid("tiny_open_clip"), b.valid("tiny_open_clip")
    assert (va == vb).all()
    rows = np.flatnonzero(va)
    x = a.read("tiny_open_clip", rows).astype(np.float32)
    y = b.read("tiny_open_clip", rows).astype(np.float32)
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    assert cos.min() > 0.98, cos.min()  # a 32-px tiny teacher: a few 8-bit levels move its features a little
