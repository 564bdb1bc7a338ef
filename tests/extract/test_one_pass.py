"""One pass, many teachers: each image read and decoded once, bit-identical to per-teacher runs, per-teacher
resume, a teacher failing to load, and placement on a GPU's memory (declared, so it runs on CPU)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_runner_support import assert_same_store, modality_dataset

from mmkd.data.images import decode_count
from mmkd.extract import ExtractError, ExtractJob, run_extract
from mmkd.store import FeatureStore
from mmkd.teachers.tiny import make_tiny_teachers, write_pipelines

KINDS = ("open_clip", "transformers", "unimed_clip", "medclip")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mmkd_demo_dir, modality_dir):
    """Tiny teachers of every loader at 32 px, plus an open_clip one at 64 px (another input size)."""
    root = tmp_path_factory.mktemp("onepass")
    specs = make_tiny_teachers(root / "t32", kinds=KINDS, seed=0, dim=24, image_size=32, context_length=16)
    big = make_tiny_teachers(root / "t64", kinds=("open_clip",), seed=1, dim=24, image_size=64, context_length=16)
    specs["tiny_open_clip_64"] = dataclasses.replace(big["tiny_open_clip"], name="tiny_open_clip_64")
    jsonl = modality_dataset(modality_dir, root / "modality")  # mode variants and bad samples
    datasets = {"demo": {"path": str(mmkd_demo_dir), "format": "mmkd-clip"},
                "modality": {"path": str(jsonl), "format": "jsonl"}}
    pipelines = write_pipelines(root / "pipelines.yaml", specs, extra={"datasets": datasets})
    return {"root": root, "pipelines": str(pipelines), "specs": specs}


def _job(setup, store, **kw) -> ExtractJob:
    values = dict(data="demo", teachers=["all"], store=str(store), runner="local", pipeline=setup["pipelines"],
                  block_size=3, batch_size=2, workers=2)
    return ExtractJob(**{**values, **kw})


@pytest.mark.parametrize("data", ["demo", "modality"])
def test_one_pass_equals_per_teacher_runs_bit_for_bit_and_decodes_once(setup, tmp_path, data):
    names = list(setup["specs"])
    before = decode_count()
    one = run_extract(_job(setup, tmp_path / "one", data=data))
    decoded_one = decode_count() - before
    before = decode_count()
    for name in names:  # the same store, one teacher after another (what every run did before one pass)
        run_extract(_job(setup, tmp_path / "each", data=data, teachers=[name]))
    decoded_each = decode_count() - before
    assert_same_store(tmp_path / "one", tmp_path / "each")
    store = FeatureStore.open(tmp_path / "one")
    assert sorted(store.teachers) == sorted(names) and all(store.is_complete(n) for n in names)
    # every readable image decoded once for all teachers, against once per teacher
    assert one.decoded == decoded_one and decoded_one > 0
    assert decoded_each == len(names) * decoded_one
    assert one.bytes_read > 0 and len(one.placement) == 1 and one.placement[0]["teachers"] == names
    assert "decodes per teacher-row" in one.format()


def test_block_done_for_one_teacher_runs_only_the_other(setup, tmp_path):
    a, b = "tiny_open_clip", "tiny_open_clip_64"
    run_extract(_job(setup, tmp_path / "s", teachers=[a]))
    (tmp_path / "s" / "_progress" / a / "block-000001.done").unlink()  # A misses block 1; B misses all 3
    summary = run_extract(_job(setup, tmp_path / "s", teachers=[a, b]))
    by = {t.teacher: t for t in summary.teachers}
    assert (by[a].blocks_run, by[a].blocks_skipped, by[b].blocks_run) == (1, 2, 3)
    assert summary.decoded == 8  # 8 samples: block 1 decoded once for both teachers, blocks 0 and 2 for B only
    run_extract(_job(setup, tmp_path / "ref", teachers=[a, b]))
    assert_same_store(tmp_path / "ref", tmp_path / "s")
    assert run_extract(_job(setup, tmp_path / "s", teachers=[a, b])).noop


def _broken_pipelines(setup, tmp_path, dim: int) -> str:
    import yaml

    cfg = yaml.safe_load(Path(setup["pipelines"]).read_text())
    cfg["teachers"]["tiny_transformers"]["dim"] = dim  # the model outputs 24: loading fails when dim != 24
    path = tmp_path / f"pipelines-{dim}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_teacher_failing_to_load_others_go_on_and_rerun_does_what_is_missing(setup, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "from mmkd.cli import main; main()", "extract", "--teacher", "tiny_open_clip", "--teacher", "tiny_transformers",
           "--data", "demo", "--store", str(tmp_path / "s"), "--runner", "local", "--block-size", "3",
           "--no-progress"]
    broken = _broken_pipelines(setup, tmp_path, 99)
    run = subprocess.run([*cmd, "--pipeline", broken], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert "tiny_transformers: FAILED, failed to load" in run.stdout and "dim 99" in run.stdout
    assert "1 teacher(s) failed to load: tiny_transformers" in run.stderr
    store = FeatureStore.open(tmp_path / "s")
    assert store.is_complete("tiny_open_clip") and "tiny_transformers" not in store.teachers

    with pytest.raises(ExtractError, match=r"'tiny_transformers' failed to load, and --fail-fast stops.*dim 99"):
        run_extract(_job({"pipelines": broken}, tmp_path / "f", teachers=["tiny_open_clip", "tiny_transformers"],
                         fail_fast=True))
    assert not (tmp_path / "f").exists()  # a store this run created, with no finished block, is removed

    summary = run_extract(_job(setup, tmp_path / "s", teachers=["tiny_open_clip", "tiny_transformers"]))
    by = {t.teacher: t for t in summary.teachers}
    assert by["tiny_open_clip"].blocks_run == 0 and by["tiny_transformers"].blocks_run == 3
    run_extract(_job(setup, tmp_path / "ref", teachers=["tiny_open_clip", "tiny_transformers"]))
    assert_same_store(tmp_path / "ref", tmp_path / "s")


def test_placement_splits_passes_and_refuses_a_teacher_no_gpu_holds(setup, tmp_path):
    import yaml

    cfg = yaml.safe_load(Path(setup["pipelines"]).read_text())
    for name, gib in (("tiny_open_clip", 0.6), ("tiny_open_clip_64", 0.6), ("tiny_medclip", 0.3)):
        cfg["teachers"][name]["memory"] = gib
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text(yaml.safe_dump(cfg))
    names = ["tiny_open_clip", "tiny_open_clip_64", "tiny_medclip"]
    job = _job({"pipelines": str(pipelines)}, tmp_path / "s", teachers=names, gpu_memory=1.0)
    summary = run_extract(job)
    assert [p["teachers"] for p in summary.placement] == [["tiny_open_clip", "tiny_medclip"], ["tiny_open_clip_64"]]
    assert [round(p["estimated_bytes"] / 2**30, 2) for p in summary.placement] == [0.9, 0.6]
    assert all(FeatureStore.open(tmp_path / "s").is_complete(n) for n in names)
    assert "teachers tiny_open_clip, tiny_medclip share each worker; estimated 0.90 GiB of 1.0 GiB" in summary.format()
    with pytest.raises(ExtractError, match=r"tiny_open_clip needs 0.60 GiB \(declared memory\).*0.50 GiB of one GPU"
                                           r".*nothing was started"):
        run_extract(_job({"pipelines": str(pipelines)}, tmp_path / "new", teachers=names, gpu_memory=0.5))
    assert not (tmp_path / "new").exists()


def test_resize_cascade_is_a_recorded_mode_and_own_stays_bit_identical(setup, tmp_path):
    """--resize cascade: the largest input keeps its own pixels (bit for bit), a smaller one resizes from it
    (close, not equal), each teacher's attrs say which, and a resume in the other mode is refused."""
    big, small = "tiny_open_clip_64", "tiny_open_clip"  # both shortest-side RGB: one family, 64 px the largest
    run_extract(_job(setup, tmp_path / "cascade", teachers=[big, small], resize="cascade"))
    run_extract(_job(setup, tmp_path / "own", teachers=[big, small]))
    cascade, own = FeatureStore.open(tmp_path / "cascade"), FeatureStore.open(tmp_path / "own")
    assert cascade.attrs(big)["resize"] == "own" and cascade.attrs(small)["resize"] == "cascade from 64px"
    assert own.attrs(small)["resize"] == "own"
    assert_same_store(tmp_path / "cascade", tmp_path / "own", teachers=[big])
    a, b = cascade.read_block(small, 0, "image"), own.read_block(small, 0, "image")
    assert a.tobytes() != b.tobytes()  # two-step downscale: other pixels, so other features
    assert (np.asarray(a, np.float32) * np.asarray(b, np.float32)).sum(1).min() > 0.9  # ... of the same images
    (tmp_path / "cascade" / "_progress" / small / "block-000001.done").unlink()
    with pytest.raises(ExtractError, match=r"'tiny_open_clip'.*other \['resize'\].*cascade from 64px"):
        run_extract(_job(setup, tmp_path / "cascade", teachers=[small]))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_batched_to_tensor_equals_the_teachers_per_image_transform(mode):
    from PIL import Image

    from mmkd.teachers.base import Preprocessing

    rng = np.random.default_rng(0)
    pp = Preprocessing(image_size=24, mean=(0.48145466, 0.4578275, 0.40821073) if mode == "RGB" else (0.586,),
                       std=(0.26862954, 0.26130258, 0.27577711) if mode == "RGB" else (0.2795,), grayscale=mode == "L")
    shape = (24, 24, 3) if mode == "RGB" else (24, 24)
    images = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(4)]
    every_byte = (np.arange(int(np.prod(shape))) % 256).astype(np.uint8).reshape(shape)  # each value, each channel
    images.append(Image.fromarray(every_byte, mode))
    one_by_one = torch.stack([pp.build_tensor()(im) for im in images])
    assert pp.to_tensor_batch(images).numpy().tobytes() == one_by_one.numpy().tobytes()


