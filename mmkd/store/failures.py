"""The store's failure tables: bad samples per teacher block, and bad rows of the dataset.

Two kinds (docs/store-format.md, "Failures"):

* ``_failures/<teacher>/block-XXXXXX.parquet``: samples in the index that a teacher
  could not use (``sample_id``, ``row``, ``reason``, ``detail``).
* ``_failures/dataset.parquet``: rows of the dataset's tables that never became a
  sample (``file``, ``line``, ``reason``, ``detail``), e.g. a caption line that is
  not UTF-8 or not JSON (reason ``bad_row``). They have no usable sample id, so
  they are kept out of the index; this table is where they stay visible.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmkd.config import as_path, is_remote
from mmkd.data.badrows import BadRow
from mmkd.jsontypes import JSONDict
from mmkd.store import format as fmt
from mmkd.store.format import StoreError

DATASET_FAILURE_COLUMNS = ("file", "line", "reason", "detail")


def _write_atomic(path: Path, table: pa.Table) -> None:
    if is_remote(path):
        fmt.write_parquet(table, path)  # one PUT: atomic
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    fmt.fsync_tree(tmp)
    os.replace(tmp, path)


def write_failures_table(path: Path, failures: Sequence[JSONDict]) -> None:
    """Write one block's bad samples durably (tmp, fsync, rename)."""
    _write_atomic(path, pa.table({
        "sample_id": [str(f["sample_id"]) for f in failures],
        "row": pa.array([f.get("row") for f in failures], pa.int64()),
        "reason": [str(f["reason"]) for f in failures],
        "detail": [str(f.get("detail", "")) for f in failures],
    }))


def read_failures_tables(files: Sequence[Path]):
    """The rows of block failure tables, concatenated (an empty table when there are none)."""
    if not files:
        return pa.table({"sample_id": pa.array([], pa.string()), "row": pa.array([], pa.int64()),
                         "reason": pa.array([], pa.string()), "detail": pa.array([], pa.string())})
    return pa.concat_tables([fmt.read_parquet(f) for f in files])


def dataset_failures_path(store: Path) -> Path:
    """``<store>/_failures/dataset.parquet``."""
    return as_path(store) / fmt.FAILURES / fmt.DATASET_FAILURES


def write_dataset_failures(store: Path, failures: Iterable[BadRow | JSONDict]) -> int:
    """Record dataset rows that never became samples; returns how many (no file when none).

    Args:
        store: the store folder (or the folder a store is being created in).
        failures: mappings, or objects with attributes, holding ``file``, ``line``,
            ``reason`` and ``detail``.

    Raises:
        StoreError: a record lacks ``file`` or ``reason``.
    """
    cols: dict[str, list] = {c: [] for c in DATASET_FAILURE_COLUMNS}
    for i, f in enumerate(failures):
        rec = f if isinstance(f, dict) else {c: getattr(f, c, None) for c in DATASET_FAILURE_COLUMNS}
        if not rec.get("file") or not rec.get("reason"):
            raise StoreError(f"dataset failure {i} ({rec!r}) needs a 'file' and a 'reason'")
        cols["file"].append(str(rec["file"]))
        cols["line"].append(None if rec.get("line") is None else int(rec["line"]))
        cols["reason"].append(str(rec["reason"]))
        cols["detail"].append(str(rec.get("detail") or ""))
    path = dataset_failures_path(store)
    if not cols["file"]:
        path.unlink(missing_ok=True)
        return 0
    _write_atomic(path, pa.table({"file": pa.array(cols["file"], pa.string()),
                                  "line": pa.array(cols["line"], pa.int64()),
                                  "reason": pa.array(cols["reason"], pa.string()),
                                  "detail": pa.array(cols["detail"], pa.string())}))
    return len(cols["file"])


def read_dataset_failures(store: Path):
    """The dataset-level failures of a store as a table (empty when none were recorded)."""
    path = dataset_failures_path(store)
    if not path.is_file():
        return pa.table({"file": pa.array([], pa.string()), "line": pa.array([], pa.int64()),
                         "reason": pa.array([], pa.string()), "detail": pa.array([], pa.string())})
    return fmt.read_parquet(path)
