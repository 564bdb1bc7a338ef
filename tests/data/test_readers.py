"""Dataset readers: the four formats built from the real fixture, ids, fingerprints, refs, config."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmkd.config import Pipelines, load_pipelines
from mmkd.data.images import BadSample
from mmkd.data import (
    DatasetError,
    datasets_from_config,
    detect_format,
    get_dataset,
    open_dataset,
)

REPO = Path(__file__).resolve().parents[2]
FORMATS = ("jsonl", "csv", "parquet", "webdataset")


@dataclass
class Ref:
    """One reference sample: id, caption, image bytes, labels."""

    sid: str
    caption: str
    data: bytes
    label: str


@pytest.fixture(scope="module")
def reference(mmkd_demo_dir: Path) -> list[Ref]:
    ds = open_dataset(mmkd_demo_dir)
    return [Ref(s.sample_id, s.caption, ds.read_image_bytes(s.image), s.labels["image_primary_label"][0])
            for s in ds.samples()]


def build(fmt: str, root: Path, refs: list[Ref], *, with_ids: bool = True) -> Path:
    """Write ``refs`` as a dataset of format ``fmt`` under ``root``; return the path to open."""
    root.mkdir(parents=True, exist_ok=True)
    if fmt in ("jsonl", "csv"):
        (root / "imgs").mkdir(exist_ok=True)
        rows = []
        for i, r in enumerate(refs):
            (root / "imgs" / f"{i:03d}.jpg").write_bytes(r.data)
            rows.append({**({"id": r.sid} if with_ids else {}), "image": f"imgs/{i:03d}.jpg",
                         "caption": r.caption, "modality": r.label})
        if fmt == "jsonl":
            (root / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        else:
            with open(root / "metadata.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        return root
    if fmt == "parquet":
        half = (len(refs) + 1) // 2
        for k, part in enumerate((refs[:half], refs[half:])):
            table = pa.table({
                **({"id": [r.sid for r in part]} if with_ids else {}),
                "image": [{"bytes": r.data, "path": f"{r.sid}.jpg"} for r in part],
                "caption": [r.caption for r in part],
                "modality": [r.label for r in part],
            })
            pq.write_table(table, root / f"train-{k:05d}.parquet", row_group_size=2)
        return root
    half = (len(refs) + 1) // 2
    for k, part in enumerate((refs[:half], refs[half:])):
        with tarfile.open(root / f"shard-{k:06d}.tar", "w") as tf:
            for r in part:
                _add(tf, f"{r.sid}.jpg", r.data)
                meta = {"caption": r.caption, "image_primary_label": [r.label]}
                if k == 1:  # second shard: caption as .txt, labels only in .json
                    _add(tf, f"{r.sid}.txt", r.caption.encode())
                    meta["caption"] = "ignored when a .txt member exists"
                _add(tf, f"{r.sid}.json", json.dumps(meta).encode())
    return root


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _open(fmt: str, path: Path):
    return open_dataset(path, label_columns=["modality"]) if fmt in ("jsonl", "csv", "parquet") else open_dataset(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_yields_reference_samples(fmt: str, tmp_path: Path, reference: list[Ref]) -> None:
    path = build(fmt, tmp_path / fmt, reference)
    assert detect_format(path) == fmt
    ds = _open(fmt, path)
    assert ds.format == fmt and Path(ds.uri).is_absolute()
    samples = list(ds.samples())
    assert [s.sample_id for s in samples] == [r.sid for r in reference]
    assert [s.caption for s in samples] == [r.caption for r in reference]
    labels = [s.labels.get("modality") or s.labels["image_primary_label"][0] for s in samples]
    assert labels == [r.label for r in reference]
    assert ds.read_many([s.image for s in reversed(samples)]) == [r.data for r in reversed(reference)]
    again = open_dataset(ds.spec())  # what a worker does with a shipped spec
    assert [again.read_image_bytes(s.image) for s in samples] == [r.data for r in reference]
    assert [s.sample_id for s in again.samples()] == [r.sid for r in reference]
    assert again.fingerprint() == ds.fingerprint()
    if fmt == "webdataset":
        with pytest.raises(TypeError, match="no cheap length"):
            len(ds)
    else:
        assert len(ds) == len(reference)
    if fmt == "parquet":
        assert [s.image_sha256 for s in samples] == [__import__("hashlib").sha256(r.data).hexdigest()
                                                     for r in reference]


@pytest.mark.parametrize("fmt", FORMATS)
def test_fingerprint_portable_and_sensitive(fmt: str, tmp_path: Path, reference: list[Ref]) -> None:
    fp = _open(fmt, build(fmt, tmp_path / "a", reference)).fingerprint()
    assert _open(fmt, build(fmt, tmp_path / "copy", reference)).fingerprint() == fp  # same content elsewhere
    edited = [*reference[:3], Ref(reference[3].sid, reference[3].caption + ".", reference[3].data,
                                   reference[3].label), *reference[4:]]
    assert _open(fmt, build(fmt, tmp_path / "edit", edited)).fingerprint() != fp
    assert _open(fmt, build(fmt, tmp_path / "drop", reference[:-1])).fingerprint() != fp
    new_image = [*reference[:-1], Ref(reference[-1].sid, reference[-1].caption, reference[0].data,
                                      reference[-1].label)]
    assert _open(fmt, build(fmt, tmp_path / "img", new_image)).fingerprint() != fp


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_ids_refused(fmt: str, tmp_path: Path, reference: list[Ref]) -> None:
    dup = [*reference, Ref(reference[1].sid, "another caption", reference[2].data, "x")]
    ds = _open(fmt, build(fmt, tmp_path / fmt, dup))
    with pytest.raises(DatasetError, match=f"duplicate sample id '{reference[1].sid}'") as info:
        list(ds.samples())
    assert "first at" in str(info.value) and "again at" in str(info.value)
    with pytest.raises(DatasetError, match="duplicate"):
        ds.fingerprint()


@pytest.mark.parametrize("fmt", ("jsonl", "csv", "parquet"))
def test_ids_without_id_column_are_stable_and_unique(fmt: str, tmp_path: Path, reference: list[Ref]) -> None:
    path = build(fmt, tmp_path / fmt, reference, with_ids=False)
    ids = [s.sample_id for s in _open(fmt, path).samples()]
    assert ids == [s.sample_id for s in _open(fmt, path).samples()]
    assert len(set(ids)) == len(reference) and not set(ids) & {r.sid for r in reference}


def test_official_fixture(mmkd_demo_dir: Path) -> None:
    meta = [json.loads(line) for line in (mmkd_demo_dir / "meta.jsonl").read_text().splitlines() if line.strip()]
    ds = open_dataset(mmkd_demo_dir)
    samples = list(ds.samples())
    assert ds.format == "mmkd-clip" and len(ds) == 8 and len(samples) == 8
    assert [s.sample_id for s in samples] == [m["id"] for m in meta]
    assert [s.caption for s in samples] == [m["txt"] for m in meta]
    assert [s.image for s in samples] == [m["imgpath"] for m in meta]
    assert all(s.labels["image_primary_label"] for s in samples)
    assert ds.read_image_bytes(samples[0].image) == (mmkd_demo_dir / meta[0]["imgpath"]).read_bytes()
    assert open_dataset(mmkd_demo_dir / "meta.jsonl").fingerprint() == ds.fingerprint()
    assert [s.sample_id for s in open_dataset(mmkd_demo_dir, meta_labels=False).samples()] == [m["id"] for m in meta]


def test_missing_image_is_a_bad_sample_not_a_crash(tmp_path: Path, reference: list[Ref]) -> None:
    path = build("jsonl", tmp_path / "j", reference[:3])
    (path / "imgs" / "001.jpg").unlink()
    ds = open_dataset(path)
    samples = list(ds.samples())
    assert len(samples) == 3
    with pytest.raises(BadSample) as info:
        ds.read_image_bytes(samples[1].image)
    assert info.value.reason == "missing"
    out = ds.read_many([s.image for s in samples], on_error="return")
    assert out[0] == reference[0].data and isinstance(out[1], BadSample) and out[1].reason == "missing"
    before = ds.fingerprint()
    (path / "imgs" / "001.jpg").write_bytes(reference[1].data)
    assert open_dataset(path).fingerprint() != before


def test_webdataset_missing_member_and_patterns(tmp_path: Path, reference: list[Ref]) -> None:
    path = build("webdataset", tmp_path / "wds", reference)
    folder = open_dataset(path)
    ids = [s.sample_id for s in folder.samples()]
    for pattern in (path / "shard-{000000..000001}.tar", path / "shard-*.tar"):
        ds = open_dataset(str(pattern))
        assert ds.format == "webdataset" and [s.sample_id for s in ds.samples()] == ids
        assert ds.fingerprint() == folder.fingerprint()
    single = open_dataset(path / "shard-000001.tar")
    assert [s.sample_id for s in single.samples()] == ids[4:]
    out = folder.read_many(["shard-000000.tar::nope.jpg", next(folder.samples()).image], on_error="return")
    assert isinstance(out[0], BadSample) and out[0].reason == "missing" and out[1] == reference[0].data
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(str(path / "shard-{000000..000005}.tar"))
    hashed = next(open_dataset(path, hash_images=True).samples())
    assert hashed.image_sha256 == __import__("hashlib").sha256(reference[0].data).hexdigest()


def test_parquet_plain_binary_column_and_custom_names(tmp_path: Path, reference: list[Ref]) -> None:
    table = pa.table({"key": [r.sid for r in reference], "jpg": [r.data for r in reference],
                      "text": [r.caption for r in reference]})
    pq.write_table(table, tmp_path / "one.parquet")
    ds = open_dataset(tmp_path / "one.parquet", image_column="jpg", caption_column="text", id_column="key")
    samples = list(ds.samples())
    assert [s.sample_id for s in samples] == [r.sid for r in reference]
    assert ds.read_image_bytes(samples[-1].image) == reference[-1].data
    assert samples[-1].image == f"one.parquet::{len(reference) - 1}"
    with pytest.raises(DatasetError, match="lacks column"):
        list(open_dataset(tmp_path / "one.parquet").samples())


def test_csv_keeps_text_ids_and_checks_columns(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "t.csv").write_text("id,image,caption\n007,a.png,hello\n")
    assert [s.sample_id for s in open_dataset(tmp_path / "t.csv").samples()] == ["007"]
    with pytest.raises(DatasetError, match="lacks column"):
        list(open_dataset(tmp_path / "t.csv", caption_column="text").samples())


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(tmp_path / "absent")
    with pytest.raises(DatasetError, match="valid formats"):
        open_dataset(tmp_path, format="hdf5")
    with pytest.raises(DatasetError, match="cannot tell the format"):
        open_dataset(tmp_path)


def test_pipelines_datasets_section(mmkd_demo_dir: Path, tmp_path: Path) -> None:
    cfg = load_pipelines(REPO / "pipelines.yaml")
    specs = datasets_from_config(cfg)
    assert "mmkd-clip-demo" in specs
    ds = get_dataset("mmkd-clip-demo", cfg)
    assert ds.name == "mmkd-clip-demo" and len(list(ds.samples())) == 8
    assert {s.source for s in ds.samples()} == {"mmkd-clip-demo"}
    for name, spec in specs.items():  # every configured dataset present here opens
        if Path(spec.path).exists():
            assert get_dataset(name, cfg).format == (spec.format or detect_format(spec.path))
    with pytest.raises(DatasetError, match="valid names: .*mmkd-clip-demo"):
        get_dataset("nope", cfg)
    local = Pipelines({"datasets": {"x": {"path": "d", "format": "jsonl"}}}, path=tmp_path / "p.yaml")
    assert datasets_from_config(local)["x"].path == str(tmp_path / "d")


@pytest.mark.parametrize("fmt", FORMATS)
def test_readers_pickle_and_read_from_threads(fmt: str, tmp_path: Path, reference: list[Ref]) -> None:
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    ds = _open(fmt, build(fmt, tmp_path / fmt, reference))
    assert bool(ds)
    refs = [s.image for s in ds.samples()]
    clone = pickle.loads(pickle.dumps(ds))
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda k: clone.read_many(refs[k:] + refs[:k]), range(len(refs))))
    for k, out in enumerate(got):
        assert out == [r.data for r in reference[k:] + reference[:k]]


def test_store_created_from_a_reader(tmp_path: Path, mmkd_demo_dir: Path) -> None:
    from mmkd.data import Sample
    from mmkd.store import FeatureStore

    ds = open_dataset(mmkd_demo_dir)
    assert all(isinstance(s, Sample) for s in ds.samples())
    store = FeatureStore.create(tmp_path / "s", ds.samples(), block_size=3, dataset_uri=ds.uri,
                                dataset_fingerprint=ds.fingerprint())
    assert store.sample_ids == [s.sample_id for s in ds.samples()]
    image_refs = store.index.column("image").to_pylist()
    assert ds.read_many(image_refs) == [ds.read_image_bytes(r) for r in image_refs]
