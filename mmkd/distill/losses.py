"""Distillation losses. Each returns a dict of named terms; ``total`` is their weighted sum.

All functions are pure functions of a whole (already gathered) batch, so DDP only
has to gather inputs; the terms are then the same as one process on the global
batch. Student features given here are L2-normalised.

- :func:`clip_loss`: symmetric InfoNCE (stage 1, and the CLIP term of stage 2).
- :func:`mmkd_clip_loss`: the official MMKD-CLIP stage 2 (one random valid teacher
  per row; ``CLIP + 50 (MSE_img + MSE_txt) + ICL``).
- :func:`multi_kd_loss`: all valid teachers per row through learned per-teacher
  heads, FD + ICL per teacher, averaged over the teachers present.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from mmkd.distill.config import LossWeights, parse_icl_scale  # noqa: F401  (parse_icl_scale: re-exported)

Terms = dict[str, torch.Tensor]


def _contrastive(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric cross entropy of ``scale * a @ b.T`` with matching rows as positives."""
    logits = scale * a @ b.t()
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> Terms:
    """Symmetric InfoNCE.

    Args:
        img: (B, D) normalised image features.
        txt: (B, D) normalised text features.
        logit_scale: the learnable log-temperature (the multiplier is its exp).
    """
    clip = _contrastive(img, txt, logit_scale.exp())
    return {"clip": clip, "total": clip}


def _icl(s_img: torch.Tensor, s_txt: torch.Tensor, t_img: torch.Tensor, t_txt: torch.Tensor,
         scale: torch.Tensor | float) -> torch.Tensor:
    """``½[CE(c·s_img·t_txtᵀ) + CE(c·s_txt·t_imgᵀ)]`` with row i matching row i."""
    labels = torch.arange(s_img.shape[0], device=s_img.device)
    return 0.5 * (F.cross_entropy(scale * s_img @ t_txt.t(), labels)
                  + F.cross_entropy(scale * s_txt @ t_img.t(), labels))


def _icl_rows(s_img: torch.Tensor, s_txt: torch.Tensor, t_img: torch.Tensor, t_txt: torch.Tensor,
              scale: torch.Tensor | float, w: torch.Tensor) -> torch.Tensor:
    """:func:`_icl` with each row's cross-entropy weighted by ``w`` (a weighted mean)."""
    labels = torch.arange(s_img.shape[0], device=s_img.device)
    ce = 0.5 * (F.cross_entropy(scale * s_img @ t_txt.t(), labels, reduction="none")
                + F.cross_entropy(scale * s_txt @ t_img.t(), labels, reduction="none"))
    return (ce * w).sum() / w.sum().clamp_min(1e-12)


