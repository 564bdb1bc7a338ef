"""Flag values are checked when the command line is parsed: one line naming the flag, before any work."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("flag, value, says", [
    ("--lr", "-1", "Invalid value for '--lr': -1.0 is not in the range x>0"),
    ("--lr", "inf", "Invalid value for '--lr': 'inf' is not a finite number"),
    ("--lr", "nan", "Invalid value for '--lr'"),
    ("--weight-decay", "-0.1", "Invalid value for '--weight-decay'"),
    ("--fd-weight", "inf", "Invalid value for '--fd-weight'"),
])
def test_bad_flag_value_is_named_at_parse_time(flag, value, says, run_mmkd, tmp_path):
    store = tmp_path / "st"
    store.mkdir()
    res = run_mmkd("distill", "--store", store, "--stage", "1", "--student", "x", "--out", tmp_path / "run",
                   "--steps", "1", flag, value, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert says in res.stderr.strip().splitlines()[-1], res.stderr
    assert not (tmp_path / "run").exists()
