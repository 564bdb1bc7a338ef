"""Fitted teacher projections: R² against numpy on low-rank features, saving, errors, the CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from mmkd.store import FeatureStore
from mmkd.data import Sample
from mmkd.store.format import StoreError
from mmkd.store.projection import fit_projection, list_projections, load_projection
from tests.conftest import mmkd

RANK, DIM, IN_DIM, ROWS = 6, 8, 24, 600


def _low_rank_store(root: Path) -> tuple[Path, np.ndarray]:
    """Teacher ``lr`` (24-d) whose features span 6 dims around an offset; rows 0::7 invalid."""
    rng = np.random.default_rng(0)
    samples = (Sample(f"s{i}", f"caption {i}", f"img/{i}.png", None, "synthetic") for i in range(ROWS))
    store = FeatureStore.create(root, samples, block_size=128, dataset_uri="synthetic://lr", dataset_fingerprint="lr")
    basis = rng.standard_normal((RANK, IN_DIM))
    offset = rng.standard_normal(IN_DIM)
    store.add_teacher("lr", IN_DIM, {"loader": "synthetic"})
    rows = []
    for b in range(store.num_blocks):
        s, e = store.block_range(b)
        img = rng.standard_normal((e - s, RANK)) @ basis + offset
        txt = rng.standard_normal((e - s, RANK)) @ basis * 0.5 + offset
        valid = (np.arange(s, e) % 7) != 0
        store.write_block("lr", b, img.astype(np.float32), txt.astype(np.float32), valid)
        rows += [img[valid], txt[valid]]
    x = np.concatenate(rows).astype(np.float16).astype(np.float64)  # as stored
    return root, x


def _numpy_r2(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    """R² of the least-squares linear decode of ``z = x Wᵀ + b`` back to ``x``, by numpy lstsq."""
    z = np.c_[x @ w.T.astype(np.float64) + b, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(z, x, rcond=None)
    return 1.0 - ((x - z @ coef) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


@pytest.fixture(scope="module")
def lr_store(tmp_path_factory):
    return _low_rank_store(tmp_path_factory.mktemp("lr") / "store")


@pytest.mark.parametrize("method", ["pca", "ae"])
def test_fitted_projection_reaches_r2_and_matches_numpy(lr_store, method):
    path, x = lr_store
    store = FeatureStore.open(path)
    meta = fit_projection(store, "lr", DIM, method, epochs=60, lr=1e-2, batch_rows=64, overwrite=True)
    assert meta["fit_rows"] == len(x)
    assert meta["r2"] >= 0.95 and meta["r2_image"] >= 0.95 and meta["r2_text"] >= 0.95
    w, b, saved = load_projection(store, "lr", method, DIM)
    assert w.shape == (DIM, IN_DIM) and b.shape == (DIM,) and saved["method"] == method
    assert meta["r2"] == pytest.approx(_numpy_r2(x, w, b), abs=1e-4)
    if method == "ae":  # the trained decoder itself reconstructs, not only the best decode of the code
        assert meta["r2_decoder"] >= 0.95
    if method == "pca":  # the closed form: numpy's SVD of the centred data spans the same subspace
        xc = x - x.mean(0)
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        top = vt[:DIM]
        assert np.allclose(np.abs(top @ w.T.astype(np.float64)).sum(0)[:RANK], 1.0, atol=1e-3)
    assert any(p["method"] == method for p in list_projections(store, "lr"))


def test_random_projection_r2_is_reported_and_lower(lr_store):
    path, x = lr_store
    store = FeatureStore.open(path)
    meta = fit_projection(store, "lr", 4, "random", overwrite=True)
    w, b, _ = load_projection(store, "lr", "random", 4)
    assert meta["r2"] == pytest.approx(_numpy_r2(x, w, b), abs=1e-4)
    pca = fit_projection(store, "lr", 4, "pca", overwrite=True)
    assert pca["r2"] > meta["r2"]


def test_projection_errors(lr_store):
    store = FeatureStore.open(lr_store[0])
    with pytest.raises(StoreError, match="holds no teacher 'nope'"):
        fit_projection(store, "nope", DIM)
    with pytest.raises(StoreError, match=r"the teacher is 24-d, so dim must be within \[1, 24\]"):
        fit_projection(store, "lr", 512)
    with pytest.raises(StoreError, match="no pca-3 projection of teacher 'lr'.*mmkd store project"):
        load_projection(store, "lr", "pca", 3)


def _run(*args: str) -> subprocess.CompletedProcess:
    return mmkd(*args, env={"OMP_NUM_THREADS": "1"})


def test_store_project_cli_and_info(tmp_path):
    path, _ = _low_rank_store(tmp_path / "store")
    res = _run("store", "project", str(path), "--teacher", "lr", "--dim", str(DIM), "--method", "pca")
    assert res.returncode == 0, res.stderr
    assert "R² 1.0000" in res.stdout or "R² 0.99" in res.stdout, res.stdout
    info = _run("store", "info", str(path))
    assert "projections  pca-8" in info.stdout, info.stdout
    for args, message in ((("--teacher", "absent"), "holds no teacher 'absent'"),
                          (("--teacher", "lr", "--dim", "512"), "the teacher is 24-d")):
        res = _run("store", "project", str(path), *args)
        assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert sorted(p.name for p in (path / "projections" / "lr").iterdir()) == ["pca-8.safetensors"]
