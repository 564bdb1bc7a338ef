"""distill --views: the view drawn per (row, epoch), its targets, the student's crop of it; the same across
workers, ranks and resume; stores without views; the image cache."""

from __future__ import annotations

import logging
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from mmkd.data.views import ViewRecipe
from mmkd.distill.config import load_distill_config
from mmkd.distill.data import DataSpec, StoreBatches, draw_view, make_loader
from mmkd.distill.metrics import read_metrics
from mmkd.distill.recipe import distill
from mmkd.distill.student import build_student, resolve_student
from mmkd.store import FeatureStore
from mmkd.store.format import VIEWS
from tests.distill.conftest import TEACHER_DIMS, TINY_STUDENT, make_store

K = 3
RECIPE = ViewRecipe(k=K, seed=7)


@pytest.fixture(scope="module")
def student():
    return build_student(resolve_student(TINY_STUDENT))


@pytest.fixture(scope="module")
def views_store(tmp_path_factory):
    """The tiny synthetic store, plus K random views per row for both teachers (recipe RECIPE)."""
    path = make_store(tmp_path_factory.mktemp("views"), invalid=0.1)
    store = FeatureStore.open(path, mode="a")
    rng = np.random.default_rng(5)
    for t, d in TEACHER_DIMS.items():
        store.ensure_views(t, K)
        store.update_attrs(t, views=RECIPE.to_attrs())
        for b in range(store.num_blocks):
            s, e = store.block_range(b)
            views = rng.standard_normal((e - s, K, d)).astype(np.float32)
            views /= np.linalg.norm(views, axis=2, keepdims=True)
            store.write_block(t, b, store.read_block(t, b, "image"), store.read_block(t, b, "text"),
                              store.read_block(t, b, "valid"), views=views)
    return path


def _ds(store, student, **kw) -> StoreBatches:
    spec = DataSpec(store=str(store), batch_size=kw.pop("batch_size", 8), seed=kw.pop("seed", 3),
                    teachers=list(TEACHER_DIMS), with_features=True, views=kw.pop("views", True), **kw)
    return StoreBatches(spec, student.train_transform, student.tokenizer)


def test_targets_are_the_drawn_views(views_store, student):
    ds = _ds(views_store, student)
    store = FeatureStore.open(views_store)
    seen: dict[int, set[int]] = {}
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        for batch in make_loader(ds, 0):
            rows = batch["rows"].numpy()
            view = batch["view"].numpy()
            assert np.array_equal(view, draw_view(3, epoch, rows, K)) and view.min() >= 0 and view.max() < K
            for j, t in enumerate(TEACHER_DIMS):
                valid = batch["valid"][:, j].numpy()
                want = store.read(t, rows, VIEWS)[np.arange(len(rows)), view].astype(np.float32)
                got = batch["feats"][t]["image"].numpy()
                assert np.array_equal(got[valid], want[valid]) and not got[~valid].any()
                plain = store.read(t, rows, "image").astype(np.float32)
                assert not np.allclose(got[valid], plain[valid])  # not the plain view's targets
                assert np.array_equal(batch["feats"][t]["text"].numpy()[valid],
                                      store.read(t, rows, "text").astype(np.float32)[valid])
            for r, v in zip(rows.tolist(), view.tolist()):
                seen.setdefault(r, set()).add(v)
    assert max(len(v) for v in seen.values()) > 1  # a row's view changes with the epoch


def test_student_sees_the_views_crop(views_store, student):
    """The image of (row, view) is the recipe's box of that row and view on the original image, resized to
    the student's input as torchvision's resized_crop does, flipped, normalised: computed here independently."""
    from torchvision.transforms import functional as TF

    ds = _ds(views_store, student)
    ds.set_epoch(1)
    batch = next(iter(make_loader(ds, 0)))
    store = FeatureStore.open(views_store)
    refs = store.index_columns(batch["rows"].numpy(), ("image",))["image"]
    norm = student.train_transform.transforms[-1]
    for i, (row, view) in enumerate(zip(batch["rows"].tolist(), batch["view"].tolist())):
        img = Image.open(views_store.parent / "data" / refs[i]).convert("RGB")
        box = RECIPE.box(row, view, img.size)
        crop = TF.resized_crop(img, box.top, box.left, box.bottom - box.top, box.right - box.left, [32, 32],
                               interpolation=TF.InterpolationMode.BICUBIC)
        if box.flip:
            crop = TF.hflip(crop)
        want = TF.normalize(TF.to_tensor(crop), norm.mean, norm.std)
        assert torch.allclose(batch["image"][i], want, atol=1e-5), (row, view)


