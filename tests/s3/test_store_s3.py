"""The feature store on S3 (moto on 127.0.0.1): same bytes as on disk, markers last, the lock object."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from mmkd.config import as_path
from mmkd.data import Sample
from mmkd.store import FeatureStore, StoreError, store_info, validate_store
from mmkd.store import format as fmt

pytestmark = pytest.mark.usefixtures("s3_env")


def _samples(n: int) -> list[Sample]:
    return [Sample(f"s{i}", f"caption {i}", f"img/{i}.png", None, "test", {"label": i % 3}) for i in range(n)]


def _fill(store: FeatureStore, teacher: str, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((store.n, dim)).astype(np.float32)
    txt = rng.standard_normal((store.n, dim)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    valid = rng.random(store.n) > 0.2
    store.add_teacher(teacher, dim, {"loader": "test"})
    for b in range(store.num_blocks):
        s, e = store.block_range(b)
        fails = [{"sample_id": f"s{r}", "row": r, "reason": "decode_error"} for r in range(s, e) if not valid[r]]
        store.write_block(teacher, b, img[s:e], txt[s:e], valid[s:e], fails)
    return {"image": img, "text": txt, "valid": valid}


def _objects(client, url: str) -> dict[str, bytes]:
    bucket, _, prefix = url[len("s3://"):].partition("/")
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) + 1:]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def test_s3_store_round_trip_matches_local_bytes(bucket, s3_client, tmp_path):
    url = f"{bucket}/stores/st"
    stores = {}
    for where in (url, tmp_path / "st"):
        store = FeatureStore.create(where, _samples(23), block_size=5, dataset_uri="mem://x", dataset_fingerprint="fp")
        ref = _fill(store, "t1", 16)
        stores[str(where)] = store
    again = FeatureStore.open(url)
    assert again.n == 23 and again.teachers == ["t1"] and again.done_blocks("t1") == set(range(5))
    rows = np.array([22, 0, 7, 7, 13])
    want = np.where(ref["valid"][rows, None], ref["image"][rows], 0).astype(np.float16)
    np.testing.assert_array_equal(again.read("t1", rows), want)
    np.testing.assert_array_equal(again.valid("t1"), ref["valid"])
    assert again.failures("t1").num_rows == int((~ref["valid"]).sum())
    assert validate_store(again, deep=True).messages == []
    info = store_info(again)
    assert info["teachers"]["t1"]["complete"] and info["size_bytes"] > 0
    # every feature chunk, marker-free object and the index are the same bytes as on local disk
    remote = _objects(s3_client, url)
    local_root = tmp_path / "st"
    for key, body in remote.items():
        if key.startswith(("features.zarr/", fmt.INDEX)) or key.endswith(".parquet"):
            assert (local_root / key).read_bytes() == body, key
    assert not any(k.endswith(".lock") for k in remote)  # the lock object is gone after each use
    assert json.loads(remote["store.json"])["num_samples"] == 23


def test_s3_create_refuses_existing_and_open_refuses_non_store(bucket):
    url = f"{bucket}/st"
    FeatureStore.create(url, _samples(4), block_size=2)
    with pytest.raises(StoreError, match="already exists"):
        FeatureStore.create(url, _samples(4), block_size=2)
    with pytest.raises(StoreError, match="is not an mmkd store"):
        FeatureStore.open(f"{bucket}/nothing-here")


def test_deleted_chunk_object_under_done_block_is_named_by_validate(bucket, s3_client):
    url = f"{bucket}/st"
    store = FeatureStore.create(url, _samples(10), block_size=4)
    _fill(store, "t", 8)
    chunk = store.chunk_path("t", "text", 1)
    s3_client.delete_object(Bucket=bucket[5:], Key=chunk.path.split("/", 1)[1])
    problems = validate_store(FeatureStore.open(url)).messages
    assert len(problems) == 1 and "text chunk of block 1" in problems[0] and "is missing" in problems[0]
    assert str(chunk.path) in problems[0]


def test_rewrite_removes_marker_before_data(bucket):
    store = FeatureStore.create(f"{bucket}/st", _samples(8), block_size=4)
    ref = _fill(store, "t", 4)
    seen = []
    original = store._put

    def spy(*args):
        seen.append(store.marker_path("t", 1).exists())
        return original(*args)

    store._put = spy
    s, e = store.block_range(1)
    store.write_block("t", 1, ref["image"][s:e], ref["text"][s:e], ref["valid"][s:e])
    assert seen == [False, False, False] and store.marker_path("t", 1).exists()


def test_lock_object_is_exclusive_and_expires(bucket):
    lock = as_path(f"{bucket}/st/.lock")
    inside, overlaps = [], []

    def worker():
        for _ in range(3):
            with fmt.object_lock(lock):
                inside.append(1)
                overlaps.append(len(inside))
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 9 and max(overlaps) == 1
    # a holder that died leaves its lock; it is taken once it has expired
    lock.write_bytes(json.dumps({"owner": "gone:1:x", "expires": 0}).encode())
    with fmt.object_lock(lock, wait_s=5):
        assert json.loads(lock.read_bytes())["owner"] != "gone:1:x"
    assert not lock.exists()
    lock.write_bytes(json.dumps({"owner": "alive:1:x", "expires": 1e12}).encode())
    with pytest.raises(TimeoutError, match="held by alive:1:x"):
        with fmt.object_lock(lock, wait_s=0.5):
            pass


def test_read_ahead_fetches_next_blocks_in_background(bucket):
    store = FeatureStore.create(f"{bucket}/st", _samples(12), block_size=4)
    ref = _fill(store, "t", 8)
    reader = FeatureStore.open(f"{bucket}/st")
    assert reader.read_ahead("t", [5, 9], ("image", "valid")) == 4  # blocks 1 and 2, two kinds
    assert reader.read_ahead("t", [6], ("image",)) == 0  # already on its way
    calls = []
    original = reader._read_rows
    reader._read_rows = lambda *a: calls.append(a) or original(*a)
    got = reader.read("t", np.array([5, 9]))
    assert calls == []  # served by the read-ahead, not a new round trip
    want = np.where(ref["valid"][[5, 9], None], ref["image"][[5, 9]], 0).astype(np.float16)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(reader.read("t", np.array([5, 9]), "valid"), ref["valid"][[5, 9]])


def test_table_images_on_s3_are_fetched_together_and_missing_ones_are_bad_samples(bucket, s3_client):
    from mmkd.data import BadSample, open_dataset

    name = bucket[5:]
    rows = [{"id": f"r{i}", "image": f"im/{i}.jpg", "caption": f"c {i}"} for i in range(3)]
    s3_client.put_object(Bucket=name, Key="t/data.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows).encode())
    for i in (0, 2):
        s3_client.put_object(Bucket=name, Key=f"img/im/{i}.jpg", Body=f"bytes {i}".encode())
    ds = open_dataset({"path": f"{bucket}/t/data.jsonl", "format": "jsonl", "root": f"{bucket}/img"})
    assert [s.sample_id for s in ds.samples()] == ["r0", "r1", "r2"]
    out = ds.read_many(["im/0.jpg", "im/1.jpg", "im/2.jpg"], on_error="return")
    assert out[0] == b"bytes 0" and out[2] == b"bytes 2"
    assert isinstance(out[1], BadSample) and out[1].reason == "missing" and f"{bucket}/img/im/1.jpg" in str(out[1])


def test_trust_and_projection_on_s3_equal_local(bucket, tmp_path):
    from mmkd.store.projection import fit_projection, list_projections, load_projection
    from mmkd.store.trust import compute_trust, has_trust, read_trust

    out = {}
    for where in (f"{bucket}/st", tmp_path / "st"):
        store = FeatureStore.create(where, _samples(20), block_size=8)
        _fill(store, "t", 16)
        assert not has_trust(store, "t")
        compute_trust(store, "t", reference=8)
        fit_projection(store, "t", dim=4, method="pca")
        store = FeatureStore.open(where)
        assert has_trust(store, "t") and [p["dim"] for p in list_projections(store, "t")] == [4]
        out[str(where)] = (read_trust(store, "t", np.arange(20)), load_projection(store, "t", "pca", 4))
    (t_s3, p_s3), (t_local, p_local) = out.values()
    np.testing.assert_array_equal(t_s3[0], t_local[0])
    np.testing.assert_array_equal(t_s3[1], t_local[1])
    np.testing.assert_array_equal(p_s3[0], p_local[0])
    np.testing.assert_array_equal(p_s3[1], p_local[1])
    assert p_s3[2] == p_local[2]
