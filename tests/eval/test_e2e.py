"""End to end: a tiny exported student through the CLI, and a tiny teacher from a store vs loaded directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mmkd.cli import main
from mmkd.eval import encoders
from mmkd.eval.runner import EvalConfig, evaluate
from mmkd.eval.sets import load_eval_set

CLASSIFICATION = {"accuracy", "balanced_accuracy", "macro_auc", "macro_f1", "accuracy_ci95",
                  "balanced_accuracy_ci95", "macro_auc_ci95", "macro_f1_ci95"}
RETRIEVAL = {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def export_tiny_student(folder: Path) -> Path:
    """A tiny random open_clip model saved as an exported student (local-dir layout) in ``folder/tiny-student``."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = CLIP(**TINY_CLIP)
    d = folder / "tiny-student"
    d.mkdir(parents=True)
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    return d


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    return export_tiny_student(tmp_path_factory.mktemp("student"))


def test_student_export_end_to_end_via_cli(student_dir, modality_dir, mmkd_demo_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["eval", "--model", str(student_dir), "--set", "modality9", "--set", "mmkd_demo",
            "--out", str(out), "--resamples", "200"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert set(data) == {"tiny-student"}
    assert set(data["tiny-student"]) == {"modality9", "mmkd_demo"}
    assert set(data["tiny-student"]["modality9"]) == {"zeroshot"}  # one image per class: no probes
    assert set(data["tiny-student"]["modality9"]["zeroshot"]) == CLASSIFICATION | {"top5_accuracy"}
    assert set(data["tiny-student"]["mmkd_demo"]) == {"retrieval"}
    assert set(data["tiny-student"]["mmkd_demo"]["retrieval"]) == RETRIEVAL
    assert data["tiny-student"]["mmkd_demo"]["retrieval"]["image_to_text_R@10"] == 1.0  # 8 captions < 10
    assert "**" in (out / "results.md").read_text() and (out / "results.png").is_file()
    assert "tiny-student" in res.output and "modality9 zeroshot acc" in res.output
    assert len(list((out / "cache").glob("*.npz"))) == 2

    # A second run reads every feature from the cache: encoding anything would fail.
    def boom(*a, **k):
        raise AssertionError("encoded although the features were cached")

    monkeypatch.setattr(encoders.StudentEncoder, "encode_images", boom)
    monkeypatch.setattr(encoders.StudentEncoder, "encode_texts", boom)
    res2 = CliRunner().invoke(main, args)
    assert res2.exit_code == 0, res2.output
    assert json.loads((out / "results.json").read_text()) == data


def test_cli_errors_name_the_problem(tmp_path, student_dir):
    res = CliRunner().invoke(main, ["eval", "--model", "no_such_teacher", "--set", "modality9",
                                    "--out", str(tmp_path)])
    assert res.exit_code != 0 and "no_such_teacher" in res.output
    res = CliRunner().invoke(main, ["eval", "--model", str(student_dir), "--set", "nope", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "nope" in res.output and "modality9" in res.output
    res = CliRunner().invoke(main, ["eval", "--model", str(student_dir), "--set", "modality9"])
    assert res.exit_code != 0 and "--out" in res.output
    res = CliRunner().invoke(main, ["eval", "--model", str(student_dir), "--set", "modality9",
                                    "--task", "retrieval", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "retrieval needs captions" in res.output


@pytest.fixture(scope="module")
def tiny_teacher_setup(tmp_path_factory, modality_dir):
    """Pipelines with a tiny open_clip teacher and a labelled, captioned set over the modality images."""
    from mmkd.config import load_pipelines
    from mmkd.teachers.tiny import make_tiny_teachers, write_pipelines

    root = tmp_path_factory.mktemp("teacher")
    specs = make_tiny_teachers(root / "teachers", kinds=("open_clip",))
    rows = [{"id": f"{p.stem}-{k}", "image": p.name, "label": p.stem, "caption": f"a {p.stem} scan, view {k}"}
            for p in sorted(modality_dir.iterdir()) for k in range(2)]
    (root / "mod.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    extra = {"eval_sets": {"mod": {"samples": "mod.jsonl", "root": str(modality_dir),
                                   "templates": ["a {} image.", "an image of {}."]}}}
    cfg = load_pipelines(write_pipelines(root / "pipelines.yaml", specs, extra))
    return root, cfg


def _build_store(root: Path, cfg: dict, teacher: str) -> Path:
    """A store over the eval set holding the teacher's features (what `mmkd extract` writes)."""
    from mmkd.store import FeatureStore

    evalset = load_eval_set("mod", cfg)
    enc = encoders.TeacherEncoder(teacher, cfg, device="cpu")
    img = enc.encode_images([evalset.load_image(it) for it in evalset.items])
    txt = enc.encode_texts([it.caption for it in evalset.items])
    store = FeatureStore.create(root / "store", evalset.store_samples(), block_size=8)
    store.add_teacher(teacher, img.shape[1], enc.teacher.store_attrs())
    for b in range(store.num_blocks):
        s, e = store.block_range(b)
        store.write_block(teacher, b, img[s:e], txt[s:e], np.ones(e - s, dtype=bool))
    return root / "store"


def test_teacher_from_store_equals_teacher_loaded_directly(tiny_teacher_setup, monkeypatch):
    root, cfg = tiny_teacher_setup
    store = _build_store(root, cfg, "tiny_open_clip")
    ecfg = dict(resamples=200, knn_k=3)
    direct = evaluate(["tiny_open_clip"], ["mod"], root / "direct", pipelines=cfg, ecfg=EvalConfig(**ecfg))

    def no_images(*a, **k):
        raise AssertionError("the store run must not encode images")

    monkeypatch.setattr(encoders.TeacherEncoder, "encode_images", no_images)
    stored = evaluate(["tiny_open_clip"], ["mod"], root / "stored", pipelines=cfg,
                      ecfg=EvalConfig(**ecfg, stores={"mod": str(store)}))
    assert set(direct["tiny_open_clip"]["mod"]) == {"zeroshot", "linear", "knn", "retrieval"}
    assert _close(stored, direct)
    assert [p.name.split("-")[1] for p in (root / "stored" / "cache").glob("*.npz")] == ["store"]

    # Prompts are cached with the store features: a rerun needs no teacher at all.
    monkeypatch.setattr(encoders.TeacherEncoder, "encode_texts", no_images)
    again = evaluate(["tiny_open_clip"], ["mod"], root / "stored", pipelines=cfg,
                     ecfg=EvalConfig(**ecfg, stores={"mod": str(store)}))
    assert again == stored


def _close(a: dict, b: dict) -> bool:
    """Same nested keys; numbers equal up to float16 storage of the features."""
    flat_a, flat_b = _flatten(a), _flatten(b)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        assert flat_a[k] == pytest.approx(flat_b[k], abs=1e-6), k
    return True


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_real_teacher_features_from_imported_store(mmkd_demo_dir, tmp_path):
    """The official demo's stored BiomedCLIP / QuiltNet features retrieve every caption's own figure."""
    from mmkd.config import load_pipelines
    from mmkd.store import import_mmkd

    import_mmkd(mmkd_demo_dir, tmp_path / "store")
    cfg = load_pipelines(Path(__file__).resolve().parents[2] / "pipelines.yaml")
    res = evaluate(["biomedclip", "quiltnet"], ["mmkd_demo"], tmp_path / "out", pipelines=cfg,
                   ecfg=EvalConfig(tasks=("retrieval",), stores={"mmkd_demo": str(tmp_path / "store")}))
    for teacher in ("biomedclip", "quiltnet"):
        r = res[teacher]["mmkd_demo"]["retrieval"]
        assert r["image_to_text_R@1"] == 1.0 and r["text_to_image_R@1"] == 1.0, (teacher, r)
    # pmc_clip has features for one demo sample only: refusing beats a silent subset.
    with pytest.raises(encoders.EncoderError, match="no valid 'pmc_clip' features for 7 samples"):
        evaluate(["pmc_clip"], ["mmkd_demo"], tmp_path / "out2", pipelines=cfg,
                 ecfg=EvalConfig(tasks=("retrieval",), stores={"mmkd_demo": str(tmp_path / "store")}))


def test_store_for_unknown_set_is_refused(student_dir, tmp_path):
    res = CliRunner().invoke(main, ["eval", "--model", str(student_dir), "--set", "modality9",
                                    "--store", "modality=/x", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "'modality'" in res.output
    res = CliRunner().invoke(main, ["eval", "--model", str(student_dir), "--set", "modality9",
                                    "--store", "modality9", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "SET=STORE_PATH" in res.output


def test_eval_data_takes_a_meta_jsonl_folder(student_dir, mmkd_demo_dir, tmp_path):
    """`mmkd eval --data` takes what `mmkd extract --data` takes: here the official meta.jsonl layout."""
    res = CliRunner().invoke(main, ["eval", "--model", str(student_dir), "--data", str(mmkd_demo_dir),
                                    "--task", "retrieval", "--resamples", "0", "--out", str(tmp_path / "ev"),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "ev" / "results.json").read_text())
    (per_set,) = scores.values()
    assert set(per_set) == {"mmkd-clip-demo"} and set(per_set["mmkd-clip-demo"]["retrieval"]) >= RETRIEVAL
    res = CliRunner().invoke(main, ["eval", "--model", str(student_dir), "--data", str(mmkd_demo_dir / "meta.jsonl"),
                                    "--task", "retrieval", "--resamples", "0", "--out", str(tmp_path / "ev2"),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output


def test_models_scored_apart_equal_one_evaluate_and_write_no_report(tiny_teacher_setup, student_dir):
    """What the demo's eval groups rely on: a model's scores depend on it and the sets alone."""
    from mmkd.eval.runner import score

    root, cfg = tiny_teacher_setup
    ecfg = EvalConfig(resamples=50, knn_k=3)
    together = evaluate(["tiny_open_clip", str(student_dir)], ["mod"], root / "together", pipelines=cfg, ecfg=ecfg)
    teacher, info = score(["tiny_open_clip"], ["mod"], root / "apart", pipelines=cfg, ecfg=ecfg)
    student, _ = score([str(student_dir)], ["mod"], root / "apart", pipelines=cfg, ecfg=ecfg)
    assert {**teacher, **student} == together
    assert info["models"] == ["tiny_open_clip"] and info["sets"]["mod"]["skipped"] == 0
    assert not (root / "apart" / "results.json").exists() and (root / "together" / "results.json").is_file()
