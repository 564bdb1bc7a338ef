"""Datasets on S3 (moto on 127.0.0.1) read as the same samples and bytes as their local copies."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmkd.data import open_dataset
from tests.journey.conftest import write_parquet, write_shards, write_user_dataset

pytestmark = pytest.mark.usefixtures("s3_env")


def _upload(client, bucket: str, local: Path, prefix: str) -> None:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{f.relative_to(local).as_posix()}", Body=f.read_bytes())


def _same(local, remote) -> None:
    a, b = list(local.samples()), list(remote.samples())
    assert [(s.sample_id, s.caption, s.image, s.labels) for s in a] == \
           [(s.sample_id, s.caption, s.image, s.labels) for s in b] and a
    refs = [s.image for s in a]
    assert local.read_many(refs) == remote.read_many(refs)
    assert local.fingerprint() == remote.fingerprint()


@pytest.mark.parametrize("kind", ["webdataset-folder", "webdataset-pattern", "parquet", "jsonl"])
def test_dataset_on_s3_reads_like_its_local_copy(kind, tmp_path, bucket, s3_client):
    name = bucket[5:]
    if kind.startswith("webdataset"):
        local_dir = write_shards(tmp_path / "shards")
        _upload(s3_client, name, local_dir, "wds")
        fields = {"fields": {"caption": "figure_caption", "id": "pmcid"}}
        path = f"{bucket}/wds" if kind.endswith("folder") else f"{bucket}/wds/shard-{{000000..000001}}.tar"
        local = open_dataset({"path": str(local_dir), "format": "webdataset", **fields})
        remote = open_dataset({"path": path, "format": "webdataset", **fields})
    elif kind == "parquet":
        local_file = write_parquet(tmp_path / "pq")
        _upload(s3_client, name, local_file.parent, "pq")
        fields = {"fields": {"image": "img", "caption": "text", "id": "key"}}
        local = open_dataset({"path": str(local_file.parent), "format": "parquet", **fields})
        remote = open_dataset({"path": f"{bucket}/pq", "format": "parquet", **fields})
    else:
        data = write_user_dataset(tmp_path / "d", n=6)
        _upload(s3_client, name, data["images"], "px")
        _upload(s3_client, name, data["table"].parent, "tb")
        fields = {"format": "jsonl", "fields": {"image": "file", "caption": "report", "id": "uid", "labels": ["organ"]}}
        local = open_dataset({"path": str(data["table"]), "root": str(data["images"]), **fields})
        remote = open_dataset({"path": f"{bucket}/tb/train.jsonl", "root": f"{bucket}/px", **fields})
    _same(local, remote)


def test_storage_options_in_the_spec_reach_s3_and_are_never_written(tmp_path, bucket, s3_client, s3_env, monkeypatch):
    import json

    from mmkd.data import DatasetSpec
    from mmkd.store import FeatureStore

    name = bucket[5:]
    data = write_user_dataset(tmp_path / "d", n=4)
    _upload(s3_client, name, data["images"], "px")
    _upload(s3_client, name, data["table"].parent, "tb")
    secret = "s3cr3t-not-to-be-written"
    spec = {"path": f"{bucket}/tb/train.jsonl", "root": f"{bucket}/px", "format": "jsonl",
            "fields": {"image": "file", "caption": "report", "id": "uid"},
            "storage_options": {"endpoint_url": s3_env["AWS_ENDPOINT_URL"], "key": "testing", "secret": secret}}
    # the environment points nowhere: only the spec's options reach the server
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    ds = open_dataset(spec)
    samples = list(ds.samples())
    assert len(samples) == 4 and len(ds.read_many([s.image for s in samples])[0]) > 0
    assert secret not in repr(ds.spec()) and "storage_options" not in ds.spec().to_dict()
    assert ds.spec().to_dict(with_storage_options=True)["storage_options"]["secret"] == secret
    assert DatasetSpec.parse(ds.spec().to_dict(with_storage_options=True)).storage_options["secret"] == secret
    store = FeatureStore.create(tmp_path / "st", samples, dataset_uri=ds.uri, dataset_spec=ds.spec().to_dict())
    assert secret not in (store.path / "store.json").read_text()
    assert json.loads((store.path / "store.json").read_text())["dataset"]["spec"]["root"] == f"{bucket}/px"
