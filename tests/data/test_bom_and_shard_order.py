"""A JSONL with a UTF-8 byte-order mark keeps its first row; shards are read in numeric order."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mmkd.data import open_dataset
from mmkd.data.base import natural_key
from mmkd.store import FeatureStore
from tests.extract.test_runner_support import MODALITY_CAPTIONS, tiny_pipelines


@pytest.mark.slow
def test_bom_jsonl_keeps_its_first_row(tmp_path, modality_dir, run_mmkd):
    rows = [{"id": p.stem, "image": str(p), "caption": MODALITY_CAPTIONS[p.stem]}
            for p in sorted(modality_dir.iterdir())[:3]]
    table = tmp_path / "windows.jsonl"
    table.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\r\n" for r in rows).encode())
    pipelines, _ = tiny_pipelines(tmp_path, kinds=("open_clip",))
    res = run_mmkd("extract", "--pipeline", pipelines, "--data", table, "--teacher", "tiny_open_clip", "--store",
                   tmp_path / "st", "--runner", "local", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "bad row" not in res.stdout + res.stderr
    assert FeatureStore.open(tmp_path / "st").sample_ids == [r["id"] for r in rows]


def test_shards_are_read_in_numeric_order(tmp_path):
    folder = tmp_path / "cb"
    folder.mkdir()
    for shard in range(12):  # shard-0.tar ... shard-11.tar, unpadded as clip_benchmark writes them
        with tarfile.open(folder / f"shard-{shard}.tar", "w") as tar:
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), shard, np.uint8)).save(buf, format="PNG")
            for name, payload in ((f"s{shard}.png", buf.getvalue()), (f"s{shard}.txt", f"sample {shard}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    want = [f"sample {i}" for i in range(12)]
    assert [s.caption for s in open_dataset(str(folder)).samples()] == want
    assert [s.caption for s in open_dataset(str(folder / "shard-*.tar")).samples()] == want
    assert sorted(["b10", "b2", "a", "b1"], key=natural_key) == ["a", "b1", "b2", "b10"]
