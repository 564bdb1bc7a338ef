"""Other projects read a store with plain zarr / pyarrow / duckdb, without mmkd."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mmkd.store.synthetic import make_synthetic_store

READER = r"""
import json, sys
import numpy as np, pyarrow.parquet as pq, zarr
path = sys.argv[1]
idx = pq.read_table(f"{path}/index.parquet")
root = zarr.open_group(f"{path}/features.zarr", mode="r")
out = {"ids": idx.column("sample_id").to_pylist()[:5], "teachers": sorted(root.group_keys())}
t = out["teachers"][0]
rows = idx.column("row").to_numpy()[[3, 1]]
out["image"] = root[t]["image"][rows].astype("float32").tolist()
out["valid"] = root[t]["valid"][:].astype(int).tolist()
out["dim"] = root[t].attrs["dim"]
try:
    import duckdb
    out["duck"] = duckdb.sql(f"select sample_id from '{path}/index.parquet' where row = 3").fetchall()[0][0]
except ImportError:
    out["duck"] = None
assert not any(m == "mmkd" or m.startswith("mmkd.") for m in sys.modules), "mmkd was imported"
print(json.dumps(out))
"""


def test_plain_zarr_pyarrow_duckdb(tmp_path):
    store = make_synthetic_store(tmp_path / "st", 40, {"alpha": 12}, block_size=16, invalid_fraction=0.3)
    proc = subprocess.run([sys.executable, "-c", READER, str(tmp_path / "st")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ids"] == store.sample_ids[:5] and out["teachers"] == ["alpha"] and out["dim"] == 12
    np.testing.assert_array_equal(np.array(out["image"], np.float32),
                                  store.read("alpha", [3, 1]).astype(np.float32))
    np.testing.assert_array_equal(np.array(out["valid"], bool), store.valid("alpha"))
    if out["duck"] is None:
        pytest.skip("duckdb not installed (pip install -e '.[dev]')")
    assert out["duck"] == store.sample_ids[3]
