"""Eval-set specs: shipped sets, pipelines entries, jsonl paths and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmkd.config import ConfigError, load_pipelines
from mmkd.eval.runner import plan_eval
from mmkd.eval.sets import builtin_sets, build_eval_set, load_eval_set

REPO = Path(__file__).resolve().parents[2]


def test_shipped_modality_set(modality_dir):
    s = load_eval_set("modality9")
    assert s.labelled and not s.captioned and len(s.items) == 9
    assert s.class_names == sorted(p.stem for p in modality_dir.iterdir())
    assert [s.class_names[it.label] for it in s.items] == [Path(it.image).stem for it in s.items]
    assert s.load_image(s.items[0]).mode == "RGB"
    assert len(s.prompt_names) == 9 and all("{}" in t for t in s.templates)


def test_shipped_demo_retrieval_set_matches_store_importer_ids(mmkd_demo_dir):
    s = load_eval_set("mmkd_demo")
    meta = [json.loads(line) for line in (mmkd_demo_dir / "meta.jsonl").read_text().splitlines() if line.strip()]
    assert s.captioned and not s.labelled
    assert s.sample_ids == [m["id"] for m in meta]
    assert s.load_image(s.items[-1]).size[0] > 0


def test_every_pipelines_eval_block_loads(fixtures_dir):
    cfg = load_pipelines(REPO / "pipelines.yaml")
    for name in cfg.get("eval_sets") or {}:
        assert load_eval_set(name, cfg).items
    for job in cfg.get("eval") or {}:
        plan = plan_eval(cfg, job, {})
        assert plan.models and plan.sets and plan.out
        for ds in plan.sets:
            load_eval_set(ds, cfg)


def test_jsonl_path_with_int_labels_and_splits(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    rows = [{"id": f"s{i}", "image": "a.png", "label": i % 2, "split": "train" if i < 4 else "test"} for i in range(6)]
    (tmp_path / "set.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = load_eval_set(str(tmp_path / "set.jsonl"))
    assert s.name == "set" and s.class_names == ["0", "1"] and list(s.labels) == [0, 1, 0, 1, 0, 1]
    assert list(s.splits) == ["train"] * 4 + ["test"] * 2
    assert s.fingerprint() == load_eval_set(str(tmp_path / "set.jsonl")).fingerprint()


def test_spec_file_with_class_prompts_and_fingerprint_change(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"image": "x.png", "label": "cat"}\n{"image": "y.png", "label": "dog"}\n')
    for name in ("x.png", "y.png"):
        (tmp_path / name).write_bytes(b"")  # present (never decoded here)
    spec = {"samples": "s.jsonl", "classes": ["dog", "cat"], "class_prompts": {"cat": "a feline"},
            "templates": ["{}."]}
    (tmp_path / "pets.yaml").write_text(json.dumps(spec))
    s = load_eval_set(str(tmp_path / "pets.yaml"))
    assert s.prompt_names == ["dog", "a feline"] and list(s.labels) == [1, 0] and s.sample_ids == ["x.png", "y.png"]
    other = build_eval_set("pets", {**spec, "templates": ["a {}."]}, tmp_path)
    assert other.fingerprint() != s.fingerprint()


@pytest.mark.parametrize("spec, match", [
    ({"samples": "s.jsonl", "bogus": 1}, "unknown keys"),
    ({}, "exactly one of"),
    ({"samples": "s.jsonl", "classes": ["dog"]}, "label 'cat'"),
    ({"samples": "s.jsonl", "class_prompts": {"cow": "x"}}, "class_prompts"),
    ({"samples": "nope.jsonl"}, "not found"),
])
def test_bad_specs_raise_config_errors(tmp_path, spec, match):
    (tmp_path / "s.jsonl").write_text('{"image": "x.png", "label": "cat"}\n')
    with pytest.raises(ConfigError, match=match):
        build_eval_set("bad", spec, tmp_path)


def test_unknown_name_lists_known_sets():
    with pytest.raises(ConfigError, match="modality9"):
        load_eval_set("no-such-set", {})
    assert {"modality9", "mmkd_demo"} <= set(builtin_sets())


def test_reader_backed_set_uses_labels(mmkd_demo_dir):
    s = build_eval_set("demo", {"data": str(mmkd_demo_dir), "label_key": "image_panel_type"}, Path.cwd())
    assert s.labelled and s.captioned and len(s.items) == 8 and s.reader is not None
    assert s.load_image(s.items[0]).size[0] > 0


def test_partial_splits_are_refused(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"image": "x.png", "label": "a", "split": "train"}\n'
                                      '{"image": "y.png", "label": "b"}\n')
    with pytest.raises(ConfigError, match="1 of 2 samples have a `split`"):
        build_eval_set("bad", {"samples": "s.jsonl"}, tmp_path)
