"""The Ray runner (local Ray, 2 CPUs): same store as the local runner, bit for bit; survives a killed actor,
a dead raylet (liveness timeout) and a SIGTERMed driver (its Ray shut down)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_runner_support import BAD, assert_same_store, modality_dataset, snapshot, tiny_pipelines

from mmkd.extract import ExtractError, ExtractJob, run_extract
from mmkd.store import FeatureStore, validate_store

pytestmark = pytest.mark.ray
TEACHERS = ["tiny_open_clip", "tiny_medclip"]



@pytest.fixture(scope="module")
def setup(tmp_path_factory, modality_dir):
    root = tmp_path_factory.mktemp("ray-extract")
    jsonl = modality_dataset(modality_dir, root / "modality")
    pipelines, _ = tiny_pipelines(root, jsonl=jsonl, kinds=("open_clip", "medclip"))
    return {"root": root, "pipelines": str(pipelines)}


def _job(setup, store, **kw) -> ExtractJob:
    values = dict(data="modality", teachers=TEACHERS, store=str(store), pipeline=setup["pipelines"],
                  block_size=2, batch_size=2, workers=2)
    return ExtractJob(**{**values, **kw})


@pytest.fixture(scope="module")
def local_store(setup):
    path = setup["root"] / "local"
    run_extract(_job(setup, path, runner="local"))
    return path


def test_ray_store_equals_local_bit_for_bit(ray_session, setup, local_store):
    path = setup["root"] / "ray"
    summary = run_extract(_job(setup, path, runner="ray"))
    assert summary.runner == "ray" and summary.num_samples == 16
    assert summary.decoded == 15  # one pass: each image with bytes (15; one is missing) decoded once for both teachers
    assert [p["teachers"] for p in summary.placement] == [TEACHERS] and len(summary.placement[0]["memory"]) == 2
    for t in summary.teachers:
        assert t.blocks_run == 8 and t.valid == 12 and t.workers == 2  # both actors took blocks
        assert t.failures == {"missing": 1, "corrupt": 1, "truncated": 1, "empty_caption": 1}
    assert_same_store(local_store, path)
    store = FeatureStore.open(path)
    assert {f["sample_id"]: f["reason"] for f in store.failures("tiny_medclip").to_pylist()} == BAD
    assert store.attrs("tiny_open_clip")["stats_rows"] == 12
    assert run_extract(_job(setup, path, runner="ray")).noop
    assert not [n for n in ray_session.util.list_named_actors() if n.startswith("mmkd-extract")], "actors left behind"


def test_killed_actor_is_replaced_and_store_identical(ray_session, setup, local_store):
    path = setup["root"] / "ray-killed"
    pids: dict[str, list[int]] = {}
    killed: dict[str, int] = {}

    def kill_other_actor(manifest):
        pids.setdefault(manifest.actor, []).append(manifest.pid)
        others = [a for a in pids if a != manifest.actor]
        if not killed and others:  # kill an actor whose process we know, while the queue still holds blocks
            victim = others[0]
            ray_session.kill(ray_session.get_actor(victim), no_restart=False)  # Ray restarts it, retries its task
            killed[victim] = pids[victim][-1]

    summary = run_extract(_job(setup, path, runner="ray", teachers=["tiny_open_clip"]), on_block=kill_other_actor)
    assert killed, "both actors should have reported blocks"
    (victim, old_pid), = killed.items()
    assert any(p != old_pid for p in pids[victim]), "the killed actor should have run blocks in a new process"
    assert summary.teachers[0].blocks_run == 8 and summary.teachers[0].workers == 3
    assert_same_store(local_store, path, teachers=["tiny_open_clip"])


def test_teacher_failing_inside_an_actor_is_reported(ray_session, setup, tmp_path):
    import yaml

    cfg = yaml.safe_load(Path(setup["pipelines"]).read_text())
    cfg["teachers"]["tiny_open_clip"]["dim"] = 99  # the model outputs 24: loading fails inside the actor
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text(yaml.safe_dump(cfg))
    job = _job({"pipelines": str(pipelines)}, tmp_path / "s", runner="ray", teachers=["tiny_open_clip"])
    with pytest.raises(ExtractError, match=r"tiny_open_clip.*Ray worker failed to load it.*dim 99"):
        run_extract(job)
    assert not [n for n in ray_session.util.list_named_actors() if n.startswith("mmkd-extract")]


# ---------------------------------------------------------------- faults of the Ray instance itself
# These run `mmkd extract --runner ray` as a subprocess driver with its own local Ray (one actor),
# because they kill that driver's Ray processes or the driver itself.

def _session_processes(sid: int) -> dict[int, str]:
    """Live (not zombie) processes of session ``sid`` (the driver's, started with start_new_session)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def _wait_until_gone(sid: int, seconds: float) -> dict[int, str]:
    deadline = time.monotonic() + seconds
    while (left := _session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _repeated_dataset(modality_dir: Path, root: Path, copies: int) -> Path:
    """The nine modality images ``copies`` times (ids made unique): enough blocks to kill something mid-run."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"{p.stem}-{k}", "image": str(p), "caption": f"{p.stem} image number {k}"}
            for k in range(copies) for p in sorted(modality_dir.iterdir())]
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _start_driver(setup, data: Path, store: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from mmkd.cli import main; main()", "extract", "--pipeline", setup["pipelines"],
           "--data", str(data), "--teacher", "tiny_open_clip", "--store", str(store), "--runner", "ray",
           "--actors", "1", "--block-size", "1", "--batch-size", "1", "--workers", "1", "--no-progress", *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, not the session's
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_first_block(proc: subprocess.Popen, store: Path) -> None:
    deadline = time.monotonic() + 120
    while not any((store / "_progress").rglob("*.done")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"extract ended before the fault: {proc.communicate()[1][-3000:]}"


@pytest.fixture
def driver_cleanup():
    """Kills what a subprocess driver left behind if a test fails half-way."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        for pid in _session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.communicate()


@pytest.mark.slow  # ~45 s: waits out the liveness timeout of a dead raylet
def test_dead_raylet_fails_after_liveness_timeout_and_rerun_resumes(ray_session, setup, modality_dir, tmp_path,
                                                                    driver_cleanup):
    """Killing a Ray agent takes the raylet down (it fate-shares); the driver must not wait forever."""
    data = _repeated_dataset(modality_dir, tmp_path / "data", copies=5)
    store = tmp_path / "store"
    proc = _start_driver(setup, data, store, "--liveness-timeout", "10")
    driver_cleanup.append(proc)
    _wait_for_first_block(proc, store)
    agent = [pid for pid, cmd in _session_processes(proc.pid).items() if "DashboardAgent" in cmd]
    assert agent, _session_processes(proc.pid)
    os.kill(agent[0], signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - killed
    assert proc.returncode == 1, err[-3000:]
    error = err[err.index("Error: teacher"):]
    assert "no progress for 10 s" in error and "--liveness-timeout 10" in error, error
    assert "DEAD (dashboard_agent failed" in error, error  # names what died
    assert "rerun the same command to resume" in error
    assert took < 10 + 30, f"the dead raylet was noticed only after {took:.0f} s"
    assert not _wait_until_gone(proc.pid, 10), "processes of the failed run's Ray survived it"
    done = len(list((store / "_progress").rglob("*.done")))
    assert 0 < done < 45, done
    record = json.loads(sorted((store / "_jobs").glob("*-tiny_open_clip.json"))[-1].read_text())
    assert record["status"] == "failed" and "no progress" in record["error"]

    before = snapshot(store)["tiny_open_clip"]
    job = dict(data=str(data), teachers=["tiny_open_clip"], block_size=1, batch_size=1, workers=1, actors=1)
    rerun = run_extract(_job(setup, store, runner="ray", **job))  # another Ray instance: the session's
    assert rerun.teachers[0].blocks_skipped == done and rerun.teachers[0].blocks_run == 45 - done
    after = snapshot(store)["tiny_open_clip"]
    assert after["done"] == list(range(45)) and after["valid"].all()
    kept = before["done"]  # blocks finished before the fault are kept as they were, not redone
    assert after["image"][kept].tobytes() == before["image"][kept].tobytes() and after["image"][kept].any()
    assert validate_store(FeatureStore.open(store)).messages == []


@pytest.mark.slow  # ~25 s: starts its own Ray in a driver it signals
def test_sigterm_to_driver_shuts_down_the_ray_it_started(setup, modality_dir, tmp_path, driver_cleanup):
    data = _repeated_dataset(modality_dir, tmp_path / "data", copies=5)
    store = tmp_path / "store"
    proc = _start_driver(setup, data, store)
    driver_cleanup.append(proc)
    _wait_for_first_block(proc, store)
    ray_procs = _session_processes(proc.pid)
    assert any("raylet" in cmd for cmd in ray_procs.values()), ray_procs
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]  # what a scheduler expects of a SIGTERMed job
    assert "SIGTERM: stopping the Ray actors and the Ray instance mmkd started" in err
    left = _wait_until_gone(proc.pid, 5)
    assert not left, f"Ray processes outlived the driver by 5 s: {left}"
    record = json.loads(sorted((store / "_jobs").glob("*-tiny_open_clip.json"))[-1].read_text())
    assert record["status"] == "failed" and record["error"].startswith("SystemExit")


def test_runner_restores_signal_handlers_and_shuts_down_only_the_ray_it_started(monkeypatch):
    from mmkd.extract.runners import ray_runner

    calls: list[tuple] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(ray_runner.ray, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(ray_runner.ray, "init", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(ray_runner.ray, "shutdown", lambda **kw: calls.append(("shutdown", kw)))
    monkeypatch.setattr(ray_runner.ray, "cluster_resources", lambda: {"CPU": 2.0})
    runner = ray_runner.RayRunner(liveness_timeout=5)
    runner._connect()
    assert all(signal.getsignal(s) == runner._on_signal for s in before)
    with pytest.raises(SystemExit) as ended:
        runner._on_signal(signal.SIGTERM, None)
    assert ended.value.code == 143
    with pytest.raises(KeyboardInterrupt):
        runner._on_signal(signal.SIGINT, None)
    runner.close()
    assert calls[-1] == ("shutdown", {"wait_for_processes": True})
    assert {s: signal.getsignal(s) for s in before} == before
    joined = ray_runner.RayRunner()  # Ray already initialised by someone else: neither handlers nor shutdown
    joined._connect()
    joined.close()
    assert len(calls) == 2 and {s: signal.getsignal(s) for s in before} == before


def test_errors_of_a_multi_teacher_pass_name_the_teacher_that_failed():
    from types import SimpleNamespace

    import ray

    from mmkd.extract.runners.base import PassName
    from mmkd.extract.runners.ray_runner import _root_cause

    who = PassName([SimpleNamespace(name="a"), SimpleNamespace(name="b")])
    cause = RuntimeError("CUDA out of memory")
    cause.failed_teacher = "b"  # what the block worker marks (tests/extract/test_one_pass.py)
    err = ray.exceptions.RayTaskError("run_block", "Traceback ...", cause)
    assert f"{who.of(err)}: {_root_cause(err)}" == "teacher 'b': RuntimeError: CUDA out of memory"
    shared = ray.exceptions.RayTaskError("run_block", "Traceback ...", OSError("disk full"))  # no one teacher's step
    assert who.of(shared) == who.label == "teachers 'a', 'b' (one pass)"
    assert PassName([SimpleNamespace(name="a")]).label == "teacher 'a'"
