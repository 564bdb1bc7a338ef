"""K-fold cross-validation by group (patient / slide / image): a group never sits in two folds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_FOLDS = 5


def group_folds(groups: Sequence[str], folds: int = DEFAULT_FOLDS, *, labels: Sequence[int] | None = None,
                seed: int = 0) -> np.ndarray:
    """Fold id (0..folds-1) per item such that all items of one group share a fold.

    Groups are shuffled with ``seed`` and dealt out greedily: each group goes to the
    fold that currently holds the fewest items of the group's majority label (then
    the fewest items), so folds are balanced in size and, with ``labels``,
    stratified by label as far as whole groups allow.

    Args:
        groups: group key per item (e.g. patient id per slide).
        folds: number of folds, >= 2 and <= the number of distinct groups.
        labels: optional integer label per item to stratify on.
        seed: shuffling seed; the same inputs and seed give the same folds.

    Raises:
        ValueError: fewer groups than folds, or ``labels`` of another length.
    """
    groups = [str(g) for g in groups]
    uniq = sorted(set(groups))
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if len(uniq) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs >= {folds} distinct patients/groups; got {len(uniq)} "
                         f"({uniq[:5]}); lower `folds:`")
    lab = np.zeros(len(groups), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if len(lab) != len(groups):
        raise ValueError(f"labels ({len(lab)}) and groups ({len(groups)}) differ in length")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    rng = np.random.default_rng(seed)
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    # big groups first so the greedy deal stays balanced; the shuffle breaks ties between equal sizes
    order.sort(key=lambda g: -len(members[g]))
    k = int(lab.max()) + 1 if len(lab) else 1
    per_label = np.zeros((folds, k), dtype=np.int64)
    size = np.zeros(folds, dtype=np.int64)
    fold = np.empty(len(groups), dtype=np.int64)
    for g in order:
        idx = members[g]
        major = int(np.bincount(lab[idx], minlength=k).argmax())
        f = int(np.lexsort((size, per_label[:, major]))[0])
        fold[idx] = f
        per_label[f] += np.bincount(lab[idx], minlength=k)
        size[f] += len(idx)
    return fold


def check_group_folds(groups: Sequence[str], fold: np.ndarray) -> None:
    """Raise ``AssertionError`` naming a group found in two folds (an internal invariant)."""
    seen: dict[str, int] = {}
    for g, f in zip(groups, fold.tolist()):
        assert seen.setdefault(str(g), f) == f, f"group {g!r} in folds {seen[str(g)]} and {f}"
