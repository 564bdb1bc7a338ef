"""The trained module (student + KD adaptors) and the stage's objective on a batch.

:class:`DistillModule` does all parameter work inside ``forward`` (student towers,
teacher heads or projections), so one DDP wrapper sees every parameter.
:func:`compute_terms` gathers what the losses need from every rank and applies the
stage's loss from :mod:`mmkd.distill.losses`; every rank computes the same terms
on the global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmkd.distill.dist import DistEnv, gather
from mmkd.distill.heads import TeacherHeads, TeacherProjections
from mmkd.distill.losses import (
    LossWeights,
    Terms,
    clip_loss,
    mmkd_clip_loss,
    multi_kd_loss,
)


class DistillModule(nn.Module):
    """Student plus optional KD adaptors (``TeacherProjections`` or ``TeacherHeads``)."""

    def __init__(self, student: nn.Module, kd: nn.Module | None = None, standardize: bool = False):
        super().__init__()
        self.student = student
        self.kd = kd
        self.standardize = standardize

    def forward(self, image: torch.Tensor, text: torch.Tensor, feats: dict | None = None,
                choice: torch.Tensor | None = None) -> dict[str, Any]:
        """Normalised student features, logit scale, and KD targets / head outputs."""
        s_img = F.normalize(self.student.encode_image(image).float(), dim=-1)
        s_txt = F.normalize(self.student.encode_text(text).float(), dim=-1)
        out: dict[str, Any] = {"img": s_img, "txt": s_txt, "logit_scale": self.student.logit_scale}
        if isinstance(self.kd, TeacherProjections) and feats is not None:
            out["t_img"], has = self.kd.select({t: f["image"] for t, f in feats.items()}, choice)
            out["t_txt"], _ = self.kd.select({t: f["text"] for t, f in feats.items()}, choice)
            out["has"] = has
        elif isinstance(self.kd, TeacherHeads) and feats is not None:
            out["h_img"], out["h_txt"] = self.kd(s_img, s_txt)
            prep = (lambda t, k, x: self.kd.standardize(t, k, x)) if self.standardize else (lambda t, k, x: x.float())
            out["t_img"] = {t: prep(t, "image", f["image"]) for t, f in feats.items()}
            out["t_txt"] = {t: prep(t, "text", f["text"]) for t, f in feats.items()}
        return out


def _g(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    return gather(x, env, with_grad=x.requires_grad)


def compute_terms(out: dict[str, Any], batch: dict[str, Any], env: DistEnv, kd: str | None,
                  weights: LossWeights, teachers: list[str],
                  teacher_weights: dict[str, float] | None = None, standardized: bool = False,
                  drop_u: dict[str, float] | None = None, drop: float = 0.0) -> Terms:
    """The stage's loss terms on the global batch (rows with unreadable images dropped).

    Args:
        out: :meth:`DistillModule.forward` output.
        batch: the data batch (``ok``, and for KD ``valid``).
        env: distributed environment.
        kd: ``None`` (stage 1), ``mmkd-clip`` or ``multi``.
        weights: loss weights.
        teachers: teacher order of ``batch["valid"]`` columns.
        teacher_weights: ``multi`` per-teacher weights.
        standardized: ``multi`` targets are standardised.
        drop_u, drop: ``multi`` teacher dropping (see :func:`mmkd.distill.losses.multi_kd_loss`); per-row
            weights come from ``batch["trust"]`` when the data carries it.
    """
    ok = gather(batch["ok"].to(out["img"].device), env, with_grad=False).bool()
    img, txt = _g(out["img"], env)[ok], _g(out["txt"], env)[ok]
    scale = out["logit_scale"]
    if kd is None:
        return clip_loss(img, txt, scale)
    if kd == "mmkd-clip":
        has = gather(out["has"], env, with_grad=False)[ok]
        return mmkd_clip_loss(img, txt, scale, _g(out["t_img"], env)[ok], _g(out["t_txt"], env)[ok], has, weights)
    valid_all = gather(batch["valid"].to(img.device), env, with_grad=False)[ok]
    valid = {t: valid_all[:, j] for j, t in enumerate(teachers)}
    hi = {t: _g(v, env)[ok] for t, v in out["h_img"].items()}
    ht = {t: _g(v, env)[ok] for t, v in out["h_txt"].items()}
    ti = {t: _g(v, env)[ok] for t, v in out["t_img"].items()}
    tt = {t: _g(v, env)[ok] for t, v in out["t_txt"].items()}
    rw = None
    if "trust" in batch:
        trust = gather(batch["trust"].to(img.device), env, with_grad=False)[ok]
        rw = {t: trust[:, j] for j, t in enumerate(teachers)}
    return multi_kd_loss(img, txt, scale, hi, ht, ti, tt, valid, weights, teacher_weights, standardized,
                         row_weights=rw, drop_u=drop_u, drop=drop)
