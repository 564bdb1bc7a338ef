"""`mmkd extract` over a JSONL with a non-UTF-8 line and a malformed line: recorded, counted, job goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_runner_support import MODALITY_CAPTIONS, tiny_pipelines

from mmkd.store import FeatureStore, validate_store


@pytest.fixture(scope="module")
def bad_jsonl(tmp_path_factory, modality_dir, mmkd_demo_dir):
    root = tmp_path_factory.mktemp("badrows")
    good = [json.dumps({"id": p.stem, "image": str(p), "caption": MODALITY_CAPTIONS[p.stem]}).encode() + b"\n"
            for p in sorted(modality_dir.iterdir())[:4]]
    lines = [good[0], good[1], b'{"id": "latin1", "image": "x.png", "caption": "caf\xe9"}\n',
             good[2], b'{"id": "broken", "image": \n', good[3]]
    table = root / "data.jsonl"
    table.write_bytes(b"".join(lines))
    pipelines, _ = tiny_pipelines(root, mmkd_demo_dir, kinds=("open_clip",))
    return {"root": root, "table": table, "pipelines": pipelines}


def _extract(run_mmkd, setup, store: Path, *extra: str):
    return run_mmkd("extract", "--pipeline", setup["pipelines"], "--data", setup["table"], "--teacher",
                    "tiny_open_clip", "--store", store, "--runner", "local", "--block-size", "2", "--no-progress",
                    *extra)


def test_bad_rows_are_recorded_and_the_job_goes_on(bad_jsonl, run_mmkd, tmp_path):
    store = tmp_path / "st"
    res = _extract(run_mmkd, bad_jsonl, store)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "dataset: 2 bad row(s)" in res.stdout and "bad rows 2" in res.stdout, res.stdout
    st = FeatureStore.open(store)
    assert st.n == 4 and "latin1" not in st.sample_ids and validate_store(st).messages == []
    bad = st.dataset_failures().to_pylist()
    assert [(Path(b["file"]).name, b["line"], b["reason"]) for b in bad] == [
        ("data.jsonl", 3, "bad_row"), ("data.jsonl", 5, "bad_row")]
    assert "not UTF-8 (byte 0xe9" in bad[0]["detail"] and "not valid JSON" in bad[1]["detail"]
    assert pq.read_table(store / "_failures" / "dataset.parquet").num_rows == 2
    info = run_mmkd("store", "info", store)
    assert "bad rows   2 dataset row(s)" in info.stdout and "data.jsonl:3 bad_row" in info.stdout, info.stdout
    assert json.loads(run_mmkd("store", "info", store, "--json").stdout)["dataset_bad_rows"] == 2
    # a rerun sees the same dataset (bad rows do not enter the fingerprint), does nothing, still counts them
    again = _extract(run_mmkd, bad_jsonl, store, "--json")
    summary = json.loads(again.stdout)
    assert again.returncode == 0 and summary["noop"] and summary["bad_rows"] == 2


def test_on_bad_row_fail_stops_with_file_and_line(bad_jsonl, run_mmkd, tmp_path):
    res = _extract(run_mmkd, bad_jsonl, tmp_path / "st", "--on-bad-row", "fail")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"{bad_jsonl['table']}:3: not UTF-8" in res.stderr and "--on-bad-row record" in res.stderr
    assert not (tmp_path / "st").exists()
