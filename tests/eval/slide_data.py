"""Synthetic slide data for the MIL tests: planted-patch bags, CLAM folders, patch stores, slide tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def planted_bags(n: int = 60, patches: int = 200, dim: int = 16, planted: int = 2, seed: int = 0,
                 strength: float = 6.0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Slides of Gaussian patches; positive slides hold ``planted`` patches shifted along one axis."""
    rng = np.random.default_rng(seed)
    bags, y = {}, []
    for i in range(n):
        x = rng.standard_normal((patches + rng.integers(-patches // 4, patches // 4), dim)).astype(np.float32)
        lab = i % 2
        if lab:
            x[rng.choice(len(x), planted, replace=False), 0] += strength
        bags[f"slide-{i:03d}"] = x
        y.append(lab)
    return bags, np.array(y)


def write_clam(root: Path, bags: dict[str, np.ndarray], kind: str = "pt") -> Path:
    """A CLAM features folder: ``h5_files/<slide>.h5`` (features + coords) or ``pt_files/<slide>.pt``."""
    if kind == "h5":
        import h5py

        (root / "h5_files").mkdir(parents=True, exist_ok=True)
        for s, x in bags.items():
            with h5py.File(root / "h5_files" / f"{s}.h5", "w") as f:
                f.create_dataset("features", data=x)
                f.create_dataset("coords", data=np.zeros((len(x), 2), dtype=np.int32))
    else:
        import torch

        (root / "pt_files").mkdir(parents=True, exist_ok=True)
        for s, x in bags.items():
            torch.save(torch.from_numpy(x), root / "pt_files" / f"{s}.pt")
    return root


def write_patch_store(path: Path, bags: dict[str, np.ndarray], teacher: str = "biomedclip",
                      unassigned: int = 0):
    """A feature store whose rows are the patches; each row's labels name its slide."""
    from mmkd.data import Sample
    from mmkd.store import FeatureStore

    samples, feats = [], []
    for s, x in bags.items():
        for j in range(len(x)):
            samples.append(Sample(f"{s}-p{j}", "", f"{s}/{j}.png", labels={"slide_id": s}))
        feats.append(x)
    for j in range(unassigned):
        samples.append(Sample(f"stray-{j}", "", f"stray/{j}.png", labels={"other": 1}))
        feats.append(np.zeros((1, feats[0].shape[1]), np.float32))
    x = np.concatenate(feats)
    store = FeatureStore.create(path, samples, block_size=4096)
    store.add_teacher(teacher, x.shape[1], {"logit_scale": 100.0})
    for b in range(store.num_blocks):
        s, e = store.block_range(b)
        store.write_block(teacher, b, x[s:e], x[s:e], np.ones(e - s, bool))
    return store


def write_slide_table(path: Path, slides: list[str], labels: list | None = None, *, patients: list[str] | None = None,
                      time: list | None = None, event: list | None = None) -> Path:
    """A CLAM-style csv (case_id, slide_id, label) with optional survival columns."""
    patients = patients or [f"pat-{i // 2:03d}" for i in range(len(slides))]
    cols = ["case_id", "slide_id"] + (["label"] if labels is not None else []) + (
        ["time", "event"] if time is not None else [])
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, s in enumerate(slides):
            row = [patients[i], s] + ([labels[i]] if labels is not None else []) + (
                [time[i], event[i]] if time is not None else [])
            w.writerow(row)
    return path
