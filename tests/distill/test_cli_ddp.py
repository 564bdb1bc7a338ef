"""A stage-2 run never imports a teacher; the CLI; two-process gloo DDP matches one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmkd.distill.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]

GUARD_SCRIPT = r"""
import json, sys
from click.testing import CliRunner
from mmkd.cli import main
res = CliRunner().invoke(main, sys.argv[1:], catch_exceptions=False)
assert res.exit_code == 0, res.output
loaded = "mmkd.teachers" in sys.modules
print(json.dumps({"loaded": loaded, "summary": res.output.strip().splitlines()[-1]}))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _flags(store, student_json, out, **kw) -> list[str]:
    flags = {"store": store, "student": student_json, "out": out, "batch-size": 8, "warmup-steps": 1,
             "lr": 1e-3, "num-workers": 0, "log-every": 1, "device": "cpu", **kw}
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))] + ["--no-progress"]


def test_cli_reports_bad_config(tiny_store, student_json, tmp_path):
    from click.testing import CliRunner

    from mmkd.cli import main

    res = CliRunner().invoke(main, ["distill", "--store", str(tiny_store), "--student", str(student_json),
                                    "--out", str(tmp_path / "o"), "--stage", "1"])
    assert res.exit_code != 0 and "exactly one of steps or epochs" in res.output


def test_pipelines_distill_entries_load():
    from mmkd.config import load_pipelines
    from mmkd.distill.config import load_distill_config
    from mmkd.distill.student import resolve_student

    cfg = load_pipelines(REPO / "pipelines.yaml")
    assert cfg["distill"], "pipelines.yaml has no distill entries"
    for name in cfg["distill"]:
        run = load_distill_config(cfg, name, {"store": "/somewhere"})
        spec = resolve_student(run.student, run.students_section)
        assert spec.model_cfg["embed_dim"] > 0
    paper = resolve_student("mmkd_clip_student", cfg["students"]).model_cfg
    assert paper["embed_dim"] == 512 and paper["quick_gelu"] is True
    assert paper["text_cfg"]["context_length"] == 256 and paper["text_cfg"]["hf_proj_type"] == "mlp"
    text = (REPO / "pipelines.yaml").read_text().split("\ndistill:")[1]
    for name in cfg["distill"]:  # each block starts with a comment giving its command
        before = text.split(f"\n  {name}:")[0].rstrip().splitlines()[-1]
        assert before.strip().startswith("#") and "mmkd" in before, name


def test_two_process_gloo_ddp_matches_single_process(tiny_store, student_json, tmp_path):
    common = dict(stage=2, kd="multi", steps=2, seed=5)
    single = _flags(tiny_store, student_json, tmp_path / "one", **common)
    subprocess.run([sys.executable, "-m", "mmkd.distill", *single], check=True, env=_env(), cwd=tmp_path,
                   capture_output=True, timeout=300)
    ddp = _flags(tiny_store, student_json, tmp_path / "two", **common)
    ddp[ddp.index("--batch-size") + 1] = "4"
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--standalone", "-m", "mmkd.distill", *ddp],
                          env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]  # step 2 follows an update
    for a, b in zip(one, two):
        for key in ("loss/clip", "loss/fd_img", "loss/fd_txt", "loss/icl", "loss/total"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)


def test_tiny_teachers_extract_then_distill_both_stages(tmp_path):
    """The issue's end-to-end: 2 tiny teachers -> store -> stage 1 -> stage 2 (in a teacher-free process)."""
    from mmkd.teachers import tiny
    from mmkd.extract.runners import run as runners
    from mmkd.distill.config import load_distill_config
    from mmkd.distill.recipe import distill
    from mmkd.extract.runners.job import ExtractJob
    from tests.distill.conftest import TINY_STUDENT, make_image_folder

    table = make_image_folder(tmp_path / "data", 32)
    specs = tiny.make_tiny_teachers(tmp_path / "teachers", kinds=("open_clip", "transformers"), dim=32)
    pipelines = tiny.write_pipelines(tmp_path / "pipelines.yaml", specs)
    runners.run_extract(ExtractJob(data=str(table), teachers=list(specs), store=str(tmp_path / "store"),
                                   runner="local", pipeline=str(pipelines), device="cpu", precision="fp32",
                                   batch_size=8, workers=1, block_size=16))
    student = tmp_path / "student.json"
    student.write_text(json.dumps(TINY_STUDENT))
    s1 = tmp_path / "s1"
    distill(load_distill_config(None, None, dict(
        store=str(tmp_path / "store"), stage=1, student=str(student), out=str(s1), steps=10, batch_size=8,
        warmup_steps=1, lr=2e-3, num_workers=0, log_every=1, progress=False)))
    m1 = read_metrics(s1)
    assert sum(r["loss/clip"] for r in m1[-3:]) < sum(r["loss/clip"] for r in m1[:3])
    args = ["distill", *_flags(tmp_path / "store", student, tmp_path / "s2", stage=2, steps=8, init=s1,
                               **{"fd-weight": 5.0})]
    proc = subprocess.run(check=False, args=[sys.executable, "-c", GUARD_SCRIPT, *args], capture_output=True, text=True,
                          env=_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] is False  # a whole stage-2 run never imported the teacher registry (tests/test_layers.py)
    m2 = read_metrics(tmp_path / "s2")
    assert sum(r["loss/total"] for r in m2[-3:]) < sum(r["loss/total"] for r in m2[:3])
    assert set(json.loads((tmp_path / "s2" / "export" / "open_clip_config.json").read_text())) == {
        "model_cfg", "preprocess_cfg"}
