"""Deterministic stratified splits for the probes (linear, kNN) on sets without split labels."""

from __future__ import annotations

import numpy as np

from mmkd.errors import MMKDError


class TaskNotApplicable(MMKDError, ValueError):
    """A task cannot run on a data set (e.g. no captions for retrieval); the runner skips it."""


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold id (0..folds-1) per sample, each class spread evenly over the folds.

    Args:
        labels: (n,) integer labels.
        folds: number of folds, >= 2.
        seed: shuffling seed within each class.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        # Start each class where the previous one stopped, so small classes do not all land in fold 0.
        fold[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)
    return fold


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of held-out samples: about ``fraction`` of each class with >= 2 samples.

    Classes with one sample stay entirely in the kept part.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"hold-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        rng.shuffle(idx)
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        held[idx[:k]] = True
    return held


def split_masks(splits: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Train (``train`` + ``val``) and test masks from per-sample split labels.

    Raises:
        ValueError: either side is empty (names ``task`` and the splits seen).
    """
    splits = np.asarray(splits)
    train, test = np.isin(splits, ("train", "val")), splits == "test"
    if not train.any() or not test.any():
        raise ValueError(f"{task} with split labels needs both 'train' and 'test' samples; "
                         f"got {sorted(set(splits.tolist()))}")
    return train, test


def check_probe_labels(labels: np.ndarray, task: str, min_per_class: int = 2) -> None:
    """Raise :class:`TaskNotApplicable` unless there are >= 2 classes with >= ``min_per_class`` samples each."""
    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2 or counts.min() < min_per_class:
        raise TaskNotApplicable(
            f"{task} needs >= 2 classes with >= {min_per_class} samples each; this set has "
            f"{len(counts)} classes with {counts.min() if len(counts) else 0} to "
            f"{counts.max() if len(counts) else 0} samples. Use a larger labelled set.")
