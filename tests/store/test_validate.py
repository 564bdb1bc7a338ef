"""`mmkd store validate` on damaged copies of a small store: every fault reported, never a traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmkd.data import Sample
from mmkd.store import FeatureStore, validate_store
from mmkd.store.synthetic import make_synthetic_store
from mmkd.store.validate import EXIT_CODES


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("validate") / "st"
    make_synthetic_store(path, 100, {"T": 8, "U": 4}, block_size=32, seed=1)
    return path


@pytest.fixture
def store(pristine, tmp_path):
    """A fresh copy to damage."""
    return shutil.copytree(pristine, tmp_path / "st")


def _no_traceback(res) -> None:
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr[-3000:]


def test_sound_store_exits_0(store, run_mmkd):
    res = run_mmkd("store", "validate", store)
    assert res.returncode == 0 and f"{store}: OK (values not read: --deep reads them; 2 teacher(s)" in res.stdout, res.stderr
    deep = run_mmkd("store", "validate", store, "--deep")
    assert deep.returncode == 0 and f"{store}: OK (2 teacher(s)" in deep.stdout and "not read" not in deep.stdout
    assert validate_store(FeatureStore.open(store)).status == "sound"


@pytest.mark.parametrize("deep", [False, True])
def test_truncated_chunk_is_reported_not_raised(store, run_mmkd, deep):
    chunk = store / "features.zarr" / "T" / "text" / "c" / "2" / "0"
    size = chunk.stat().st_size
    with open(chunk, "r+b") as f:
        f.truncate(100)
    res = run_mmkd("store", "validate", store, *(["--deep"] if deep else []))
    _no_traceback(res)
    assert res.returncode == EXIT_CODES["unsound"] == 1
    assert f"text chunk of block 2 ({chunk}) holds 100 bytes, expected {size}" in res.stderr
    assert "block-000002.done and rerun `mmkd extract --teacher T`" in res.stderr
    assert "UNSOUND, 1 problem(s) (1 chunk)" in res.stderr
    # the library read path names the file too, instead of numpy's reshape error
    with pytest.raises(Exception, match="holds 100 bytes"):
        FeatureStore.open(store).read("T", [70], kind="text")


def test_edited_caption_fails_the_index_fingerprint(store, run_mmkd):
    t = pq.read_table(store / "index.parquet")
    captions = t.column("caption").to_pylist()
    captions[5] = "an edited caption"
    pq.write_table(t.set_column(t.schema.get_field_index("caption"), "caption", pa.array(captions)),
                   store / "index.parquet")
    res = run_mmkd("store", "validate", store)
    _no_traceback(res)
    assert res.returncode == 1 and "[index_fingerprint]" in res.stderr and "was changed" in res.stderr


def test_damaged_index_file_and_marker_are_problems(store, run_mmkd):
    (store / "index.parquet").write_bytes(b"PAR1 not really parquet")
    (store / "_progress" / "U" / "block-000001.done").write_text("{not json")
    res = run_mmkd("store", "validate", store, "--json")
    _no_traceback(res)
    report = json.loads(res.stdout)
    assert res.returncode == 1 and report["status"] == "unsound"
    assert report["counts"] == {"index": 1, "marker": 1}, report["problems"]


def test_store_without_teacher_is_empty_exit_3(tmp_path, run_mmkd):
    FeatureStore.create(tmp_path / "st", [Sample(f"s{i}", "c", f"i{i}") for i in range(5)], block_size=2)
    res = run_mmkd("store", "validate", tmp_path / "st")
    assert res.returncode == EXIT_CODES["empty"] == 3 and "EMPTY" in res.stderr and "mmkd extract" in res.stderr
    # an empty store whose index was damaged is unsound, not empty
    (tmp_path / "st" / "index.parquet").write_bytes(b"")
    assert run_mmkd("store", "validate", tmp_path / "st").returncode == 1


def test_unreadable_manifest_is_an_error_not_a_traceback(store, run_mmkd):
    (store / "store.json").write_text('{"format": "mmkd-feature-store", ')
    res = run_mmkd("store", "validate", store)
    _no_traceback(res)
    assert res.returncode == 1 and "store.json is unreadable" in res.stderr


def test_deep_reads_every_chunk_and_checks_values(store):
    s = FeatureStore.open(store, mode="a")
    x = s.read("T", np.arange(32, 64)).astype(np.float32)
    x[3] = np.nan
    s.write_block("T", 1, x, x, np.ones(32, bool))
    fast, deep = validate_store(FeatureStore.open(store)), validate_store(FeatureStore.open(store), deep=True)
    assert fast.status == "sound" and fast.chunks_read == 2 * 4  # only the valid chunks
    assert fast.chunks_checked == deep.chunks_checked == 2 * 4 * 2
    assert deep.chunks_read == 2 * 4 * 3 and deep.counts == {"values": 1}
    assert "2 valid rows with NaN/Inf" in deep.messages[0] and "(35, 'image'), (35, 'text')" in deep.messages[0]


def test_marker_count_disagreeing_with_valid_chunk(store):
    marker = store / "_progress" / "T" / "block-000000.done"
    m = json.loads(marker.read_text())
    marker.write_text(json.dumps({**m, "valid": m["valid"] - 1}))
    assert validate_store(FeatureStore.open(store)).counts == {"valid_count": 1}
