"""Crash safety (SIGKILL mid-block) and concurrent writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mmkd.data import Sample
from mmkd.store import FeatureStore, validate_store

REPO = Path(__file__).resolve().parents[2]

# Writes block 0 fully, then block 1, but hangs inside the chunk fsync of block 1
# (its data partly written, marker not yet) so the parent can SIGKILL it there.
KILLED_WRITER = r"""
import sys, time, pathlib
import numpy as np
from mmkd.store import FeatureStore, format as fmt
store = FeatureStore.open(sys.argv[1], mode="a")
ready = pathlib.Path(sys.argv[2])
real = fmt.fsync_tree
def hang(path):
    if "/c/1" in str(path):
        ready.write_text("in block 1")
        time.sleep(600)
    real(path)
fmt.fsync_tree = hang
x = np.full((4, 8), 0.35355339, np.float32)
for b in (0, 1):
    store.write_block("t", b, x, x, np.ones(4, bool))
"""

WRITER = r"""
import sys
import numpy as np
from mmkd.store import FeatureStore
store = FeatureStore.open(sys.argv[1], mode="a")
teacher, dim, blocks = sys.argv[2], int(sys.argv[3]), [int(b) for b in sys.argv[4].split(",")]
store.add_teacher(teacher, dim, {"writer": sys.argv[4]})
for b in blocks:
    s, e = store.block_range(b)
    rng = np.random.default_rng([dim, b])
    x = rng.standard_normal((e - s, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store.write_block(teacher, b, x, x, np.ones(e - s, bool))
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_sigkill_mid_block_leaves_it_not_done(tmp_path):
    path = tmp_path / "st"
    store = FeatureStore.create(path, [Sample(f"s{i}", "c", "i") for i in range(12)], block_size=4)
    store.add_teacher("t", 8)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(ready)], env=_env())
    deadline = time.time() + 120
    while not ready.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists(), "writer never reached block 1"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = FeatureStore.open(path, mode="a")
    assert store.done_blocks("t") == {0}
    assert not store.valid("t")[4:].any()
    problems = validate_store(store).messages
    assert any("2 of 3 blocks not done: 1-2" in p for p in problems), problems
    x = np.full((4, 8), 0.35355339, np.float32)
    for b in store.missing_blocks("t"):
        store.write_block("t", b, x, x, np.ones(4, bool))
    assert validate_store(FeatureStore.open(path)).messages == []


def test_concurrent_writers(tmp_path):
    path = tmp_path / "st"
    FeatureStore.create(path, [Sample(f"s{i}", "c", "i") for i in range(50)], block_size=8)
    jobs = [("a", 16, "0,2,4,6"), ("a", 16, "1,3,5"), ("b", 24, "0,1,2,3,4,5,6")]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), t, str(d), bl], env=_env()) for t, d, bl in jobs]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    store = FeatureStore.open(path)
    assert store.teachers == ["a", "b"] and validate_store(store).messages == []
    for t, dim in (("a", 16), ("b", 24)):
        rng = np.random.default_rng([dim, 3])
        x = rng.standard_normal((8, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.testing.assert_array_equal(store.read(t, np.arange(24, 32)), x.astype(np.float16))
