"""Tiny students and synthetic stores over a tiny image folder (no teacher involved)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

TINY_STUDENT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TEACHER_DIMS = {"ta": 32, "tb": 48}
WORDS = ["ct", "mri", "xray", "lesion", "tumor", "normal", "left", "right", "lung", "liver", "brain", "bone"]


@pytest.fixture(scope="session")
def student_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("student") / "tiny.json"
    path.write_text(json.dumps(TINY_STUDENT))
    return path


def make_image_folder(root: Path, n: int, seed: int = 0) -> Path:
    """n small PNG images whose colour follows the caption, plus captions.jsonl."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    with open(root / "captions.jsonl", "w") as f:
        for i in range(n):
            k = i % len(WORDS)
            arr = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
            arr[..., k % 3] += np.uint8(120 + 10 * (k // 3))
            Image.fromarray(arr).save(root / "img" / f"{i:04d}.png")
            caption = f"{WORDS[k]} {WORDS[(k * 5 + 1) % len(WORDS)]} image {i % 3}"
            f.write(json.dumps({"id": f"s{i:04d}", "image": f"img/{i:04d}.png", "caption": caption}) + "\n")
    return root / "captions.jsonl"


def make_store(root: Path, n: int = 48, block_size: int = 16, invalid: float = 0.25, seed: int = 0) -> Path:
    """A store over a synthetic image folder with random features for teachers ta (32-d), tb (48-d)."""
    from mmkd.data import open_dataset
    from mmkd.store import FeatureStore

    table = make_image_folder(root / "data", n, seed)
    ds = open_dataset(str(table))
    store = FeatureStore.create(root / "store", ds.samples(), block_size=block_size, dataset_uri=ds.uri,
                                dataset_fingerprint=ds.fingerprint(), dataset_spec=ds.spec().to_dict())
    rng = np.random.default_rng(seed)
    for t, d in TEACHER_DIMS.items():
        store.add_teacher(t, d, {"loader": "synthetic"})
        for b in range(store.num_blocks):
            s, e = store.block_range(b)
            img = rng.standard_normal((e - s, d)).astype(np.float32)
            txt = img + 0.3 * rng.standard_normal((e - s, d)).astype(np.float32)
            img /= np.linalg.norm(img, axis=1, keepdims=True)
            txt /= np.linalg.norm(txt, axis=1, keepdims=True)
            store.write_block(t, b, img, txt, rng.random(e - s) >= invalid)
        store.compute_stats(t)
    return root / "store"


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("tiny"))
