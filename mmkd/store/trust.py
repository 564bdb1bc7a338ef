"""How well each teacher knows each sample, scored from the store alone, saved in the store.

A teacher that knows a sample places its image near its own caption and away from
other captions, in the teacher's own embedding space. Methods (image -> captions,
against a fixed reference sample of ``reference`` captions drawn once, seeded,
from the teacher's valid rows):

- ``pair-rank``: ``1 - r / R`` with ``r`` the number of reference captions whose
  cosine with the image beats the paired caption's and ``R`` the reference size
  (1: the paired caption wins over every reference caption; the row's own caption
  is left out of its reference). Default threshold 0.9 (top 10 %).
- ``margin``: paired cosine minus the best other reference caption's cosine.
  Default threshold 0.0 (the paired caption wins).

The official MMKD-CLIP data lists ``available_clips`` per sample; this derives an
equivalent mask (``trusted = valid & trust >= threshold``) when the store holds
none. ``valid`` is never touched. Arrays are written block by block, so memory is
``O(block_size·R + R·D)`` whatever the store's size, to
``<store>/trust/<teacher>.zarr`` (``trust`` float16, NaN where not valid;
``trusted`` bool) with attrs: method, threshold, reference size, seed, rows
scored, rows trusted, coverage (trusted / valid).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mmkd.config import as_path, is_remote
from mmkd.jsontypes import JSONDict
from mmkd.store.store import FeatureStore, StoreError, zarr_location

logger = logging.getLogger(__name__)

METHODS = ("pair-rank", "margin")
DEFAULT_THRESHOLD = {"pair-rank": 0.9, "margin": 0.0}
FOLDER = "trust"
READ_CACHE_BYTES = 32 << 20


def trust_path(store: FeatureStore, teacher: str) -> Path:
    """Where the trust arrays of ``teacher`` live in the store."""
    return as_path(store.path) / FOLDER / f"{teacher}.zarr"


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _reference(store: FeatureStore, teacher: str, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ids and unit text features of ``size`` valid rows drawn uniformly (one pass, block by block)."""
    valid = store.valid(teacher)
    done = store.done_blocks(teacher)
    for b in range(store.num_blocks):
        if b not in done:
            s, e = store.block_range(b)
            valid[s:e] = False
    rows = np.flatnonzero(valid)
    if rows.size < 2:
        raise StoreError(f"teacher {teacher!r} in store {store.path} has {rows.size} valid row(s); trust needs at "
                         f"least 2 (extract it first: mmkd extract --teacher {teacher})")
    pick = np.sort(np.random.default_rng(seed).choice(rows, size=min(size, rows.size), replace=False))
    feats = []
    for b in np.unique(pick // store.block_size):
        s, _ = store.block_range(int(b))
        sel = pick[pick // store.block_size == b]
        feats.append(store.read_block(teacher, int(b), "text")[sel - s])
    return pick, _unit(np.concatenate(feats))


def score_block(img: np.ndarray, txt: np.ndarray, rows: np.ndarray, ref_rows: np.ndarray, ref_txt: np.ndarray,
                method: str) -> np.ndarray:
    """Trust of each row of one block (float32), given the reference captions.

    Args:
        img, txt: (B, D) the teacher's image and text features of the rows.
        rows: (B,) their row ids (a row's own caption is left out of its reference).
        ref_rows, ref_txt: (R,) ids and (R, D) unit text features of the reference captions.
        method: ``pair-rank`` or ``margin``.
    """
    ui, ut = _unit(img), _unit(txt)
    paired = (ui * ut).sum(1)
    sims = ui @ ref_txt.T
    own = rows[:, None] == ref_rows[None, :]
    if method == "pair-rank":
        beats = (sims > paired[:, None]) & ~own
        others = len(ref_rows) - own.sum(1)
        return (1.0 - beats.sum(1) / np.maximum(others, 1)).astype(np.float32)
    sims[own] = -np.inf
    return (paired - sims.max(1)).astype(np.float32)


def compute_trust(store: FeatureStore, teacher: str, method: str = "pair-rank", threshold: float | None = None, *,
                  reference: int = 1024, seed: int = 0) -> JSONDict:
    """Score every valid row of ``teacher``, write ``trust`` and ``trusted`` to the store; return the metadata.

    Args:
        store: the feature store (the arrays go beside it).
        teacher: a teacher the store holds.
        method: ``pair-rank`` or ``margin``.
        threshold: least trust of a trusted row (default per method, :data:`DEFAULT_THRESHOLD`).
        reference: reference captions to rank against.
        seed: seed of the reference draw.

    Returns:
        ``path``, ``method``, ``threshold``, ``reference``, ``seed``, ``scored``, ``trusted``, ``coverage``.

    Raises:
        StoreError: unknown teacher or method, or fewer than 2 valid rows.
    """
    import zarr

    if teacher not in store.teachers:
        raise StoreError(f"store {store.path} holds no teacher {teacher!r}; it holds {store.teachers}")
    if method not in METHODS:
        raise StoreError(f"trust method {method!r} is unknown; use one of {list(METHODS)}")
    if reference < 2:
        raise StoreError(f"trust reference size {reference} is too small; use at least 2 (default 1024)")
    threshold = DEFAULT_THRESHOLD[method] if threshold is None else float(threshold)
    store = FeatureStore.open(store.path, cache_bytes=READ_CACHE_BYTES)
    ref_rows, ref_txt = _reference(store, teacher, reference, seed)
    path = trust_path(store, teacher)
    remote = is_remote(path)
    # object storage has no rename: write in place; the group's attrs, written last, mark it done
    tmp = path if remote else path.with_suffix(".tmp")
    if remote and path.exists():
        path.fs.rm(path.path, recursive=True)
    group = zarr.open_group(zarr_location(tmp), mode="w", zarr_format=3)
    chunks = (store.block_size,)
    trust = group.create_array("trust", shape=(store.n,), chunks=chunks, dtype="float16", fill_value=np.nan)
    trusted = group.create_array("trusted", shape=(store.n,), chunks=chunks, dtype="bool", fill_value=False)
    done = store.done_blocks(teacher)
    scored = kept = 0
    for b in range(store.num_blocks):
        if b not in done:
            continue
        s, e = store.block_range(b)
        valid = store.read_block(teacher, b, "valid").astype(bool)
        t = np.full(e - s, np.nan, np.float32)
        if valid.any():
            img = store.read_block(teacher, b, "image")[valid]
            txt = store.read_block(teacher, b, "text")[valid]
            t[valid] = score_block(img, txt, np.arange(s, e)[valid], ref_rows, ref_txt, method)
        ok = valid & (t >= threshold)
        trust[s:e] = t.astype(np.float16)
        trusted[s:e] = ok
        scored += int(valid.sum())
        kept += int(ok.sum())
    meta = {"teacher": teacher, "method": method, "threshold": threshold, "reference": int(len(ref_rows)),
            "seed": seed, "block_size": store.block_size, "scored": scored, "trusted": kept, "coverage": kept / scored if scored else 0.0}
    group.attrs.update(meta)
    if not remote:
        if path.exists():
            import shutil

            shutil.rmtree(path)
        tmp.replace(path)
    if scored and kept == 0:
        logger.warning("trust %s of teacher %r marks every row untrusted (0 of %d valid rows kept, share 0.0%%, "
                       "threshold %g); distilling with --teacher-mask trusted would use nothing of it: lower "
                       "--threshold or try another --method", method, teacher, scored, threshold)
    logger.info("trust %s of %s: %d of %d valid rows trusted (%.1f%%) -> %s", method, teacher, kept, scored,
                100 * meta["coverage"], path)
    return {"path": str(path), **meta}


def has_trust(store: FeatureStore, teacher: str) -> bool:
    """Whether trust was computed for ``teacher``."""
    meta = trust_path(store, teacher) / "zarr.json"
    if not is_remote(meta):
        return meta.is_file()
    try:
        return "method" in json.loads(meta.read_bytes()).get("attributes", {})
    except FileNotFoundError:
        return False


def _open(store: FeatureStore, teacher: str):
    import zarr

    if not has_trust(store, teacher):
        raise StoreError(f"store {store.path} has no trust for teacher {teacher!r}; compute it: "
                         f"mmkd store trust {store.path} --teacher {teacher} --method pair-rank")
    return zarr.open_group(zarr_location(trust_path(store, teacher), read_only=True), mode="r", zarr_format=3)


def read_trust(store: FeatureStore, teacher: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(trust float32, trusted bool)`` of ``rows`` (NaN / False where not scored).

    Raises:
        StoreError: no trust computed for ``teacher`` (the message names the command).
    """
    g = _open(store, teacher)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, bool)
    block = int(g.attrs.get("block_size", 0)) or len(rows)
    t, m = np.full(rows.size, np.nan, np.float32), np.zeros(rows.size, bool)
    for b in np.unique(rows // block):
        sel = rows // block == b
        s = int(b) * block
        e = min(s + block, g["trust"].shape[0])
        t[sel] = np.asarray(g["trust"][s:e], dtype=np.float32)[rows[sel] - s]
        m[sel] = np.asarray(g["trusted"][s:e], dtype=bool)[rows[sel] - s]
    return t, m


def trust_info(store: FeatureStore, teacher: str) -> JSONDict | None:
    """The saved metadata of ``teacher``'s trust (for ``mmkd store info``), or ``None``."""
    if not has_trust(store, teacher):
        return None
    return dict(_open(store, teacher).attrs)


__all__ = ["DEFAULT_THRESHOLD", "METHODS", "compute_trust", "has_trust", "read_trust", "score_block", "trust_info",
           "trust_path"]
