"""Rows of a store not to train on, read from the store's own records.

A row is left out of training when its caption is empty, when a teacher recorded
a failure of the sample itself at extract time (image missing, corrupt,
truncated, a decompression bomb, an unconvertible mode, an empty caption), or
when no teacher that has finished its block holds valid features for it. Failures
that are about one teacher only (``missing_features`` of an imported store) do not
exclude a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from mmkd.store.store import FeatureStore

SAMPLE_FAILURE_REASONS = ("missing", "corrupt", "truncated", "decompression_bomb", "unsupported_mode",
                          "empty_caption")
CAUSES = ("empty_caption", "failed_at_extract", "no_valid_teacher")


@dataclass
class Exclusions:
    """Rows to leave out, and why.

    Attributes:
        mask: ``(N,)`` bools, True for rows to leave out.
        counts: cause -> rows (a row is counted under the first cause of :data:`CAUSES` that holds).
    """

    mask: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(np.count_nonzero(self.mask))

    def describe(self) -> str:
        """``"3 of 100 rows (empty_caption 1, failed_at_extract 2)"``."""
        parts = ", ".join(f"{k} {v}" for k, v in self.counts.items() if v)
        return f"{self.total} of {self.mask.size} rows" + (f" ({parts})" if parts else "")


def untrainable_rows(store: "FeatureStore") -> Exclusions:
    """The rows of ``store`` not to train on (see the module docstring); reads the index one row group at a time."""
    n = store.n
    empty = np.zeros(n, bool)
    start = 0
    for table in store.iter_index(("caption",)):
        cap = pc.fill_null(table.column("caption"), "")
        empty[start:start + table.num_rows] = pc.equal(pc.utf8_trim_whitespace(cap), "").to_numpy(
            zero_copy_only=False)
        start += table.num_rows
    failed = np.zeros(n, bool)
    any_done = np.zeros(n, bool)
    any_valid = np.zeros(n, bool)
    for t in store.teachers:
        fails = store.failures(t)
        if fails.num_rows:
            hit = pc.is_in(fails.column("reason"), value_set=pa_strings(SAMPLE_FAILURE_REASONS))
            rows = fails.filter(hit).column("row").drop_null().to_numpy()
            failed[rows[(rows >= 0) & (rows < n)]] = True
        for b in store.done_blocks(t):
            if b < store.num_blocks:
                s, e = store.block_range(b)
                any_done[s:e] = True
        any_valid |= store.valid(t)
    no_teacher = any_done & ~any_valid
    counts, taken = {}, np.zeros(n, bool)
    for cause, m in zip(CAUSES, (empty, failed, no_teacher)):
        counts[cause] = int(np.count_nonzero(m & ~taken))
        taken |= m
    return Exclusions(taken, counts)


def pa_strings(values: tuple[str, ...]):
    return pa.array(values, pa.string())
