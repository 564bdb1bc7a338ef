"""RunDir: the one owner of a distill run folder's layout (written by the recipe, reopened by --init/--resume)."""

from __future__ import annotations

import yaml

from mmkd.distill.checkpoint import load_checkpoint, save_checkpoint
from mmkd.distill.init import resolve_source
from mmkd.distill.rundir import EXPORT_WEIGHTS, RunDir


def test_layout_paths(tmp_path):
    run = RunDir(str(tmp_path / "r"))
    assert run.root == tmp_path / "r"
    assert run.last_checkpoint == tmp_path / "r" / "checkpoints" / "last.pt"
    assert run.step_checkpoint(12) == tmp_path / "r" / "checkpoints" / "step-00000012.pt"
    assert run.export == tmp_path / "r" / "export"
    assert (run.config.name, run.metrics.name, run.init_report.name) == ("config.yaml", "metrics.jsonl",
                                                                        "init_report.json")


def test_write_config_creates_the_folder_and_reads_back(tmp_path):
    run = RunDir(tmp_path / "new" / "run")
    run.write_config({"distill": {"stage": 1}, "total_steps": 3})
    assert yaml.safe_load(run.config.read_text()) == {"distill": {"stage": 1}, "total_steps": 3}


def test_student_weights_prefer_the_export_then_the_last_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    assert run.student_weights() is None
    save_checkpoint(tmp_path, {"step": 5, "student": {}}, keep_step_copy=True)
    assert run.student_weights() == run.last_checkpoint and run.step_checkpoint(5).is_file()
    assert load_checkpoint(tmp_path)["step"] == 5
    run.export.mkdir()
    (run.export / EXPORT_WEIGHTS).write_bytes(b"w")
    assert run.student_weights() == run.export / EXPORT_WEIGHTS
    assert resolve_source(str(tmp_path)) == run.export / EXPORT_WEIGHTS  # --init RUN reopens it the same way
    assert RunDir(run.export).student_weights() == run.export / EXPORT_WEIGHTS  # an export folder itself
