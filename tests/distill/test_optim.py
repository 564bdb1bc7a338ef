"""AdamW param groups and the cosine schedule."""

from __future__ import annotations

import math

import pytest

from mmkd.distill.optim import (
    OptimConfig,
    build_optimizer,
    build_scheduler,
    cosine_lambda,
)
from mmkd.distill.student import build_student, resolve_student
from tests.distill.conftest import TINY_STUDENT


def test_param_groups_follow_the_paper():
    model = build_student(resolve_student(TINY_STUDENT)).model
    opt = build_optimizer({"student": model}, OptimConfig())
    decay, keep = opt.param_groups
    assert decay["weight_decay"] == 0.2 and keep["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    names = {id(p): n for n, p in model.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "logit_scale" in kept
    assert all(("bias" in n or "ln" in n or model.get_parameter(n).ndim < 2) for n in kept)
    assert "visual.conv1.weight" in decayed and "token_embedding.weight" in decayed
    assert not any(n.endswith(".bias") for n in decayed)


def test_cosine_with_warmup():
    assert cosine_lambda(0, 100, 10) == pytest.approx(0.1)
    assert cosine_lambda(9, 100, 10) == pytest.approx(1.0)
    assert cosine_lambda(10, 100, 10) == pytest.approx(1.0)
    assert cosine_lambda(55, 100, 10) == pytest.approx(0.5)
    assert cosine_lambda(100, 100, 10) == pytest.approx(0.0)
    model = build_student(resolve_student(TINY_STUDENT)).model
    cfg = OptimConfig(lr=1e-3, warmup_steps=2, min_lr=1e-4)
    opt = build_optimizer({"student": model}, cfg)
    sched = build_scheduler(opt, cfg, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5] >= 1e-4
    assert lrs[3] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.25)))
