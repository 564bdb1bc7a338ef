"""The streaming data path: order, sharding, workers, resume, features, bounded reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmkd.distill.data import (
    DataSpec,
    StoreBatches,
    draw_teacher,
    make_loader,
    uniform,
)
from mmkd.distill.student import build_student, resolve_student
from tests.distill.conftest import TINY_STUDENT


@pytest.fixture(scope="module")
def student():
    return build_student(resolve_student(TINY_STUDENT))


def _ds(store, student, **kw) -> StoreBatches:
    spec = DataSpec(store=str(store), batch_size=kw.pop("batch_size", 8), seed=kw.pop("seed", 3), **kw)
    return StoreBatches(spec, student.train_transform, student.tokenizer)


def _rows(loader) -> list[list[int]]:
    return [b["rows"].tolist() for b in loader]


def test_order_deterministic_workers_and_resume(tiny_store, student):
    ds = _ds(tiny_store, student)
    ds.set_epoch(1)
    serial = list(make_loader(ds, 0))
    usable = np.nonzero(~ds.exclude)[0] if ds.exclude is not None else np.arange(48)  # no valid teacher: left out
    assert len(serial) == ds.batches_per_epoch == len(usable) // 8
    assert set(r for b in serial for r in b["rows"].tolist()) <= set(usable.tolist())
    parallel = list(make_loader(ds, 2))
    assert [b["rows"].tolist() for b in parallel] == [b["rows"].tolist() for b in serial]
    for a, b in zip(serial, parallel):  # per-row augmentation does not depend on the worker
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["text"], b["text"])
    ds.set_epoch(1, start_batch=4)
    assert _rows(make_loader(ds, 0)) == [b["rows"].tolist() for b in serial[4:]]
    ds.set_epoch(2)
    assert _rows(make_loader(ds, 0)) != [b["rows"].tolist() for b in serial]


def test_ranks_split_the_global_batch(tiny_store, student):
    single = _ds(tiny_store, student, batch_size=8)
    single.set_epoch(0)
    glob = list(make_loader(single, 0))
    parts = []
    for rank in range(2):
        ds = _ds(tiny_store, student, batch_size=4, rank=rank, world_size=2)
        ds.set_epoch(0)
        parts.append(list(make_loader(ds, 0)))
    for g, a, b in zip(glob, *parts):
        assert g["rows"].tolist() == a["rows"].tolist() + b["rows"].tolist()
        assert torch.equal(g["image"], torch.cat([a["image"], b["image"]]))


def test_features_validity_and_teacher_draw(tiny_store, student):
    from mmkd.store import FeatureStore

    store = FeatureStore.open(tiny_store)
    ds = _ds(tiny_store, student, teachers=["ta", "tb"], with_features=True)
    ds.set_epoch(0)
    batch = next(iter(make_loader(ds, 0)))
    rows = batch["rows"].numpy()
    valid = np.stack([store.valid("ta")[rows], store.valid("tb")[rows]], axis=1)
    assert np.array_equal(batch["valid"].numpy(), valid)
    assert batch["feats"]["tb"]["image"].shape == (8, 48)
    ref = store.read("ta", rows, "text").astype(np.float32)
    ref[~valid[:, 0]] = 0
    assert np.allclose(batch["feats"]["ta"]["text"].numpy(), ref)
    choice = batch["choice"].numpy()
    for i, c in enumerate(choice):
        assert (c == -1) == (not valid[i].any())
        assert c == -1 or valid[i, c]
    assert batch["image"].shape == (8, 3, 32, 32) and batch["text"].shape == (8, 16)
    assert batch["ok"].all()


def test_draw_teacher_is_uniform_over_valid():
    valid = np.array([[True, False, True]] * 4000 + [[False, False, False]])
    u = uniform(0, 0, np.arange(4001), salt=2)
    c = draw_teacher(valid, u)
    assert c[-1] == -1 and set(c[:-1].tolist()) == {0, 2}
    assert abs((c[:-1] == 0).mean() - 0.5) < 0.05


def test_unreadable_image_is_masked(tiny_store, student, tmp_path):
    import shutil

    from mmkd.store import FeatureStore

    store = FeatureStore.open(tiny_store)
    data = tmp_path / "data"
    shutil.copytree(tiny_store.parent / "data", data)
    bad = data / "img" / "0003.png"
    bad.write_bytes(b"x" * bad.stat().st_size)  # same size: the dataset's fingerprint still matches the store's
    ds = _ds(tiny_store, student, data=str(data / "captions.jsonl"))
    ds.set_epoch(0)
    row = int(store.rows(["s0003"])[0])
    batch = next(b for b in make_loader(ds, 0) if row in b["rows"].tolist())
    i = batch["rows"].tolist().index(row)
    assert not batch["ok"][i] and batch["ok"].sum() == 7


def test_relocated_data_keeps_spec_and_checks_fingerprint(tiny_store, student, tmp_path):
    """--data only relocates: the recorded spec is reused, and other samples are refused by fingerprint."""
    import shutil

    from mmkd.store import StoreError

    data = tmp_path / "moved"
    shutil.copytree(tiny_store.parent / "data", data)
    ds = _ds(tiny_store, student, data=str(data / "captions.jsonl"))
    assert ds.images["path"] == str(data / "captions.jsonl")
    (data / "img" / "0003.png").write_bytes(b"not a png")  # another size: another dataset
    with pytest.raises(StoreError, match=r"fingerprint [0-9a-f]{16} != recorded [0-9a-f]{16}"):
        _ds(tiny_store, student, data=str(data / "captions.jsonl"))


def test_persistent_workers_follow_set_epoch_and_resume(tiny_store, student):
    """One loader whose workers live across epochs yields what fresh serial loaders yield, epoch by epoch."""
    ds = _ds(tiny_store, student)
    expected = {}
    for epoch, start in ((0, 0), (1, 0), (2, 3)):
        ds.set_epoch(epoch, start)
        expected[epoch] = list(make_loader(ds, 0))
    loader = make_loader(ds, 2, persistent=True)
    for epoch, start in ((0, 0), (1, 0), (2, 3)):
        ds.set_epoch(epoch, start)
        got = list(loader)
        assert _rows(got) == _rows(expected[epoch])
        for a, b in zip(got, expected[epoch]):
            assert torch.equal(a["image"], b["image"])
    assert _rows(expected[0]) != _rows(expected[1])


def test_uint8_batches_normalised_by_the_consumer_equal_float_batches(tiny_store, student, tmp_path):
    """uint8=True (what distill's trainer asks for): the loader ships (B,3,H,W) uint8 and image_norm, applied
    after the transfer, gives the float batch bit for bit, an unreadable row's image zeros; over workers too."""
    import shutil

    from mmkd.store import FeatureStore

    data = tmp_path / "data"
    shutil.copytree(tiny_store.parent / "data", data)
    bad = data / "img" / "0003.png"
    bad.write_bytes(b"x" * bad.stat().st_size)
    row = int(FeatureStore.open(tiny_store).rows(["s0003"])[0])
    floats = _ds(tiny_store, student, data=str(data / "captions.jsonl"))
    u8 = _ds(tiny_store, student, data=str(data / "captions.jsonl"), uint8=True)
    assert floats.image_norm is None and u8.image_norm is not None
    assert _ds(tiny_store, student, decode="full", uint8=True).image_norm is None  # plain path: floats
    for ds in (floats, u8):
        ds.set_epoch(0)
    want = list(make_loader(floats, 0))
    for workers in (0, 2):
        got = list(make_loader(u8, workers))
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a["image"].dtype == torch.uint8 and b["image"].dtype == torch.float32
            assert torch.equal(u8.image_norm(a["image"], a["ok"]), b["image"])
            assert torch.equal(a["ok"], b["ok"]) and torch.equal(a["text"], b["text"])
    hit = next(b for b in want if row in b["rows"].tolist())
    assert not hit["ok"][hit["rows"].tolist().index(row)]


def test_reduced_decode_draws_the_plain_transforms_crop(tiny_store, student):
    """decode=reduced gives a row the same crop as open_clip's transform (same seed, same box), so the
    two paths' images agree up to resampling; a transform of another shape keeps the plain path."""
    from torchvision import transforms as T

    fast, full = _ds(tiny_store, student, decode="reduced"), _ds(tiny_store, student, decode="full")
    assert fast.fast is not None and full.fast is None
    assert _ds(tiny_store, student).fast is not None  # the default
    for ds in (fast, full):
        ds.set_epoch(1)
    a, b = next(iter(make_loader(fast, 0))), next(iter(make_loader(full, 0)))
    assert a["rows"].tolist() == b["rows"].tolist() and a["image"].shape == b["image"].shape
    diff = (a["image"] - b["image"]).abs()
    assert float(diff.mean()) < 0.05, float(diff.mean())
    # another row's crop (another seed) is much further away than the two paths are from each other
    assert float((a["image"] - b["image"].roll(1, 0)).abs().mean()) > 5 * float(diff.mean())
    custom = T.Compose([T.RandomHorizontalFlip(), student.train_transform])
    assert StoreBatches(fast.spec, custom, student.tokenizer).fast is None
    with pytest.raises(ValueError, match="decode 'gpu' is unknown"):
        _ds(tiny_store, student, decode="gpu")


def test_reduced_decode_of_a_large_jpeg_matches_the_full_decode():
    """On a 1.2 MP JPEG the DCT-reduced path decodes at a fraction of the size and stays close to
    open_clip's transform on the full image, for the train crop and the eval centre crop."""
    import io

    from PIL import Image

    from mmkd.distill.images import FastImages
    from mmkd.distill.student import build_student, resolve_student
    from tests.distill.conftest import TINY_STUDENT

    cfg = {**TINY_STUDENT, "vision_cfg": {**TINY_STUDENT["vision_cfg"], "image_size": 224}}
    st = build_student(resolve_student(cfg))
    yy, xx = np.mgrid[0:900, 0:1344].astype(np.float32)
    arr = np.stack([128 + 100 * np.sin(xx / 37), 128 + 100 * np.cos(yy / 23), (xx + yy) % 256], -1)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    for transform in (st.train_transform, st.eval_transform):
        plan = FastImages.plan(transform)
        assert plan is not None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            got = plan.normalize([plan.decode(data)])[0]
            torch.manual_seed(5)
            want = transform(Image.open(io.BytesIO(data)).convert("RGB"))
        assert got.shape == want.shape == (3, 224, 224)
        cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert float(cos) > 0.99 and float((got - want).abs().mean()) < 0.05, (float(cos), (got - want).abs().mean())


def test_image_cache_written_read_and_same_crops(tiny_store, student, tmp_path, caplog):
    """`mmkd store images` writes the cache once; distill reads it when it fits, with the same rows, order
    and crop boxes as from the originals (pixels agree up to the re-encode), and serial == workers."""
    import logging
    import hashlib
    import io
    import shutil
    import subprocess

    import pyarrow.parquet as pq
    from PIL import Image

    from mmkd.store.images import ImageCache, cache_path

    root = tmp_path / "copy"
    shutil.copytree(tiny_store.parent, root)
    store = root / tiny_store.name
    proc = subprocess.run(["mmkd", "store", "images", str(store), "--size", "36"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "48 rows at short side 36" in proc.stdout
    cache = cache_path(store, 36)
    table = pq.read_table(cache / "block-000000.parquet")
    assert table.column("row").to_pylist() == list(range(16))
    src = (root / "data" / "img" / "0000.png").read_bytes()
    assert table.column("sha256")[0].as_py() == hashlib.sha256(src).hexdigest()
    assert (table.column("width")[0].as_py(), table.column("height")[0].as_py()) == (40, 40)
    data, sizes = ImageCache(cache).read(np.array([0, 17]))
    assert Image.open(io.BytesIO(data[0])).size == (36, 36) and sizes == [(40, 40), (40, 40)]

    with caplog.at_level(logging.INFO, logger="mmkd.distill.data"):
        cached = _ds(store, student)
    assert cached.cache_dir == str(cache) and f"image cache {cache}" in caplog.text
    orig = _ds(store, student, image_cache="off")
    assert orig.cache_dir is None
    assert _ds(store, student, decode="full").cache_dir is None  # the plain transform cannot replay it
    for ds in (cached, orig):
        ds.set_epoch(2)
    a, b = list(make_loader(cached, 0)), list(make_loader(orig, 0))
    assert _rows(a) == _rows(b)
    for x, y in zip(a, b):
        diff = (x["image"] - y["image"]).abs().mean()
        assert float(diff) < 0.2, float(diff)  # noise images re-encoded as JPEG: the worst case for the cache
        assert float((x["image"] - y["image"].roll(1, 0)).abs().mean()) > 3 * float(diff)
    parallel = list(make_loader(cached, 2, persistent=True))
    assert _rows(parallel) == _rows(a) and all(torch.equal(x["image"], y["image"]) for x, y in zip(a, parallel))
    # a student larger than the cache reads the originals
    big = build_student(resolve_student({**TINY_STUDENT, "vision_cfg": {**TINY_STUDENT["vision_cfg"],
                                                                          "image_size": 48}}))
    spec = DataSpec(store=str(store), batch_size=8, seed=3)
    assert StoreBatches(spec, big.train_transform, big.tokenizer).cache_dir is None
