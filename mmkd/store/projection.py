"""Per-teacher linear projections fitted on the store's own features, saved in the store.

The official MMKD-CLIP maps each teacher's features to 512-d with the encoder
``nn.Linear(in_dim, 512)`` of an autoencoder trained to reconstruct them
(``MultiCLIP_AE.proj_layers`` in ``open_clip/models_ae.py``; its decoder is
``decoder_proj_layers``). Methods here:

- ``ae``: that linear encoder + linear decoder, trained with Adam on the MSE of
  the reconstruction, image and text rows together (the official nonlinear
  bottleneck between them is dropped: the targets are the encoder's outputs);
- ``pca``: the closed form of a linear autoencoder, the top ``dim`` principal
  directions (``W (x - mean)``), from one streaming pass of sums and ``XᵀX``;
- ``random``: a seeded random semi-orthogonal map (no fitting; R² reported).

Every pass reads one block at a time, so memory is ``O(block_size·D + D²)``
whatever the store's size. A projection is saved as
``<store>/projections/<teacher>/<method>-<dim>.safetensors`` (``weight``
``(dim, D)``, ``bias`` ``(dim,)``, ``mean`` ``(D,)``) with metadata: method,
fit rows, reconstruction R² (overall, image, text). R² is
``1 - Σ‖x - x̂‖² / Σ‖x - mean‖²`` with ``x̂`` the best linear decode of the code
(the same measure for every method: how much of the features the map keeps); an
``ae`` fit also records ``r2_decoder``, the R² of its own decoder's reconstruction.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mmkd.config import as_path, is_remote
from mmkd.jsontypes import JSONDict
from mmkd.store import format as fmt
from mmkd.store.store import FeatureStore, StoreError, zarr_location

logger = logging.getLogger(__name__)

METHODS = ("ae", "pca", "random")
FOLDER = "projections"
READ_CACHE_BYTES = 32 << 20


def projection_path(store: FeatureStore, teacher: str, method: str, dim: int) -> Path:
    """Where the ``method``-``dim`` projection of ``teacher`` lives in the store."""
    return as_path(store.path) / FOLDER / teacher / f"{method}-{dim}.safetensors"


def _blocks(store: FeatureStore, teacher: str):
    """(image, text) float64 valid rows of each block, one block at a time."""
    done = store.done_blocks(teacher)
    for b in range(store.num_blocks):
        if b not in done:
            continue
        valid = store.read_block(teacher, b, "valid")
        if not valid.any():
            continue
        yield (store.read_block(teacher, b, "image")[valid].astype(np.float64),
               store.read_block(teacher, b, "text")[valid].astype(np.float64))


def _moments(store: FeatureStore, teacher: str) -> tuple[int, np.ndarray, np.ndarray]:
    """Row count, mean and ``Σ (x-mean)(x-mean)ᵀ`` over image and text rows (streamed sums)."""
    d = store.dim(teacher)
    n, s, xtx = 0, np.zeros(d), np.zeros((d, d))
    for img, txt in _blocks(store, teacher):
        for x in (img, txt):
            n += len(x)
            s += x.sum(0)
            xtx += x.T @ x
    if n == 0:
        raise StoreError(f"teacher {teacher!r} in store {store.path} has no valid rows to fit a projection on; "
                         f"extract it first (mmkd extract --teacher {teacher})")
    mean = s / n
    return n, mean, xtx - n * np.outer(mean, mean)


def _semi_orthogonal(out_dim: int, in_dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((max(out_dim, in_dim), min(out_dim, in_dim))))
    q = q * np.sign(np.diag(r))[None, :]
    return q if out_dim >= in_dim else q.T


def _linear_r2(store: FeatureStore, teacher: str, weight: np.ndarray, bias: np.ndarray,
               mean: np.ndarray, scatter: np.ndarray) -> dict[str, float]:
    """R² of the least-squares linear decode of ``z = W x + b``, per kind and overall (streamed)."""
    # best decoder from z: x̂ = mean + C Wᵀ (W C Wᵀ)⁺ W (x - mean), with C the scatter; rows' SSE via traces
    w = weight.astype(np.float64)
    wcw = w @ scatter @ w.T
    dec = scatter @ w.T @ np.linalg.pinv(wcw)  # (D, k)
    sse = {"image": 0.0, "text": 0.0}
    sst = {"image": 0.0, "text": 0.0}
    for img, txt in _blocks(store, teacher):
        for kind, x in (("image", img), ("text", txt)):
            xc = x - mean
            sse[kind] += float(((xc - (xc @ w.T) @ dec.T) ** 2).sum())
            sst[kind] += float((xc ** 2).sum())
    out = {f"r2_{k}": 1.0 - sse[k] / sst[k] if sst[k] > 0 else 1.0 for k in sse}
    total = sst["image"] + sst["text"]
    out["r2"] = 1.0 - (sse["image"] + sse["text"]) / total if total > 0 else 1.0
    return out


def _fit_ae(store: FeatureStore, teacher: str, dim: int, mean: np.ndarray, *, epochs: int, lr: float,
            batch_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear encoder + decoder (``nn.Linear`` both ways, as the official), Adam on the reconstruction MSE."""
    import torch

    d = store.dim(teacher)
    torch.manual_seed(seed)
    enc, dec = torch.nn.Linear(d, dim, dtype=torch.float64), torch.nn.Linear(dim, d, dtype=torch.float64)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=lr)
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        total, rows = 0.0, 0
        for img, txt in _blocks(store, teacher):
            x = np.concatenate([img, txt])
            x = torch.from_numpy(x[rng.permutation(len(x))])
            for i in range(0, len(x), batch_rows):
                xb = x[i:i + batch_rows]
                loss = torch.nn.functional.mse_loss(dec(enc(xb)), xb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(xb)
                rows += len(xb)
        logger.info("ae %s epoch %d: reconstruction mse %.3g", teacher, epoch, total / max(rows, 1))
    return (enc.weight.detach().numpy().copy(), enc.bias.detach().numpy().copy(),
            dec.weight.detach().numpy().copy(), dec.bias.detach().numpy().copy())


def _decoder_r2(store: FeatureStore, teacher: str, enc: tuple[np.ndarray, np.ndarray],
                dec: tuple[np.ndarray, np.ndarray], mean: np.ndarray) -> float:
    """R² of the autoencoder's own reconstruction ``dec(enc(x))`` (streamed)."""
    sse = sst = 0.0
    for img, txt in _blocks(store, teacher):
        for x in (img, txt):
            rec = (x @ enc[0].T + enc[1]) @ dec[0].T + dec[1]
            sse += float(((x - rec) ** 2).sum())
            sst += float(((x - mean) ** 2).sum())
    return 1.0 - sse / sst if sst > 0 else 1.0


def check_request(store: FeatureStore, teacher: str, dim: int, method: str, overwrite: bool = False) -> None:
    """Raise before any work when a projection cannot be fitted (so a batch of teachers writes all or nothing).

    Raises:
        StoreError: unknown teacher or method, ``dim`` out of range, or it exists without ``overwrite``.
    """
    if teacher not in store.teachers:
        raise StoreError(f"store {store.path} holds no teacher {teacher!r}; it holds {store.teachers}")
    if method not in METHODS:
        raise StoreError(f"projection method {method!r} is unknown; use one of {list(METHODS)}")
    d = store.dim(teacher)
    if not 1 <= dim <= d:
        raise StoreError(f"projection of {teacher!r} to {dim}-d: the teacher is {d}-d, so dim must be within "
                         f"[1, {d}] (a linear map cannot add information); pick --dim <= {d}")
    path = projection_path(store, teacher, method, dim)
    if path.exists() and not overwrite:
        raise StoreError(f"{path} exists; pass overwrite (--overwrite) to fit it again")


def fit_projection(store: FeatureStore, teacher: str, dim: int = 512, method: str = "pca", *, epochs: int = 20,
                   lr: float = 1e-3, batch_rows: int = 1024, seed: int = 0, overwrite: bool = False) -> JSONDict:
    """Fit a ``teacher`` -> ``dim`` linear map on the store's valid rows and save it in the store.

    Args:
        store: the feature store (opened read-only is enough; the file goes beside it).
        teacher: a teacher the store holds.
        dim: output dim (the student's embedding dim, 512 for MMKD-CLIP).
        method: ``ae``, ``pca`` or ``random``.
        epochs, lr, batch_rows: ``ae`` training (Adam, float64).
        seed: seed of ``ae`` init/order and of ``random``.
        overwrite: replace an existing projection of the same method and dim.

    Returns:
        The saved metadata (``path``, ``method``, ``dim``, ``in_dim``, ``fit_rows``, ``r2``...).

    Raises:
        StoreError: unknown teacher or method, ``dim`` out of range, no valid rows,
            or the projection exists without ``overwrite``.
    """
    check_request(store, teacher, dim, method, overwrite)

    # a reader of its own with a small block cache: memory stays flat whatever the store's size
    store = FeatureStore.open(store.path, cache_bytes=READ_CACHE_BYTES)
    d = store.dim(teacher)
    path = projection_path(store, teacher, method, dim)
    n, mean, scatter = _moments(store, teacher)
    if method == "pca":
        evals, evecs = np.linalg.eigh(scatter)
        weight = evecs[:, ::-1][:, :dim].T.copy()
        bias = -weight @ mean
    elif method == "random":
        weight = _semi_orthogonal(dim, d, seed)
        bias = np.zeros(dim)
    else:
        weight, bias, dec_w, dec_b = _fit_ae(store, teacher, dim, mean, epochs=epochs, lr=lr, batch_rows=batch_rows,
                                             seed=seed)
    meta: dict[str, Any] = {"method": method, "dim": dim, "in_dim": d, "teacher": teacher, "fit_rows": n,
                            **_linear_r2(store, teacher, weight, bias, mean, scatter)}
    if method == "ae":
        meta.update(r2_decoder=_decoder_r2(store, teacher, (weight, bias), (dec_w, dec_b), mean), epochs=epochs,
                    lr=lr, batch_rows=batch_rows, seed=seed)
    _save(path, weight, bias, mean, meta)
    logger.info("projection %s of %s saved to %s (R² %.4f)", method, teacher, path, meta["r2"])
    return {"path": str(path), **meta}


def _save(path: Path, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, meta: JSONDict) -> None:
    from safetensors.numpy import save_file

    tmp = path.with_suffix(".tmp")
    if not is_remote(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    # C order: safetensors writes the buffer as it lies in memory (a transposed view would come back scrambled)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in
              (("weight", weight), ("bias", bias), ("mean", mean))}
    if is_remote(path):
        from safetensors.numpy import save

        fmt.atomic_write_bytes(path, save(arrays, metadata={"mmkd_projection": json.dumps(meta)}))
        return
    save_file(arrays,
              str(tmp), metadata={"mmkd_projection": json.dumps(meta)})
    tmp.replace(path)


def load_projection(store: FeatureStore, teacher: str, method: str, dim: int) -> tuple[np.ndarray, np.ndarray,
                                                                                       JSONDict]:
    """``(weight (dim, D), bias (dim,), metadata)`` of a saved projection.

    Raises:
        StoreError: none saved for that teacher, method and dim (the message says how to fit one).
    """
    from safetensors import safe_open

    path = projection_path(store, teacher, method, dim)
    if not path.is_file():
        have = [p.stem for p in (as_path(store.path) / FOLDER / teacher).glob("*.safetensors")]
        raise StoreError(f"store {store.path} has no {method}-{dim} projection of teacher {teacher!r} (it has "
                         f"{have or 'none'}); fit it: mmkd store project {store.path} --teacher {teacher} "
                         f"--dim {dim} --method {method}")
    if is_remote(path):
        tensors, metadata = _load_bytes(path.read_bytes())
        return tensors["weight"], tensors["bias"], json.loads(metadata["mmkd_projection"])
    with safe_open(str(path), "np") as f:
        meta = json.loads(f.metadata()["mmkd_projection"])
        return f.get_tensor("weight"), f.get_tensor("bias"), meta


def list_projections(store: FeatureStore, teacher: str) -> list[JSONDict]:
    """Metadata of every projection saved for ``teacher`` (for ``mmkd store info``)."""
    from safetensors import safe_open

    out = []
    for p in sorted((as_path(store.path) / FOLDER / teacher).glob("*.safetensors")):
        if is_remote(p):
            out.append(json.loads(_load_bytes(p.read_bytes())[1].get("mmkd_projection", "{}")))
            continue
        with safe_open(str(p), "np") as f:
            out.append(json.loads(f.metadata().get("mmkd_projection", "{}")))
    return out


def _load_bytes(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file held in memory (read from object storage)."""
    from safetensors.numpy import load

    header_len = int.from_bytes(data[:8], "little")  # the format: u64 header length, JSON header, buffer
    metadata = json.loads(data[8:8 + header_len]).get("__metadata__", {})
    return load(data), metadata


__all__ = ["METHODS", "check_request", "fit_projection", "list_projections", "load_projection", "projection_path"]