def _f(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 autocast outputs are upcast; float64 is kept)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _row_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row mean squared error over the feature dim, (B,)."""
    return (_f(a) - _f(b)).pow(2).mean(dim=1)


def mmkd_clip_loss(s_img: torch.Tensor, s_txt: torch.Tensor, logit_scale: torch.Tensor,
                   t_img: torch.Tensor, t_txt: torch.Tensor, has_target: torch.Tensor,
                   weights: LossWeights | None = None) -> Terms:
    """The official stage-2 loss: ``clip·CLIP + fd·(MSE_img + MSE_txt) + icl·ICL``.

    Args:
        s_img, s_txt: (B, D) normalised student features.
        logit_scale: the student's log-temperature (for the CLIP term).
        t_img, t_txt: (B, D) the chosen teacher's features, already mapped to the
            student dim and normalised; rows without a target may hold anything.
        has_target: (B,) bool, rows that have a valid teacher. Rows without one
            contribute only to the CLIP term.
        weights: weights and the ICL multiplier.
    """
    w = weights or LossWeights()
    terms = clip_loss(s_img, s_txt, logit_scale)
    m = has_target.bool()
    if m.any():
        fd_img = _row_mse(s_img[m], t_img[m]).mean()
        fd_txt = _row_mse(s_txt[m], t_txt[m]).mean()
        icl = _icl(s_img[m], s_txt[m], t_img[m], t_txt[m], w.icl_multiplier(logit_scale))
    else:
        fd_img = fd_txt = icl = s_img.sum() * 0.0
    terms.update(fd_img=fd_img, fd_txt=fd_txt, icl=icl)
    terms["total"] = w.clip * terms["clip"] + w.fd * (fd_img + fd_txt) + w.icl * icl
    return terms


def multi_kd_loss(s_img: torch.Tensor, s_txt: torch.Tensor, logit_scale: torch.Tensor,
                  head_img: dict[str, torch.Tensor], head_txt: dict[str, torch.Tensor],
                  t_img: dict[str, torch.Tensor], t_txt: dict[str, torch.Tensor],
                  valid: dict[str, torch.Tensor], weights: LossWeights | None = None,
                  teacher_weights: dict[str, float] | None = None,
                  standardized: bool = False, row_weights: dict[str, torch.Tensor] | None = None,
                  drop_u: dict[str, float] | None = None, drop: float = 0.0) -> Terms:
    """All valid teachers per row: FD + ICL per teacher through learned heads.

    For teacher ``t`` over its valid rows ``V_t``:
    ``FD_t = MSE(h_t(s), t)`` per modality (``h_t`` normalised unless targets are
    standardised), ``ICL_t`` as in CLIP-KD on the normalised head outputs and the
    normalised teacher features. ``KD = Σ_t w_t (fd·FD_t + icl·ICL_t) / Σ_t w_t``
    over teachers with at least one valid row. ``total = clip·CLIP + KD``.

    Args:
        s_img, s_txt, logit_scale: the student's normalised features and log-temperature.
        head_img, head_txt: teacher -> (B, D_t) raw head outputs on the student features.
        t_img, t_txt: teacher -> (B, D_t) targets (standardised when ``standardized``).
        valid: teacher -> (B,) bool validity.
        weights: loss weights.
        teacher_weights: optional teacher -> weight (default 1 each).
        standardized: targets are per-dim standardised; FD then compares raw head outputs.
        row_weights: optional teacher -> (B,) per-row weights (e.g. trust): FD and ICL
            become weighted means over the teacher's valid rows (rows of weight 0 count as absent).
        drop_u: teacher -> a uniform in [0, 1) of this step (the same on every rank).
        drop: UNIC teacher dropping: teacher ``t`` leaves this step's KD when
            ``drop_u[t] < drop``, except the teacher of the highest loss, always kept;
            ``dropped/<t>`` terms record it.
    """
    w = weights or LossWeights()
    terms = clip_loss(s_img, s_txt, logit_scale)
    kd = s_img.sum() * 0.0
    norm = 0.0
    fd_img_all, fd_txt_all, icl_all = [], [], []
    per_teacher: dict[str, tuple[float, torch.Tensor]] = {}
    for t, h_img in head_img.items():
        m = valid[t].bool()
        if not m.any():
            # keep every head in the graph so DDP sees a gradient for each parameter
            kd = kd + 0.0 * (h_img.sum() + head_txt[t].sum())
            continue
        rw = None
        if row_weights is not None:  # rows of weight 0 leave the teacher's rows (also as ICL negatives)
            m = m & (row_weights[t] > 0)
            if not bool(m.any()):
                kd = kd + 0.0 * (h_img.sum() + head_txt[t].sum())
                continue
            rw = _f(row_weights[t][m])
        hi, ht = _f(h_img[m]), _f(head_txt[t][m])
        ni, nt = F.normalize(hi, dim=-1), F.normalize(ht, dim=-1)
        ti, tt = _f(t_img[t][m]).to(hi.dtype), _f(t_txt[t][m]).to(ht.dtype)
        mi, mt = _row_mse(hi if standardized else ni, ti), _row_mse(ht if standardized else nt, tt)
        if standardized:
            ti, tt = F.normalize(ti, dim=-1), F.normalize(tt, dim=-1)
        if rw is None:
            fd_i, fd_t = mi.mean(), mt.mean()
            icl = _icl(ni, nt, ti, tt, w.icl_multiplier(logit_scale))
        else:
            fd_i, fd_t = (mi * rw).sum() / rw.sum(), (mt * rw).sum() / rw.sum()
            icl = _icl_rows(ni, nt, ti, tt, w.icl_multiplier(logit_scale), rw)
        wt = float((teacher_weights or {}).get(t, 1.0))
        per_teacher[t] = (wt, w.fd * (fd_i + fd_t) + w.icl * icl)
        terms[f"fd_img/{t}"], terms[f"fd_txt/{t}"], terms[f"icl/{t}"] = fd_i, fd_t, icl
        fd_img_all.append(fd_i)
        fd_txt_all.append(fd_t)
        icl_all.append(icl)
    if per_teacher:
        keep = set(per_teacher)
        if drop > 0 and drop_u is not None:
            top = max(per_teacher, key=lambda t: float(per_teacher[t][1].detach()))
            keep = {t for t in per_teacher if t == top or float(drop_u.get(t, 1.0)) >= drop}
        for t, (wt, loss) in per_teacher.items():
            if t in keep:
                kd = kd + wt * loss
                norm += wt
            else:
                kd = kd + 0.0 * loss
            if drop > 0:
                terms[f"dropped/{t}"] = s_img.new_tensor(float(t not in keep))
    if norm > 0:
        kd = kd / norm
    zero = s_img.sum() * 0.0
    terms["fd_img"] = torch.stack(fd_img_all).mean() if fd_img_all else zero
    terms["fd_txt"] = torch.stack(fd_txt_all).mean() if fd_txt_all else zero
    terms["icl"] = torch.stack(icl_all).mean() if icl_all else zero
    terms["kd"] = kd
    terms["total"] = w.clip * terms["clip"] + kd
    return terms
