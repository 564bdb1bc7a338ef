"""Zero-shot, linear probe, retrieval and kNN on synthetic features with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from mmkd.eval.linear_probe import ProbeConfig, evaluate_linear_probe
from mmkd.eval.retrieval import evaluate_knn, evaluate_retrieval, knn_scores
from mmkd.eval.splits import TaskNotApplicable, stratified_folds, stratified_holdout
from mmkd.eval.zeroshot import class_embeddings, evaluate_zeroshot, fill_prompts, l2_normalize


def clustered(n_per: int, k: int, dim: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = l2_normalize(rng.normal(size=(k, dim)))
    y = np.repeat(np.arange(k), n_per)
    return l2_normalize(centers[y] + noise * rng.normal(size=(len(y), dim))), y, centers


def brute_recall(img, txt, keys, k):
    keys = np.asarray(keys)
    uniq = sorted(set(keys))
    first = [int(np.flatnonzero(keys == u)[0]) for u in uniq]
    sim = l2_normalize(img[first]) @ l2_normalize(txt).T
    i2t = np.mean([np.isin(np.argsort(-sim[q])[:k], np.flatnonzero(keys == u)).any() for q, u in enumerate(uniq)])
    t2i = np.mean([uniq.index(keys[t]) in np.argsort(-sim[:, t])[:k] for t in range(len(keys))])
    return float(i2t), float(t2i)


def test_retrieval_equals_brute_force_with_multi_caption_images():
    rng = np.random.default_rng(0)
    n = 60
    keys = [f"img{i // 2}" for i in range(n)]  # two captions per image
    img = rng.normal(size=(n, 16)).astype(np.float32)
    img[1::2] = img[0::2]
    txt = img + 1.5 * rng.normal(size=img.shape)
    r = evaluate_retrieval(img, txt, keys)
    for k in (1, 5, 10):
        i2t, t2i = brute_recall(img, txt, keys, k)
        assert r[f"image_to_text_R@{k}"] == pytest.approx(i2t)
        assert r[f"text_to_image_R@{k}"] == pytest.approx(t2i)
    assert 0 < r["image_to_text_R@1"] < 1


def test_retrieval_perfect_and_inverted():
    x, _, _ = clustered(1, 12, 32, 0.0, seed=1)
    keys = [str(i) for i in range(12)]
    assert set(evaluate_retrieval(x, x, keys).values()) == {1.0}
    inv = evaluate_retrieval(x, -x, keys)  # own caption is always the least similar
    assert inv["image_to_text_R@10"] == 0.0 and inv["text_to_image_R@1"] == 0.0
    with pytest.raises(TaskNotApplicable):
        evaluate_retrieval(x[:1], x[:1], ["a"])


def test_zeroshot_perfect_and_inverted():
    x, y, centers = clustered(10, 4, 24, 0.05)
    good = evaluate_zeroshot(x, y, centers, resamples=50)
    assert good["accuracy"] == 1.0 and good["macro_auc"] == 1.0
    bad = evaluate_zeroshot(x, y, -centers, resamples=0)
    assert bad["accuracy"] == 0.0 and "accuracy_ci95" not in bad
    with pytest.raises(ValueError, match="same model"):
        evaluate_zeroshot(x, y, centers[:, :8])


def test_class_embeddings_average_templates():
    calls = []

    def enc(texts):
        calls.append(texts)
        scale = (1 + np.arange(len(texts)))[:, None]  # unnormalised on purpose
        return np.array([[1.0, 0.0] if "cat" in t else [0.0, 1.0] for t in texts]) * scale

    emb = class_embeddings(enc, ["cat", "dog"], ["a {}", "the {}", "{}!"])
    assert calls == [fill_prompts(["cat", "dog"], ["a {}", "the {}", "{}!"])]
    assert emb == pytest.approx(np.eye(2))
    with pytest.raises(ValueError, match="slot"):
        fill_prompts(["cat"], ["no slot"])


def test_linear_probe_separable_is_perfect_and_noise_is_chance():
    x, y, _ = clustered(20, 3, 16, 0.05, seed=2)
    r = evaluate_linear_probe(x, y, 3, cfg=ProbeConfig(folds=4), resamples=100)
    assert r["accuracy"] == pytest.approx(1.0) and r["macro_auc"] == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(90, 16))
    r = evaluate_linear_probe(noise, rng.integers(0, 3, 90), 3, resamples=0)
    assert r["accuracy"] < 0.6


def test_linear_probe_and_knn_with_split_labels():
    x, y, _ = clustered(20, 3, 16, 0.05, seed=4)
    splits = np.array(["train", "val", "test", "train"] * 15)
    assert evaluate_linear_probe(x, y, 3, splits=splits, resamples=0)["accuracy"] == pytest.approx(1.0)
    assert evaluate_knn(x, y, 3, splits=splits, k=5, resamples=0)["accuracy"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'test'"):
        evaluate_linear_probe(x, y, 3, splits=np.array(["train"] * 60))


def test_knn_leave_one_out_matches_brute_force():
    x, y, _ = clustered(8, 3, 8, 1.0, seed=5)
    s = knn_scores(x, y, x, 3, k=5, exclude_self=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    for q in range(len(y)):
        nn = np.argsort(-sim[q])[:5]
        w = np.exp((sim[q, nn] - sim[q, nn].max()) / 0.07)
        ref = np.bincount(y[nn], weights=w, minlength=3)
        assert s[q] == pytest.approx(ref / ref.sum(), rel=1e-4, abs=1e-6)
    sep, ys, _ = clustered(10, 3, 8, 0.05, seed=6)
    assert evaluate_knn(sep, ys, 3, k=3, resamples=0)["accuracy"] == 1.0


def test_probes_refuse_one_sample_per_class():
    x, y, _ = clustered(1, 9, 8, 0.1)
    with pytest.raises(TaskNotApplicable, match="2 samples"):
        evaluate_linear_probe(x, y, 9)
    with pytest.raises(TaskNotApplicable):
        evaluate_knn(x, y, 9)


def test_splits_are_stratified_and_deterministic():
    y = np.repeat(np.arange(3), [10, 4, 1])
    f = stratified_folds(y, 4, seed=1)
    assert (f == stratified_folds(y, 4, seed=1)).all()
    assert all(len(set(f[y == 0])) == 4 for _ in [0])
    held = stratified_holdout(y, 0.25, seed=0)
    assert held[y == 2].sum() == 0 and 1 <= held[y == 1].sum() <= 2 and held[y == 0].sum() in (2, 3)
