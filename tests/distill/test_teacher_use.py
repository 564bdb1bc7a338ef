"""Teacher use in stage 2: trusted masks, trust weights, UNIC teacher dropping, errors, the console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmkd.config import ConfigError
from mmkd.distill.config import load_distill_config
from mmkd.distill.data import DataSpec, StoreBatches, draw_weighted_teacher
from mmkd.distill.losses import multi_kd_loss
from mmkd.distill.metrics import read_metrics
from mmkd.distill.recipe import distill
from mmkd.distill.student import build_student, resolve_student
from mmkd.store import FeatureStore
from mmkd.store.trust import compute_trust, read_trust
from tests.distill.conftest import TINY_STUDENT, make_store

REPO = Path(__file__).resolve().parents[2]
MMKD = Path(sys.executable).parent / "mmkd"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same tiny store twice: without trust, and with pair-rank trust for ta and tb."""
    plain = make_store(tmp_path_factory.mktemp("plain"))
    trusted = make_store(tmp_path_factory.mktemp("trusted"))
    for t in ("ta", "tb"):
        compute_trust(FeatureStore.open(trusted), t, "pair-rank", threshold=0.95, reference=32)
    return plain, trusted


def _cfg(store, student_json, out, **kw):
    base = dict(store=str(store), student=str(student_json), out=str(out), batch_size=8, warmup_steps=2, lr=2e-3,
                num_workers=0, log_every=1, progress=False, stage=2, steps=3)
    base.update(kw)
    return load_distill_config(None, None, base)


def test_weighted_draw_follows_weights():
    valid = np.array([[True, True, False]] * 4000 + [[False, False, False], [True, False, True]])
    w = np.array([[1.0, 3.0, 5.0]] * 4000 + [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    u = np.random.default_rng(0).random(len(valid))
    c = draw_weighted_teacher(valid, w, u)
    assert set(c[:4000].tolist()) == {0, 1} and abs((c[:4000] == 1).mean() - 0.75) < 0.03
    assert c[4000] == -1 and c[4001] in (0, 2)  # none valid; zero weights: uniform among the valid


def test_trusted_mask_and_trust_in_batches(stores):
    _, trusted = stores
    student = build_student(resolve_student(TINY_STUDENT))
    spec = DataSpec(store=str(trusted), batch_size=8, seed=0, teachers=["ta", "tb"], with_features=True,
                    teacher_mask="trusted", teacher_weight="trust")
    ds = StoreBatches(spec, student.eval_transform, student.tokenizer)
    batch = ds.load(np.arange(0, 48, 3))
    store = FeatureStore.open(trusted)
    for j, t in enumerate(("ta", "tb")):
        trust, ok = read_trust(store, t, batch["rows"].numpy())
        assert np.array_equal(batch["valid"][:, j].numpy(), ok & store.valid(t)[batch["rows"].numpy()])
        assert np.allclose(batch["trust"][:, j].numpy(), np.where(batch["valid"][:, j].numpy(), trust, 0.0))
    ch = batch["choice"].numpy()
    assert all(c == -1 or batch["valid"][i, c] for i, c in enumerate(ch))


def test_trusted_mask_without_trust_names_the_command(stores, student_json, tmp_path):
    plain, _ = stores
    with pytest.raises(ValueError, match="mmkd store trust .* --teacher ta --teacher tb"):
        distill(_cfg(plain, student_json, tmp_path / "r", kd="multi", teacher_mask="trusted"))


def test_row_weights_zero_equals_absent_and_drop_keeps_highest():
    g = torch.Generator().manual_seed(0)
    b, d = 6, 8
    s_img = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    s_txt = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    heads = {t: (torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)) for t in ("a", "b")}
    tgts = {t: (torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)) for t in ("a", "b")}
    args = (s_img, s_txt, torch.tensor(2.0), {t: h[0] for t, h in heads.items()}, {t: h[1] for t, h in heads.items()},
            {t: x[0] for t, x in tgts.items()}, {t: x[1] for t, x in tgts.items()})
    full = {t: torch.ones(b, dtype=torch.bool) for t in ("a", "b")}
    half = {t: torch.tensor([True, True, True, False, False, False]) for t in ("a", "b")}
    w = {t: half[t].float() for t in ("a", "b")}
    weighted = multi_kd_loss(*args, full, row_weights=w)
    masked = multi_kd_loss(*args, half)
    assert torch.allclose(weighted["kd"], masked["kd"], rtol=1e-5, atol=1e-6)
    plain = multi_kd_loss(*args, full)
    per = {t: float(plain[f"fd_img/{t}"] * 0 + 50 * (plain[f"fd_img/{t}"] + plain[f"fd_txt/{t}"])
                    + plain[f"icl/{t}"]) for t in ("a", "b")}
    top = max(per, key=per.get)
    dropped = multi_kd_loss(*args, full, drop_u={"a": 0.0, "b": 0.0}, drop=0.5)
    assert float(dropped[f"dropped/{top}"]) == 0.0 and float(dropped[f"dropped/{'b' if top == 'a' else 'a'}"]) == 1
    assert float(dropped["kd"]) == pytest.approx(per[top], rel=1e-5)


def test_config_checks(tiny_store, student_json, tmp_path):
    with pytest.raises(ConfigError, match="teacher_drop .* --kd multi"):
        _cfg(tiny_store, student_json, tmp_path, kd="mmkd-clip", teacher_drop=0.3)
    with pytest.raises(ConfigError, match="teacher_mask 'x'"):
        _cfg(tiny_store, student_json, tmp_path, teacher_mask="x")
    cfg = _cfg(tiny_store, student_json, tmp_path, kd="multi", teachers_cfg={"mask": "trusted", "drop": 0.2})
    assert cfg.teachers_cfg.mask == "trusted" and cfg.teachers_cfg.drop == 0.2
    assert cfg.to_dict()["teachers_cfg"] == {"mask": "trusted", "weight": "none", "drop": 0.2}


@pytest.mark.parametrize("kd,extra", [("multi", {"teacher_weight": "trust", "teacher_drop": 0.5}),
                                      ("mmkd-clip", {"teacher_weight": "trust"})])
def test_distill_trusted_runs(stores, student_json, tmp_path, kd, extra):
    _, trusted = stores
    out = tmp_path / kd
    distill(_cfg(trusted, student_json, out, kd=kd, teacher_mask="trusted", **extra))
    m = read_metrics(out)
    assert len(m) == 3 and all(np.isfinite(r["loss/total"]) for r in m)
    if kd == "multi":
        assert "loss/dropped/ta" in m[0]


def test_cli_teacher_mask(stores, student_json, tmp_path):
    plain, trusted = stores
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    common = ["distill", "--stage", "2", "--student", str(student_json), "--steps", "2", "--batch-size", "8",
              "--num-workers", "0", "--no-progress", "--kd", "multi", "--teacher-mask", "trusted"]
    r = subprocess.run([str(MMKD), *common, "--store", str(plain), "--out", str(tmp_path / "a")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "mmkd store trust" in r.stderr, r.stderr[-2000:]
    r = subprocess.run([str(MMKD), *common, "--store", str(trusted), "--out", str(tmp_path / "b"),
                        "--teacher-drop", "0.5"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
