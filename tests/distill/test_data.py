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
