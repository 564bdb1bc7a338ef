"""Teacher trust per sample: scores against numpy, saving, the mask, warnings, errors, the CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmkd.store import FeatureStore
from mmkd.data import Sample
from mmkd.store.format import StoreError
from mmkd.store.trust import compute_trust, read_trust, score_block, trust_info

REPO = Path(__file__).resolve().parents[2]
MMKD = Path(sys.executable).parent / "mmkd"
ROWS, DIM = 300, 16


def _store(root: Path) -> Path:
    """Teachers ``knows`` (text = image + small noise on rows < 150, random after) and ``blind`` (all random);
    rows 0::11 invalid for ``knows``."""
    rng = np.random.default_rng(0)
    samples = (Sample(f"s{i}", f"caption {i}", f"img/{i}.png", None, "synthetic") for i in range(ROWS))
    store = FeatureStore.create(root, samples, block_size=64, dataset_uri="synthetic://t", dataset_fingerprint="t")
    for t in ("knows", "blind"):
        store.add_teacher(t, DIM, {"loader": "synthetic"})
    for b in range(store.num_blocks):
        s, e = store.block_range(b)
        rows = np.arange(s, e)
        img = rng.standard_normal((e - s, DIM)).astype(np.float32)
        txt = np.where((rows < 150)[:, None], img + 0.1 * rng.standard_normal(img.shape),
                       rng.standard_normal(img.shape)).astype(np.float32)
        store.write_block("knows", b, img, txt, rows % 11 != 0)
        store.write_block("blind", b, rng.standard_normal((e - s, DIM)).astype(np.float32),
                          rng.standard_normal((e - s, DIM)).astype(np.float32), np.ones(e - s, bool))
    return root


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("trust") / "store")


def test_score_block_matches_brute_force():
    rng = np.random.default_rng(1)
    img, txt = rng.standard_normal((20, 8)), rng.standard_normal((20, 8))
    ref_rows = np.arange(5, 45)
    ref = rng.standard_normal((40, 8))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    ref[:15] = txt[5:] / np.linalg.norm(txt[5:], axis=1, keepdims=True)  # rows 5..19 are in their reference
    rows = np.arange(20)
    rank = score_block(img, txt, rows, ref_rows, ref.astype(np.float32), "pair-rank")
    margin = score_block(img, txt, rows, ref_rows, ref.astype(np.float32), "margin")
    for i in range(20):
        u = img[i] / np.linalg.norm(img[i])
        p = u @ txt[i] / np.linalg.norm(txt[i])
        others = [ref[k] @ u for k in range(40) if ref_rows[k] != i]
        assert rank[i] == pytest.approx(1 - sum(o > p for o in others) / len(others), abs=1e-6)
        assert margin[i] == pytest.approx(p - max(others), abs=1e-4)


def test_trust_separates_known_rows_and_keeps_valid(store_path):
    store = FeatureStore.open(store_path)
    valid_before = store.valid("knows").copy()
    meta = compute_trust(store, "knows", "pair-rank", reference=128)
    assert meta["scored"] == int(valid_before.sum())
    t, m = read_trust(FeatureStore.open(store_path), "knows", np.arange(ROWS))
    known = (np.arange(ROWS) < 150) & valid_before
    assert np.isnan(t[~valid_before]).all() and not m[~valid_before].any()
    assert m[known].mean() >= 0.95 and m[(np.arange(ROWS) >= 150) & valid_before].mean() <= 0.3
    assert np.array_equal(FeatureStore.open(store_path).valid("knows"), valid_before)
    assert trust_info(store, "knows")["coverage"] == pytest.approx(m.sum() / valid_before.sum())
    # read in shuffled order across blocks
    rows = np.random.default_rng(0).permutation(ROWS)[:50]
    t2, m2 = read_trust(store, "knows", rows)
    assert np.array_equal(m2, m[rows]) and np.allclose(t2, t[rows], equal_nan=True)


def test_all_untrusted_warns_with_teacher_and_share(store_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mmkd.store.trust"):
        meta = compute_trust(FeatureStore.open(store_path), "blind", "margin", threshold=5.0, reference=64)
    assert meta["trusted"] == 0
    assert "'blind'" in caplog.text and "share 0.0%" in caplog.text


def test_errors_name_the_thing(store_path):
    store = FeatureStore.open(store_path)
    with pytest.raises(StoreError, match="nope"):
        compute_trust(store, "nope")
    with pytest.raises(StoreError, match="pair-rank"):
        compute_trust(store, "knows", "rank")
    fresh = FeatureStore.open(store_path)
    with pytest.raises(StoreError, match="mmkd store trust"):
        read_trust(fresh, "missing_teacher", np.arange(3))


def test_cli_trust_and_info(store_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([str(MMKD), "store", "trust", str(store_path), "--teacher", "knows", "--method", "margin",
                        "--reference", "100"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "knows: margin >= 0" in r.stdout
    r = subprocess.run([str(MMKD), "store", "trust", str(store_path), "--teacher", "blind", "--method", "margin",
                        "--threshold", "9"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "'blind'" in r.stderr and "0.0%" in r.stderr
    r = subprocess.run([str(MMKD), "store", "info", str(store_path)], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "trust        margin" in r.stdout
    r = subprocess.run([str(MMKD), "store", "info", str(store_path), "--json"], capture_output=True, text=True,
                       env=env)
    assert json.loads(r.stdout)["teachers"]["knows"]["trust"]["method"] == "margin"
    r = subprocess.run([str(MMKD), "store", "trust", str(store_path), "--teacher", "nope"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 1 and "nope" in r.stderr
