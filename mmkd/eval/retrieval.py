"""Cross-modal retrieval and kNN classification over exact faiss inner-product indexes."""

from __future__ import annotations

import numpy as np

from mmkd.eval.metrics import classification_report, recall_at_k
from mmkd.eval.splits import TaskNotApplicable, check_probe_labels, split_masks
from mmkd.eval.zeroshot import l2_normalize

RECALL_KS = (1, 5, 10)


def search(index_vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (``faiss.IndexFlatIP``); k is capped at the index size.

    Returns:
        (similarities, indices), each (queries, k), best first.
    """
    import faiss

    base = np.ascontiguousarray(index_vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(base)))


def evaluate_retrieval(image_features: np.ndarray, text_features: np.ndarray, image_keys: list[str],
                       ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """Image->text and text->image Recall@k.

    Samples sharing an image key are one image with several captions: an image
    query is a hit when any of its captions is in the top k; a caption query is a
    hit when its image is.

    Args:
        image_features: (n, D), one row per sample (rows of one image may repeat).
        text_features: (n, D) caption embeddings, same order.
        image_keys: (n,) identity of each sample's image.
        ks: cut-offs.
    """
    if len(image_features) != len(text_features) or len(image_features) != len(image_keys):
        raise ValueError(f"retrieval needs aligned rows; got {len(image_features)} images, "
                         f"{len(text_features)} texts, {len(image_keys)} keys")
    if len(set(image_keys)) < 2:
        raise TaskNotApplicable("retrieval needs at least 2 distinct images")
    keys, first, img_of_text = np.unique(np.asarray(image_keys), return_index=True, return_inverse=True)
    images = l2_normalize(image_features[first])
    texts = l2_normalize(text_features)
    kmax = max(ks)
    _, i2t = search(texts, images, kmax)
    _, t2i = search(images, texts, kmax)
    captions_of = [set(np.flatnonzero(img_of_text == i).tolist()) for i in range(len(keys))]
    out = {f"image_to_text_R@{k}": v for k, v in recall_at_k(i2t, captions_of, ks).items()}
    out.update({f"text_to_image_R@{k}": v for k, v in recall_at_k(t2i, img_of_text, ks).items()})
    return out


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, k: int = 20,
               temperature: float = 0.07, exclude_self: bool = False) -> np.ndarray:
    """Class scores from similarity-weighted votes of the k nearest training samples.

    Args:
        train_x: (m, D) features of the labelled reference set.
        train_y: (m,) their labels.
        test_x: (n, D) queries.
        num_classes: number of classes.
        k: neighbours.
        temperature: votes weigh ``exp(sim / temperature)`` (as in DINO's kNN eval).
        exclude_self: queries are the reference set itself; drop each query's own row
            (leave-one-out).

    Returns:
        (n, classes) vote shares summing to 1.
    """
    extra = 1 if exclude_self else 0
    sims, idx = search(l2_normalize(train_x), l2_normalize(test_x), k + extra)
    if exclude_self:
        keep = idx != np.arange(len(test_x))[:, None]
        # Each row drops its own index (or, with exact duplicates ranked first, its last column).
        keep[keep.all(axis=1), -1] = False
        sims = sims[keep].reshape(len(test_x), -1)
        idx = idx[keep].reshape(len(test_x), -1)
    votes = np.exp((sims - sims.max(axis=1, keepdims=True)) / temperature)
    scores = np.zeros((len(test_x), num_classes))
    np.add.at(scores, (np.repeat(np.arange(len(test_x)), idx.shape[1]), train_y[idx].ravel()), votes.ravel())
    return scores / scores.sum(axis=1, keepdims=True)


def evaluate_knn(features: np.ndarray, labels: np.ndarray, num_classes: int, *, splits: np.ndarray | None = None,
                 k: int = 20, resamples: int = 1000, seed: int = 0) -> dict:
    """kNN classification metrics: train->test with split labels, else leave-one-out."""
    labels = np.asarray(labels, dtype=np.int64)
    if splits is not None:
        train, test = split_masks(splits, "kNN")
        check_probe_labels(labels[train], "kNN", min_per_class=1)
        scores = knn_scores(features[train], labels[train], features[test], num_classes, k)
        return classification_report(labels[test], scores, resamples=resamples, seed=seed)
    check_probe_labels(labels, "kNN (leave-one-out)")
    scores = knn_scores(features, labels, features, num_classes, min(k, len(labels) - 1), exclude_self=True)
    return classification_report(labels, scores, resamples=resamples, seed=seed)