def test_teachers_of_a_pass_share_one_clip_tokenizer(setup):
    from mmkd.teachers.loaders import load_teacher

    cache: dict = {}
    a = load_teacher(setup["specs"]["tiny_open_clip"], tokenizers=cache)
    b = load_teacher(setup["specs"]["tiny_open_clip_64"], tokenizers=cache)  # another folder, same BPE tokenizer
    assert len(cache) == 1 and a.tokenizer_key == b.tokenizer_key is not None
    caps = ["a chest x-ray", "an axial ct slice of the liver"]
    assert a.encode_texts(caps).equal(a.encode_texts(caps, tokens=b.tokenize(caps)))


def test_an_error_in_one_teachers_step_of_a_pass_names_that_teacher(setup, tmp_path, monkeypatch):
    """The block worker marks the error with the teacher whose step raised; it survives pickling (a Ray task
    error carries it to the driver, whose message then names that teacher: tests/extract/test_ray_runner.py),
    and the local runner's error names it the same way."""
    import pickle

    from mmkd.extract.runners.block import failed_teacher
    from mmkd.teachers.base import Teacher

    encode = Teacher.encode_images

    def broken(self, pixels, autocast=None):
        if self.name == "tiny_open_clip_64":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return encode(self, pixels, autocast)

    monkeypatch.setattr(Teacher, "encode_images", broken)
    with pytest.raises(ExtractError) as err:
        run_extract(_job(setup, tmp_path / "s", teachers=["tiny_open_clip", "tiny_open_clip_64"]))
    # the local runner's one line names the teacher and the block, in the Ray runner's words
    assert str(err.value) == ("teacher 'tiny_open_clip_64', block 0: RuntimeError: CUDA error: an illegal memory "
                              "access was encountered")
    assert failed_teacher(err.value) == "tiny_open_clip_64"
    assert failed_teacher(pickle.loads(pickle.dumps(err.value))) == "tiny_open_clip_64"


