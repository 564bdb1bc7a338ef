"""Importing the official MMKD-CLIP layout (real fixture features)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mmkd.store import StoreError, import_mmkd, validate_store
from mmkd.store.importer import TEACHER_KEYS


def _pt(demo: Path, rec: dict, name: str) -> dict:
    return torch.load(demo / "features" / rec["folderid"] / rec["id"] / name, weights_only=True)


def test_import_matches_pt_files(mmkd_demo_dir, tmp_path):
    store = import_mmkd(mmkd_demo_dir, tmp_path / "st", with_projected=True, block_size=3)
    records = [json.loads(line) for line in (mmkd_demo_dir / "meta.jsonl").read_text().splitlines() if line.strip()]
    assert store.sample_ids == [r["id"] for r in records]
    assert validate_store(store).messages == []
    for suffix, fname in (("", "clips_output.pt"), ("_proj512", "clips_project_output.pt")):
        for key, name in TEACHER_KEYS.items():
            t = name + suffix
            if t not in store.teachers:
                assert not any(f"{key}_img" in _pt(mmkd_demo_dir, r, fname) for r in records)
                continue
            valid = store.valid(t)
            for row, rec in enumerate(records):
                d = _pt(mmkd_demo_dir, rec, fname)
                assert valid[row] == (f"{key}_img" in d), (t, row)
                for kind, k in (("image", f"{key}_img"), ("text", f"{key}_txt")):
                    got = store.read(t, [row], kind=kind)[0].astype(np.float32)
                    if valid[row]:
                        np.testing.assert_allclose(got, d[k].numpy(), rtol=1e-3, atol=1e-3)
                        assert np.array_equal(store.read(t, [row], kind=kind)[0], d[k].numpy().astype(np.float16))
                    else:
                        assert not got.any()
    assert store.dim("bmca_clip") == 768 and store.dim("biomedclip") == 512
    assert store.attrs("biomedclip_proj512")["normalized"] is False
    assert len(store.attrs("biomedclip")["image_mean"]) == 512
    assert set(store.teachers) >= {"biomedclip", "bmca_clip", "genmedclip"}


def _copy_demo(demo: Path, dst: Path, n: int = 2) -> tuple[Path, list[dict]]:
    records = [json.loads(line) for line in (demo / "meta.jsonl").read_text().splitlines() if line.strip()][:n]
    for r in records:
        shutil.copytree(demo / "features" / r["folderid"] / r["id"], dst / "features" / r["folderid"] / r["id"])
    (dst / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return dst, records


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_object_refused(mmkd_demo_dir, tmp_path):
    src, records = _copy_demo(mmkd_demo_dir, tmp_path / "src")
    bad = src / "features" / records[1]["folderid"] / records[1]["id"] / "clips_output.pt"
    torch.save({"BiomedCLIP_img": _Evil()}, bad)
    with pytest.raises(StoreError, match=r"clips_output.pt: refused: not a plain tensor file"):
        import_mmkd(src, tmp_path / "st")
    assert not (tmp_path / "st").exists()  # nothing half-written that looks like a store


def test_missing_feature_file_is_recorded(mmkd_demo_dir, tmp_path):
    src, records = _copy_demo(mmkd_demo_dir, tmp_path / "src", n=3)
    (src / "features" / records[2]["folderid"] / records[2]["id"] / "clips_output.pt").unlink()
    store = import_mmkd(src, tmp_path / "st")
    for t in store.teachers:
        assert not store.valid(t)[2]
    f = store.failures(store.teachers[0]).to_pylist()
    assert [(x["sample_id"], x["reason"]) for x in f] == [(records[2]["id"], "missing_features")]


def test_bad_meta_line(tmp_path):
    (tmp_path / "meta.jsonl").write_text('{"id": "a", "imgpath": "x", "txt": "y"}\nnot json\n')
    with pytest.raises(StoreError, match=r"meta.jsonl.*2.*not valid JSON"):
        import_mmkd(tmp_path, tmp_path / "st")
