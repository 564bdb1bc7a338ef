"""End to end on CPU: stage 1 then stage 2, export, exact resume, fixture store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmkd.distill.config import load_distill_config
from mmkd.distill.metrics import read_metrics
from mmkd.distill.recipe import distill


def _cfg(store, student_json, out, **kw):
    base = dict(store=str(store), student=str(student_json), out=str(out), batch_size=8, warmup_steps=2,
                lr=2e-3, num_workers=0, log_every=1, progress=False)
    base.update(kw)
    return load_distill_config(None, None, base)


def _mean(records, key, sl):
    vals = [r[key] for r in records][sl]
    return sum(vals) / len(vals)


@pytest.fixture(scope="module")
def stage1(tiny_store, student_json, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "s1"
    summary = distill(_cfg(tiny_store, student_json, out, stage=1, steps=12, checkpoint_every=6))
    assert summary.to_dict() == {"step": 12, "total_steps": 12, "finished": True, "out": str(out)}
    return out


def test_stage1_learns_and_exports(stage1):
    import open_clip
    from PIL import Image

    m = read_metrics(stage1)
    assert [r["step"] for r in m] == list(range(1, 13))
    assert _mean(m, "loss/clip", slice(-3, None)) < _mean(m, "loss/clip", slice(0, 3))
    assert all(r["logit_scale"] <= 100.0 for r in m)
    for name in ("config.yaml", "loss_curve.png", "checkpoints/last.pt", "export/open_clip_config.json"):
        assert (stage1 / name).is_file(), name
    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{stage1 / 'export'}")
    tok = open_clip.get_tokenizer(f"local-dir:{stage1 / 'export'}")
    with torch.no_grad():
        f = model.encode_image(preprocess(Image.new("RGB", (64, 48), "white")).unsqueeze(0))
        t = model.encode_text(tok(["ct lung"]))
    assert f.shape == (1, 32) and t.shape == (1, 32) and torch.isfinite(f).all()


@pytest.mark.parametrize("kd,extra", [("mmkd-clip", {}), ("multi", {"standardize": True, "teacher_weights": {"tb": 2.0}})])
def test_stage2_from_stage1(stage1, tiny_store, student_json, tmp_path, kd, extra):
    from safetensors.torch import load_file

    out = tmp_path / kd
    distill(_cfg(tiny_store, student_json, out, stage=2, kd=kd, steps=10, init=str(stage1), fd_weight=5.0,
                 **extra))
    m = read_metrics(out)
    for key in ("loss/clip", "loss/fd_img", "loss/fd_txt", "loss/icl", "loss/total"):
        assert key in m[0], key
    assert _mean(m, "loss/total", slice(-3, None)) < _mean(m, "loss/total", slice(0, 3))
    adaptors = load_file(str(out / "kd_adaptors.safetensors"))
    shapes = {tuple(v.shape) for k, v in adaptors.items() if k.endswith("weight")}
    if kd == "mmkd-clip":
        assert shapes == {(32, 32), (32, 48)}  # teacher dim -> student dim, stored with the run
    else:
        assert (48, 32) in shapes and "loss/icl/tb" in m[0]


def test_resume_equals_uninterrupted(stage1, tiny_store, student_json, tmp_path):
    kw = dict(stage=2, kd="mmkd-clip", steps=5, grad_accum=2, init=str(stage1), checkpoint_every=100)
    distill(_cfg(tiny_store, student_json, tmp_path / "a", **kw))
    first = distill(_cfg(tiny_store, student_json, tmp_path / "b", stop_at_step=2, **kw))
    assert first.finished is False and not (tmp_path / "b" / "export").exists()
    distill(_cfg(tiny_store, student_json, tmp_path / "b", resume=True, **kw))
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    # 10 micro-batches; the tiny store's 2 rows with no valid teacher are left out: 46 rows = 5 batches an epoch
    assert (a["step"], a["epoch"], a["batch_in_epoch"]) == (b["step"], b["epoch"], b["batch_in_epoch"]) == (5, 1, 5)
    for k, v in a["student"].items():
        assert torch.equal(v, b["student"][k]), k
    ma, mb = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in mb] == [1, 2, 3, 4, 5]
    assert [r["loss/total"] for r in ma] == [r["loss/total"] for r in mb]


def test_persistent_workers_across_epochs_and_resume(stage1, tiny_store, student_json, tmp_path):
    """Two workers that live across epochs (and a resume in between) train exactly what the
    in-process loader trains: same rows, order and per-row augmentation in every epoch."""
    kw = dict(stage=2, kd="mmkd-clip", steps=12, init=str(stage1), checkpoint_every=100)  # 5 batches an epoch
    distill(_cfg(tiny_store, student_json, tmp_path / "serial", **kw))
    distill(_cfg(tiny_store, student_json, tmp_path / "workers", stop_at_step=7, num_workers=2, **kw))
    distill(_cfg(tiny_store, student_json, tmp_path / "workers", resume=True, num_workers=2, **kw))
    a = torch.load(tmp_path / "serial" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "workers" / "checkpoints" / "last.pt", weights_only=True)
    assert (a["epoch"], a["batch_in_epoch"]) == (b["epoch"], b["batch_in_epoch"]) == (2, 2)
    for k, v in a["student"].items():
        assert torch.equal(v, b["student"][k]), k


def test_resume_without_checkpoint_says_so(tiny_store, student_json, tmp_path):
    with pytest.raises(FileNotFoundError, match="without --resume"):
        distill(_cfg(tiny_store, student_json, tmp_path / "none", stage=1, steps=1, resume=True))


def test_stage2_unknown_teacher_is_an_error(tiny_store, student_json, tmp_path):
    with pytest.raises(ValueError, match="unknown: \\['nope'\\]"):
        distill(_cfg(tiny_store, student_json, tmp_path / "x", stage=2, steps=1, teachers=["ta", "nope"]))


def test_stage2_on_imported_fixture_store(mmkd_demo_dir, student_json, tmp_path):
    import mmkd.store as mmkd_store
    if not hasattr(mmkd_store, "import_mmkd"):
        pytest.skip("mmkd.store.import_mmkd not available yet")
    store = mmkd_store.import_mmkd(mmkd_demo_dir, tmp_path / "store", with_projected=False)
    dims = {store.dim(t) for t in store.teachers}
    assert dims == {512, 768}
    for kd in ("mmkd-clip", "multi"):
        out = tmp_path / kd
        summary = distill(_cfg(tmp_path / "store", student_json, out, stage=2, kd=kd, steps=2, batch_size=4,
                               augment=False))
        assert summary.finished
        m = read_metrics(out)
        assert len(m) == 2 and all(r["loss/fd_img"] > 0 and r["loss/icl"] > 0 for r in m)
        cfg = (out / "config.yaml").read_text()
        assert "bmca_clip: 768" in cfg or "768" in cfg
