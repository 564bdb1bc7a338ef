"""`mmkd store import-mmkd SRC s3://...`: the official MMKD-CLIP layout imported into a store on S3 (moto on
127.0.0.1) equals a local import bit for bit; an existing store is refused; a failed import leaves nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.journey.conftest import run_mmkd


@pytest.mark.slow  # ~400 requests to the local server per import: ~1-2 min
def test_import_into_s3_equals_local_and_a_failure_leaves_nothing(mmkd_demo_dir, bucket, s3_client, tmp_path):
    import torch

    from mmkd.store import FeatureStore

    remote = f"{bucket}/imported"
    out = run_mmkd(tmp_path, "store", "import-mmkd", str(mmkd_demo_dir), remote, "--block-size", "4")
    assert f"-> {remote}" in out.stdout
    run_mmkd(tmp_path, "store", "import-mmkd", str(mmkd_demo_dir), "local", "--block-size", "4")
    info = json.loads(run_mmkd(tmp_path, "store", "info", remote, "--json").stdout)
    s3, local = FeatureStore.open(remote), FeatureStore.open(tmp_path / "local")
    assert sorted(info["teachers"]) == sorted(local.teachers) and "biomedclip" in info["teachers"]
    rows = np.arange(local.n)
    for t in local.teachers:
        for kind in ("image", "text", "valid"):
            assert np.array_equal(s3.read(t, rows, kind), local.read(t, rows, kind)), (t, kind)
    assert "OK" in run_mmkd(tmp_path, "store", "validate", remote).stdout

    again = run_mmkd(tmp_path, "store", "import-mmkd", str(mmkd_demo_dir), remote, ok=False)
    assert again.returncode == 1 and "holds a store" in again.stderr and remote in again.stderr

    bad = tmp_path / "bad-layout"
    shutil.copytree(mmkd_demo_dir, bad)
    victim = sorted(bad.rglob("clips_output.pt"))[-1]
    torch.save({"weird": torch.zeros(4)}, victim)
    out = run_mmkd(tmp_path, "store", "import-mmkd", str(bad), f"{bucket}/bad", ok=False)
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert out.returncode == 1 and len(errors) == 1 and "'weird'" in errors[0] and "Traceback" not in out.stderr
    assert s3_client.list_objects_v2(Bucket=bucket[len("s3://"):], Prefix="bad/")["KeyCount"] == 0
