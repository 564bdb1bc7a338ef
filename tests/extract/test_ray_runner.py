"""The Ray runner (local Ray, 2 CPUs): same store as the local runner, bit for bit; survives a killed actor."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_runner_support import BAD, assert_same_store, modality_dataset, tiny_pipelines

from mmkd.extract import ExtractError, ExtractJob, run_extract
from mmkd.store import FeatureStore

pytestmark = pytest.mark.ray
TEACHERS = ["tiny_open_clip", "tiny_medclip"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, modality_dir):
    root = tmp_path_factory.mktemp("ray-extract")
    jsonl = modality_dataset(modality_dir, root / "modality")
    pipelines, _ = tiny_pipelines(root, jsonl=jsonl, kinds=("open_clip", "medclip"))
    return {"root": root, "pipelines": str(pipelines)}


def _job(setup, store, **kw) -> ExtractJob:
    values = dict(data="modality", teachers=TEACHERS, store=str(store), pipeline=setup["pipelines"],
                  block_size=2, batch_size=2, workers=2)
    return ExtractJob(**{**values, **kw})


@pytest.fixture(scope="module")
def local_store(setup):
    path = setup["root"] / "local"
    run_extract(_job(setup, path, runner="local"))
    return path


def test_ray_store_equals_local_bit_for_bit(ray_session, setup, local_store):
    path = setup["root"] / "ray"
    summary = run_extract(_job(setup, path, runner="ray"))
    assert summary.runner == "ray" and summary.num_samples == 16
    for t in summary.teachers:
        assert t.blocks_run == 8 and t.valid == 12 and t.workers == 2  # both actors took blocks
        assert t.failures == {"missing": 1, "corrupt": 1, "truncated": 1, "empty_caption": 1}
    assert_same_store(local_store, path)
    store = FeatureStore.open(path)
    assert {f["sample_id"]: f["reason"] for f in store.failures("tiny_medclip").to_pylist()} == BAD
    assert store.attrs("tiny_open_clip")["stats_rows"] == 12
    assert run_extract(_job(setup, path, runner="ray")).noop
    assert not [n for n in ray_session.util.list_named_actors() if n.startswith("mmkd-extract")], "actors left behind"


def test_killed_actor_is_replaced_and_store_identical(ray_session, setup, local_store):
    path = setup["root"] / "ray-killed"
    pids: dict[str, list[int]] = {}
    killed: dict[str, int] = {}

    def kill_other_actor(manifest):
        pids.setdefault(manifest["actor"], []).append(manifest["pid"])
        others = [a for a in pids if a != manifest["actor"]]
        if not killed and others:  # kill an actor whose process we know, while the queue still holds blocks
            victim = others[0]
            ray_session.kill(ray_session.get_actor(victim), no_restart=False)  # Ray restarts it, retries its task
            killed[victim] = pids[victim][-1]

    summary = run_extract(_job(setup, path, runner="ray", teachers=["tiny_open_clip"]), on_block=kill_other_actor)
    assert killed, "both actors should have reported blocks"
    (victim, old_pid), = killed.items()
    assert any(p != old_pid for p in pids[victim]), "the killed actor should have run blocks in a new process"
    assert summary.teachers[0].blocks_run == 8 and summary.teachers[0].workers == 3
    assert_same_store(local_store, path, teachers=["tiny_open_clip"])


def test_teacher_failing_inside_an_actor_is_reported(ray_session, setup, tmp_path):
    import yaml

    cfg = yaml.safe_load(Path(setup["pipelines"]).read_text())
    cfg["teachers"]["tiny_open_clip"]["dim"] = 99  # the model outputs 24: loading fails inside the actor
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text(yaml.safe_dump(cfg))
    job = _job({"pipelines": str(pipelines)}, tmp_path / "s", runner="ray", teachers=["tiny_open_clip"])
    with pytest.raises(ExtractError, match=r"tiny_open_clip.*Ray worker failed to load it.*dim 99"):
        run_extract(job)
    assert not [n for n in ray_session.util.list_named_actors() if n.startswith("mmkd-extract")]
