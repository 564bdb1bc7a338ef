"""extract --views K: the stored views equal a teacher forward on the same crops computed here; a half-done
views extract resumes bit for bit; mismatched view settings are refused; validate checks the views."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_runner_support import assert_same_store, modality_dataset

from mmkd.data.images import decode_image
from mmkd.data.views import ViewRecipe
from mmkd.extract import ExtractError, ExtractJob, run_extract
from mmkd.store import FeatureStore, StoreError, validate_store
from mmkd.store.dataset import open_store_dataset
from mmkd.teachers.loaders import load_teacher
from mmkd.teachers.tiny import make_tiny_teachers, write_pipelines

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, modality_dir):
    """An RGB open_clip teacher at 32 px, a grayscale (MedCLIP-style, pad_square) one, an open_clip one at 64 px;
    the modality images (large JPEGs, PNG, 16-bit, RGBA, CMYK) and bad samples."""
    root = tmp_path_factory.mktemp("views")
    specs = make_tiny_teachers(root / "t32", kinds=("open_clip", "medclip"), seed=0, dim=24, image_size=32,
                               context_length=16)
    big = make_tiny_teachers(root / "t64", kinds=("open_clip",), seed=1, dim=16, image_size=64, context_length=16)
    specs["tiny_open_clip_64"] = dataclasses.replace(big["tiny_open_clip"], name="tiny_open_clip_64")
    jsonl = modality_dataset(modality_dir, root / "modality")
    pipelines = write_pipelines(root / "pipelines.yaml", specs,
                                extra={"datasets": {"modality": {"path": str(jsonl), "format": "jsonl"}}})
    return {"pipelines": str(pipelines), "specs": specs}


def _job(setup, store, **kw) -> ExtractJob:
    values = dict(data="modality", teachers=["all"], store=str(store), runner="local", pipeline=setup["pipelines"],
                  block_size=4, batch_size=3, workers=2, views=2)
    return ExtractJob(**{**values, **kw})


@pytest.fixture(scope="module")
def ref(setup, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "store"
    run_extract(_job(setup, path))
    return path


def test_views_equal_a_teacher_forward_on_the_same_crops(setup, ref):
    from torchvision.transforms import functional as TF

    store = FeatureStore.open(ref)
    ds = open_store_dataset(store)
    refs = store.index_columns(np.arange(store.n), ("image",))["image"]
    checked = 0
    for name, spec in setup["specs"].items():
        attrs = store.attrs(name)
        recipe = ViewRecipe.from_attrs(attrs["views"])
        assert recipe == ViewRecipe(k=2) and store.num_views(name) == 2
        teacher = load_teacher(spec, "cpu")
        pp = teacher.preprocessing
        interp = {"bicubic": TF.InterpolationMode.BICUBIC, "bilinear": TF.InterpolationMode.BILINEAR}[pp.interpolation]
        tensor = pp.build_tensor()
        valid = store.valid(name)
        views = store.read(name, np.arange(store.n), "image_views")
        plain = store.read(name, np.arange(store.n), "image")
        assert not views[~valid].any()  # invalid rows hold zeros, views included
        for row in np.flatnonzero(valid).tolist():
            img = decode_image(ds.read_many([refs[row]])[0], mode=teacher.image_mode)
            crops = []
            for v in range(2):
                box = recipe.box(row, v, img.size)
                crop = TF.resized_crop(img, box.top, box.left, box.bottom - box.top, box.right - box.left,
                                       [pp.image_size, pp.image_size], interpolation=interp)
                crops.append(tensor(TF.hflip(crop) if box.flip else crop))
            want = teacher.encode_images(torch.stack(crops)).numpy()
            np.testing.assert_allclose(views[row].astype(np.float32), want, atol=2e-3, err_msg=f"{name} row {row}")
            assert np.abs(views[row, 0].astype(np.float32) - plain[row]).max() > 1e-3  # not the plain view
            checked += 1
    assert checked >= 3 * 12


def test_half_done_views_extract_resumes_bit_for_bit(setup, ref, tmp_path):
    path = tmp_path / "store"
    run_extract(_job(setup, path))
    store = FeatureStore.open(path)
    a, b = "tiny_open_clip", "tiny_medclip"
    # a crash after block 1's views were half written, before its marker; block 2 of another teacher undone
    store.marker_path(a, 1).unlink()
    chunk = store.chunk_path(a, "image_views", 1)
    chunk.write_bytes(chunk.read_bytes()[:100])
    store.marker_path(b, 2).unlink()
    summary = run_extract(_job(setup, path))
    by = {t.teacher: t.blocks_run for t in summary.teachers}
    assert by == {a: 1, b: 1, "tiny_open_clip_64": 0}
    assert_same_store(ref, path)
    assert run_extract(_job(setup, path)).noop


def test_a_block_is_done_only_with_its_views(ref, tmp_path):
    import shutil

    shutil.copytree(ref, tmp_path / "s")
    store = FeatureStore.open(tmp_path / "s", mode="a")
    t = "tiny_open_clip"
    img, txt, valid = (store.read_block(t, 0, k) for k in ("image", "text", "valid"))
    with pytest.raises(StoreError, match="a block is done only with its views"):
        store.write_block(t, 0, img, txt, valid)
    with pytest.raises(StoreError, match=r"views has shape \(4, 3, 24\), expected \(4, 2, 24\)"):
        store.write_block(t, 0, img, txt, valid, views=np.zeros((4, 3, 24), np.float32))


def test_validate_checks_the_views(ref, tmp_path):
    import shutil

    shutil.copytree(ref, tmp_path / "s")
    store = FeatureStore.open(tmp_path / "s")
    assert validate_store(store, deep=True).status == "sound"
    chunk = store.chunk_path("tiny_medclip", "image_views", 1)
    data = bytearray(chunk.read_bytes())
    data[10] ^= 0x10
    chunk.write_bytes(bytes(data))
    report = validate_store(FeatureStore.open(tmp_path / "s"), deep=True)
    assert report.status == "unsound" and any(p.kind == "checksum" and "image_views values of block 1" in p.message
                                 for p in report.problems)
    chunk.write_bytes(bytes(data[:-2]))
    report = validate_store(FeatureStore.open(tmp_path / "s"))
    assert any(p.kind == "chunk" and "image_views chunk of block 1" in p.message for p in report.problems)


def test_other_view_settings_are_refused_unless_overwrite(setup, ref, tmp_path):
    import shutil

    shutil.copytree(ref, tmp_path / "s")
    for kw, said in ((dict(views=3), "with --views 2 (scale [0.35, 1.0], seed 0), but this run asks for --views 3"),
                     (dict(views=None), "but this run asks for no --views"),
                     (dict(view_seed=1), "asks for --views 2 (scale [0.35, 1.0], seed 1)")):
        with pytest.raises(ExtractError, match=r"has 4 blocks done with --views 2") as e:
            run_extract(_job(setup, tmp_path / "s", teachers=["tiny_open_clip"], **kw))
        assert said in str(e.value) and "--overwrite" in str(e.value)
    run_extract(_job(setup, tmp_path / "s", teachers=["tiny_open_clip"], views=3, view_scale=(0.5, 1.0),
                     overwrite=True))
    store = FeatureStore.open(tmp_path / "s")
    assert store.num_views("tiny_open_clip") == 3 and store.num_views("tiny_medclip") == 2
    assert store.attrs("tiny_open_clip")["views"]["scale"] == [0.5, 1.0]
    assert validate_store(store, deep=True).status == "sound"
    run_extract(_job(setup, tmp_path / "s", teachers=["tiny_medclip"], views=None, overwrite=True))
    store = FeatureStore.open(tmp_path / "s")
    assert store.num_views("tiny_medclip") == 0 and store.attrs("tiny_medclip")["views"] is None
    assert validate_store(store, deep=True).status == "sound"


def test_reduced_decode_views_cover_the_crop(setup, ref, tmp_path):
    """--decode reduced decodes each JPEG at the DCT scale that still holds every view's box at the teachers'
    input: the views stay close to the full decode's (the large fundus/endoscopy JPEGs are reduced)."""
    from mmkd.data.images import decode_count

    before = decode_count()
    run_extract(_job(setup, tmp_path / "r", decode="reduced"))
    assert decode_count() - before == 13  # 13 readable images, each decoded once for the 3 teachers and 2 views
    full, red = FeatureStore.open(ref), FeatureStore.open(tmp_path / "r")
    for name in setup["specs"]:
        valid = full.valid(name)
        assert np.array_equal(valid, red.valid(name))
        a = full.read(name, np.flatnonzero(valid), "image_views").astype(np.float32)
        b = red.read(name, np.flatnonzero(valid), "image_views").astype(np.float32)
        cos = (a * b).sum(-1)
        assert cos.mean() > 0.98, (name, cos.min(), cos.mean())


def test_job_checks_the_view_settings(setup, tmp_path):
    for kw, said in ((dict(views=0), "views must be a positive integer"),
                     (dict(views=True), "views must be a positive integer"),
                     (dict(views=2, decode="gpu"), "views with decode 'gpu' is not supported"),
                     (dict(views=2, view_scale=(0.5, 0.2)), "scale must be 0 < min <= max <= 1"),
                     (dict(views=None, view_scale=(0.5, 1.0)), "given without views; pass --views K")):
        with pytest.raises(ExtractError, match=said):
            _job(setup, tmp_path / "s", **kw)
    with pytest.raises(ExtractError, match="on_bad_row"):  # the checks after the views' still run
        _job(setup, tmp_path / "s", on_bad_row="skip")
