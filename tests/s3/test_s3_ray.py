"""The Ray runner writing into a store on S3 (moto on 127.0.0.1) survives a killed driver and a killed
worker, bit for bit.

The driver is ``mmkd extract --runner ray`` in its own session (its own local Ray, started with this
process's AWS environment, so every worker reaches the same S3 server). First the driver and its Ray
are SIGKILLed once a block is marked done in the bucket; the rerun resumes from the markers, and one of
its Ray workers is SIGKILLed mid-run (Ray restarts it and retries its block). The store then equals a
local-runner store on disk, feature for feature.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "extract"))
from test_ray_runner import _repeated_dataset, _session_processes  # noqa: E402
from test_runner_support import assert_same_store, tiny_pipelines  # noqa: E402

from mmkd.extract import ExtractJob, run_extract  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _markers(client, bucket: str, prefix: str) -> int:
    return client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_progress/").get("KeyCount", 0)


def _start(cmd: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, with the AWS env
    return subprocess.Popen(cmd, env={**env, "HF_HUB_OFFLINE": "1"}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_markers(proc: subprocess.Popen, client, bucket: str, more_than: int) -> int:
    deadline = time.monotonic() + 240
    while (n := _markers(client, bucket, "stores/ray")) <= more_than and proc.poll() is None:
        assert time.monotonic() < deadline, f"no block finished in 240 s (markers: {n})"
        time.sleep(0.2)
    assert proc.poll() is None, f"extract ended before the fault: {proc.communicate()[1][-3000:]}"
    return n


def _kill_session(proc: subprocess.Popen) -> None:
    for pid in _session_processes(proc.pid):
        os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.communicate()


def test_ray_extract_into_s3_survives_killed_driver_and_worker(tmp_path, modality_dir, bucket, s3_client, s3_env):
    import json

    pipelines, _ = tiny_pipelines(tmp_path, kinds=("open_clip",))
    data = _repeated_dataset(modality_dir, tmp_path / "data", copies=3)  # 27 samples, one block each
    store, name = f"{bucket}/stores/ray", bucket[5:]
    cmd = [sys.executable, "-c", "from mmkd.cli import main; main()", "extract", "--pipeline", str(pipelines),
           "--data", str(data), "--teacher", "tiny_open_clip", "--store", store, "--runner", "ray", "--actors", "2",
           "--block-size", "1", "--batch-size", "1", "--workers", "1", "--no-progress", "--device", "cpu", "--json"]
    # 1. the driver and its whole Ray are SIGKILLed once a block is marked done in the bucket
    proc = _start(cmd)
    try:
        _wait_for_markers(proc, s3_client, name, 0)
    finally:
        _kill_session(proc)
    kept = _markers(s3_client, name, "stores/ray")
    assert 0 < kept < 27, kept
    # 2. the rerun resumes; one of its Ray workers is SIGKILLed mid-run and Ray restarts it
    proc = _start(cmd)
    try:
        _wait_for_markers(proc, s3_client, name, kept)
        workers = [pid for pid, cmdline in _session_processes(proc.pid).items() if "BlockActor" in cmdline]
        assert workers, _session_processes(proc.pid)
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
    finally:
        _kill_session(proc)
    # Ray's raylet may print its own lines (the retried task) before the summary
    lines = out.splitlines()
    summary = json.loads("\n".join(lines[lines.index("{"):]))["teachers"][0]
    assert summary["blocks_skipped"] >= kept and summary["blocks_skipped"] + summary["blocks_run"] == 27
    assert _markers(s3_client, name, "stores/ray") == 27
    # 3. bit for bit what an uninterrupted local run writes
    local = tmp_path / "local"
    run_extract(ExtractJob(data=str(data), teachers=["tiny_open_clip"], store=str(local), pipeline=str(pipelines),
                           runner="local", block_size=1, batch_size=1, workers=1, device="cpu"))
    assert_same_store(local, store)
