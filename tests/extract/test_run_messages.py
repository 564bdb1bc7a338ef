"""What an extract run prints: the summary's total line, the dataset-mismatch error's fingerprints."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from test_runner_support import modality_dataset

from mmkd.extract import ExtractError, ExtractJob, ExtractSummary, TeacherSummary


def _teacher(name: str, failures: dict[str, int]) -> TeacherSummary:
    return TeacherSummary(name, blocks_total=2, blocks_run=2, rows=16, valid=16 - sum(failures.values()),
                          failures=failures, wall_s=1.0, devices=["cpu"])


def test_total_line_gives_counts_per_kind_not_a_dict():
    summary = ExtractSummary("s", "d.jsonl", "ray", num_samples=16, wall_s=2.5,
                             teachers=[_teacher("a", {"missing": 1, "corrupt": 3}), _teacher("b", {"missing": 1})])
    total = summary.format().splitlines()[-1]
    assert total == ("total: 32 rows over 2 teachers, 27 valid; failures (counted once per teacher): "
                     "corrupt 3, missing 2; wall 2.50s")
    assert "{" not in total and "'" not in total
    clean = ExtractSummary("s", "d.jsonl", "local", num_samples=16, wall_s=1.0, teachers=[_teacher("a", {})])
    assert clean.format().splitlines()[-1] == "total: 16 rows over 1 teacher, 16 valid; failures: none; wall 1.00s"


def test_mismatch_error_and_store_info_show_the_same_fingerprint_prefix(modality_dir, tmp_path):
    from mmkd.cli import main
    from mmkd.data import open_dataset
    from mmkd.extract.runners.prepare import open_or_create_store

    jsonl = modality_dataset(modality_dir, tmp_path / "data", bad=False)
    job = ExtractJob(data=str(jsonl), teachers=["any"], store=str(tmp_path / "store"), runner="local")
    store, created = open_or_create_store(job, open_dataset(jsonl))
    assert created
    recorded = store.manifest.dataset.fingerprint
    info = CliRunner().invoke(main, ["store", "info", str(tmp_path / "store")])
    assert info.exit_code == 0, info.output
    shown = re.search(r"fingerprint (\S+)", info.output).group(1)
    assert shown == recorded[:16]

    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows[0]["caption"] = "an edited caption"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    edited = open_dataset(jsonl)
    with pytest.raises(ExtractError) as err:
        open_or_create_store(job, edited)
    assert f"dataset fingerprint {edited.fingerprint()[:16]} != recorded {shown} " in str(err.value)


@pytest.mark.parametrize("bad", [0, -1.5, "10", True])
def test_liveness_timeout_must_be_positive_seconds(bad, tmp_path):
    with pytest.raises(ExtractError, match=rf"liveness_timeout must be a number of seconds > 0, got {bad!r}"):
        ExtractJob(data="d", teachers=["t"], store=str(tmp_path), liveness_timeout=bad)
    assert ExtractJob(data="d", teachers=["t"], store=str(tmp_path), liveness_timeout=12).liveness_timeout == 12


def test_summary_says_which_side_is_the_wall():
    """Decode images/s per thread beside forward images/s, and which of the two bounds the run."""
    slow_decode = TeacherSummary("a", blocks_total=1, blocks_run=1, rows=100, valid=100, wall_s=3.0, devices=["cpu"],
                                 stages={"read_decode_s": 4.0, "wait_s": 2.0, "forward_s": 0.5, "write_s": 0.1})
    assert slow_decode.decode_per_core_s == 25.0 and slow_decode.forward_per_s == 200.0
    text = ExtractSummary("s", "d", "local", num_samples=100, wall_s=3.0, teachers=[slow_decode]).format()
    assert "decode 25.0 img/s per thread vs forward 200.0 img/s: the decode is the wall" in text
    assert "--decode reduced" in text
    slow_model = TeacherSummary("b", rows=10, stages={"read_decode_s": 0.1, "wait_s": 0.0, "forward_s": 5.0,
                                                      "write_s": 0.0})
    assert slow_model.wall_side == "forward" and slow_model.to_dict()["forward_per_s"] == 2.0
