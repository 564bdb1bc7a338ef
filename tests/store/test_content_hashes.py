"""The image hashes extract records (``_content/``) are checked by ``mmkd store validate`` against the digest each
done marker recorded: a lost or edited hash file is a PROBLEM; a store whose markers predate the digest is OK."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO_ROOT, mmkd

sys.path.insert(0, str(REPO_ROOT / "tests" / "extract"))
from test_runner_support import MODALITY_CAPTIONS, tiny_pipelines  # noqa: E402

TEACHER = "tiny_open_clip"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, modality_dir) -> Path:
    """A store made by `mmkd extract` (a tiny teacher over the nine modality images, blocks of 4)."""
    root = tmp_path_factory.mktemp("content-hashes")
    rows = [{"id": p.stem, "image": str(p), "caption": MODALITY_CAPTIONS[p.stem]} for p in sorted(modality_dir.iterdir())]
    table = root / "data.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipelines, _ = tiny_pipelines(root, kinds=("open_clip",))
    mmkd("extract", "--pipeline", pipelines, "--data", table, "--teacher", TEACHER, "--store", root / "st",
         "--runner", "local", "--block-size", "4", "--no-progress", cwd=root, ok=True)
    return root / "st"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store written as extract's block worker writes one (hashes recorded, then each block with their digest),
    with random features instead of a teacher's: seconds instead of a model load."""
    import numpy as np

    from mmkd.data import open_dataset
    from mmkd.store import FeatureStore
    from mmkd.store.content import record_block_hashes, sha256_of
    from tests.distill.conftest import make_image_folder

    root = tmp_path_factory.mktemp("content-hashes-fast")
    ds = open_dataset(str(make_image_folder(root / "data", 12)))
    st = FeatureStore.create(root / "st", ds.samples(), block_size=4, dataset_uri=ds.uri,
                             dataset_fingerprint=ds.fingerprint(), dataset_spec=ds.spec().to_dict())
    st.add_teacher(TEACHER, 8, {"loader": "synthetic"})
    rng = np.random.default_rng(0)
    refs = st.index_rows(0, st.n, ("image",)).column("image").to_pylist()
    for b in range(st.num_blocks):
        start, stop = st.block_range(b)
        hashes = [sha256_of(data) for data in ds.read_many(refs[start:stop])]
        changed, digest = record_block_hashes(st, b, hashes)
        assert not changed
        x = rng.standard_normal((stop - start, 8)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        st.write_block(TEACHER, b, x, x, np.ones(stop - start, bool), content_sha256=digest)
    st.compute_stats(TEACHER)
    return root / "st"


def _copy(store: Path, tmp_path: Path) -> Path:
    shutil.copytree(store, tmp_path / "st")
    return tmp_path / "st"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_extract_markers_record_the_digest_and_the_store_validates(extracted, run_mmkd, tmp_path):
    from mmkd.store.content import content_digest

    for b in range(3):
        marker = json.loads((extracted / "_progress" / TEACHER / f"block-{b:06d}.done").read_text())
        hashes = pq.read_table(extracted / "_content" / f"block-{b:06d}.parquet").column("image_sha256").to_pylist()
        assert marker["content_sha256"] == content_digest(hashes) and all(hashes)
    res = run_mmkd("store", "validate", extracted, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


def test_sound_store_validates(store, run_mmkd, tmp_path):
    res = run_mmkd("store", "validate", store, cwd=tmp_path)
    assert res.returncode == 0 and "PROBLEM" not in res.stderr, res.stdout + res.stderr


def test_lost_hash_file_is_a_problem(store, run_mmkd, tmp_path):
    st = _copy(store, tmp_path)
    lost = st / "_content" / "block-000001.parquet"
    lost.unlink()
    before = _files(st)
    res = run_mmkd("store", "validate", st, cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    problems = [ln for ln in res.stderr.splitlines() if ln.startswith("PROBLEM")]
    assert len(problems) == 1 and problems[0].startswith(f"PROBLEM [content]: {lost} is missing: the image hashes of "
                                                         f"block 1 are not the ones recorded when teacher(s) "
                                                         f"['{TEACHER}'] wrote it"), problems
    assert str(st / "_progress" / TEACHER / "block-000001.done") in problems[0] and "mmkd extract" in problems[0]
    assert _files(st) == before  # validate writes nothing


def test_edited_hash_is_a_problem(store, run_mmkd, tmp_path):
    st = _copy(store, tmp_path)
    path = st / "_content" / "block-000002.parquet"
    table = pq.read_table(path)
    hashes = table.column("image_sha256").to_pylist()
    hashes[0] = "0" * 64  # e.g. "fixed" by hand to accept a replaced image
    pq.write_table(table.set_column(1, "image_sha256", pa.array(hashes, pa.string())), path)
    res = run_mmkd("store", "validate", st, "--json", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    problems = json.loads(res.stdout)["problems"]
    assert [p["kind"] for p in problems] == ["content"], problems
    assert f"{path} holds other hashes: the image hashes of block 2" in problems[0]["message"]


def test_store_from_before_the_digest_still_validates(store, run_mmkd, tmp_path):
    st = _copy(store, tmp_path)
    for marker in (st / "_progress" / TEACHER).glob("*.done"):  # markers as older stores wrote them
        record = json.loads(marker.read_text())
        record.pop("content_sha256")
        marker.write_text(json.dumps(record))
    shutil.rmtree(st / "_content")  # and no hashes at all
    res = run_mmkd("store", "validate", st, cwd=tmp_path)
    assert res.returncode == 0 and "PROBLEM" not in res.stdout + res.stderr, res.stdout + res.stderr


def test_distill_refuses_a_store_whose_hashes_are_gone(store, run_mmkd, tmp_path):
    from tests.distill.conftest import TINY_STUDENT

    st = _copy(store, tmp_path)
    shutil.rmtree(st / "_content")  # the markers still say the blocks were written with hashes
    student = tmp_path / "tiny.json"
    student.write_text(json.dumps(TINY_STUDENT))
    before = _files(st)
    res = run_mmkd("distill", "--store", st, "--stage", "1", "--student", student, "--out", tmp_path / "run",
                   "--steps", "1", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--no-progress",
                   cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    line = res.stderr.strip().splitlines()[-1]
    assert f"store {st}: its image hashes ({st}/_content/) are gone" in line and "mmkd store validate" in line, line
    assert "not verified" not in res.stderr  # not mistaken for a store from before hashes were recorded
    assert not (tmp_path / "run").exists() and _files(st) == before
