"""Per-image content identity: extract records each image's sha256; distill refuses an image that changed."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from mmkd.store import FeatureStore
from tests.extract.test_runner_support import MODALITY_CAPTIONS, tiny_pipelines

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, modality_dir):
    """The nine modality images copied to pixels/, a JSONL over them, one teacher extracted."""
    root = tmp_path_factory.mktemp("content")
    pixels = root / "pixels"
    pixels.mkdir()
    rows = []
    for p in sorted(modality_dir.iterdir()):
        shutil.copy(p, pixels / p.name)
        rows.append({"id": p.stem, "image": f"../pixels/{p.name}", "caption": MODALITY_CAPTIONS[p.stem]})
    (root / "tables").mkdir()
    table = root / "tables" / "data.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipelines, _ = tiny_pipelines(root, kinds=("open_clip",))
    return {"root": root, "table": table, "pipelines": pipelines, "pixels": pixels}


def _extract(run_mmkd, setup, store, cwd):
    return run_mmkd("extract", "--pipeline", setup["pipelines"], "--data", setup["table"], "--teacher",
                    "tiny_open_clip", "--store", store, "--runner", "local", "--block-size", "4", "--no-progress",
                    cwd=cwd)


def test_extract_records_hashes_and_distill_refuses_a_changed_image(extracted, run_mmkd, student_json, tmp_path):
    import hashlib

    store = tmp_path / "st"
    assert _extract(run_mmkd, extracted, store, tmp_path).returncode == 0
    st = FeatureStore.open(store)
    files = sorted((store / "_content").glob("block-*.parquet"))
    assert len(files) == st.num_blocks
    hashes = [h for f in files for h in pq.read_table(f).column("image_sha256").to_pylist()]
    ct_row = st.sample_ids.index("ct")
    ct = extracted["pixels"] / next(p.name for p in extracted["pixels"].iterdir() if p.stem == "ct")
    assert hashes[ct_row] == hashlib.sha256(ct.read_bytes()).hexdigest()

    ok = run_mmkd("distill", "--store", store, "--stage", "1", "--student", student_json, "--out", tmp_path / "ok",
                  "--steps", "1", "--batch-size", "9", "--num-workers", "0", "--device", "cpu", "--no-progress",
                  cwd=tmp_path)
    assert ok.returncode == 0 and "not verified" not in ok.stderr, ok.stderr[-2000:]

    original = ct.read_bytes()
    mri = next(p for p in extracted["pixels"].iterdir() if p.stem == "mri")
    try:
        ct.write_bytes(mri.read_bytes())  # same path, other image
        res = run_mmkd("distill", "--store", store, "--stage", "1", "--student", student_json, "--out",
                       tmp_path / "bad", "--steps", "1", "--batch-size", "9", "--num-workers", "1", "--device", "cpu",
                       "--no-progress", cwd=tmp_path)
    finally:
        ct.write_bytes(original)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    new = hashlib.sha256(mri.read_bytes()).hexdigest()
    assert f"row {ct_row} (sample 'ct')" in line and f"sha256 {new} != recorded {hashes[ct_row]}" in line, line
    assert not (tmp_path / "bad" / "export").exists()



def test_store_without_hashes_opens_with_a_note(extracted, run_mmkd, student_json, tmp_path):
    store = tmp_path / "st"
    assert _extract(run_mmkd, extracted, store, tmp_path).returncode == 0
    shutil.rmtree(store / "_content")  # as a store made before extract recorded hashes: no hashes, and markers
    for marker in (store / "_progress").rglob("*.done"):  # without the digest of them
        record = json.loads(marker.read_text())
        record.pop("content_sha256")
        marker.write_text(json.dumps(record))
    res = run_mmkd("distill", "--store", store, "--stage", "1", "--student", student_json, "--out", tmp_path / "r",
                   "--steps", "1", "--batch-size", "9", "--num-workers", "0", "--device", "cpu", "--no-progress",
                   cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("records no image hashes") == 1 and "not verified" in res.stderr


def test_eval_store_over_other_images_is_refused(extracted, run_mmkd, tmp_path):
    import hashlib

    store = tmp_path / "st"
    assert _extract(run_mmkd, extracted, store, tmp_path).returncode == 0

    def ev(out):
        return run_mmkd("eval", "--pipeline", extracted["pipelines"], "--model", "tiny_open_clip", "--data",
                        extracted["table"], "--store", f"tables={store}", "--task", "retrieval", "--out",
                        tmp_path / out,
                        "--resamples", "0", "--device", "cpu", cwd=tmp_path)

    ok = ev("ev-ok")
    assert ok.returncode == 0, ok.stderr[-2000:]
    ct = next(p for p in extracted["pixels"].iterdir() if p.stem == "ct")
    mri = next(p for p in extracted["pixels"].iterdir() if p.stem == "mri")
    original = ct.read_bytes()
    try:
        ct.write_bytes(mri.read_bytes())  # same ids, captions and paths; another image
        res = ev("ev-bad")
    finally:
        ct.write_bytes(original)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    recorded = hashlib.sha256(original).hexdigest()
    assert "was built over other images than eval set 'tables'" in line and "sample 'ct'" in line and recorded in line
    assert not (tmp_path / "ev-bad" / "results.json").exists()


def test_images_gone_are_named_before_anything_is_written(extracted, run_mmkd, student_json, tmp_path):
    store = tmp_path / "st"
    assert _extract(run_mmkd, extracted, store, tmp_path).returncode == 0
    away = extracted["root"] / "pixels-away"
    extracted["pixels"].rename(away)  # the table stays, its images (../pixels/...) are gone
    try:
        res = run_mmkd("distill", "--store", store, "--stage", "1", "--student", student_json, "--out",
                       tmp_path / "run", "--steps", "1", "--batch-size", "9", "--num-workers", "1", "--device", "cpu",
                       "--no-progress", cwd=tmp_path)
    finally:
        away.rename(extracted["pixels"])
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert "the image of row 0 is not where the dataset" in line and "pixels" in line and "--data" in line, line
    assert not (tmp_path / "run").exists()
