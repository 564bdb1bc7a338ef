"""`mmkd store info` and `mmkd distill` on damaged stores: one line naming the damage, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest

from mmkd.store.synthetic import make_synthetic_store
from tests.distill.conftest import TINY_STUDENT


@pytest.fixture
def stores(tmp_path_factory, tmp_path):
    pristine = tmp_path_factory.getbasetemp() / "damaged-pristine"
    if not pristine.exists():
        make_synthetic_store(pristine, 64, {"T": 32, "U": 16}, block_size=16, seed=1)
    no_teacher = shutil.copytree(pristine, tmp_path / "no_teacher")
    shutil.rmtree(no_teacher / "features.zarr" / "U")
    garbage = shutil.copytree(pristine, tmp_path / "garbage")
    (garbage / "features.zarr" / "T" / "valid" / "c" / "1").write_bytes(b"\x00not zstd at all" * 3)
    return {"no_teacher": no_teacher, "garbage": garbage}


def _files(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("which, says", [
    ("no_teacher", "teacher 'U' is listed but its arrays (features.zarr/U) are missing"),
    ("garbage", "chunk 1 of T/valid in store"),
])
def test_store_info_on_a_damaged_store_is_one_line(stores, which, says, run_mmkd, tmp_path):
    store = stores[which]
    before = _files(store)
    res = run_mmkd("store", "info", store, cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "mmkd store validate" in lines[0], lines
    assert _files(store) == before


def test_distill_on_a_store_missing_a_teacher_is_one_line(stores, run_mmkd, tmp_path):
    student = tmp_path / "tiny.json"
    student.write_text(json.dumps(TINY_STUDENT))
    before = _files(stores["no_teacher"])
    res = run_mmkd("distill", "--store", stores["no_teacher"], "--stage", "2", "--kd", "multi", "--student", student,
                   "--out", tmp_path / "run", "--steps", "1", "--batch-size", "8", "--num-workers", "0", "--device",
                   "cpu", "--no-progress", cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "teacher 'U' is listed but its arrays" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists() and _files(stores["no_teacher"]) == before


def test_distill_refuses_a_store_whose_index_was_edited(stores, run_mmkd, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = stores["garbage"].parent / "edited"
    shutil.copytree(stores["no_teacher"], store)  # (its missing teacher is not read by stage 1)
    t = pq.read_table(store / "index.parquet")
    captions = t.column("caption").to_pylist()
    captions[3] = "an edited caption"
    pq.write_table(t.set_column(t.schema.get_field_index("caption"), "caption", pa.array(captions)),
                   store / "index.parquet")
    student = tmp_path / "tiny.json"
    student.write_text(json.dumps(TINY_STUDENT))
    res = run_mmkd("distill", "--store", store, "--stage", "1", "--student", student, "--out", tmp_path / "run",
                   "--steps", "1", "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--no-progress",
                   cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert "is unsound, not trained on: index.parquet was changed after the store was made" in line, line
    assert not (tmp_path / "run").exists()
