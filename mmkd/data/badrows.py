"""Rows of a dataset's tables that cannot become samples (reason ``bad_row``).

A table row that is not UTF-8, not valid JSON/CSV, or not a record has no usable
sample id or caption, so it never enters the store's index. With
``on_bad_row="record"`` (the default) a reader logs it once, keeps a
:class:`BadRow` in ``dataset.bad_rows`` and goes on; ``mmkd extract`` records them
in ``<store>/_failures/dataset.parquet`` and counts them in its summary. With
``on_bad_row="fail"`` the first one stops the job with a
:class:`~mmkd.data.base.DatasetError` naming ``file:line``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from mmkd.jsontypes import JSONDict

from mmkd.data.errors import DatasetError

log = logging.getLogger(__name__)

ON_BAD_ROW = ("record", "fail")
BAD_ROW = "bad_row"


@dataclass(frozen=True)
class BadRow:
    """One unusable table row.

    Attributes:
        file: the table (or ``shard.tar::member``) holding it.
        line: 1-based line (JSONL/CSV: physical line; parquet: row in the file);
            ``None`` where rows have no line (tar members).
        reason: always ``bad_row``.
        detail: what is wrong with it.
    """

    file: str
    line: int | None
    detail: str
    reason: str = BAD_ROW

    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def to_dict(self) -> JSONDict:
        return asdict(self)


def check_on_bad_row(value: str) -> str:
    """``value`` when it is a known policy.

    Raises:
        ValueError: any other value (the message lists the valid ones).
    """
    if value not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row={value!r}; use one of {list(ON_BAD_ROW)}")
    return value


class BadRowsMixin:
    """Bad-row bookkeeping for readers: call :meth:`_reset_bad_rows` when a pass starts,
    :meth:`_bad_row` for each unusable row."""

    on_bad_row: str = "record"
    uri: str

    def _init_bad_rows(self, on_bad_row: str) -> None:
        self.on_bad_row = check_on_bad_row(on_bad_row)
        self.bad_rows: list[BadRow] = []
        self._warned: set[tuple[str, int | None]] = set()

    def _reset_bad_rows(self) -> None:
        """Start a pass over the rows: ``bad_rows`` will hold this pass's bad rows."""
        self.bad_rows = []

    def _bad_row(self, file: str, line: int | None, detail: str) -> None:
        """Record (or, with ``on_bad_row="fail"``, raise on) one unusable row; warn once per row."""
        row = BadRow(file, line, detail)
        if self.on_bad_row == "fail":
            raise DatasetError(f"{row.where()}: {detail} (dataset {self.uri!r}); fix or delete that row, or pass "
                               "--on-bad-row record to skip it and record it in the store")
        self.bad_rows.append(row)
        key = (file, line)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s: skipped, %s (recorded as bad_row)", row.where(), detail)
