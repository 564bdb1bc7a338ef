"""View-matched targets with the store on S3 (moto on 127.0.0.1): ``extract --views`` writes the same view
features into the bucket as into a local store, ``validate --deep`` checks them there, and ``distill --views``
reading the S3 store (read-ahead of the view arrays) trains exactly as from the local one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.journey.conftest import run_mmkd
from tests.s3.test_s3_journey import TEACHERS, s3_home  # noqa: F401 (the fixture)

EXTRACT = ("--data", "scans", "--runner", "local", "--device", "cpu", "--batch-size", "8", "--workers", "2",
           "--block-size", "8", "--views", "2", "--json", "--no-progress")
DISTILL = ("--student", "tiny_student", "--stage", "2", "--kd", "mmkd-clip", "--views", "--steps", "3",
           "--batch-size", "6", "--num-workers", "0", "--log-every", "1", "--no-progress", "--warmup-steps", "1")


@pytest.mark.slow
def test_views_on_s3_equal_a_local_store_and_train_the_same(s3_home, bucket):
    from mmkd.store import FeatureStore
    from mmkd.store.format import VIEWS

    home, remote = s3_home, f"{bucket}/stores/views"
    teachers = [a for t in TEACHERS for a in ("--teacher", t)]
    for store in (remote, "stores/local"):
        summary = json.loads(run_mmkd(home, "extract", *teachers, "--store", store, *EXTRACT).stdout)
        assert {t["teacher"]: t["valid"] for t in summary["teachers"]} == dict.fromkeys(TEACHERS, 24)
    assert "OK" in run_mmkd(home, "store", "validate", remote, "--deep").stdout
    info = json.loads(run_mmkd(home, "store", "info", remote, "--json").stdout)["teachers"]
    assert all(info[t]["views"] == 2 for t in TEACHERS)

    s3, local = FeatureStore.open(remote), FeatureStore.open(home / "stores" / "local")
    rows = np.arange(24)
    for t in TEACHERS:
        views = s3.read(t, rows, VIEWS)
        assert views.shape == (24, 2, s3.dim(t)) and np.isfinite(views).all()
        assert np.array_equal(views, local.read(t, rows, VIEWS))
        assert np.array_equal(s3.read(t, rows, "image"), local.read(t, rows, "image"))

    losses = {}
    for store, out in ((remote, "runs/s3"), ("stores/local", "runs/local")):
        proc = run_mmkd(home, "-v", "distill", "--store", store, "--out", out, *DISTILL)
        assert json.loads(proc.stdout.strip().splitlines()[-1])["finished"] is True
        assert "view-matched targets: 2 views per row" in proc.stderr
        metrics = [json.loads(line) for line in (home / out / "metrics.jsonl").read_text().splitlines()]
        losses[store] = [(m["step"], m["loss/total"]) for m in metrics if "loss/total" in m]
    assert len(losses[remote]) == 3 and losses[remote] == losses["stores/local"]
