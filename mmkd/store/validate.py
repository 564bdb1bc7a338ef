"""Checking that a store is whole and sound (``mmkd store validate``).

Every check is guarded: a damaged file (truncated chunk, unreadable marker or
index) becomes a :class:`Problem` in the report, never a traceback. The default
check is fast: it reads the index, the markers and the small ``valid`` chunks, and
checks the size of every feature chunk file without reading it. ``deep=True`` also
reads and decodes every feature chunk and failures table and checks the values
(NaN/Inf, zero norms, norms off 1 for normalised teachers).

Status and ``mmkd store validate`` exit code: ``sound`` (0), ``unsound`` (1: at
least one problem), ``empty`` (3: no problem, but no teacher was ever added, e.g.
a store killed between creation and its first extract).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mmkd.jsontypes import JSONDict
from mmkd.store import format as fmt
from mmkd.store.blocks import block_crc32
from mmkd.store.index import fingerprint_tables
from mmkd.store.store import FeatureStore

NORM_TOLERANCE = 2e-2  # float16 storage keeps unit norms to ~1e-3
EXIT_CODES = {"sound": 0, "unsound": 1, "empty": 3}


@dataclass
class Problem:
    """One thing wrong with a store.

    Attributes:
        kind: a short class (``index``, ``index_fingerprint``, ``manifest``, ``teacher``,
            ``blocks_not_done``, ``marker``, ``chunk``, ``valid_count``, ``failures``,
            ``values``).
        message: what is wrong, where, and what to do.
    """

    kind: str
    message: str


@dataclass
class ValidationReport:
    """The result of :func:`validate_store`.

    Attributes:
        path: the store.
        deep: every feature chunk was read.
        teachers: teachers in the store.
        problems: everything found wrong.
        chunks_checked: feature chunk files whose size was checked.
        chunks_read: chunks read and decoded (``valid`` always; features when ``deep``).
        seconds: wall time of the check.
    """

    path: str
    deep: bool
    teachers: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    chunks_checked: int = 0
    chunks_read: int = 0
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """``unsound`` (any problem), ``empty`` (no teacher), else ``sound``."""
        if self.problems:
            return "unsound"
        return "empty" if not self.teachers else "sound"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def messages(self) -> list[str]:
        return [p.message for p in self.problems]

    @property
    def counts(self) -> dict[str, int]:
        """Problems by kind."""
        return dict(Counter(p.kind for p in self.problems))

    @property
    def not_read(self) -> str:
        """What this pass did not read: the default pass sizes feature chunks without decoding them."""
        return "" if self.deep else "values not read: --deep reads them"

    def add(self, kind: str, message: str) -> None:
        self.problems.append(Problem(kind, message))

    def to_dict(self) -> JSONDict:
        return {"path": self.path, "status": self.status, "exit_code": self.exit_code, "deep": self.deep,
                "teachers": self.teachers, "problems": [p.__dict__ for p in self.problems],
                "counts": self.counts, "chunks_checked": self.chunks_checked, "chunks_read": self.chunks_read,
                "seconds": self.seconds, "not_read": self.not_read}


def validate_store(store: FeatureStore, deep: bool = False) -> ValidationReport:
    """Check ``store`` and report every problem found (see the module docstring).

    Checks the manifest geometry; the index (readable, length, row numbers, unique
    ids, ``index_fingerprint`` of store.json); the dataset failures table; and for
    each teacher: array shapes against the index and dim, blocks without a done
    marker, readable markers, the size of every feature chunk file, ``valid``
    chunks decodable and agreeing with their marker's count; with ``deep``, every
    feature chunk decoded and its valid rows' values checked.
    """
    t0 = time.perf_counter()
    report = ValidationReport(path=str(store.path), deep=deep, teachers=store.teachers)
    _manifest_problems(store, report)
    _index_problems(store, report)
    _dataset_failure_problems(store, report)
    for teacher in store.teachers:
        _teacher_problems(store, teacher, report)
    report.seconds = time.perf_counter() - t0
    return report


def _manifest_problems(store: FeatureStore, report: ValidationReport) -> None:
    if store.manifest.geometry_error:
        report.add("manifest", store.manifest.geometry_error)


def index_problems(store: FeatureStore) -> list[str]:
    """What is wrong with the store's index (unreadable, rows out of order, duplicate ids, edited after the store
    was made); empty when it is sound. Reads the index once (what distill checks before training)."""
    report = ValidationReport(path=str(store.path), deep=False, teachers=store.teachers)
    _index_problems(store, report)
    return [p.message for p in report.problems]


def _index_problems(store: FeatureStore, report: ValidationReport) -> None:
    fix = "restore index.parquet from a backup, or rebuild the store with `mmkd extract` into a new --store"
    seen: set[str] = set()
    dups: list[str] = []
    total, first_bad_row = 0, None
    rows_for_hash: list[Any] = []
    try:
        for table in store.iter_index(("sample_id", "row", "caption", "image", "image_sha256")):
            rows = np.asarray(table.column("row").to_numpy(zero_copy_only=False))
            expected = np.arange(total, total + table.num_rows)
            if first_bad_row is None and not np.array_equal(rows, expected):
                first_bad_row = total + int(np.nonzero(rows != expected)[0][0])
            for sid in table.column("sample_id").to_pylist():
                if sid in seen:
                    dups.append(sid)
                seen.add(sid)
            rows_for_hash.append(table.select(["sample_id", "caption", "image", "image_sha256"]))
            total += table.num_rows
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError/... for a damaged parquet file
        report.add("index", f"index.parquet cannot be read ({type(e).__name__}: {e}); {fix}")
        return
    if total != store.n:
        report.add("index", f"index.parquet has {total} rows but store.json says num_samples={store.n}; {fix}")
    if first_bad_row is not None:
        report.add("index", f"index.parquet column 'row' is not 0..N-1 in order (first mismatch at position "
                            f"{first_bad_row}); {fix}")
    if dups:
        report.add("index", f"index.parquet has {len(dups)} duplicate sample ids, e.g. {dups[:3]}; {fix}")
    recorded = store.manifest.index_fingerprint
    if not recorded:
        report.add("manifest", "store.json records no index_fingerprint, so the index cannot be checked; "
                               "rebuild the store with `mmkd extract`")
        return

    actual = fingerprint_tables(rows_for_hash)
    if actual != recorded:
        report.add("index_fingerprint",
                   f"index.parquet was changed after the store was made: its fingerprint {actual[:16]}... != "
                   f"index_fingerprint {recorded[:16]}... in store.json (a sample id, caption, image reference "
                   f"or image hash was edited, so features no longer match their rows); {fix}")


def _dataset_failure_problems(store: FeatureStore, report: ValidationReport) -> None:
    try:
        store.dataset_failures()
    except Exception as e:  # a damaged parquet file is a problem to report
        report.add("failures", f"{fmt.FAILURES}/{fmt.DATASET_FAILURES} is unreadable ({type(e).__name__}: {e}); "
                               "rerun `mmkd extract` into a new store to record the dataset's bad rows again")


def _teacher_problems(store: FeatureStore, teacher: str, report: ValidationReport) -> None:
    try:
        g = store._group(teacher)
        attrs = dict(g.attrs.asdict())
        dim = int(attrs["dim"])
        shapes = {kind: tuple(g[kind].shape) for kind in (*fmt.KINDS, "valid")}
    except Exception as e:  # a broken teacher group is a problem to report, not a crash
        report.add("teacher", f"teacher {teacher!r}: cannot open its arrays or attrs ({type(e).__name__}: {e}); "
                              f"re-extract it with `mmkd extract --teacher {teacher} --overwrite`")
        return
    bad_shape = False
    for kind, shape in shapes.items():
        want = (store.n,) if kind == "valid" else (store.n, dim)
        if shape != want:
            bad_shape = True
            report.add("teacher", f"teacher {teacher!r}: {kind} array has shape {shape}, expected {want}")
    if bad_shape:
        return
    missing = store.missing_blocks(teacher)
    if missing:
        report.add("blocks_not_done", f"teacher {teacher!r}: {len(missing)} of {store.num_blocks} blocks not done: "
                                      f"{_ranges(missing)}; rerun `mmkd extract --teacher {teacher}` to finish them")
    counts: dict[str, list] = {"nonfinite": [], "zero_norm": [], "bad_norm": []}
    for b in sorted(store.done_blocks(teacher)):
        if b >= store.num_blocks:
            report.add("marker", f"teacher {teacher!r}: marker {store.marker_path(teacher, b)} names block {b}, "
                                 f"but the store has {store.num_blocks} blocks; delete it")
            continue
        valid, marker = _check_block(store, teacher, b, report)
        if report.deep and valid is not None:
            _check_values(store, teacher, b, valid, bool(attrs.get("normalized", True)), report, counts,
                          marker.get("crc32") if isinstance(marker.get("crc32"), dict) else {})
    labels = {"nonfinite": "valid rows with NaN/Inf", "zero_norm": "valid rows with zero norm",
              "bad_norm": f"valid rows with norm off 1 by > {NORM_TOLERANCE} (attrs say normalized)"}
    for key, hits in counts.items():
        if hits:
            report.add("values", f"teacher {teacher!r}: {len(hits)} {labels[key]}, e.g. (row, kind) {hits[:5]}")


def _redo(store: FeatureStore, teacher: str, block: int) -> str:
    return (f"delete {store.marker_path(teacher, block)} and rerun `mmkd extract --teacher {teacher}` "
            "to redo the block")


def _check_block(store: FeatureStore, teacher: str, b: int, report: ValidationReport
                 ) -> tuple[np.ndarray | None, dict]:
    """Marker, chunk sizes and ``valid`` of one done block; its valid mask (None when unreadable) and marker."""
    try:
        marker = json.loads(store.marker_path(teacher, b).read_text(encoding="utf-8"))
        if not isinstance(marker, dict):
            raise ValueError(f"a {type(marker).__name__}, not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        report.add("marker", f"teacher {teacher!r}: done marker of block {b} is unreadable ({e}); "
                             f"{_redo(store, teacher, b)}")
        marker = {}
    ok = True
    for kind in fmt.KINDS:
        size = store.raw_chunk_bytes(teacher, kind)
        if size is None:
            continue
        path = store.chunk_path(teacher, kind, b)
        report.chunks_checked += 1
        try:
            have = path.stat().st_size
        except FileNotFoundError:
            have = None
        if have != size:
            ok = False
            what = "is missing" if have is None else f"holds {have} bytes, expected {size} (truncated or damaged)"
            report.add("chunk", f"teacher {teacher!r}: {kind} chunk of block {b} ({path}) {what}; "
                                f"{_redo(store, teacher, b)}")
    try:
        valid = store.read_block(teacher, b, "valid")
        report.chunks_read += 1
    except Exception as e:  # StoreError or a codec error: report, go on
        report.add("chunk", f"teacher {teacher!r}: valid chunk of block {b} cannot be decoded "
                            f"({type(e).__name__}: {e}); {_redo(store, teacher, b)}")
        return None, marker
    if "valid" in marker and int(marker["valid"]) != int(valid.sum()):
        report.add("valid_count", f"teacher {teacher!r}: block {b} has {int(valid.sum())} valid rows but its "
                                  f"marker says {marker['valid']}; {_redo(store, teacher, b)}")
    crc = marker.get("crc32") if isinstance(marker.get("crc32"), dict) else {}
    _check_crc(store, teacher, b, "valid", valid, crc, report)
    return (valid if ok else None), marker


def _check_crc(store: "FeatureStore", teacher: str, b: int, kind: str, data: np.ndarray, crc: dict,
               report: ValidationReport) -> None:
    """Compare a block's values read back with the CRC-32 its marker recorded (markers of older stores have none)."""
    if kind not in crc:
        return
    have = block_crc32(data)
    if have != int(crc[kind]):
        report.add("checksum", f"teacher {teacher!r}: {kind} values of block {b} have CRC-32 {have:08x}, the marker "
                               f"recorded {int(crc[kind]):08x} (the chunk {store.chunk_path(teacher, kind, b)} changed "
                               f"after it was written: a flipped bit or an edit); {_redo(store, teacher, b)}")


