"""An image edited on disk between two teachers' extracts of one store.

Its size changed: the dataset fingerprint (which covers each image file's size) no longer matches and the
second extract is refused, the store untouched. Same size, other bytes: only the recorded sha256 can tell;
the second teacher fails that row (reason ``content_changed``, both hashes in the detail), the first
teacher's block and the recorded hashes stay."""

from __future__ import annotations

import hashlib
import json
import shutil

import pyarrow.parquet as pq
import pytest
from test_runner_support import MODALITY_CAPTIONS, snapshot, tiny_pipelines

from mmkd.store import FeatureStore

CHANGED = "mri"  # replaced by ct.jpg (smaller), padded after its end marker to the same size


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_image_changed_between_two_teachers_is_invalid_for_the_second(tmp_path, modality_dir, run_mmkd):
    pixels = tmp_path / "pixels"
    pixels.mkdir()
    rows = []
    for p in sorted(modality_dir.iterdir()):
        shutil.copy(p, pixels / p.name)
        rows.append({"id": p.stem, "image": f"pixels/{p.name}", "caption": MODALITY_CAPTIONS[p.stem]})
    table = tmp_path / "data.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipelines, _ = tiny_pipelines(tmp_path / "t", kinds=("open_clip", "transformers"))
    store = tmp_path / "st"

    def extract(teacher):
        return run_mmkd("extract", "--pipeline", pipelines, "--data", table, "--teacher", teacher, "--store", store,
                        "--runner", "local", "--block-size", "4", "--no-progress", cwd=tmp_path)

    first = extract("tiny_open_clip")
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(store)
    content_before = _files(store / "_content")
    row = before["ids"].index(CHANGED)
    target = pixels / "mri.jpg"
    size, other = target.stat().st_size, (pixels / "ct.jpg").read_bytes()
    old = hashlib.sha256(target.read_bytes()).hexdigest()
    everything = _files(store)

    target.write_bytes(other)  # another size: the fingerprint catches it before anything is written
    refused = extract("tiny_transformers")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert f"does not match store {store}" in line and "fingerprint" in line and "edited" in line, line
    assert _files(store) == everything

    assert len(other) < size
    target.write_bytes(other + bytes(size - len(other)))  # same size, other image (JPEG ignores bytes after EOI)
    new = hashlib.sha256(target.read_bytes()).hexdigest()
    second = extract("tiny_transformers")
    out = second.stdout + second.stderr
    assert second.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert "content_changed 1" in out, out  # counted in the summary like any failed row
    warned = [ln for ln in second.stderr.splitlines() if "image changed since the store recorded it" in ln]
    assert len(warned) == 1 and f"row {row} ({CHANGED})" in warned[0] and new in warned[0] and old in warned[0]

    st = FeatureStore.open(store)
    valid = st.valid("tiny_transformers")
    assert not valid[row] and valid.sum() == len(rows) - 1
    fails = st.failures("tiny_transformers").to_pylist()
    assert [(f["sample_id"], f["row"], f["reason"]) for f in fails] == [(CHANGED, row, "content_changed")]
    assert new[:16] in fails[0]["detail"] and old[:16] in fails[0]["detail"]
    # nothing earlier lost: the first teacher's features, flags and failures and the recorded hashes, unchanged
    after = snapshot(store)
    a, b = after["tiny_open_clip"], before["tiny_open_clip"]
    assert a["done"] == b["done"] and a["failures"] == b["failures"] and (a["valid"] == b["valid"]).all()
    for kind in ("image", "text"):
        assert a[kind].tobytes() == b[kind].tobytes()
    assert _files(store / "_content") == content_before
    recorded = [h for f in sorted((store / "_content").glob("block-*.parquet"))
                for h in pq.read_table(f).column("image_sha256").to_pylist()]
    assert recorded[row] == old
    info = run_mmkd("store", "info", store, cwd=tmp_path)
    assert info.returncode == 0 and "content_changed" in info.stdout, info.stdout + info.stderr
