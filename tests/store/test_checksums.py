"""Block checksums: a flipped bit in a feature chunk is caught by `validate --deep`; old markers still validate."""

from __future__ import annotations

import json
import shutil

import pytest

from mmkd.store.synthetic import make_synthetic_store


@pytest.fixture
def store(tmp_path_factory, tmp_path):
    pristine = tmp_path_factory.getbasetemp() / "checksums-pristine"
    if not pristine.exists():
        make_synthetic_store(pristine, 100, {"T": 8}, block_size=32, seed=1)
    return shutil.copytree(pristine, tmp_path / "st")


def test_flipped_bit_is_caught_by_deep_validate(store, run_mmkd, tmp_path):
    chunk = store / "features.zarr" / "T" / "text" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[36] ^= 0x01  # the lowest mantissa bit of one float16 value: finite, its norm still within tolerance
    chunk.write_bytes(bytes(data))
    shallow = run_mmkd("store", "validate", store, cwd=tmp_path)
    assert shallow.returncode == 0 and "values not read" in shallow.stdout  # the default says what it skipped
    deep = run_mmkd("store", "validate", store, "--deep", cwd=tmp_path)
    assert deep.returncode == 1 and "Traceback" not in deep.stderr
    assert "PROBLEM [checksum]: teacher 'T': text values of block 1 have CRC-32" in deep.stderr, deep.stderr
    assert f"(the chunk {chunk} changed after it was written" in deep.stderr and "block-000001.done" in deep.stderr
    assert "UNSOUND, 1 problem(s) (1 checksum)" in deep.stderr


def test_markers_without_checksums_still_validate(store, run_mmkd, tmp_path):
    markers = sorted((store / "_progress" / "T").glob("*.done"))
    for m in markers:  # as a store written before markers carried a crc32
        rec = json.loads(m.read_text())
        assert set(rec["crc32"]) == {"image", "text", "valid"}
        del rec["crc32"]
        m.write_text(json.dumps(rec))
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    deep = run_mmkd("store", "validate", store, "--deep", cwd=tmp_path)
    assert deep.returncode == 0 and ": OK (1 teacher(s)" in deep.stdout, deep.stderr
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
