"""Metrics against brute-force references on synthetic scores with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mmkd.eval.metrics import (bootstrap_ci, bootstrap_counts, classification_metrics, classification_report,
                               recall_at_k)


def brute_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p, q in itertools.product(pos, neg)]
    return float(np.mean(pairs))


def brute_metrics(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    pred = s.argmax(1)
    classes = range(s.shape[1])
    recalls = [np.mean(pred[y == c] == c) for c in classes if (y == c).any()]
    f1s = []
    for c in classes:
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    aucs = [brute_auc(s[y == c, c], s[y != c, c]) for c in classes if 0 < (y == c).sum() < len(y)]
    return {"accuracy": float(np.mean(pred == y)), "balanced_accuracy": float(np.mean(recalls)),
            "macro_auc": float(np.mean(aucs)), "macro_f1": float(np.mean(f1s))}


def test_perfect_scores_give_one():
    y = np.repeat(np.arange(4), 5)
    s = np.eye(4)[y] + 0.01
    assert classification_metrics(y, s) == pytest.approx(dict.fromkeys(brute_metrics(y, s), 1.0))


def test_inverted_scores_give_zero():
    y = np.array([0, 0, 0, 1, 1])
    s = np.stack([y.astype(float), 1 - y.astype(float)], axis=1)  # always the wrong class
    m = classification_metrics(y, s)
    assert m == pytest.approx({"accuracy": 0.0, "balanced_accuracy": 0.0, "macro_auc": 0.0, "macro_f1": 0.0})


def test_random_scores_match_brute_force_and_chance():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 400)
    s = rng.random((400, 5))
    m = classification_metrics(y, s)
    assert m == pytest.approx(brute_metrics(y, s))
    assert m["macro_auc"] == pytest.approx(0.5, abs=0.06)
    assert m["accuracy"] == pytest.approx(0.2, abs=0.06)


def test_ties_imbalance_and_missing_class_match_brute_force():
    rng = np.random.default_rng(2)
    y = np.array([0] * 30 + [1] * 5 + [3] * 15)  # class 2 never occurs
    s = np.round(rng.random((50, 4)), 1)  # many ties
    s[y == 0, 0] += 0.3
    assert classification_metrics(y, s) == pytest.approx(brute_metrics(y, s))


def test_bootstrap_counts_rows_sum_to_n():
    w = bootstrap_counts(7, 50, np.random.default_rng(0))
    assert w.shape == (50, 7) and (w.sum(1) == 7).all()


def test_bootstrap_matches_loop_reference_and_is_deterministic():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    s = rng.random((60, 3)) + 0.8 * np.eye(3)[y]
    ci = bootstrap_ci(y, s, resamples=200, seed=7)
    assert ci == bootstrap_ci(y, s, resamples=200, seed=7)
    assert ci != bootstrap_ci(y, s, resamples=200, seed=8)
    # The same resamples, drawn one by one with explicit indices.
    gen = np.random.default_rng(7)
    draws = [gen.integers(0, 60, size=(100, 60)) for _ in range(2)]
    vals = [brute_metrics(y[i], s[i])["accuracy"] for d in draws for i in d]
    assert ci["accuracy"] == pytest.approx(list(np.percentile(vals, [2.5, 97.5])))
    point = classification_metrics(y, s)
    for name, (lo, hi) in ci.items():
        assert lo <= point[name] <= hi and lo < hi


def test_report_has_ci_pairs():
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [0.7, 0.3], [0.5, 0.5]])
    r = classification_report(y, s, resamples=100)
    assert set(r) == {"accuracy", "balanced_accuracy", "macro_auc", "macro_f1", "accuracy_ci95",
                      "balanced_accuracy_ci95", "macro_auc_ci95", "macro_f1_ci95"}
    assert all(len(r[k]) == 2 for k in r if k.endswith("_ci95"))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="labels must lie"):
        classification_metrics(np.array([0, 3]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="zero samples"):
        classification_metrics(np.array([], dtype=int), np.zeros((0, 2)))


def test_recall_at_k_sets_and_single():
    ranked = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    assert recall_at_k(ranked, np.array([0, 1, 2]), (1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}
    assert recall_at_k(ranked, [{0, 2}, {0}, {5}], (1, 3)) == {1: 1 / 3, 3: 2 / 3}


def test_top5_accuracy_counts_labels_among_the_five_best_and_is_nan_below_five_classes():
    from mmkd.eval.metrics import top5_accuracy

    s = np.tile(np.arange(7, dtype=float), (3, 1))  # class 6 best, then 5, 4, 3, 2
    assert top5_accuracy(np.array([6, 2, 1]), s) == pytest.approx(2 / 3)
    assert np.isnan(top5_accuracy(np.array([0, 1]), np.eye(2)))
