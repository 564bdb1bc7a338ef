"""The journey with data and store on S3 (moto on 127.0.0.1): only the working folder is on local disk.

extract (Ray) -> store info / validate -> resume -> trust -> distill stage 1 and 2 -> eval, every stage given
``s3://`` URLs, through
the ``mmkd`` console script; and the faults: a bucket that is not there, an endpoint that does not answer,
an object deleted under a finished block.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.journey.conftest import REPO, run_mmkd, write_user_dataset
from tests.journey.test_journey import DISTILL

TEACHERS = ["tiny_open_clip", "tiny_transformers"]


def _upload(client, bucket: str, local: Path, prefix: str) -> None:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{f.relative_to(local).as_posix()}", Body=f.read_bytes())


@pytest.fixture
def s3_home(tmp_path, bucket, s3_client):
    """A user's working folder (pipelines file, tiny teachers); the dataset lives only in the bucket."""
    from mmkd.teachers.tiny import make_tiny_teachers, pipelines_fragment

    home = tmp_path / "home"
    home.mkdir()
    assert REPO not in home.parents
    staging = tmp_path / "staging"
    data = write_user_dataset(staging, n=24)
    name = bucket[len("s3://"):]
    _upload(s3_client, name, data["images"], "pixels")
    _upload(s3_client, name, data["table"].parent, "tables")
    import shutil

    shutil.rmtree(staging)  # the dataset is now only on S3
    specs = {**make_tiny_teachers(home / "teachers" / "a", kinds=("open_clip",), dim=32),
             **make_tiny_teachers(home / "teachers" / "b", kinds=("transformers",), dim=48, seed=1)}
    cfg = {"version": 1, **pipelines_fragment(specs),
           "datasets": {"scans": {"path": f"{bucket}/tables/train.jsonl", "format": "jsonl", "root": f"{bucket}/pixels",
                                  "fields": {"image": "file", "caption": "report", "id": "uid", "labels": ["organ"]}}}}
    (home / "pipelines.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return home


@pytest.mark.ray
def test_s3_journey_extract_validate_distill_eval(s3_home, bucket, s3_client):
    home, store = s3_home, f"{bucket}/stores/scans"
    out = run_mmkd(home, "extract", "--teacher", TEACHERS[0], "--teacher", TEACHERS[1], "--data", "scans",
                   "--store", store, "--runner", "ray", "--actors", "1", "--device", "cpu", "--precision", "fp32",
                   "--batch-size", "8", "--workers", "2", "--block-size", "8", "--json", "--no-progress",
                   env={"RAY_ADDRESS": ""})  # its own local Ray, started with the AWS environment
    summary = json.loads(out.stdout)
    assert summary["runner"] == "ray"
    summary = json.loads(out.stdout)
    assert summary["num_samples"] == 24 and summary["store"] == store
    assert {t["teacher"]: t["valid"] for t in summary["teachers"]} == dict.fromkeys(TEACHERS, 24)

    info = json.loads(run_mmkd(home, "store", "info", store, "--json").stdout)
    assert {t: v["dim"] for t, v in info["teachers"].items()} == {"tiny_open_clip": 32, "tiny_transformers": 48}
    assert all(v["complete"] and v["valid_rows"] == 24 for v in info["teachers"].values())
    assert info["dataset"]["spec"]["root"] == f"{bucket}/pixels"
    assert "OK" in run_mmkd(home, "store", "validate", store, "--deep").stdout
    listed = s3_client.list_objects_v2(Bucket=bucket[5:], Prefix="stores/scans/_progress/")["Contents"]
    assert len(listed) == 2 * 3  # three blocks of 8, per teacher

    rerun = json.loads(run_mmkd(home, "extract", "--teacher", TEACHERS[0], "--data", "scans", "--store", store,
                                "--runner", "local", "--device", "cpu", "--json", "--no-progress").stdout)
    assert rerun["teachers"][0]["blocks_skipped"] == 3  # resumed from the markers on S3: nothing redone

    run_mmkd(home, "store", "trust", store, "--reference", "8")
    run_mmkd(home, "store", "project", store, "--teacher", TEACHERS[1], "--dim", "16")
    info = json.loads(run_mmkd(home, "store", "info", store, "--json").stdout)["teachers"]
    assert all(info[t]["trust"] for t in TEACHERS) and info[TEACHERS[1]]["projections"][0]["dim"] == 16
    trust = s3_client.list_objects_v2(Bucket=bucket[5:], Prefix="stores/scans/trust/")["KeyCount"]
    assert trust > 0  # written into the bucket, next to the features

    run_mmkd(home, "distill", "--store", store, "--stage", "1", "--out", "runs/s1", *DISTILL)
    losses = [json.loads(line) for line in (home / "runs" / "s1" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in losses if "loss/total" in m][-1] == 3
    run_mmkd(home, "distill", "--store", store, "--stage", "2", "--kd", "multi", "--init", "runs/s1",
             "--out", "runs/multi", *DISTILL)
    assert "loss/" in (home / "runs" / "multi" / "metrics.jsonl").read_text()
    assert (home / "runs" / "multi" / "export" / "open_clip_config.json").is_file()

    run_mmkd(home, "eval", "--model", "runs/multi/export", "--data", "scans", "--label", "organ", "--out", "ev",
             "--resamples", "0", "--device", "cpu")
    scores = json.loads((home / "ev" / "results.json").read_text())
    assert len(scores) == 1, list(scores)
    per_set = next(iter(scores.values()))
    assert {"retrieval", "linear"} <= set(per_set["scans"]), per_set


def test_missing_bucket_and_dead_endpoint_fail_in_one_line(s3_home, s3_env):
    home = s3_home
    common = ("--teacher", TEACHERS[0], "--data", "scans", "--runner", "local", "--device", "cpu", "--no-progress")
    out = run_mmkd(home, "extract", *common, "--store", "s3://no-such-bucket-here/st", ok=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    line = [x for x in out.stderr.splitlines() if x.startswith("Error:")]
    assert len(line) == 1 and "s3://no-such-bucket-here/st" in line[0] and "bucket not found" in line[0], out.stderr
    out = run_mmkd(home, "store", "info", "s3://mmkd-test-x/st", ok=False,
                   env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})  # nothing listens on the discard port
    line = [x for x in out.stderr.splitlines() if x.startswith("Error:")]
    assert len(line) == 1 and "s3://mmkd-test-x/st" in line[0] and "EndpointConnectionError" in line[0], out.stderr
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in out.stderr
