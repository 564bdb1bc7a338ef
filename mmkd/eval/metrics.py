"""Classification and retrieval metrics in plain numpy, with vectorised bootstrap CIs.

Every classification metric is written once as a function of per-sample *weights*
(counts): the point estimate uses weight 1 for every sample, and a bootstrap
resample is the same computation with multinomial counts. That turns 1,000
resamples into a few matrix products instead of 1,000 Python loops.
"""

from __future__ import annotations

import numpy as np

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "macro_auc", "macro_f1")
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
_CHUNK = 100  # resamples per vectorised chunk: bounds memory at _CHUNK x n


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or y.ndim != 1 or len(y) != len(s):
        raise ValueError(f"expected labels (n,) and scores (n, classes); got {y.shape} and {s.shape}")
    if len(y) == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if y.min() < 0 or y.max() >= s.shape[1]:
        raise ValueError(f"labels must lie in [0, {s.shape[1]}); got range [{y.min()}, {y.max()}]")
    return y, s


def _confusion_terms(y: np.ndarray, pred: np.ndarray, w: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Per-class weighted tp, support (true count) and predicted count; ``w`` is (B, n)."""
    true_1h = np.eye(k)[y]  # (n, k)
    pred_1h = np.eye(k)[pred]
    tp = w @ (true_1h * pred_1h)
    return tp, w @ true_1h, w @ pred_1h


def _accuracy(tp: np.ndarray, w: np.ndarray) -> np.ndarray:
    return tp.sum(axis=1) / w.sum(axis=1)


def _balanced_accuracy(tp: np.ndarray, support: np.ndarray) -> np.ndarray:
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    return recall.sum(axis=1) / present.sum(axis=1)


def _macro_f1(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    # Classes seen in truth or predictions count, as scikit-learn's default labels do.
    denom = support + predicted
    used = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=used)
    return f1.sum(axis=1) / used.sum(axis=1)


def _macro_auc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC averaged over classes with both positives and negatives (per row of ``w``)."""
    k = s.shape[1]
    total = np.zeros(w.shape[0])
    count = np.zeros(w.shape[0])
    for c in range(k):
        order = np.argsort(s[:, c], kind="stable")
        sc = s[order, c]
        starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])  # tie groups
        pos = (y[order] == c).astype(np.float64)
        wo = w[:, order]
        g_pos = np.add.reduceat(wo * pos, starts, axis=1)
        g_neg = np.add.reduceat(wo * (1 - pos), starts, axis=1)
        below = np.cumsum(g_neg, axis=1) - g_neg
        n_pos, n_neg = g_pos.sum(axis=1), g_neg.sum(axis=1)
        ok = (n_pos > 0) & (n_neg > 0)
        auc = np.divide((g_pos * (below + 0.5 * g_neg)).sum(axis=1), n_pos * n_neg,
                        out=np.zeros_like(n_pos), where=ok)
        total += auc
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _metrics_for_weights(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    k = s.shape[1]
    pred = s.argmax(axis=1)
    tp, support, predicted = _confusion_terms(y, pred, w, k)
    return {
        "accuracy": _accuracy(tp, w),
        "balanced_accuracy": _balanced_accuracy(tp, support),
        "macro_auc": _macro_auc(y, s, w),
        "macro_f1": _macro_f1(tp, support, predicted),
    }


def classification_metrics(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, one-vs-rest macro AUC and macro F1.

    Args:
        y_true: integer labels, shape (n,).
        scores: per-class scores, shape (n, classes); predictions are the argmax.
            For macro AUC these should be probabilities (e.g. a softmax).

    Returns:
        Mapping metric name -> value. ``macro_auc`` is NaN when no class has both
        positive and negative samples.
    """
    y, s = _check(y_true, scores)
    out = _metrics_for_weights(y, s, np.ones((1, len(y))))
    return {name: float(v[0]) for name, v in out.items()}


def bootstrap_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) matrix of how often each sample is drawn in each resample."""
    idx = rng.integers(0, n, size=(resamples, n))
    offsets = (np.arange(resamples) * n)[:, None]
    return np.bincount((idx + offsets).ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def bootstrap_ci(y_true: np.ndarray, scores: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED, level: float = 0.95,
                 groups: np.ndarray | None = None) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals for :func:`classification_metrics`.

    Args:
        y_true: integer labels (n,).
        scores: per-class scores (n, classes).
        resamples: number of bootstrap resamples.
        seed: seed of the resampling generator; same inputs and seed give the same CIs.
        level: coverage of the interval.
        groups: optional group index per sample (0..G-1, e.g. a slide's patient): groups
            are drawn with replacement and each sample weighted by its group's count;
            ``None`` draws samples (each its own group).

    Returns:
        Mapping ``<metric>`` -> ``[low, high]`` (NaN where a metric is undefined in
        every resample).
    """
    y, s = _check(y_true, scores)
    rng = np.random.default_rng(seed)
    values: dict[str, list[np.ndarray]] = {m: [] for m in CLASSIFICATION_METRICS}
    for start in range(0, resamples, _CHUNK):
        if groups is None:
            w = bootstrap_counts(len(y), min(_CHUNK, resamples - start), rng)
        else:
            w = bootstrap_counts(int(groups.max()) + 1, min(_CHUNK, resamples - start), rng)[:, groups]
            w = w[w.sum(axis=1) > 0]
        for name, v in _metrics_for_weights(y, s, w).items():
            values[name].append(v)
    alpha = (1 - level) / 2 * 100
    out = {}
    for name, chunks in values.items():
        v = np.concatenate(chunks)
        v = v[~np.isnan(v)]
        out[name] = [float(x) for x in np.percentile(v, [alpha, 100 - alpha])] if len(v) else [float("nan")] * 2
    return out


def top5_accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Share of samples whose label is among the 5 highest scores; NaN with fewer than 5 classes
    (as clip_benchmark's ``acc5``)."""
    y, s = np.asarray(y_true), np.asarray(scores)
    if s.ndim != 2 or s.shape[1] < 5 or len(y) == 0:
        return float("nan")
    top = np.argpartition(-s, 4, axis=1)[:, :5]
    return float((top == y[:, None]).any(axis=1).mean())


def with_top5(report: dict[str, float | list[float]], y_true: np.ndarray,
              scores: np.ndarray) -> dict[str, float | list[float]]:
    """``report`` with ``top5_accuracy`` added (zero-shot and linear probe, so ``acc5`` exists in csv rows)."""
    report["top5_accuracy"] = top5_accuracy(y_true, scores)
    return report


def classification_report(y_true: np.ndarray, scores: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES,
                          seed: int = DEFAULT_SEED) -> dict[str, float | list[float]]:
    """Point estimates and ``<metric>_ci95`` pairs, as written into results.json."""
    point = classification_metrics(y_true, scores)
    out: dict[str, float | list[float]] = dict(point)
    if resamples > 0:
        for name, ci in bootstrap_ci(y_true, scores, resamples=resamples, seed=seed).items():
            out[f"{name}_ci95"] = ci
    return out


def recall_at_k(ranked: np.ndarray, positives: list[set[int]] | np.ndarray, ks: tuple[int, ...]) -> dict[int, float]:
    """Fraction of queries with at least one positive among the first k ranked items.

    Args:
        ranked: (queries, >= max(ks)) item indices, best first.
        positives: per query, the set of correct item indices (or an (queries,)
            array of single correct indices).
        ks: cut-offs.
    """
    ranked = np.asarray(ranked)
    if isinstance(positives, np.ndarray):
        hit_rank = np.where(ranked == positives[:, None], np.arange(ranked.shape[1]), ranked.shape[1]).min(axis=1)
    else:
        hit_rank = np.array([
            next((r for r, item in enumerate(row) if item in pos), ranked.shape[1])
            for row, pos in zip(ranked.tolist(), positives)
        ])
    return {k: float((hit_rank < k).mean()) for k in ks}
