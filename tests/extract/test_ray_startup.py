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
    after = _files(store)
    assert {k: v for k, v in after.items() if not k.startswith("_jobs")} == \
        {k: v for k, v in before.items() if not k.startswith("_jobs")}
