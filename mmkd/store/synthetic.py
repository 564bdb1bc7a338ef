"""Synthetic stores: random unit-norm features for benchmarks, demos and tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmkd.data import Sample
from mmkd.store.format import DEFAULT_BLOCK_SIZE
from mmkd.store.store import FeatureStore


def make_synthetic_store(
    path: str | os.PathLike,
    n: int,
    teachers: dict[str, int],
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    seed: int = 0,
    invalid_fraction: float = 0.0,
    overwrite: bool = False,
) -> FeatureStore:
    """Create a store of ``n`` synthetic samples with random unit-norm features per teacher.

    Args:
        path: where to create it.
        n: number of samples.
        teachers: teacher name -> embedding dim.
        block_size: rows per block.
        seed: random seed (features and validity are a function of it).
        invalid_fraction: share of rows marked invalid per teacher (as failed samples).
        overwrite: replace an existing store at ``path``.
    """
    samples = (Sample(f"syn-{i:09d}", f"synthetic caption {i}", f"images/{i:09d}.png", None, "synthetic")
               for i in range(n))
    store = FeatureStore.create(Path(path), samples, block_size=block_size, dataset_uri=f"synthetic://{n}/{seed}",
                                dataset_fingerprint=f"synthetic-{n}-{seed}", overwrite=overwrite)
    for ti, (name, dim) in enumerate(sorted(teachers.items())):
        store.add_teacher(name, dim, {"loader": "synthetic", "seed": seed, "logit_scale": 100.0})
        for b in range(store.num_blocks):
            rng = np.random.default_rng([seed, ti, b])
            s, e = store.block_range(b)
            img = rng.standard_normal((e - s, dim), dtype=np.float32)
            txt = img + 0.5 * rng.standard_normal((e - s, dim), dtype=np.float32)
            img /= np.linalg.norm(img, axis=1, keepdims=True)
            txt /= np.linalg.norm(txt, axis=1, keepdims=True)
            valid = rng.random(e - s) >= invalid_fraction
            fails = [{"sample_id": f"syn-{s + i:09d}", "row": s + i, "reason": "synthetic_invalid"}
                     for i in np.nonzero(~valid)[0]]
            store.write_block(name, b, img, txt, valid, fails)
        store.compute_stats(name)
    return store
