"""bench/demo_bench.py: it reads the demo's phase lines and counts the CPU of a process's children too."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

psutil = pytest.importorskip("psutil")


def _bench():
    spec = importlib.util.spec_from_file_location("demo_bench", REPO / "bench" / "demo_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_phase_lines_match_what_the_demo_prints() -> None:
    phase = _bench().PHASE  # run_demo's progress lines, as tests/demo/test_run.py checks them
    start, done = phase.match("[     5s] extract ..."), phase.match("[   125s] extract done in 11.5s")
    assert start.group(1) == "extract" and start.group(2) == "..."
    assert done.group(1) == "extract" and done.group(3) == "11.5"
    assert phase.match("[   391s]   student mmkd-clip trained (1/4, +77s)") is None


def test_tree_cpu_counts_a_busy_grandchild(tmp_path) -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
    spawner = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {busy!r}])\n"
    proc = subprocess.Popen([sys.executable, "-c", spawner])
    tree = _bench().TreeCPU(proc.pid)
    while proc.poll() is None:
        tree.sample()
        time.sleep(0.05)
    assert tree.sample() >= 0.5  # the grandchild's 0.6 CPU s, less at most one sampling interval
