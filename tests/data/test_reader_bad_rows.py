"""Readers turn undecodable table rows into bad_row records (file, line) and go on."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmkd.data import DatasetError, open_dataset
from mmkd.data.images import REASONS, BadSample


def _lines(ds) -> list[tuple[int | None, str]]:
    return [(b.line, b.reason) for b in ds.bad_rows]


def test_jsonl_bad_rows_recorded_once_per_row(tmp_path, caplog):
    table = tmp_path / "data.jsonl"
    table.write_bytes(b'{"id": "a", "image": "a.png", "caption": "ok"}\n'
                      b'{"id": "b", "image": "b.png", "caption": "\xff"}\n'
                      b"\n"
                      b"[1, 2]\n"
                      b'{"id": "c", "image": "c.png", "caption": "fine"}\n'
                      b'{"id": "d", \n')
    ds = open_dataset(table)
    with caplog.at_level(logging.WARNING):
        first = [s.sample_id for s in ds.samples()]
        assert ds.fingerprint() and [s.sample_id for s in ds.samples()] == first == ["a", "c"]
    assert _lines(ds) == [(2, "bad_row"), (4, "bad_row"), (6, "bad_row")]  # one pass's rows, not accumulated
    assert sum("recorded as bad_row" in r.getMessage() for r in caplog.records) == 3  # warned once per row
    assert len(ds) == 2 and len(ds.bad_rows) == 3
    assert "bad_row" in REASONS and BadSample("bad_row").reason == "bad_row"


def test_jsonl_fail_policy_names_file_and_line(tmp_path):
    table = tmp_path / "data.jsonl"
    table.write_bytes(b'{"id": "a", "image": "a.png", "caption": "ok"}\n{"id": \n')
    with pytest.raises(DatasetError, match=rf"{table}:2: not valid JSON"):
        list(open_dataset(table, on_bad_row="fail").samples())
    with pytest.raises(ValueError, match="on_bad_row='skip'"):
        open_dataset(table, on_bad_row="skip")
    assert "on_bad_row" not in str(open_dataset(table).spec().to_dict())  # a run policy, not part of the dataset


def test_csv_bad_rows_with_physical_lines(tmp_path):
    table = tmp_path / "data.csv"
    table.write_bytes(b'id,image,caption\n'
                      b'007,a.png,"a caption\nover two lines"\n'
                      b'b,b.png,caf\xe9\n'
                      b'c,c.png,too,many\n'
                      b'd,d.png,good\n')
    ds = open_dataset(table)
    samples = list(ds.samples())
    assert [(s.sample_id, s.caption) for s in samples] == [("007", "a caption\nover two lines"), ("d", "good")]
    assert _lines(ds) == [(4, "bad_row"), (5, "bad_row")]
    assert "not UTF-8" in ds.bad_rows[0].detail and "4 fields, the header has 3" in ds.bad_rows[1].detail


def test_webdataset_bad_json_member_is_a_bad_row(tmp_path):
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tf:
        for key, meta in (("k1", b'{"caption": "one"}'), ("k2", b'{"caption": "tw\xffo"}'),
                          ("k3", b'{"caption": "three"}')):
            for ext, data in (("jpg", b"jpegbytes"), ("json", meta)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    ds = open_dataset(shard)
    assert [s.sample_id for s in ds.samples()] == ["k1", "k3"]
    assert [(b.file, b.line) for b in ds.bad_rows] == [("shard-000.tar::k2.json", None)]


def test_parquet_binary_caption_not_utf8_is_a_bad_row(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "image": pa.array([b"x", b"y"], pa.binary()),
                             "caption": pa.array([b"fine", b"\xff\xfe"], pa.binary())}), path)
    ds = open_dataset(path)
    assert [(s.sample_id, s.caption) for s in ds.samples()] == [("a", "fine")]
    assert [(b.line, json.dumps(b.reason)) for b in ds.bad_rows] == [(2, '"bad_row"')]
