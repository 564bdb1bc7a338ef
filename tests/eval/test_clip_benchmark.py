"""clip_benchmark webdataset folders as eval sets, its build CSV, and a VQA set, through the console script."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmkd.config import ConfigError
from mmkd.eval.sets import load_eval_set
from tests.eval.test_e2e import export_tiny_student
from tests.journey.conftest import run_mmkd

CLASSES = ["lung", "liver", "brain"]
ENV = {"OMP_NUM_THREADS": "1"}


def _png(rng: np.random.Generator, c: int) -> bytes:
    from PIL import Image

    arr = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
    arr[..., c] += np.uint8(180)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_cb_folder(root: Path, n: int = 12, kind: str = "classification", shards: int = 2) -> Path:
    """A clip_benchmark webdataset folder as `clip_benchmark_export_wds` lays it out."""
    rng = np.random.default_rng(0)
    (root / "test").mkdir(parents=True)
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    if kind == "retrieval":
        (root / "dataset_type.txt").write_text("retrieval\n")
    else:
        (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
        (root / "zeroshot_classification_templates.txt").write_text("a scan of a {c}.\n{c}\n")
    for s in range(shards):
        with tarfile.open(root / "test" / f"{s}.tar", "w") as tar:
            for i in range(s, n, shards):
                c = i % 3
                payload = {"webp": None, "png": _png(rng, c),
                           "cls": str(c).encode() if kind != "retrieval" else None,
                           "txt": f"a {CLASSES[c]} image {i}\nscan number {i}".encode() if kind == "retrieval" else None}
                for ext, data in payload.items():
                    if data is not None:
                        info = tarfile.TarInfo(f"s{i:05d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    return root


def test_clip_benchmark_folder_loads_as_an_eval_set(tmp_path):
    cls = load_eval_set(str(write_cb_folder(tmp_path / "cb")))
    assert cls.name == "cb" and cls.class_names == CLASSES and cls.labelled
    assert cls.templates == ["a scan of a {}.", "{}"]
    assert sorted(cls.labels.tolist()) == sorted([i % 3 for i in range(12)])
    assert cls.load_image(cls.items[0]).size == (32, 32)
    ret = load_eval_set(str(write_cb_folder(tmp_path / "ret", n=6, kind="retrieval")))
    assert ret.captioned and not ret.labelled and len(ret.items) == 12  # two caption lines per image
    assert len({it.image for it in ret.items}) == 6
    (tmp_path / "cb" / "test" / "1.tar").unlink()
    with pytest.raises(ConfigError, match=r"nshards.txt says 2 shards but 1 are absent"):
        load_eval_set(str(tmp_path / "cb"))


def test_cli_clip_benchmark_set_and_csv_and_vqa(tmp_path):
    student = export_tiny_student(tmp_path / "models")
    write_cb_folder(tmp_path / "organs", n=18)
    write_cb_folder(tmp_path / "captions", n=6, kind="retrieval")
    images = tmp_path / "vqa_images"
    images.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        c = i % 3
        (images / f"{i}.png").write_bytes(_png(rng, c))
        rows.append({"image": f"{i}.png", "question": "what organ is this?", "answer": CLASSES[c]})
        rows.append({"image": f"{i}.png", "question": "is this a lung?", "answer": "yes" if c == 0 else "no"})
    (tmp_path / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "vqa.yaml").write_text(yaml.safe_dump({"task": "vqa", "questions": "vqa.jsonl", "root": "vqa_images",
                                                       "folds": 3, "head": {"epochs": 20}}))
    run_mmkd(tmp_path, "eval", "--model", str(student), "--set", "organs", "--set", "captions", "--set", "vqa.yaml",
             "--out", "out", "--format", "csv", "--resamples", "20", "--device", "cpu", env=ENV)
    res = json.loads((tmp_path / "out" / "results.json").read_text())["tiny-student"]
    assert {"zeroshot", "linear", "knn"} <= set(res["organs"]) and set(res["captions"]) == {"retrieval"}
    vqa = res["vqa"]["vqa"]
    assert vqa["n_questions"] == 24 and vqa["n_closed"] == 12 and vqa["n_open"] == 12
    assert 0 <= vqa["accuracy"] <= 1 and len(vqa["accuracy_folds"]) == 3
    with (tmp_path / "out" / "results.csv").open() as f:
        reader = csv.DictReader(f)
        rows = {(r["dataset"], r["task"]): r for r in reader}
    # clip_benchmark build's columns: the result JSON's metrics, its keys, model_fullname; nothing of mmkd's own
    zs_cols = {"acc1", "acc5", "mean_per_class_recall", "lp_acc1", "lp_acc5", "lp_mean_per_class_recall"}
    ret_cols = {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert set(reader.fieldnames) == zs_cols | ret_cols | {"dataset", "model", "pretrained", "task", "language",
                                                             "model_fullname"}
    assert set(rows) == {("wds/organs", "zeroshot_classification"), ("wds/organs", "linear_probe"),
                         ("wds/captions", "zeroshot_retrieval")}  # vqa and knn have no clip_benchmark task
    zs = rows[("wds/organs", "zeroshot_classification")]
    assert float(zs["acc1"]) == pytest.approx(res["organs"]["zeroshot"]["accuracy"])
    assert zs["acc5"] == "nan"  # three classes: clip_benchmark writes NaN below five
    assert float(zs["mean_per_class_recall"]) == pytest.approx(res["organs"]["zeroshot"]["balanced_accuracy"])
    assert zs["model"] == "tiny-student" and zs["language"] == "en" and zs["pretrained"] == str(student)
    assert zs["model_fullname"] == f"tiny-student {student}"
    ret = rows[("wds/captions", "zeroshot_retrieval")]
    assert float(ret["image_retrieval_recall@5"]) == pytest.approx(res["captions"]["retrieval"]["text_to_image_R@5"])


def test_split_chooses_the_clip_benchmark_folder_split(tmp_path):
    root = write_cb_folder(tmp_path / "cb", n=6)
    (root / "test").rename(root / "val")
    assert len(load_eval_set(str(root), split="val").items) == 6
    with pytest.raises(ConfigError, match="test"):
        load_eval_set(str(root))
