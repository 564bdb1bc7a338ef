"""View-matched targets as a user runs them: ``mmkd extract --views`` -> ``store info``/``validate`` ->
``mmkd distill --views``; a store without views still trains, and ``--views`` on it is one clear error line."""

from __future__ import annotations

import json

import pytest

from tests.journey.conftest import REPO, run_mmkd, write_user_dataset, write_user_pipelines

DISTILL = ("--student", "tiny_student", "--stage", "2", "--steps", "2", "--batch-size", "6", "--num-workers", "0",
           "--log-every", "1", "--no-progress", "--warmup-steps", "1")
EXTRACT = ("--data", "scans", "--runner", "local", "--device", "cpu", "--batch-size", "8", "--workers", "1",
           "--block-size", "8", "--json", "--no-progress")


@pytest.mark.slow
def test_views_extract_distill_and_old_store(tmp_path_factory):
    home = tmp_path_factory.mktemp("user-home")
    assert REPO not in home.parents and home != REPO
    data = write_user_dataset(home / "datasets" / "scans")
    write_user_pipelines(home / "pipelines.yaml", home / "teachers", data)

    out = run_mmkd(home, "extract", "--teacher", "tiny_open_clip", "--teacher", "tiny_transformers",
                   "--store", "stores/views", "--views", "2", "--view-scale", "0.35", "1.0", *EXTRACT)
    assert json.loads(out.stdout)["num_samples"] == 24
    info = json.loads(run_mmkd(home, "store", "info", "stores/views", "--json").stdout)
    for t in ("tiny_open_clip", "tiny_transformers"):
        assert info["teachers"][t]["views"] == 2 and info["teachers"][t]["view_recipe"]["scale"] == [0.35, 1.0]
    assert "views        2 per row" in run_mmkd(home, "store", "info", "stores/views").stdout
    assert "OK" in run_mmkd(home, "store", "validate", "stores/views", "--deep").stdout

    for kd in ("mmkd-clip", "multi"):
        out = run_mmkd(home, "-v", "distill", "--store", "stores/views", "--kd", kd, "--views", "--out",
                       f"runs/{kd}", *DISTILL)
        assert json.loads(out.stdout.strip().splitlines()[-1])["finished"] is True
        assert "view-matched targets: 2 views per row" in out.stderr
        config = (home / "runs" / kd / "config.yaml").read_text()
        assert "views: true" in config

    # an old store (no views) trains as before; --views on it is one line naming the store, teacher and fix
    run_mmkd(home, "extract", "--teacher", "tiny_open_clip", "--store", "stores/plain", *EXTRACT)
    out = run_mmkd(home, "distill", "--store", "stores/plain", "--out", "runs/plain", *DISTILL)
    assert json.loads(out.stdout.strip().splitlines()[-1])["finished"] is True
    bad = run_mmkd(home, "distill", "--store", "stores/plain", "--views", "--out", "runs/bad", *DISTILL, ok=False)
    assert bad.returncode == 1
    error = [line for line in bad.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "stores/plain" in error[0] and "'tiny_open_clip'" in error[0]
    assert "mmkd extract --teacher tiny_open_clip --store stores/plain --views K --overwrite" in error[0]
    # asking the old store for views without --overwrite is refused, naming what to pass
    bad = run_mmkd(home, "extract", "--teacher", "tiny_open_clip", "--store", "stores/plain", "--views", "2",
                   *EXTRACT, ok=False)
    assert bad.returncode == 1 and "blocks done without --views" in bad.stderr and "--overwrite" in bad.stderr
