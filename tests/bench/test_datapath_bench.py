"""bench/datapath_bench.py runs end to end on the fixture JPEGs and reports every path of the data path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_datapath_bench_reports_every_path(fixtures_dir, tmp_path):
    out = tmp_path / "datapath.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "datapath_bench.py"), "--fixtures", str(fixtures_dir),
                           "--rows", "8", "--batch-size", "4", "--repeats", "1", "--workers", "1",
                           "--image-size", "64", "--cache-size", "72", "--dir", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    rows = {r["path"]: r for r in report["rows"]}
    assert set(rows) == {"plain PIL + transform", "data path, full", "data path, reduced", "data path, reduced, uint8",
                         "data path, cache 72", "data path, cache 72, uint8", "normalise only (trainer side)",
                         "loader, 1 worker(s), reduced", "loader, 1 worker(s), reduced, uint8"}
    assert all(v > 0 for v in report["image_cache"].values()) and "extract --image-cache adds" in proc.stdout
    assert rows["plain PIL + transform"]["vs_plain"] == 1.0
    assert all((r["img_per_s_per_core"] or r["img_per_s_wall"]) > 0 and r["img_per_s_wall"] > 0 for r in rows.values())
