"""An extract whose first teacher cannot start leaves no empty store behind; the error is one line."""

from __future__ import annotations

import json

import pytest
import yaml
from test_runner_support import MODALITY_CAPTIONS, tiny_pipelines


@pytest.mark.slow
def test_wrong_dim_leaves_no_store(tmp_path, modality_dir, run_mmkd):
    rows = [{"id": p.stem, "image": str(p), "caption": MODALITY_CAPTIONS[p.stem]}
            for p in sorted(modality_dir.iterdir())[:3]]
    table = tmp_path / "data.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipelines, _ = tiny_pipelines(tmp_path, kinds=("open_clip",))
    cfg = yaml.safe_load(pipelines.read_text())
    cfg["teachers"]["tiny_open_clip"]["dim"] = 99  # the model embeds in 24-d
    pipelines.write_text(yaml.safe_dump(cfg))
    res = run_mmkd("extract", "--pipeline", pipelines, "--data", table, "--teacher", "tiny_open_clip", "--store",
                   tmp_path / "st", "--runner", "local", "--no-progress", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert "99" in line and "tiny_open_clip" in line, line
    assert not (tmp_path / "st").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".st")]  # nor a half-created one
