"""`mmkd distill --out` of an existing run: resumed or left alone with the same settings, refused with others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distill.conftest import make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("rundir"), n=32, block_size=16)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _distill(run_mmkd, store, student_json, out, *extra, cwd):
    return run_mmkd("distill", "--store", store, "--stage", "1", "--student", student_json, "--out", out,
                    "--steps", "2", "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--log-every", "1",
                    "--no-progress", *extra, cwd=cwd)


@pytest.mark.slow
def test_finished_run_is_kept_and_other_settings_are_refused(store, student_json, run_mmkd, tmp_path):
    out = tmp_path / "run"
    assert _distill(run_mmkd, store, student_json, out, cwd=tmp_path).returncode == 0
    before = _snapshot(out)
    assert "export/open_clip_model.safetensors" in before and "config.yaml" in before

    same = _distill(run_mmkd, store, student_json, out, cwd=tmp_path)
    assert same.returncode == 0 and "already finished with these settings; nothing to do" in same.stderr
    assert json.loads(same.stdout.strip().splitlines()[-1])["noop"] is True
    assert _snapshot(out) == before

    other = _distill(run_mmkd, store, student_json, out, "--lr", "0.002", "--seed", "3", cwd=tmp_path)
    assert other.returncode == 1 and "Traceback" not in other.stderr
    line = other.stderr.strip().splitlines()[-1]
    assert "holds a run with other settings" in line and "optim.lr 5e-05 -> 0.002" in line and "seed 0 -> 3" in line
    assert "--overwrite" in line and _snapshot(out) == before

    new = _distill(run_mmkd, store, student_json, out, "--lr", "0.002", "--overwrite", cwd=tmp_path)
    assert new.returncode == 0, new.stderr[-2000:]
    assert "lr: 0.002" in (out / "config.yaml").read_text() and _snapshot(out) != before


@pytest.mark.slow
def test_stopped_run_resumes_without_the_flag(store, student_json, run_mmkd, tmp_path):
    out = tmp_path / "run"
    first = _distill(run_mmkd, store, student_json, out, "--stop-at-step", "1", cwd=tmp_path)
    assert first.returncode == 0 and not (out / "export").exists()
    again = _distill(run_mmkd, store, student_json, out, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["finished"] and summary["step"] == 2
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # step 1 from the first invocation, step 2 from the resumed one


def test_folder_that_is_no_run_is_refused(store, student_json, run_mmkd, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = _distill(run_mmkd, store, student_json, out, "--overwrite", cwd=tmp_path)
    assert res.returncode == 1 and "holds no distill run" in res.stderr.strip().splitlines()[-1]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
