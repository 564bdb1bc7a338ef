"""Ray that cannot start or be joined: one line naming what failed, nothing written, an existing store unchanged."""

from __future__ import annotations

import json
import socket

import pytest
from test_runner_support import MODALITY_CAPTIONS, tiny_pipelines

pytestmark = pytest.mark.ray


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, modality_dir):
    root = tmp_path_factory.mktemp("ray-startup")
    rows = [{"id": p.stem, "image": str(p), "caption": MODALITY_CAPTIONS[p.stem]}
            for p in sorted(modality_dir.iterdir())[:2]]
    table = root / "data.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipelines, _ = tiny_pipelines(root, kinds=("open_clip", "transformers"))
    return {"root": root, "table": table, "pipelines": pipelines}


def _extract(run_mmkd, setup, store, teacher, runner, cwd, env=None):
    return run_mmkd("extract", "--pipeline", setup["pipelines"], "--data", setup["table"], "--teacher", teacher,
                    "--store", store, "--runner", runner, "--no-progress", cwd=cwd, env=env, timeout=120)


def test_joining_an_address_where_nothing_listens_is_one_line(setup, run_mmkd, tmp_path):
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = _extract(run_mmkd, setup, tmp_path / "st", "tiny_open_clip", "ray", tmp_path,
                   env={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert lines[-1] == (f"Error: could not join the Ray cluster at 127.0.0.1:{port}: nothing accepts connections "
                         f"at 127.0.0.1:{port} (Connection refused); check the address (`ray status` on the head "
                         "node prints it) or use --runner local"), lines
    assert not [ln for ln in lines if "Failed to connect to GCS" in ln], lines  # not Ray's minutes of retries
    assert not (tmp_path / "st").exists()


@pytest.mark.slow  # ~40 s on 2 loaded cores: a local extract, then Ray failing to start
def test_local_ray_that_cannot_start_leaves_the_store_as_it_was(setup, run_mmkd, tmp_path):
    store = tmp_path / "st"
    assert _extract(run_mmkd, setup, store, "tiny_open_clip", "local", tmp_path).returncode == 0
    before = _files(store)
    not_a_dir = tmp_path / "ray-tmp"
    not_a_dir.write_text("a file where Ray wants its session folder")
    res = _extract(run_mmkd, setup, store, "tiny_transformers", "ray", tmp_path,
                   env={"RAY_TMPDIR": str(not_a_dir), "RAY_ADDRESS": None})
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: could not start a local Ray instance: NotADirectoryError"), line
    assert f"Ray logs under {not_a_dir}/ray/session_latest/logs" in line and "--runner local" in line, line
    # every byte kept; added: the new teacher's lock file (an empty flock target, as every extract leaves) and
    # this run's job record, which says it failed and why
    after = _files(store)
    assert "_locks/tiny_open_clip.lock" in before
    added = {k: v for k, v in after.items() if k not in before}
    record = next(k for k in added if k.startswith("_jobs/") and k.endswith("tiny_transformers.json"))
    assert json.loads(added[record])["status"] == "failed" and "could not start a local Ray" in added[record].decode()
    assert set(added) == {record, "_locks/tiny_transformers.lock"}
    assert {k: after[k] for k in before} == before


def test_liveness_message_never_calls_a_node_alive(monkeypatch):
    """The GCS lists a node whose raylet just died as alive for a while: the message says "listed alive" and why."""
    from mmkd.extract.runners import ray_runner

    nodes = [{"NodeManagerAddress": "10.0.0.1", "NodeID": "aaaaaaaa11", "Alive": True},
             {"NodeManagerAddress": "10.0.0.2", "NodeID": "bbbbbbbb22", "Alive": False,
              "DeathReasonMessage": "raylet died"}]
    monkeypatch.setattr(ray_runner.ray, "nodes", lambda: nodes)
    text = ray_runner._describe_nodes()
    assert text.startswith("10.0.0.1 (node aaaaaaaa) listed alive; 10.0.0.2 (node bbbbbbbb) DEAD (raylet died) (the "
                           "GCS lists a node whose raylet just died as alive until its health checks time out"), text
    assert " alive;" not in text.replace("listed alive;", "")
