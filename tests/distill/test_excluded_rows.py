"""Rows the store marks unusable never reach a batch (stage 1 too); warnings come once, not every epoch."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from mmkd.distill.data import DataSpec, StoreBatches, make_loader
from mmkd.distill.student import build_student, resolve_student
from mmkd.store import FeatureStore
from mmkd.store.masks import untrainable_rows
from tests.distill.conftest import TINY_STUDENT, make_image_folder


@pytest.fixture(scope="module")
def student():
    return build_student(resolve_student(TINY_STUDENT))


@pytest.fixture(scope="module")
def flawed_store(tmp_path_factory):
    """32 rows, blocks of 8; row 5 has an empty caption, row 12 failed at extract (corrupt), the rest valid."""
    from mmkd.data import open_dataset

    root = tmp_path_factory.mktemp("flawed")
    table = make_image_folder(root / "data", 32)
    lines = table.read_text().splitlines()
    row5 = json.loads(lines[5])
    lines[5] = json.dumps({**row5, "caption": "  "})
    table.write_text("\n".join(lines) + "\n")
    ds = open_dataset(str(table))
    store = FeatureStore.create(root / "store", ds.samples(), block_size=8, dataset_uri=ds.uri,
                                dataset_fingerprint=ds.fingerprint(), dataset_spec=ds.spec().to_dict())
    store.add_teacher("ta", 16)
    rng = np.random.default_rng(0)
    for b in range(store.num_blocks):
        s, e = store.block_range(b)
        x = rng.standard_normal((e - s, 16)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        valid = np.ones(e - s, bool)
        fails = []
        for r in (5, 12):
            if s <= r < e:
                valid[r - s] = False
                fails.append({"sample_id": f"s{r:04d}", "row": r,
                              "reason": "empty_caption" if r == 5 else "corrupt"})
        store.write_block("ta", b, x, x, valid, fails)
    return root / "store"


def _ds(store, student, **kw) -> StoreBatches:
    return StoreBatches(DataSpec(store=str(store), batch_size=kw.pop("batch_size", 4), seed=1, **kw),
                        student.train_transform, student.tokenizer)


def test_untrainable_rows_from_the_store_records(flawed_store):
    ex = untrainable_rows(FeatureStore.open(flawed_store))
    assert np.nonzero(ex.mask)[0].tolist() == [5, 12]
    assert ex.counts == {"empty_caption": 1, "failed_at_extract": 1, "no_valid_teacher": 0}


def test_stage1_never_batches_excluded_rows_and_logs_once(flawed_store, student, caplog):
    with caplog.at_level(logging.WARNING, logger="mmkd.distill.data"):
        ds = _ds(flawed_store, student)  # stage 1: no teachers asked for, the store's masks still apply
        seen = []
        for epoch in range(3):
            ds.set_epoch(epoch)
            seen += [r for b in make_loader(ds, 0) for r in b["rows"].tolist()]
    assert ds.batches_per_epoch == 30 // 4 and len(seen) == 3 * 7 * 4
    assert 5 not in seen and 12 not in seen
    left_out = [r for r in caplog.records if "left out of training" in r.getMessage()]
    assert len(left_out) == 1 and "2 of 32 rows (empty_caption 1, failed_at_extract 1)" in left_out[0].getMessage()


def test_exclusion_keeps_resume_and_rank_split(flawed_store, student):
    ds = _ds(flawed_store, student, batch_size=4)
    ds.set_epoch(2)
    full = [b["rows"].tolist() for b in make_loader(ds, 0)]
    ds.set_epoch(2, start_batch=3)
    assert [b["rows"].tolist() for b in make_loader(ds, 0)] == full[3:]
    halves = []
    for rank in range(2):
        r = _ds(flawed_store, student, batch_size=2, rank=rank, world_size=2)
        r.set_epoch(2)
        halves.append([b["rows"].tolist() for b in make_loader(r, 0)])
    assert len(halves[0]) == len(halves[1]) == len(full)
    assert [a + b for a, b in zip(*halves)] == full


def test_train_time_unreadable_row_warned_once_over_epochs(flawed_store, student, tmp_path, caplog):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(flawed_store.parent / "data", data)
    bad = data / "img" / "0003.png"
    bad.write_bytes(b"x" * bad.stat().st_size)  # same size: the relocated data keeps the store's fingerprint
    ds = _ds(flawed_store, student, data=str(data / "captions.jsonl"))
    with caplog.at_level(logging.WARNING, logger="mmkd.distill.data"):
        for epoch in range(3):
            ds.set_epoch(epoch)
            masked = [r for b in make_loader(ds, 0) for r, ok in zip(b["rows"].tolist(), b["ok"].tolist()) if not ok]
            assert masked in ([], [3])
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 1
    # with workers (fresh dataset copies each epoch) the loader hands the row back to the dataset
    ds2 = _ds(flawed_store, student, data=str(data / "captions.jsonl"))
    ds2.set_epoch(0)
    rows = [r for b in make_loader(ds2, 2) for r in b["rows"].tolist()]
    assert (3 in ds2.unreadable) == (3 in rows)


def test_stage1_cli_warns_once(flawed_store, student_json, tmp_path, run_mmkd):
    res = run_mmkd("distill", "--store", flawed_store, "--student", student_json, "--out", tmp_path / "run",
                   "--stage", "1", "--steps", "16", "--batch-size", "8", "--warmup-steps", "1", "--num-workers", "0",
                   "--device", "cpu", "--no-progress", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("left out of training") == 1, res.stderr[-3000:]  # 16 steps = 5 epochs of 3 batches
