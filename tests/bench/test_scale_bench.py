"""bench/scale_bench.py runs end to end with the shipped teachers' mix and counts each image decoded once per pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_scale_bench_shipped_mix_decodes_once_per_pass(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "scale_bench.py"), "--mix", "shipped", "--images", "3",
                           "--block-size", "2", "--mp", "0.06", "--dir", str(tmp_path / "scratch"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["mix"] == "shipped" and report["block_size"] == 2 and len(report["teachers"]) == 9
    assert "medclip_sim" in report["teachers"] and "biomedclip_sim" in report["teachers"]
    one, each = report["one_pass"], report["per_teacher"]
    assert one["teacher_rows"] == each["teacher_rows"] == 27
    assert one["decoded"] == 3 and each["decoded"] == 27  # counted in the decode path, not assumed
    assert one["bytes_read"] * 9 == each["bytes_read"]
    assert "row: mix shipped, --decode full --resize own: wall ratio" in proc.stdout
