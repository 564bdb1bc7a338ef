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


def test_unreachable_hub_is_one_probe_and_one_line(tmp_path, modality_dir, run_mmkd):
    """HF_HUB_OFFLINE unset, the hub unreachable, no weights cached: one HEAD to HF_ENDPOINT, then the error
    (not huggingface_hub's five retries per file); no store left."""
    import socket

    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = [{"id": p.stem, "image": str(p), "caption": MODALITY_CAPTIONS[p.stem]}
            for p in sorted(modality_dir.iterdir())[:2]]
    table = tmp_path / "data.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_mmkd("extract", "--teacher", "biomedclip", "--data", table, "--store", tmp_path / "st", "--runner",
                   "local", "--no-progress", cwd=tmp_path, timeout=60,
                   env={"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_HUB_CACHE": None,
                        "MMKD_WEIGHTS": None, "HF_HOME": str(tmp_path / "hf"),
                        "HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: teacher 'biomedclip': weights"), lines
    assert f"could not be reached (http://127.0.0.1:{port} gave no answer" in lines[-1], lines[-1]
    assert "HF_HUB_OFFLINE=1" in lines[-1] and "hf download" in lines[-1]
    assert not [ln for ln in lines if "Retrying" in ln or "thrown while requesting" in ln], lines
    assert not (tmp_path / "st").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".st")]