def test_views_same_across_workers_ranks_and_resume(views_store, student):
    ds = _ds(views_store, student)
    ds.set_epoch(2)
    serial = list(make_loader(ds, 0))
    parallel = list(make_loader(ds, 2))
    assert len(serial) == len(parallel) == ds.batches_per_epoch
    for a, b in zip(serial, parallel):
        for key in ("rows", "view", "image"):
            assert torch.equal(a[key], b[key]), key
        for t in TEACHER_DIMS:
            assert torch.equal(a["feats"][t]["image"], b["feats"][t]["image"])
    ds.set_epoch(2, start_batch=3)
    resumed = list(make_loader(ds, 0))
    for a, b in zip(serial[3:], resumed):
        assert torch.equal(a["view"], b["view"]) and torch.equal(a["image"], b["image"])
    halves = []
    for rank in range(2):
        part = _ds(views_store, student, batch_size=4, rank=rank, world_size=2)
        part.set_epoch(2)
        halves.append(list(make_loader(part, 0)))
    for g, a, b in zip(serial, *halves):
        assert torch.equal(torch.cat([a["view"], b["view"]]), g["view"])
        assert torch.equal(torch.cat([a["image"], b["image"]]), g["image"])


def test_views_on_a_store_without_views_is_one_clear_error(tiny_store, student):
    with pytest.raises(ValueError) as e:
        _ds(tiny_store, student)
    msg = str(e.value)
    assert "\n" not in msg and str(tiny_store) in msg and "'ta'" in msg
    assert "mmkd extract --teacher ta" in msg and "--views K" in msg
    assert _ds(tiny_store, student, views=False).views is None  # without --views: trains as before


def test_teachers_with_other_recipes_are_refused(views_store, student, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(views_store.parent, root)
    FeatureStore.open(root / "store", mode="a").update_attrs("tb", views=ViewRecipe(k=K, seed=8).to_attrs())
    with pytest.raises(ValueError, match=r"teachers \['tb'\].*other views than 'ta'"):
        _ds(root / "store", student)


def test_image_cache_serves_views_only_when_its_copies_hold_the_crop(views_store, student, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(views_store.parent, root)
    store = root / "store"
    need = int(np.ceil(32 / RECIPE.min_side_fraction()))
    assert 36 < need <= 64

    def write(size):
        proc = subprocess.run(["mmkd", "store", "images", str(store), "--size", str(size)], capture_output=True,
                              text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr

    write(36)
    with caplog.at_level(logging.INFO, logger="mmkd.distill.data"):
        assert _ds(store, student).cache_dir is None
    assert f"needs cached copies of short side >= {need}" in caplog.text and "reading the originals" in caplog.text
    write(64)
    cached, orig = _ds(store, student), _ds(store, student, image_cache="off")
    assert cached.cache_dir is not None and cached.cache_dir.endswith("s64") and orig.cache_dir is None
    for ds in (cached, orig):
        ds.set_epoch(1)
    for a, b in zip(make_loader(cached, 0), make_loader(orig, 0)):
        assert torch.equal(a["rows"], b["rows"]) and torch.equal(a["view"], b["view"])
        assert float((a["image"] - b["image"]).abs().mean()) < 0.2  # re-encoded as JPEG: close, not equal


def _cfg(store, student_json, out, **kw):
    base = dict(store=str(store), student=str(student_json), out=str(out), batch_size=8, warmup_steps=1,
                lr=2e-3, num_workers=0, log_every=1, progress=False, stage=2, views=True, fd_weight=5.0)
    base.update(kw)
    return load_distill_config(None, None, base)


@pytest.mark.parametrize("kd", ["mmkd-clip", "multi"])
def test_stage2_with_views_trains_in_both_kd_modes(views_store, student_json, tmp_path, kd):
    out = tmp_path / kd
    summary = distill(_cfg(views_store, student_json, out, kd=kd, steps=4))
    assert summary.finished is True
    m = read_metrics(out)
    assert len(m) == 4 and all(np.isfinite(r["loss/total"]) for r in m)
    assert "loss/fd_img" in m[0]


def test_views_resume_equals_uninterrupted(views_store, student_json, tmp_path):
    kw = dict(kd="mmkd-clip", steps=7, checkpoint_every=100)  # 5 batches an epoch: crosses an epoch
    distill(_cfg(views_store, student_json, tmp_path / "a", **kw))
    distill(_cfg(views_store, student_json, tmp_path / "b", stop_at_step=3, num_workers=2, **kw))
    distill(_cfg(views_store, student_json, tmp_path / "b", resume=True, num_workers=2, **kw))
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    for k, v in a["student"].items():
        assert torch.equal(v, b["student"][k]), k
    assert [r["loss/total"] for r in read_metrics(tmp_path / "a")] == \
        [r["loss/total"] for r in read_metrics(tmp_path / "b")]
