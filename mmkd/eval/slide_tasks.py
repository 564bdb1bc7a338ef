"""Diagnosis and survival on a :class:`~mmkd.eval.slides.SlideSet`: k-fold by patient, ABMIL vs mean pooling."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from mmkd.eval.bags import BagSource
from mmkd.eval.encoders import Encoder
from mmkd.eval.cv import check_group_folds, group_folds
from mmkd.eval.metrics import bootstrap_ci, classification_metrics, softmax
from mmkd.eval.mil import MILConfig, build_head, predict, train_head
from mmkd.eval.rows import Metrics
from mmkd.eval.slides import SlideSet, bag_source
from mmkd.eval.survival import concordance_index, cox_loss
from mmkd.eval.types import RunOptions

log = logging.getLogger(__name__)

HEADS = ("abmil", "meanpool")
_SUFFIX = {"abmil": "", "meanpool": "_meanpool"}


def _mean_bags(load: Callable[[int], np.ndarray], n: int) -> np.ndarray:
    return np.stack([load(i).mean(axis=0) for i in range(n)]).astype(np.float32)


def _fold_stats(values: list[float], name: str) -> Metrics:
    v = np.asarray(values, dtype=np.float64)
    ok = v[~np.isnan(v)]
    return {f"{name}_folds": [None if np.isnan(x) else float(x) for x in v],
            f"{name}_mean": float(ok.mean()) if len(ok) else float("nan"),
            f"{name}_std": float(ok.std()) if len(ok) else float("nan")}


def patient_bootstrap(y: np.ndarray, scores: np.ndarray, patients: list[str], *, resamples: int = 1000,
                      seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile CIs of the classification metrics, resampling patients (all their slides together).

    Slides of one patient are correlated, so resampling slides would make the
    intervals too narrow; each resample draws patients with replacement and
    weights every slide by its patient's count.
    """
    order = {p: i for i, p in enumerate(dict.fromkeys(patients))}  # first-seen order: seeds resample alike
    groups = np.array([order[p] for p in patients])
    cis = bootstrap_ci(y, scores, resamples=resamples, seed=seed, level=level, groups=groups)
    return {f"{k}_ci95": v for k, v in cis.items()}


def run_diagnosis(src: BagSource, sset: SlideSet, cfg: MILConfig, *, seed: int = 0,
                  resamples: int = 1000) -> dict[str, Metrics]:
    """Out-of-fold slide classification with ABMIL and mean pooling.

    Returns:
        ``{"diagnosis": {...}, "diagnosis_meanpool": {...}}``: pooled out-of-fold
        accuracy, balanced accuracy, macro AUC, macro F1 with 95% bootstrap CIs
        (resampling patients), per-fold values with mean / std, and counts.
    """
    src.check(sset.slide_ids)
    y, k, n = sset.labels, len(sset.class_names), len(sset.slide_ids)
    fold = group_folds(sset.patients, sset.folds, labels=y, seed=seed)
    check_group_folds(sset.patients, fold)
    load = lambda i: src.load(sset.slide_ids[i])  # noqa: E731
    means = _mean_bags(load, n)
    dim = means.shape[1]
    out: dict[str, dict[str, Any]] = {}
    for kind in HEADS:
        loader = load if kind == "abmil" else (lambda i: means[i][None])
        scores, per_fold = np.zeros((n, k)), []
        t0 = time.perf_counter()
        for f in range(sset.folds):
            tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            counts = np.bincount(y[tr], minlength=k).astype(np.float32)
            weight = torch.tensor(np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / k, 0.0),
                                  dtype=torch.float32, device=cfg.device or "cpu")
            labels = torch.as_tensor(y, device=cfg.device or "cpu")

            def loss(out_b, b, weight=weight, labels=labels):
                return torch.nn.functional.cross_entropy(out_b, labels[b], weight=weight)

            torch.manual_seed(seed * 1000 + f)
            model = build_head(kind, dim, k, cfg)
            train_head(model, loader, tr, loss, cfg, separable=True, seed=seed * 1000 + f,
                       batch_bags=cfg.batch_bags or 1)
            scores[te] = softmax(predict(model, loader, te, cfg.device))
            per_fold.append(classification_metrics(y[te], scores[te]))
        rep: dict[str, Any] = dict(classification_metrics(y, scores))
        if resamples > 0:
            rep.update(patient_bootstrap(y, scores, sset.patients, resamples=resamples, seed=seed))
        for m in ("balanced_accuracy", "macro_auc", "macro_f1"):
            rep.update(_fold_stats([pf[m] for pf in per_fold], m))
        rep.update(n_slides=n, n_patients=len(set(sset.patients)), folds=sset.folds, head=kind)
        log.info("diagnosis %s on %s: %.1f training slides/s", kind, sset.name,
                 n * (sset.folds - 1) * cfg.epochs / (time.perf_counter() - t0))
        out["diagnosis" + _SUFFIX[kind]] = rep
    return out


