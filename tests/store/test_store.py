"""FeatureStore: round trip, reopen, idempotent writes, bad input, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmkd.data import Sample
from mmkd.store import FeatureStore, StoreError, store_info, validate_store


def _samples(n: int) -> list[Sample]:
    return [Sample(f"s{i}", f"caption {i}", f"img/{i}.png", None, "test", {"label": i % 3}) for i in range(n)]


def _unit(rng, rows, dim):
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _fill(store: FeatureStore, teacher: str, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    img, txt = _unit(rng, store.n, dim), _unit(rng, store.n, dim)
    valid = rng.random(store.n) > 0.2
    store.add_teacher(teacher, dim, {"loader": "test"})
    for b in range(store.num_blocks):
        s, e = store.block_range(b)
        store.write_block(teacher, b, img[s:e], txt[s:e], valid[s:e])
    return {"image": img, "text": txt, "valid": valid}


def test_round_trip_and_reopen(tmp_path):
    store = FeatureStore.create(tmp_path / "st", _samples(23), block_size=5, dataset_uri="mem://x",
                                dataset_fingerprint="fp")
    ref = _fill(store, "t1", 16)
    again = FeatureStore.open(tmp_path / "st")
    assert again.n == 23 and again.num_blocks == 5 and again.teachers == ["t1"] and again.dim("t1") == 16
    assert again.sample_ids == [f"s{i}" for i in range(23)]
    np.testing.assert_array_equal(again.valid("t1"), ref["valid"])
    rows = np.array([22, 0, 7, 7, 13])
    for kind in ("image", "text"):
        got = again.read("t1", rows, kind=kind)
        assert got.dtype == np.float16
        want = np.where(ref["valid"][rows, None], ref[kind][rows], 0).astype(np.float16)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(again.rows(["s7", "s0"]), [7, 0])
    assert again.done_blocks("t1") == set(range(5)) and validate_store(again).messages == []
    idx = again.index
    assert idx.column("row").to_pylist() == list(range(23))
    assert json.loads(idx.column("labels")[4].as_py()) == {"label": 1}
    assert again.manifest.dataset.to_dict() == {"uri": "mem://x", "fingerprint": "fp"}


def test_idempotent_rewrite(tmp_path):
    store = FeatureStore.create(tmp_path / "st", _samples(10), block_size=4)
    ref = _fill(store, "t", 8)
    before = store.read("t", np.arange(10))
    s, e = store.block_range(1)
    store.write_block("t", 1, ref["image"][s:e], ref["text"][s:e], ref["valid"][s:e])
    np.testing.assert_array_equal(FeatureStore.open(tmp_path / "st").read("t", np.arange(10)), before)
    store.add_teacher("t", 8)  # same dim: no-op
    with pytest.raises(StoreError, match="dim 8, not 9"):
        store.add_teacher("t", 9)
    # a rewrite with new values replaces the old ones, including through the read cache
    new = _unit(np.random.default_rng(5), e - s, 8)
    store.write_block("t", 1, new, new, np.ones(e - s, bool))
    np.testing.assert_array_equal(store.read("t", np.arange(s, e)), new.astype(np.float16))


def test_bad_input(tmp_path):
    with pytest.raises(StoreError, match="duplicate sample_id 's1' at positions 1 and 2"):
        FeatureStore.create(tmp_path / "a", [*_samples(2), Sample("s1", "x", "y")])
    assert not (tmp_path / "a").exists()
    with pytest.raises(StoreError, match="no samples"):
        FeatureStore.create(tmp_path / "b", [])
    store = FeatureStore.create(tmp_path / "c", _samples(6), block_size=4)
    with pytest.raises(StoreError, match="already exists"):
        FeatureStore.create(tmp_path / "c", _samples(6))
    store.add_teacher("t", 4)
    with pytest.raises(StoreError, match=r"image has shape \(3, 4\), expected \(4, 4\)"):
        store.write_block("t", 0, np.zeros((3, 4)), np.zeros((4, 4)), np.ones(4, bool))
    with pytest.raises(StoreError, match="block 2 out of range"):
        store.write_block("t", 2, np.zeros((2, 4)), np.zeros((2, 4)), np.ones(2, bool))
    with pytest.raises(StoreError, match="teacher 'nope' not in store"):
        store.read("nope", [0])
    with pytest.raises(StoreError, match="read-only"):
        FeatureStore.open(tmp_path / "c").add_teacher("u", 4)
    with pytest.raises(KeyError, match="not in store"):
        store.rows(["zzz"])
    with pytest.raises(StoreError, match="not an mmkd store"):
        FeatureStore.open(tmp_path)


def test_unknown_format_version(tmp_path):
    FeatureStore.create(tmp_path / "st", _samples(3))
    m = json.loads((tmp_path / "st" / "store.json").read_text())
    m["format_version"] = 99
    (tmp_path / "st" / "store.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="unknown format_version 99"):
        FeatureStore.open(tmp_path / "st")


def test_validate_reports_every_problem(tmp_path):
    store = FeatureStore.create(tmp_path / "st", _samples(12), block_size=4)
    ref = _fill(store, "t", 8)
    img = ref["image"][0:4].copy()
    img[1] = np.nan
    img[2] = 0.0
    img[3] *= 3.0
    store.write_block("t", 0, img, ref["text"][0:4], np.ones(4, bool))
    (tmp_path / "st" / "_progress" / "t" / "block-000002.done").unlink()
    problems = "\n".join(validate_store(FeatureStore.open(tmp_path / "st"), deep=True).messages)
    assert "1 of 3 blocks not done: 2" in problems
    assert "1 valid rows with NaN/Inf" in problems and "(1, 'image')" in problems
    assert "1 valid rows with zero norm" in problems and "(2, 'image')" in problems
    assert "norm off 1" in problems and "(3, 'image')" in problems
    # blocks without a marker read as invalid: no half-written block looks complete
    assert not FeatureStore.open(tmp_path / "st").valid("t")[8:].any()


def test_stats_and_info(tmp_path):
    store = FeatureStore.create(tmp_path / "st", _samples(20), block_size=8)
    ref = _fill(store, "t", 6)
    store.compute_stats("t")
    a = store.attrs("t")
    v = ref["valid"]
    np.testing.assert_allclose(a["image_mean"], ref["image"][v].astype(np.float16).astype(np.float64).mean(0), atol=1e-4)
    np.testing.assert_allclose(a["text_std"], ref["text"][v].astype(np.float16).astype(np.float64).std(0), atol=1e-4)
    info = store_info(store)
    assert info["teachers"]["t"] == {"dim": 6, "dtype": "float16", "blocks_done": 3, "blocks_total": 3,
                                     "valid_rows": int(v.sum()), "failures": 0, "complete": True}
    assert info["size_bytes"] > 20 * 6 * 2 * 2


def test_failures_recorded(tmp_path):
    store = FeatureStore.create(tmp_path / "st", _samples(4), block_size=4)
    store.add_teacher("t", 2)
    x = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
    store.write_block("t", 0, x, x, np.array([1, 0, 1, 1], bool),
                      failures=[{"sample_id": "s1", "row": 1, "reason": "corrupt", "detail": "bad jpeg"}])
    f = store.failures("t").to_pylist()
    assert f == [{"sample_id": "s1", "row": 1, "reason": "corrupt", "detail": "bad jpeg"}]
    assert store.read("t", [1]).tolist() == [[0, 0]]


def test_read_valid_by_rows_respects_markers(tmp_path):
    store = FeatureStore.create(tmp_path / "st", _samples(12), block_size=4)
    ref = _fill(store, "t", 4)
    rows = np.array([11, 0, 5, 5, 2])
    np.testing.assert_array_equal(store.read("t", rows, kind="valid"), ref["valid"][rows])
    (tmp_path / "st" / "_progress" / "t" / "block-000002.done").unlink()
    again = FeatureStore.open(tmp_path / "st")
    np.testing.assert_array_equal(again.read("t", rows, kind="valid"), ref["valid"][rows] & (rows < 8))
    with pytest.raises(StoreError, match="kind must be one of"):
        again.read("t", rows, kind="nope")


def test_fast_chunk_reads_equal_zarr(tmp_path):
    import zarr

    store = FeatureStore.create(tmp_path / "st", _samples(21), block_size=8)  # last block partial
    ref = _fill(store, "t", 6)
    store.write_block("t", 1, np.ones((8, 6)), np.ones((8, 6)), np.zeros(8, bool))  # an all-invalid block
    again = FeatureStore.open(tmp_path / "st", cache_bytes=0)
    g = zarr.open_group(str(tmp_path / "st" / "features.zarr"), mode="r")["t"]
    for kind in ("image", "text"):
        got = np.concatenate([again.read_block("t", b, kind) for b in range(again.num_blocks)])
        np.testing.assert_array_equal(got, g[kind][:])
        assert not got[8:16].any()
    assert again._raw_ok == {("t", "image"): True, ("t", "text"): True}
    np.testing.assert_array_equal(again.read("t", [20, 0], kind="text"),
                                  ref["text"][[20, 0]].astype(np.float16) * ref["valid"][[20, 0], None])