def _check_values(store: FeatureStore, teacher: str, b: int, valid: np.ndarray, normalized: bool,
                  report: ValidationReport, counts: dict[str, list], crc: dict) -> None:
    start, _ = store.block_range(b)
    rows = np.nonzero(valid)[0] + start
    for kind in fmt.KINDS:
        try:
            x = store.read_block(teacher, b, kind)
            report.chunks_read += 1
        except Exception as e:  # StoreError or a codec error: report, go on
            report.add("chunk", f"teacher {teacher!r}: {kind} chunk of block {b} cannot be read "
                                f"({type(e).__name__}: {e}); {_redo(store, teacher, b)}")
            continue
        _check_crc(store, teacher, b, kind, x, crc, report)
        x = x[valid].astype(np.float32)
        if not x.size:
            continue
        finite = np.isfinite(x).all(axis=1)
        counts["nonfinite"] += [(int(r), kind) for r in rows[~finite]]
        norms = np.linalg.norm(np.where(finite[:, None], x, 0), axis=1)
        counts["zero_norm"] += [(int(r), kind) for r in rows[finite & (norms == 0)]]
        if normalized:
            off = finite & (norms > 0) & (np.abs(norms - 1) > NORM_TOLERANCE)
            counts["bad_norm"] += [(int(r), kind) for r in rows[off]]
    path = store.path / fmt.FAILURES / teacher / f"{fmt.block_name(b)}.parquet"
    if path.exists():
        try:
            fmt.read_parquet(path)
        except Exception as e:  # a damaged failures table
            report.add("failures", f"teacher {teacher!r}: failures table {path} is unreadable "
                                   f"({type(e).__name__}: {e}); {_redo(store, teacher, b)}")


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
