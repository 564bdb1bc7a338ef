"""Teacher locks on object storage (moto on 127.0.0.1): a lock object with owner and expiry per teacher, and a
store on S3 that its first run created and left empty is removed (as on disk)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from mmkd.config import as_path
from mmkd.extract import ExtractError, ExtractJob, run_extract
from mmkd.store import FeatureStore
from mmkd.store import locks
from mmkd.store.locks import TeacherLocked, teacher_locks
from mmkd.teachers.tiny import make_tiny_teachers, write_pipelines

pytestmark = pytest.mark.usefixtures("s3_env")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    import dataclasses

    root = tmp_path_factory.mktemp("s3locks")
    specs = make_tiny_teachers(root / "a", kinds=("open_clip",), dim=24)
    other = make_tiny_teachers(root / "b", kinds=("open_clip",), dim=24, seed=1)["tiny_open_clip"]
    specs["tiny_other"] = dataclasses.replace(other, name="tiny_other")
    return write_pipelines(root / "pipelines.yaml", specs)


def _job(pipelines, data, store, teachers, **kw) -> ExtractJob:
    return ExtractJob(data=str(data), teachers=teachers, store=store, runner="local", pipeline=str(pipelines),
                      block_size=4, batch_size=4, workers=1, device="cpu", **kw)


def test_second_extract_of_a_teacher_is_refused_naming_the_owner_another_teacher_goes_on(
        bucket, pipelines, mmkd_demo_dir):
    store = f"{bucket}/st"
    run_extract(_job(pipelines, mmkd_demo_dir, store, ["tiny_other"], limit=4))  # the store exists
    with teacher_locks(as_path(store), ["tiny_open_clip"]):  # an extract of tiny_open_clip running meanwhile
        lock = json.loads(as_path(f"{store}/_locks/tiny_open_clip.lock").read_bytes())
        assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname() and lock["expires"] > 0
        with pytest.raises(ExtractError, match=rf"teacher 'tiny_open_clip' in store {store} is being extracted by "
                                               rf"pid {os.getpid()} on {socket.gethostname()}.*expires at"):
            run_extract(_job(pipelines, mmkd_demo_dir, store, ["tiny_open_clip"], limit=4))
        summary = run_extract(_job(pipelines, mmkd_demo_dir, store, ["tiny_other"], limit=4, overwrite=True))
        assert summary.teachers[0].blocks_run == 1  # another teacher of the same store is not held up
    assert not as_path(f"{store}/_locks/tiny_open_clip.lock").exists()  # released on exit
    with teacher_locks(as_path(store), ["tiny_open_clip"]):  # and free for the next extract
        pass


def test_stale_lock_objects_are_taken_over_and_held_ones_renewed(bucket, monkeypatch):
    import time

    store = as_path(f"{bucket}/st")
    lock = store / "_locks" / "a.lock"
    lock.write_bytes(json.dumps({"owner": "elsewhere:1:x", "pid": 1, "host": "elsewhere", "since": "then",
                                 "expires": time.time() - 1}).encode())
    with teacher_locks(store, ["a"]):  # expired: taken
        assert json.loads(lock.read_bytes())["pid"] == os.getpid()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process of this host that has exited
    lock.write_bytes(json.dumps({"owner": f"{socket.gethostname()}:{pid}:x", "expires": time.time() + 3600}).encode())
    with teacher_locks(store, ["a"]):  # not expired, but its process is gone: taken at once
        assert json.loads(lock.read_bytes())["pid"] == os.getpid()
    lock.write_bytes(json.dumps({"owner": "elsewhere:1:x", "pid": 1, "host": "elsewhere", "command": "mmkd extract",
                                 "since": "2026-12-03T10:00:00+00:00", "expires": time.time() + 3600}).encode())
    with pytest.raises(TeacherLocked, match=r"pid 1 on elsewhere \(mmkd extract\), since 2026-12-03T10:00:00"):
        with teacher_locks(store, ["a"]):  # alive elsewhere, not expired: refused
            pass
    lock.unlink()
    monkeypatch.setattr(locks, "TEACHER_LOCK_EXPIRY_S", 1.0)
    monkeypatch.setattr(locks, "TEACHER_LOCK_RENEW_S", 0.2)
    with teacher_locks(store, ["a"]):
        time.sleep(1.5)  # past the first expiry: renewed meanwhile
        assert json.loads(lock.read_bytes())["expires"] > time.time()


def test_store_created_on_s3_by_a_run_whose_teacher_fails_is_removed(bucket, pipelines, mmkd_demo_dir, tmp_path):
    import yaml

    cfg = yaml.safe_load(pipelines.read_text())
    cfg["teachers"]["tiny_open_clip"]["dim"] = 99  # the model outputs 24: loading fails
    broken = tmp_path / "pipelines.yaml"
    broken.write_text(yaml.safe_dump(cfg))
    store = f"{bucket}/new"
    with pytest.raises(Exception, match="dim 99"):
        run_extract(_job(broken, mmkd_demo_dir, store, ["tiny_open_clip"], limit=4))
    fs = as_path(store).fs
    assert not fs.exists(store) and not fs.ls(bucket, detail=False)  # nothing left in the bucket
    with pytest.raises(Exception):
        FeatureStore.open(store)


@pytest.mark.slow
def test_eval_reads_a_teachers_features_from_a_store_on_s3(bucket, pipelines, mmkd_demo_dir, tmp_path):
    from tests.journey.conftest import run_mmkd

    store = f"{bucket}/demo"
    run_extract(_job(pipelines, mmkd_demo_dir, store, ["tiny_open_clip"]))
    run_mmkd(tmp_path, "eval", "--model", "tiny_open_clip", "--data", str(mmkd_demo_dir), "--task", "retrieval",
             "--store", f"{mmkd_demo_dir.name}={store}", "--out", "ev", "--resamples", "0", "--device", "cpu",
             "--pipeline", str(pipelines))
    scores = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert "retrieval" in scores["tiny_open_clip"][mmkd_demo_dir.name]
    log = (tmp_path / "ev").rglob("*")
    assert any("store-" in p.name for p in log)  # the features came from the store (its cache entry), not a forward
