"""What a store holds and whether it is sound: ``FeatureStore.info`` / ``validate``."""

from __future__ import annotations

import os
from pathlib import Path

from mmkd.jsontypes import JSONDict
from mmkd.store import format as fmt
from mmkd.store.manifest import StoreManifest
from mmkd.store.validate import ValidationReport, validate_store


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


class ReportsMixin:
    """Summaries and checks for :class:`~mmkd.store.FeatureStore`."""

    path: Path
    manifest: StoreManifest

    def dataset_failures(self):
        """Dataset rows that never became samples (``file``, ``line``, ``reason``, ``detail``), as a table."""
        from mmkd.store.failures import read_dataset_failures

        return read_dataset_failures(self.path)

    def info(self) -> JSONDict:
        """A summary: samples, blocks, dataset bad rows, and per teacher its dim, progress, valid rows, failures."""
        teachers = {}
        for t in self.teachers:
            done = self.done_blocks(t)
            teachers[t] = {
                "dim": self.dim(t),
                "dtype": fmt.FEATURE_DTYPE,
                "blocks_done": len(done),
                "blocks_total": self.num_blocks,
                "valid_rows": int(self.valid(t).sum()),
                "failures": self.failures(t).num_rows,
                "complete": len(done) == self.num_blocks,
            }
        bad = self.dataset_failures()
        return {
            "path": str(self.path),
            "format_version": self.manifest.format_version,
            "created_at": self.manifest.created_at,
            "num_samples": self.n,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "dataset": self.manifest.dataset.to_dict(),
            "dataset_bad_rows": bad.num_rows,
            "dataset_bad_rows_sample": bad.slice(0, 5).to_pylist(),
            "teachers": teachers,
            "size_bytes": disk_usage(self.path),
        }

    def validate(self, deep: bool = False) -> list[str]:
        """Every problem found (empty list: whole and sound, or empty). See :func:`validate_report`."""
        return self.validate_report(deep=deep).messages

    def validate_report(self, deep: bool = False) -> ValidationReport:
        """Check the store (:func:`mmkd.store.validate.validate_store`); ``deep`` reads every feature chunk."""
        return validate_store(self, deep=deep)
