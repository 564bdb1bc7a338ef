"""Checking that a store is whole and sound (``mmkd store validate``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmkd.store import format as fmt

if TYPE_CHECKING:
    from mmkd.store.store import FeatureStore

NORM_TOLERANCE = 2e-2  # float16 storage keeps unit norms to ~1e-3


def disk_usage(path: Path) -> int:
    """Bytes used by all files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def validate_store(store: "FeatureStore") -> list[str]:
    """Every problem found in ``store``; an empty list means whole and sound.

    Checks the index (length, row numbers, unique ids), and for each teacher: array
    shapes against the index and the declared dim, blocks without a done marker,
    NaN/Inf in valid rows, valid rows with zero norm, and (for teachers whose attrs
    say ``normalized``) valid rows whose norm is not 1.
    """
    problems = _index_problems(store)
    for teacher in store.teachers:
        problems += _teacher_problems(store, teacher)
    return problems


def _index_problems(store: "FeatureStore") -> list[str]:
    out = []
    idx = store.index
    if idx.num_rows != store.n:
        out.append(f"index.parquet has {idx.num_rows} rows but store.json says num_samples={store.n}")
    rows = np.asarray(idx.column("row").to_numpy())
    if not np.array_equal(rows, np.arange(idx.num_rows)):
        bad = int(np.nonzero(rows != np.arange(idx.num_rows))[0][0]) if rows.size == idx.num_rows else -1
        out.append(f"index.parquet column 'row' is not 0..N-1 in order (first mismatch at position {bad})")
    ids = idx.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        seen, dups = set(), []
        for s in ids:
            if s in seen:
                dups.append(s)
            seen.add(s)
        out.append(f"index.parquet has {len(dups)} duplicate sample ids, e.g. {dups[:3]}")
    return out


def _teacher_problems(store: "FeatureStore", teacher: str) -> list[str]:
    out = []
    try:
        g = store._group(teacher)
        attrs = dict(g.attrs.asdict())
        dim = int(attrs["dim"])
    except Exception as e:  # a broken teacher group is a problem to report, not a crash
        return [f"teacher {teacher!r}: cannot open its arrays or attrs: {e}"]
    for kind in fmt.KINDS:
        shape = tuple(g[kind].shape)
        if shape != (store.n, dim):
            out.append(f"teacher {teacher!r}: {kind} array has shape {shape}, expected {(store.n, dim)}")
    if tuple(g["valid"].shape) != (store.n,):
        out.append(f"teacher {teacher!r}: valid array has shape {tuple(g['valid'].shape)}, expected {(store.n,)}")
    if out:
        return out
    missing = store.missing_blocks(teacher)
    if missing:
        out.append(f"teacher {teacher!r}: {len(missing)} of {store.num_blocks} blocks not done: {_ranges(missing)}")
    done = sorted(store.done_blocks(teacher))
    counts = {"nonfinite": [], "zero_norm": [], "bad_norm": []}
    for b in done:
        start, stop = store.block_range(b)
        valid = g["valid"][start:stop]
        for kind in fmt.KINDS:
            x = store.read_block(teacher, b, kind)[valid].astype(np.float32)
            if not x.size:
                continue
            rows = np.nonzero(valid)[0] + start
            finite = np.isfinite(x).all(axis=1)
            counts["nonfinite"] += [(int(r), kind) for r in rows[~finite]]
            norms = np.linalg.norm(np.where(finite[:, None], x, 0), axis=1)
            counts["zero_norm"] += [(int(r), kind) for r in rows[finite & (norms == 0)]]
            if attrs.get("normalized", True):
                off = finite & (norms > 0) & (np.abs(norms - 1) > NORM_TOLERANCE)
                counts["bad_norm"] += [(int(r), kind) for r in rows[off]]
    labels = {"nonfinite": "valid rows with NaN/Inf", "zero_norm": "valid rows with zero norm",
              "bad_norm": f"valid rows with norm off 1 by > {NORM_TOLERANCE} (attrs say normalized)"}
    for key, hits in counts.items():
        if hits:
            out.append(f"teacher {teacher!r}: {len(hits)} {labels[key]}, e.g. (row, kind) {hits[:5]}")
    return out


def _ranges(blocks: list[int]) -> str:
    parts, start, prev = [], blocks[0], blocks[0]
    for b in blocks[1:] + [None]:
        if b is not None and b == prev + 1:
            prev = b
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if b is not None:
            start = prev = b
    return ", ".join(parts)