def test_teachers_with_the_same_preprocessing_share_one_normalised_batch(setup, tmp_path, monkeypatch):
    """tiny_open_clip and tiny_transformers have the same resize/crop, mode and mean/std: a pass of both
    normalises each batch once, as a pass of one of them does (their features: the bit-for-bit test above)."""
    from mmkd.teachers.base import Preprocessing

    calls = []
    normalize = Preprocessing.normalize_uint8
    monkeypatch.setattr(Preprocessing, "normalize_uint8",
                        lambda self, px, **kw: calls.append(px.shape) or normalize(self, px, **kw))
    run_extract(_job(setup, tmp_path / "one", teachers=["tiny_open_clip"]))
    alone = list(calls)
    calls.clear()
    run_extract(_job(setup, tmp_path / "two", teachers=["tiny_open_clip", "tiny_transformers"]))
    assert alone and calls == alone
    calls.clear()
    # tiny_medclip (grayscale, its own mean/std) between them: the pass still forwards the two together,
    # so the shared float batch is made once, and each teacher's features are those of the pass without it
    run_extract(_job(setup, tmp_path / "three", teachers=["tiny_open_clip", "tiny_medclip", "tiny_transformers"]))
    assert len(calls) == 2 * len(alone)
    assert_same_store(tmp_path / "two", tmp_path / "three", teachers=["tiny_open_clip", "tiny_transformers"])


