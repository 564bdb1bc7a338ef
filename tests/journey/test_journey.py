"""A user's own run, end to end, as the user runs it.

The ``mmkd`` console script in a temporary folder outside the repository, with the
user's own ``./pipelines.yaml``: a JSONL whose fields have the user's names, its
images under a separate ``root``, two tiny teachers of different loader kinds and
dims. extract (Ray) -> store validate -> distill stage 1 -> stage 2 ``multi`` and
``mmkd-clip`` (the dataset found from the store alone) -> eval ``--data`` and a
labelled set. Each step asserts on what it wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.journey.conftest import REPO, run_mmkd, write_user_dataset, write_user_pipelines

DISTILL = ("--student", "tiny_student", "--steps", "3", "--batch-size", "6", "--num-workers", "0",
           "--checkpoint-every", "3", "--log-every", "1", "--no-progress", "--warmup-steps", "1")


@pytest.fixture(scope="module")
def journey(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("user-home")
    assert REPO not in home.parents and home != REPO
    data = write_user_dataset(home / "datasets" / "scans")
    write_user_pipelines(home / "pipelines.yaml", home / "teachers", data)
    return {"home": home, "data": data}


@pytest.mark.ray
def test_user_journey_extract_distill_eval(journey):
    home = journey["home"]
    teachers = ["tiny_open_clip", "tiny_transformers"]
    out = run_mmkd(home, "extract", "--teacher", teachers[0], "--teacher", teachers[1], "--data", "scans",
                   "--store", "stores/scans", "--runner", "ray", "--device", "cpu", "--precision", "fp32",
                   "--batch-size", "8", "--workers", "1", "--block-size", "8", "--actors", "1", "--json",
                   "--no-progress")
    summary = json.loads(out.stdout)
    assert summary["num_samples"] == 24 and {t["teacher"] for t in summary["teachers"]} == set(teachers)

    info = json.loads(run_mmkd(home, "store", "info", "stores/scans", "--json").stdout)
    assert {t: v["dim"] for t, v in info["teachers"].items()} == {"tiny_open_clip": 32, "tiny_transformers": 48}
    assert all(v["complete"] and v["valid_rows"] == 24 for v in info["teachers"].values())
    spec = info["dataset"]["spec"]  # the whole spec, so later stages reopen it from the store alone
    assert spec["root"] == str(journey["data"]["images"]) and spec["fields"]["caption"] == "report"
    assert "OK" in run_mmkd(home, "store", "validate", "stores/scans").stdout

    run_mmkd(home, "distill", "--store", "stores/scans", "--stage", "1", "--out", "runs/s1", *DISTILL)
    s1 = home / "runs" / "s1"
    assert (s1 / "export" / "open_clip_config.json").is_file() and (s1 / "config.yaml").is_file()
    losses = [json.loads(line) for line in (s1 / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in losses if "loss/total" in m][-1] == 3

    for kd in ("multi", "mmkd-clip"):
        run_mmkd(home, "distill", "--store", "stores/scans", "--stage", "2", "--kd", kd, "--init", "runs/s1",
                 "--out", f"runs/{kd}", *DISTILL)
        metrics = (home / "runs" / kd / "metrics.jsonl").read_text()
        assert "loss/fd" in metrics or "loss/kd" in metrics, metrics[:500]
        assert (home / "runs" / kd / "export" / "open_clip_config.json").is_file()

    # a raw path without its field map cannot be read: the error says what to map
    bad = run_mmkd(home, "eval", "--model", "runs/multi/export", "--data", str(journey["data"]["table"]),
                   "--out", "ev-bad", ok=False)
    assert bad.returncode != 0 and "lacks column(s) ['image', 'caption']" in bad.stderr
    assert "Traceback" not in bad.stderr and not (home / "ev-bad").exists()
    run_mmkd(home, "eval", "--model", "runs/multi/export", "--model", "tiny_open_clip", "--data", "scans",
             "--label", "organ", "--set", "organs", "--out", "ev", "--resamples", "20", "--device", "cpu")
    results = json.loads((home / "ev" / "results.json").read_text())
    scores = results
    assert len(scores) == 2 and "tiny_open_clip" in scores, list(scores)
    for per_set in scores.values():
        assert {"retrieval", "zeroshot", "linear", "knn"} <= set(per_set["scans"]), per_set["scans"].keys()
        assert "zeroshot" in per_set["organs"]
        assert 0.0 <= per_set["organs"]["zeroshot"]["accuracy"] <= 1.0


def test_relocated_data_is_checked(journey, tmp_path):
    """--data on a later stage only relocates; another dataset is refused by fingerprint, nothing written."""
    home = journey["home"]
    store = home / "stores" / "scans"
    if not store.exists():
        pytest.skip("runs after the journey test (same module); the store is absent")
    moved = tmp_path / "moved"
    shutil.copytree(journey["data"]["table"].parent.parent, moved)
    table = moved / "tables" / "train.jsonl"
    text = table.read_text().replace("a lung scan, study 0", "an edited caption")
    table.write_text(text)
    out = run_mmkd(home, "distill", "--store", str(store), "--stage", "1", "--data", str(table), "--out",
                   str(tmp_path / "never"), *DISTILL, ok=False)
    assert out.returncode != 0 and "fingerprint" in out.stderr and "!= recorded" in out.stderr
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_short_journey_other_formats(kind, journey, tmp_path):
    """The same journey, shortened, for webdataset shards and a Parquet file declared with field maps."""
    import yaml

    from tests.journey.conftest import write_parquet, write_shards

    home = tmp_path
    if kind == "webdataset":
        write_shards(home / "shards")
        spec = {"path": "shards/shard-{000000..000001}.tar", "format": "webdataset",
                "fields": {"caption": "figure_caption", "id": "pmcid"}}
    else:
        write_parquet(home / "pq")
        spec = {"path": "pq/train-00000.parquet", "format": "parquet",
                "fields": {"image": "img", "caption": "text", "id": "key"}}
    user = yaml.safe_load((journey["home"] / "pipelines.yaml").read_text())
    user["datasets"] = {"mine": spec}
    user.pop("eval_sets")
    (home / "pipelines.yaml").write_text(yaml.safe_dump(user))
    run_mmkd(home, "extract", "--teacher", "tiny_open_clip", "--data", "mine", "--store", "st", "--runner", "local",
             "--device", "cpu", "--precision", "fp32", "--batch-size", "8", "--workers", "1", "--block-size", "8",
             "--no-progress")
    info = json.loads(run_mmkd(home, "store", "info", "st", "--json").stdout)
    assert info["num_samples"] == 16 and info["teachers"]["tiny_open_clip"]["valid_rows"] == 16
    assert info["dataset"]["spec"]["format"] == kind
    run_mmkd(home, "distill", "--store", "st", "--stage", "1", "--out", "s1", *DISTILL)
    assert (home / "s1" / "export" / "open_clip_config.json").is_file()
    run_mmkd(home, "eval", "--model", "s1/export", "--data", "mine", "--out", "ev", "--resamples", "0",
             "--task", "retrieval", "--device", "cpu")
    scores = json.loads((home / "ev" / "results.json").read_text())
    (per_set,) = scores.values()  # one model, named by its export
    r = per_set["mine"]["retrieval"]
    assert set(per_set) == {"mine"} and 0 <= r["image_to_text_R@1"] <= r["image_to_text_R@10"] <= 1


def test_bad_input_one_line_errors_nothing_written(journey, tmp_path):
    """A spec with an unknown field, --data naming a missing path, an eval set whose files are absent."""
    import yaml

    home = tmp_path
    user = yaml.safe_load((journey["home"] / "pipelines.yaml").read_text())
    user["datasets"]["typo"] = {**user["datasets"]["scans"], "fields": {"image": "file", "captoin": "report"}}
    (home / "pipelines.yaml").write_text(yaml.safe_dump(user))
    common = ("--teacher", "tiny_open_clip", "--store", "st", "--runner", "local", "--device", "cpu", "--no-progress")

    out = run_mmkd(home, "extract", "--data", "typo", *common, ok=False)
    assert out.returncode != 0 and "unknown field(s) ['captoin']" in out.stderr and "valid fields" in out.stderr
    out = run_mmkd(home, "extract", "--data", "no/such/data.jsonl", *common, ok=False)
    assert out.returncode != 0 and "'no/such/data.jsonl': no such file or folder" in out.stderr
    assert "Traceback" not in out.stderr and not (home / "st").exists()

    empty = home / "no-fixtures"
    empty.mkdir()
    out = run_mmkd(home, "eval", "--fixtures", str(empty), "--model", "tiny_open_clip", "--set", "modality9",
                   "--out", "ev", ok=False)
    assert out.returncode != 0 and "MMKD_FIXTURES" in out.stderr and str(empty) in out.stderr
    assert "Traceback" not in out.stderr and not (home / "ev").exists()
