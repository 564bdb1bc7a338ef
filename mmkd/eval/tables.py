"""Reading the small task tables of slide and VQA eval sets (csv, tsv, jsonl, parquet) into row dicts."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mmkd.config import ConfigError
from mmkd.jsontypes import JSONDict


def read_rows(path: Path, what: str) -> list[JSONDict]:
    """Rows of a ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.parquet`` table as dicts (csv values stay strings).

    Raises:
        ConfigError: the file is absent, of another format, malformed, or empty.
    """
    if not path.is_file():
        raise ConfigError(f"{what}: table {str(path)!r} not found")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="") as f:
            rows = [dict(r) for r in csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")]
    elif suffix in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{i}: not valid JSON ({e})") from e
    elif suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
    else:
        raise ConfigError(f"{what}: table {str(path)!r} must be .csv, .tsv, .jsonl or .parquet")
    if not rows:
        raise ConfigError(f"{what}: table {str(path)!r} has no rows")
    return rows


def column(rows: list[JSONDict], field: str, what: str, path: Path) -> list[Any]:
    """Values of ``field`` in every row.

    Raises:
        ConfigError: some rows lack the field or leave it empty (names the first row and the columns).
    """
    bad = [i for i, r in enumerate(rows) if r.get(field) in (None, "")]
    if bad:
        raise ConfigError(f"{what}: {len(bad)} rows of {str(path)!r} have no {field!r} (first: row {bad[0] + 1}; "
                          f"columns: {sorted(rows[0])}); fill it in or map the column with the spec's *_field keys")
    return [r[field] for r in rows]