def test_batch_buffers_reuse_memory_for_any_shape_that_fits():
    from mmkd.extract.runners.block import BatchBuffers

    pool = BatchBuffers()
    a, b = pool.take((4, 2, 3), np.float32), pool.take((4, 3, 2), np.uint8)
    assert a.shape == (4, 2, 3) and a.dtype == np.float32 and b.dtype == np.uint8 and not np.shares_memory(a, b)
    pool.give_back(a)
    c = pool.take((3, 2, 3), np.float32)  # a block's short last batch: the front of the full one's memory
    assert c.shape == (3, 2, 3) and c.flags.c_contiguous and np.shares_memory(c, a) and not np.shares_memory(c, b)
    d = pool.take((2, 2, 3), np.uint8)  # nothing free: new memory
    assert not np.shares_memory(d, a) and not np.shares_memory(d, b)
    pool.release()
    e = pool.take((96,), np.uint8)  # 96 bytes: only a's 96-byte buffer is large enough
    assert np.shares_memory(e, a)
    f = pool.take((100,), np.uint8)  # larger than any free buffer: new memory
    assert not any(np.shares_memory(f, x) for x in (a, b, d))


def test_reduced_decode_of_a_pass_covers_its_largest_input_and_records_the_scales(setup, tmp_path):
    """--decode reduced: one decode covers the pass's largest input; every teacher's attrs say which inputs were
    covered, and its summary, job record and block markers how many images were decoded at each DCT scale
    (the same scales as a run of the largest teacher alone, whose input is the one covered)."""
    import json

    small, big = "tiny_open_clip", "tiny_open_clip_64"
    one = run_extract(_job(setup, tmp_path / "one", teachers=[small, big], decode="reduced"))
    alone = run_extract(_job(setup, tmp_path / "alone", teachers=[big], decode="reduced"))
    own = run_extract(_job(setup, tmp_path / "own", teachers=[small], decode="reduced"))
    store = FeatureStore.open(tmp_path / "one")
    scales = {t.teacher: t.dct_scales for t in one.teachers}
    assert scales[small] == scales[big] == alone.teachers[0].dct_scales
    assert sum(scales[big].values()) == one.decoded > 0
    assert own.teachers[0].dct_scales != scales[small]  # alone, the 32 px teacher's images decode smaller
    assert store.attrs(small)["decode_covers"] == store.attrs(big)["decode_covers"] == [[32, "shortest"],
                                                                                         [64, "shortest"]]
    assert FeatureStore.open(tmp_path / "own").attrs(small)["decode_covers"] == [[32, "shortest"]]
    markers = sorted((tmp_path / "one" / "_progress" / small).glob("block-*.done"))
    counts = [json.loads(m.read_text())["decode"]["dct_scales"] for m in markers]
    assert sum(n for c in counts for n in c.values()) == sum(scales[small].values())
    record = json.loads(next((tmp_path / "one" / "_jobs").glob(f"*-{small}.json")).read_text())
    assert record["summary"]["dct_scales"] == scales[small]
    assert "--decode reduced: images decoded at DCT scale 1/" in one.format()
