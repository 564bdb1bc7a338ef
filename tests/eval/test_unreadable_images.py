"""An unreadable image in an eval set: skipped, counted and listed (default) or an error (--strict)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmkd.eval.features import SetFeatures
from mmkd.eval.runner import _common_items, _restrict
from mmkd.eval.sets import EvalItem, EvalSet

TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, modality_dir):
    import shutil

    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("unreadable")
    torch.manual_seed(0)
    student = root / "tiny-student"
    student.mkdir()
    (student / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in CLIP(**TINY_CLIP).state_dict().items()},
              str(student / "open_clip_model.safetensors"))
    images = root / "images"
    images.mkdir()
    rows = []
    for p in sorted(modality_dir.iterdir())[:4]:
        for k in range(2):
            shutil.copy(p, images / f"{p.stem}-{k}{p.suffix}")
            rows.append({"id": f"{p.stem}-{k}", "image": f"{p.stem}-{k}{p.suffix}", "label": p.stem,
                         "caption": f"a {p.stem} image, view {k}"})
    good = (images / rows[0]["image"]).read_bytes()
    (images / "B-corrupt.jpg").write_bytes(good[:600] + bytes(255 - b for b in good[600:1200]) + good[1200:])
    rows.insert(3, {"id": "B-corrupt", "image": "B-corrupt.jpg", "label": rows[2]["label"], "caption": "broken"})
    (root / "set.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    spec = root / "withbad.json"
    spec.write_text(json.dumps({"samples": "set.jsonl", "root": "images"}))
    return {"root": root, "student": student, "spec": spec, "n": len(rows)}


def _eval(run_mmkd, setup, out: Path, *extra: str):
    return run_mmkd("eval", "--model", setup["student"], "--set", setup["spec"], "--out", out,
                    "--resamples", "20", "--device", "cpu", *extra)


def test_unreadable_image_is_skipped_counted_listed(setup, run_mmkd, tmp_path):
    out = tmp_path / "out"
    res = _eval(run_mmkd, setup, out)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())["tiny-student"]["withbad"]
    assert set(data) >= {"zeroshot", "retrieval", "skipped"}
    skipped = data["skipped"]
    assert skipped["count"] == 1 and skipped["of"] == setup["n"]
    assert [(s["sample_id"], s["reason"]) for s in skipped["samples"]] == [("B-corrupt", "corrupt")]
    md = (out / "results.md").read_text()
    assert "withbad† zeroshot acc" in md
    assert f"† withbad: 1 of {setup['n']} images unreadable, left out for every model: B-corrupt (corrupt)" in md
    assert "B-corrupt (corrupt)" in res.stdout
    # --strict after a cached run still refuses (the skip is recorded in the cache)
    strict = _eval(run_mmkd, setup, out, "--strict")
    assert strict.returncode == 1 and "1 image(s) cannot be read, e.g. sample 'B-corrupt'" in strict.stderr


def test_strict_fails_naming_the_sample(setup, run_mmkd, tmp_path):
    res = _eval(run_mmkd, setup, tmp_path / "strict", "--strict")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "cannot read image of sample 'B-corrupt'" in res.stderr and "without --strict" in res.stderr
    assert not (tmp_path / "strict" / "results.json").exists()


def test_models_share_the_items_every_one_could_read():
    items = [EvalItem(f"s{i}", f"s{i}.png", f"c{i}", i % 2) for i in range(5)]
    es = EvalSet("e", items, class_names=["a", "b"], prompt_names=["a", "b"])
    img = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    miss = {"sample_id": "s1", "image": "s1.png", "reason": "corrupt", "detail": "x"}
    feats = {"reads": SetFeatures(img[[0, 2, 3, 4]], text=img.copy(), kept=np.array([0, 2, 3, 4]), skipped=[miss]),
             "store": SetFeatures(img, text=img.copy())}
    keep, skipped = _common_items(es, feats)
    assert keep.tolist() == [0, 2, 3, 4] and skipped == [miss]
    for f in feats.values():
        sub, sub_set = _restrict(f, es, keep)
        assert sub.image[:, 0].tolist() == sub.text[:, 0].tolist() == [0, 2, 3, 4]
        assert [it.sample_id for it in sub_set.items] == ["s0", "s2", "s3", "s4"]