def run_survival(src: BagSource, sset: SlideSet, cfg: MILConfig, *, seed: int = 0) -> dict[str, Metrics]:
    """Patient-level survival with a Cox loss; Harrell's C-index per fold.

    A patient's bag is the concatenation of their slides' patches (loaded one
    patient at a time).

    Returns:
        ``{"survival": {...}, "survival_meanpool": {...}}`` with ``c_index`` (mean over
        folds), ``c_index_std``, ``c_index_folds`` and counts.
    """
    src.check(sset.slide_ids)
    patients = sorted(set(sset.patients))
    slides_of: dict[str, list[str]] = {p: [] for p in patients}
    first: dict[str, int] = {}
    for i, (s, p) in enumerate(zip(sset.slide_ids, sset.patients)):
        slides_of[p].append(s)
        first.setdefault(p, i)
    t = np.array([sset.time[first[p]] for p in patients], dtype=np.float64)
    e = np.array([sset.event[first[p]] for p in patients], dtype=np.int64)
    fold = group_folds(patients, sset.folds, labels=e, seed=seed)
    load = lambda i: np.concatenate([src.load(s) for s in slides_of[patients[i]]])  # noqa: E731
    means = _mean_bags(load, len(patients))
    dev = cfg.device or "cpu"
    tt, et = torch.as_tensor(t, dtype=torch.float32, device=dev), torch.as_tensor(e, device=dev)

    def loss(out_b: torch.Tensor, b) -> torch.Tensor:
        return cox_loss(out_b[:, 0], tt[list(b)], et[list(b)])

    out: dict[str, dict[str, Any]] = {}
    for kind in HEADS:
        loader = load if kind == "abmil" else (lambda i: means[i][None])
        per_fold = []
        for f in range(sset.folds):
            tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            torch.manual_seed(seed * 1000 + f)
            model = build_head(kind, means.shape[1], 1, cfg)
            train_head(model, loader, tr, loss, replace(cfg), separable=False, seed=seed * 1000 + f,
                       batch_bags=cfg.batch_bags or 32)
            risk = predict(model, loader, te, cfg.device)[:, 0]
            per_fold.append(concordance_index(t[te], e[te], risk))
        stats = _fold_stats(per_fold, "c_index")
        out["survival" + _SUFFIX[kind]] = {
            "c_index": stats["c_index_mean"], "c_index_std": stats["c_index_std"],
            "c_index_folds": stats["c_index_folds"], "n_patients": len(patients), "n_slides": len(sset.slide_ids),
            "n_events": int(e.sum()), "folds": sset.folds, "head": kind}
    return out


def run_slide_set(encoder: Encoder, sset: SlideSet, opts: RunOptions = RunOptions()) -> dict[str, Metrics]:
    """The set's task (diagnosis or survival) on ``encoder``'s patch features."""
    src = bag_source(sset, encoder, opts.cache, opts.batch_size)
    cfg = replace(sset.mil, folds=sset.folds, device=opts.device)
    log.info("%s on %s (%s): %d slides from %s", sset.task, sset.name, encoder.name, len(sset.slide_ids), src.kind)
    if sset.task == "diagnosis":
        return run_diagnosis(src, sset, cfg, seed=opts.seed, resamples=opts.resamples)
    return run_survival(src, sset, cfg, seed=opts.seed)
