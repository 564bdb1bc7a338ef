"""Slide sets through :func:`mmkd.eval.evaluate`: patch images embedded by a student, a patch store vs a CLAM folder."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from mmkd.config import ConfigError
from mmkd.eval.runner import EvalConfig, EvalError, evaluate
from tests.eval.slide_data import planted_bags, write_clam, write_patch_store, write_slide_table
from tests.eval.test_e2e import export_tiny_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"epochs": 2, "hidden": 8}


def _spec(path, **spec) -> str:
    path.write_text(yaml.safe_dump({"folds": 2, "mil": FAST, **spec}))
    return str(path)


def test_patch_images_are_embedded_per_slide_and_cached(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    slides = [f"s{i}" for i in range(8)]
    for i, s in enumerate(slides):
        (tmp_path / "patches" / s).mkdir(parents=True)
        for k in range(3):
            arr = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "patches" / s / f"{k}.png")
    write_slide_table(tmp_path / "slides.csv", slides, [i % 2 for i in range(8)])
    spec = _spec(tmp_path / "d.yaml", task="diagnosis", slides="slides.csv", patches="patches")
    student = export_tiny_student(tmp_path / "m")
    ecfg = EvalConfig(resamples=10, device="cpu")
    first = evaluate([str(student)], [spec], tmp_path / "out", ecfg=ecfg)
    assert set(first["tiny-student"]["d"]) == {"diagnosis", "diagnosis_meanpool"}
    assert len(list((tmp_path / "out" / "cache").glob("*__d-s*.npz"))) == 8  # one cache file per slide
    again = evaluate([str(student)], [spec], tmp_path / "out", ecfg=ecfg)
    assert again == first
    (tmp_path / "patches" / "stray.png").write_bytes((tmp_path / "patches" / "s0" / "0.png").read_bytes())
    with pytest.raises(ConfigError, match=r"1 patch images lie outside any <slide_id>/ folder, e.g. \['stray.png'\]"):
        evaluate([str(student)], [spec], tmp_path / "out", ecfg=ecfg)


def test_patch_store_gives_the_results_of_the_same_clam_folder(tmp_path, monkeypatch):
    from mmkd.config import load_pipelines

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMKD_PIPELINES", raising=False)
    cfg = load_pipelines(None)  # the shipped teachers: biomedclip is a name, never loaded here
    bags, y = planted_bags(n=12, patches=20, dim=8, planted=3)
    bags = {k: v.astype(np.float16).astype(np.float32) for k, v in bags.items()}  # the store keeps float16
    write_clam(tmp_path / "clam", bags)
    write_patch_store(tmp_path / "store", bags, teacher="biomedclip")
    write_slide_table(tmp_path / "slides.csv", list(bags), list(y))
    via_clam = _spec(tmp_path / "clam_set.yaml", task="diagnosis", slides="slides.csv", patches="clam")
    via_store = _spec(tmp_path / "store_set.yaml", task="diagnosis", slides="slides.csv", store="store")
    ecfg = EvalConfig(resamples=10, device="cpu")
    res = evaluate(["biomedclip"], [via_clam, via_store], tmp_path / "out", pipelines=cfg, ecfg=ecfg)["biomedclip"]
    assert res["clam_set"] == res["store_set"]
    student = export_tiny_student(tmp_path / "m")
    with pytest.raises(ConfigError, match="has no features in the patch store"):
        evaluate([str(student)], [via_store], tmp_path / "out2", pipelines=cfg, ecfg=ecfg)
    with pytest.raises(ConfigError, match="holds one extractor's features, but 2 models"):
        evaluate(["biomedclip", str(student)], [via_clam], tmp_path / "out3", pipelines=cfg, ecfg=ecfg)


def test_task_filter_skips_slide_sets(tmp_path, monkeypatch):
    from mmkd.config import load_pipelines

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MMKD_PIPELINES", raising=False)
    bags, y = planted_bags(n=6, patches=10, dim=4)
    write_clam(tmp_path / "clam", bags)
    write_slide_table(tmp_path / "slides.csv", list(bags), list(y))
    spec = _spec(tmp_path / "d.yaml", task="diagnosis", slides="slides.csv", patches="clam")
    with pytest.raises(EvalError, match="no task"):
        evaluate(["biomedclip"], [spec], tmp_path / "out", pipelines=load_pipelines(None),
                 ecfg=EvalConfig(tasks=("zeroshot",), device="cpu"))
