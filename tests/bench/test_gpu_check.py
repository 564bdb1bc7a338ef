"""bench/gpu_check.py runs end to end (--smoke: tiny model, CPU), so a session with a GPU can run it as it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--smoke", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert set(report["extract"]["modes"]) == {"full", "reduced", "gpu"}
    assert all(m["pipeline_img_s"] > 0 and m["ratio_to_forward"] > 0 for m in report["extract"]["modes"].values())
    multi = report["multi"]
    assert multi["wall_ratio"] > 0 and multi["three_teachers"]["decoded"] == multi["one_teacher"]["decoded"] == 24
    assert report["distill"]["ratio"] > 0 and report["eval"]["img_s"] > 0 and report["eval"]["images"] == 24
