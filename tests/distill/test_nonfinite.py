"""NaN/Inf never pass through distill: NaN targets are left out, a NaN loss or gradient stops the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmkd.store import FeatureStore
from tests.distill.conftest import make_store

NAN_ROW = 5


@pytest.fixture(scope="module")
def nan_store(tmp_path_factory) -> Path:
    """The tiny two-teacher store with every row valid, then one float16 NaN in teacher ta's image row 5
    (as a store written before extract checked finiteness, or edited, holds it)."""
    path = make_store(tmp_path_factory.mktemp("nan"), invalid=0.0)
    store = FeatureStore.open(path, mode="a")
    s, e = store.block_range(0)
    image, text = store.read("ta", np.arange(s, e), "image"), store.read("ta", np.arange(s, e), "text")
    image[NAN_ROW, 3] = np.nan
    store.write_block("ta", 0, image, text, store.read("ta", np.arange(s, e), "valid"))
    return path


def _distill(run_mmkd, store, student_json, out, *extra, cwd):
    return run_mmkd("distill", "--store", store, "--stage", "2", "--kd", "multi", "--student", student_json,
                    "--out", out, "--steps", "4", "--batch-size", "8", "--num-workers", "0", "--device", "cpu",
                    "--warmup-steps", "0", "--log-every", "1", "--no-progress", *extra, cwd=cwd)


def test_default_validate_says_values_not_read(nan_store, run_mmkd, tmp_path):
    res = run_mmkd("store", "validate", nan_store, cwd=tmp_path)
    assert res.returncode == 0 and "values not read" in res.stdout and "--deep" in res.stdout, res.stdout
    deep = run_mmkd("store", "validate", nan_store, "--deep", cwd=tmp_path)
    assert deep.returncode == 1 and "NaN/Inf" in deep.stderr and "values not read" not in deep.stdout + deep.stderr


def test_nan_target_row_is_left_out_and_the_student_stays_finite(nan_store, student_json, run_mmkd, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "run"
    res = _distill(run_mmkd, nan_store, student_json, out, "--lr", "1e-3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("are NaN/Inf") == 1 and f"row {NAN_ROW} are NaN/Inf" in res.stderr, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["finished"] and summary["nonfinite_targets"] == 1
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss/total"]) and np.isfinite(r["grad_norm"]) for r in losses)
    weights = [w for f in sorted((out / "export").glob("*.safetensors")) for w in load_file(str(f)).values()]
    assert weights and all(np.isfinite(w).all() for w in weights)


@pytest.mark.slow
def test_diverging_run_stops_at_the_first_nonfinite_step_without_export(nan_store, student_json, run_mmkd,
                                                                       tmp_path):
    out = tmp_path / "run"
    res = _distill(run_mmkd, nan_store, student_json, out, "--lr", "1e30", "--grad-clip", "0",
                   "--checkpoint-every", "1", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert "is NaN/Inf at step" in line and "batch rows" in line and "--on-nonfinite skip" in line, line
    assert not (out / "export").exists()
    step = int(line.split("at step ")[1].split()[0])
    state = __import__("torch").load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == step - 1  # the refused step was not checkpointed


def test_on_nonfinite_skip_goes_on_and_counts(nan_store, student_json, run_mmkd, tmp_path):
    res = _distill(run_mmkd, nan_store, student_json, tmp_path / "run", "--lr", "1e30", "--grad-clip", "0",
                   "--on-nonfinite", "skip", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["finished"] and summary["skipped_steps"] >= 1
    assert res.stderr.count("step skipped, no update") == 1
