"""``mmkd teachers`` through click's CliRunner, and real-dim custom architectures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmkd.cli import main
from mmkd.config import load_pipelines
from mmkd.teachers import teachers_from_config
from mmkd.teachers.tiny import make_tiny_teachers, write_pipelines

REPO_PIPELINES = Path(__file__).resolve().parents[2] / "pipelines.yaml"


def test_teachers_command_lists_tiny_as_available(tmp_path):
    specs = make_tiny_teachers(tmp_path / "w", kinds=("open_clip", "transformers", "custom"))
    path = write_pipelines(tmp_path / "p.yaml", specs)
    out = CliRunner().invoke(main, ["teachers", "--pipeline", str(path), "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.output)}
    # the user's file extends the shipped registry: its teachers beside the nine shipped ones
    assert set(specs) <= set(rows) and all(rows[n]["available"] and rows[n]["dim"] == 32 for n in specs)
    assert {"biomedclip", "medclip"} <= set(rows)
    table = CliRunner().invoke(main, ["teachers", "--pipeline", str(path)])
    assert table.exit_code == 0
    line = next(ln for ln in table.output.splitlines() if ln.startswith("tiny_unimed_clip"))
    assert "available" in line and "MISSING" not in line


def test_teachers_command_reports_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("MMKD_WEIGHTS", str(tmp_path / "no-weights"))
    out = CliRunner().invoke(main, ["teachers", "--pipeline", str(REPO_PIPELINES)])
    assert out.exit_code == 0, out.output
    assert out.output.count("MISSING") == 9 and "9 of 9 teachers lack weights" in out.output
    assert str(tmp_path / "no-weights" / "pmc_clip" / "checkpoint.pt") in out.output


def test_teachers_command_bad_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("teachers:\n  x: {loader: nope, weights: y}\n")
    out = CliRunner().invoke(main, ["teachers", "--pipeline", str(tmp_path / "bad.yaml")])
    assert out.exit_code != 0 and "unknown loader 'nope'" in out.output


@pytest.mark.parametrize("name", ["unimedclip", "pmc_clip", "medclip"])
def test_real_custom_architectures_build_at_table_dims(name):
    import torch

    from mmkd.teachers.custom_models import build_custom_model

    spec = teachers_from_config(load_pipelines(REPO_PIPELINES))[name]
    model = build_custom_model(spec.arch, spec.model_config).eval()
    channels = 1 if spec.grayscale else 3
    with torch.inference_mode():
        img = model.encode_image(torch.zeros(1, channels, spec.image_size, spec.image_size))
        ids = torch.ones(1, 8, dtype=torch.long)
        txt = model.encode_text(ids, torch.ones_like(ids))
    assert img.shape == (1, spec.dim) and txt.shape == (1, spec.dim)
