"""Fitting a teacher projection streams the store: peak memory is flat in the number of rows.

    python bench/projection_bench.py [--rows 100000 1000000] [--dim 128] [--out-dim 64] [--dir /tmp]

For each row count: a synthetic store (``mmkd store synth``), then ``fit_projection``
with pca and with ae (one epoch) in a fresh process each; prints the peak RSS
(``ru_maxrss``) of each fit next to a process that only imports and opens the store,
the fit time, rows/s and R². Not a timed test: the claim is the RSS column.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from mmkd.store import FeatureStore
from mmkd.store.projection import fit_projection
import torch  # noqa: F401  (the ae fit imports it: counted in every process, baseline included)
path, method, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = FeatureStore.open(path)
t = time.perf_counter()
meta = {"r2": float("nan"), "fit_rows": 0}
if method != "baseline":
    meta = fit_projection(store, "teacher", dim, method, epochs=1, overwrite=True)
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "s": time.perf_counter() - t, "r2": meta["r2"], "rows": meta["fit_rows"]}))
"""


def _child(path: Path, method: str, dim: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), method, str(dim)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=128, help="teacher dim")
    ap.add_argument("--out-dim", type=int, default=64)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    from mmkd.store.synthetic import make_synthetic_store

    print(f"{'rows':>9} {'method':>8} {'peak RSS MiB':>13} {'fit s':>7} {'rows/s':>9} {'R²':>7}")
    for rows in args.rows:
        path = Path(tempfile.mkdtemp(dir=args.dir)) / "store"
        try:
            make_synthetic_store(path, rows, {"teacher": args.dim}, block_size=2048)
            for method in ("baseline", "pca", "ae"):
                r = _child(path, method, args.out_dim)
                rate = f"{2 * rows / r['s']:.0f}" if method != "baseline" else "-"
                print(f"{rows:>9} {method:>8} {r['rss_mb']:>13.0f} {r['s']:>7.1f} {rate:>9} {r['r2']:>7.4f}",
                      flush=True)
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
