"""`mmkd extract --image-cache S`: the student image cache written in the extract's pass over the images, the
same files `mmkd store images` writes; a partial one finished by `mmkd store images`; refused on object storage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_runner_support import modality_dataset

from mmkd.store.images import cache_path
from mmkd.teachers.tiny import make_tiny_teachers, write_pipelines


@pytest.fixture(scope="module")
def setup(tmp_path_factory, modality_dir):
    root = tmp_path_factory.mktemp("imcache")
    specs = make_tiny_teachers(root / "teachers", kinds=("open_clip", "transformers"), seed=0, dim=16,
                               image_size=32, context_length=16)
    jsonl = modality_dataset(modality_dir, root / "my data")  # real images, mode variants, bad samples
    pipelines = write_pipelines(root / "my-pipelines.yaml", specs)
    return {"root": root, "pipelines": str(pipelines), "data": str(jsonl), "teachers": list(specs)}


def _mmkd(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mmkd", *args], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _extract(setup, cwd: Path, store: Path | str, *extra: str, teachers: list[str] | None = None):
    args = ["extract", "--data", setup["data"], "--store", str(store), "--runner", "local", "--block-size", "4",
            "--batch-size", "2", "--workers", "2", "--pipeline", setup["pipelines"], "--no-progress"]
    for t in teachers or setup["teachers"]:
        args += ["--teacher", t]
    return _mmkd(cwd, *args, *extra)


def _tables(folder: Path) -> dict[str, list]:
    return {p.name: pq.read_table(p).to_pylist() for p in sorted(folder.glob("block-*.parquet"))}


def test_extract_writes_the_cache_store_images_would(setup, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    store = tmp_path / "stores" / "with cache"
    proc = _extract(setup, cwd, store, "--image-cache", "24")
    assert proc.returncode == 0, proc.stderr
    cache = cache_path(store, 24)
    assert f"image cache: {cache} complete" in proc.stdout
    meta = json.loads((cache / "cache.json").read_text())
    assert meta["size"] == 24 and meta["rows"] > 0 and meta["failed"] >= 2  # the corrupt and truncated files

    # the same store's cache written afterwards by `mmkd store images`: the same files, row for row
    other = tmp_path / "stores" / "afterwards"
    shutil.copytree(store, other, ignore=shutil.ignore_patterns("image_cache"))
    proc = _mmkd(cwd, "store", "images", str(other), "--size", "24")
    assert proc.returncode == 0, proc.stderr
    got, want = _tables(cache), _tables(cache_path(other, 24))
    assert list(got) == list(want) and len(got) == meta["blocks"]
    assert got == want
    rows = [r for t in got.values() for r in t]
    assert [r["row"] for r in rows] == list(range(meta["rows"]))
    assert sum(r["jpeg"] is None for r in rows) == meta["failed"]
    assert all(r["error"] for r in rows if r["jpeg"] is None)
    assert all(r["sha256"] and r["width"] > 0 for r in rows if r["jpeg"] is not None)
    meta_other = json.loads((cache_path(other, 24) / "cache.json").read_text())
    assert meta_other == meta


def test_partial_cache_is_said_and_finished_by_store_images(setup, tmp_path):
    a = setup["teachers"][0]
    store = tmp_path / "s"
    assert _extract(setup, tmp_path, store, teachers=[a]).returncode == 0
    (store / "_progress" / a / "block-000001.done").unlink()  # only block 1 is read again
    proc = _extract(setup, tmp_path, store, "--image-cache", "24", teachers=[a])
    assert proc.returncode == 0, proc.stderr
    cache = cache_path(store, 24)
    blocks = len(list((store / "_progress" / a).glob("block-*.done")))
    assert [p.name for p in cache.glob("block-*.parquet")] == ["block-000001.parquet"]
    assert not (cache / "cache.json").exists()
    assert f"{blocks - 1} of {blocks} blocks missing" in proc.stdout
    assert f"mmkd store images {store} --size 24" in proc.stdout
    proc = _mmkd(tmp_path, "store", "images", str(store), "--size", "24")
    assert proc.returncode == 0, proc.stderr
    assert (cache / "cache.json").exists()
    full = tmp_path / "full"
    assert _extract(setup, tmp_path, full, "--image-cache", "24", teachers=[a]).returncode == 0
    assert _tables(cache) == _tables(cache_path(full, 24))


def test_image_cache_refused_on_object_storage_and_too_small(setup, tmp_path):
    proc = _extract(setup, tmp_path, "s3://bucket/store", "--image-cache", "256")
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "image cache is written beside a store on local disk only" in err[0], proc.stderr
    assert "s3://bucket/store" in err[0]
    proc = _extract(setup, tmp_path, tmp_path / "x", "--image-cache", "8")
    assert proc.returncode == 2 and "--image-cache" in proc.stderr
    assert not (tmp_path / "x").exists()
