"""The README's layout (scans/tables + scans/pixels) moved to another mount: found by a path, named when the images
are elsewhere, read through a `datasets:` name with a new root. Run as a user, from outside the repository."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.journey.conftest import run_mmkd, write_user_dataset, write_user_pipelines

pytestmark = pytest.mark.slow
DISTILL = ("--stage", "1", "--steps", "1", "--batch-size", "8", "--num-workers", "0", "--device", "cpu",
           "--no-progress")


def test_moved_layout_is_found_or_named(tmp_path, student_json):
    home = tmp_path / "home"
    data = write_user_dataset(home / "scans", n=12)
    pipelines = write_user_pipelines(home / "pipelines.yaml", home / "teachers", data)
    run_mmkd(home, "extract", "--data", "scans", "--teacher", "tiny_open_clip", "--store", "st", "--runner", "local",
             "--block-size", "8", "--no-progress")

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    shutil.move(home / "scans", mnt / "scans")  # tables and pixels moved together
    table = mnt / "scans" / "tables" / "train.jsonl"
    run_mmkd(home, "distill", "--store", "st", "--student", str(student_json), "--data", str(table), "--out", "r1",
             *DISTILL)

    shutil.move(mnt / "scans" / "pixels", mnt / "images")  # then the images alone elsewhere
    res = run_mmkd(home, "distill", "--store", "st", "--student", str(student_json), "--data", str(table), "--out",
                   "r2", *DISTILL, ok=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert f"the images' root {mnt / 'scans' / 'pixels'} does not exist" in line and "`root`" in line, line
    assert not (home / "r2").exists()

    cfg = yaml.safe_load(pipelines.read_text())
    cfg["datasets"]["moved"] = {**cfg["datasets"]["scans"], "path": str(table), "root": str(mnt / "images")}
    pipelines.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_mmkd(home, "distill", "--store", "st", "--student", str(student_json), "--data", "moved", "--out", "r3",
             *DISTILL)
    assert (home / "r3" / "export").is_dir()
