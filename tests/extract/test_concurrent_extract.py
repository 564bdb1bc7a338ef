"""Two `mmkd extract` runs on one store at once: different teachers both finish, the same teacher is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_runner_support import MODALITY_CAPTIONS, tiny_pipelines

from mmkd.store import FeatureStore, validate_store
from mmkd.store.locks import teacher_locks


@pytest.fixture(scope="module")
def setup(tmp_path_factory, modality_dir):
    root = tmp_path_factory.mktemp("concurrent")
    rows = [{"id": p.stem, "image": str(p), "caption": MODALITY_CAPTIONS[p.stem]}
            for p in sorted(modality_dir.iterdir())]
    table = root / "data.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipelines, _ = tiny_pipelines(root, kinds=("open_clip", "transformers"))
    return {"root": root, "table": table, "pipelines": pipelines}


def _args(setup, store: Path, teacher: str) -> list[str]:
    return ["extract", "--pipeline", str(setup["pipelines"]), "--data", str(setup["table"]), "--teacher", teacher,
            "--store", str(store), "--runner", "local", "--block-size", "4", "--no-progress"]


def _popen(setup, store: Path, teacher: str, cwd: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("mmkd")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([str(exe), *_args(setup, store, teacher)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_two_teachers_at_once_both_finish(setup, tmp_path, run_mmkd):
    store = tmp_path / "st"  # not there yet: both runs race to create it
    procs = [_popen(setup, store, t, tmp_path) for t in ("tiny_open_clip", "tiny_transformers")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    st = FeatureStore.open(store)
    assert st.teachers == ["tiny_open_clip", "tiny_transformers"] and validate_store(st).messages == []
    assert all(st.is_complete(t) and st.valid(t).all() for t in st.teachers)
    # the same as one after the other
    seq = tmp_path / "seq"
    for t in ("tiny_open_clip", "tiny_transformers"):
        assert run_mmkd(*_args(setup, seq, t), cwd=tmp_path).returncode == 0
    ref = FeatureStore.open(seq)
    for t in ref.teachers:
        for kind in ("image", "text"):
            np.testing.assert_array_equal(st.read(t, np.arange(st.n), kind), ref.read(t, np.arange(ref.n), kind))


def test_same_teacher_is_refused_naming_the_owner(setup, tmp_path, run_mmkd):
    store = tmp_path / "st"
    assert run_mmkd(*_args(setup, store, "tiny_open_clip"), "--limit", "4", cwd=tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file() and "_locks" not in p.parts}
    with teacher_locks(store, ["tiny_open_clip"]):  # as a running extract of that teacher holds it
        res = run_mmkd(*_args(setup, store, "tiny_open_clip"), "--limit", "4", "--overwrite", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert f"teacher 'tiny_open_clip' in store {store} is being extracted by pid {os.getpid()}" in line, line
    after = {p: p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file() and "_locks" not in p.parts}
    assert after == before
    # released: the same command now runs
    assert run_mmkd(*_args(setup, store, "tiny_open_clip"), "--limit", "4", cwd=tmp_path).returncode == 0
