"""Linear probe: multinomial logistic regression on frozen image features.

Full-batch L-BFGS in torch; the L2 strength is picked on a stratified validation
split of the training part, then the probe is refit on the whole training part.
Sets with ``split`` labels use them (train / val / test); sets without are
cross-fitted: each fold is predicted by a probe trained on the other folds, so
every sample gets exactly one out-of-fold prediction.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from mmkd.eval.metrics import classification_report, with_top5
from mmkd.eval.splits import check_probe_labels, split_masks, stratified_folds, stratified_holdout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    """Linear-probe settings.

    Attributes:
        l2_grid: candidate L2 strengths (penalty ``l2 * ||W||^2`` added to the mean CE).
        max_iter: L-BFGS iterations per fit.
        val_fraction: share of the training part held out to pick ``l2``.
        folds: cross-fitting folds for sets without split labels.
        seed: seed of the splits.
    """

    l2_grid: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    max_iter: int = 100
    val_fraction: float = 0.2
    folds: int = 5
    seed: int = 0


_SMALL = 1 << 20  # feature-matrix elements below which one thread is faster


@contextmanager
def _threads_for(x: np.ndarray):
    """One torch thread for small probes, restored afterwards.

    L-BFGS on a small matrix is hundreds of tiny ops; with several OpenMP threads
    on a busy machine each op waits for the others (measured: 30x slower on 2
    loaded cores), while one thread does not.
    """
    import torch

    old = torch.get_num_threads()
    if x.size < _SMALL:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fit_logreg(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, max_iter: int = 100,
               init: tuple | None = None):
    """Fit softmax regression with L-BFGS on standardised features.

    Args:
        x: (n, D) features.
        y: (n,) labels.
        num_classes: output classes.
        l2: penalty ``l2 * ||W||^2`` added to the mean cross-entropy.
        max_iter: L-BFGS iterations.
        init: ``predict.params`` of an earlier fit on the same data (warm start).

    Returns:
        A function mapping (m, D) features to (m, classes) probabilities; its
        ``params`` attribute holds the fitted (W, b) for warm starts.
    """
    import torch

    xt = torch.as_tensor(x, dtype=torch.float64)
    mean, std = xt.mean(0), xt.std(0, unbiased=False).clamp_min(1e-8)
    xt = (xt - mean) / std
    yt = torch.as_tensor(y, dtype=torch.int64)
    w0, b0 = init if init is not None else (torch.zeros(xt.shape[1], num_classes, dtype=torch.float64),
                                            torch.zeros(num_classes, dtype=torch.float64))
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_, b_ = w.detach(), b.detach()

    def predict(z: np.ndarray) -> np.ndarray:
        zt = (torch.as_tensor(z, dtype=torch.float64) - mean) / std
        return torch.softmax(zt @ w_ + b_, dim=1).numpy()

    predict.params = (w_, b_)
    return predict


def select_l2(x: np.ndarray, y: np.ndarray, num_classes: int, cfg: ProbeConfig) -> float:
    """The L2 strength with the best validation accuracy (ties go to the stronger penalty).

    The grid is walked from strong to weak penalty, each fit warm-started from the
    previous one (the regularisation path), which keeps the weak-penalty fits cheap.
    """
    val = stratified_holdout(y, cfg.val_fraction, cfg.seed)
    if not val.any() or val.all():
        return float(np.median(cfg.l2_grid))
    best, best_acc, init = cfg.l2_grid[0], -1.0, None
    for l2 in sorted(cfg.l2_grid, reverse=True):
        predict = fit_logreg(x[~val], y[~val], num_classes, l2, cfg.max_iter, init=init)
        init = predict.params
        acc = float((predict(x[val]).argmax(1) == y[val]).mean())
        if acc > best_acc:
            best, best_acc = l2, acc
    return float(best)


def train_and_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, num_classes: int,
                      cfg: ProbeConfig) -> np.ndarray:
    """Pick ``l2`` on a validation split of the training data, refit, return test probabilities."""
    l2 = select_l2(x_train, y_train, num_classes, cfg)
    log.debug("linear probe: l2=%g on %d training samples", l2, len(y_train))
    return fit_logreg(x_train, y_train, num_classes, l2, cfg.max_iter)(x_test)


def crossfit_predict(x: np.ndarray, y: np.ndarray, num_classes: int, cfg: ProbeConfig) -> np.ndarray:
    """Out-of-fold probabilities for every sample (stratified folds)."""
    folds = min(cfg.folds, int(np.bincount(y).max()))
    fold = stratified_folds(y, max(folds, 2), cfg.seed)
    prob = np.zeros((len(y), num_classes))
    for f in np.unique(fold):
        test = fold == f
        prob[test] = train_and_predict(x[~test], y[~test], x[test], num_classes, cfg)
    return prob


def evaluate_linear_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                          splits: np.ndarray | None = None, cfg: ProbeConfig = ProbeConfig(),
                          resamples: int = 1000, seed: int = 0) -> dict:
    """Linear-probe metrics with bootstrap CIs on the test samples.

    Args:
        features: (n, D) frozen image features.
        labels: (n,) integer labels in [0, num_classes).
        num_classes: number of classes of the set.
        splits: optional (n,) strings ``train`` / ``val`` / ``test``; ``val`` joins the
            training part (the L2 strength is picked on a split of it). Without it
            the set is cross-fitted.
        cfg: probe settings.
        resamples: bootstrap resamples.
        seed: bootstrap seed.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if splits is not None:
        train, test = split_masks(splits, "linear probe")
        check_probe_labels(labels[train], "linear probe")
        with _threads_for(features):
            prob = train_and_predict(features[train], labels[train], features[test], num_classes, cfg)
        return with_top5(classification_report(labels[test], prob, resamples=resamples, seed=seed), labels[test], prob)
    check_probe_labels(labels, "linear probe")
    with _threads_for(features):
        prob = crossfit_predict(features, labels, num_classes, cfg)
    return with_top5(classification_report(labels, prob, resamples=resamples, seed=seed), labels, prob)
