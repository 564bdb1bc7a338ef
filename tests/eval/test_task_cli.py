"""``mmkd eval`` with slide sets (diagnosis, survival) through the console script, from a temp folder."""

from __future__ import annotations

import json

import numpy as np
import yaml

from tests.eval.slide_data import planted_bags, write_clam, write_slide_table
from tests.journey.conftest import run_mmkd

ENV = {"OMP_NUM_THREADS": "1"}


def test_cli_diagnosis_and_survival_from_a_clam_folder(tmp_path):
    bags, y = planted_bags(n=24, patches=40, dim=8, planted=4, strength=8.0)
    slides = list(bags)
    write_clam(tmp_path / "features" / "biomedclip", bags, "pt")
    rng = np.random.default_rng(0)
    time = [float(t) for t in rng.integers(1, 20, len(slides) // 2).repeat(2)]
    event = [int(e) for e in rng.integers(0, 2, len(slides) // 2).repeat(2)]
    write_slide_table(tmp_path / "slides.csv", slides, ["tumor" if v else "normal" for v in y], time=time, event=event)
    mil = {"epochs": 3, "hidden": 16}
    (tmp_path / "diag.yaml").write_text(yaml.safe_dump(
        {"task": "diagnosis", "slides": "slides.csv", "patches": "features/{model}", "folds": 3, "mil": mil}))
    (tmp_path / "surv.yaml").write_text(yaml.safe_dump(
        {"task": "survival", "slides": "slides.csv", "patches": "features/{model}", "folds": 3,
         "mil": {**mil, "batch_bags": 4}}))
    run_mmkd(tmp_path, "eval", "--model", "biomedclip", "--set", "diag.yaml", "--set", "surv.yaml",
             "--out", "out", "--resamples", "50", "--device", "cpu", env=ENV)
    res = json.loads((tmp_path / "out" / "results.json").read_text())["biomedclip"]
    diag = res["diag"]
    assert set(diag) == {"diagnosis", "diagnosis_meanpool"}
    for m in ("balanced_accuracy", "macro_auc", "macro_f1"):
        assert 0.0 <= diag["diagnosis"][m] <= 1.0 and len(diag["diagnosis"][f"{m}_ci95"]) == 2
        assert len(diag["diagnosis"][f"{m}_folds"]) == 3
    assert diag["diagnosis"]["n_slides"] == 24 and diag["diagnosis"]["n_patients"] == 12
    surv = res["surv"]["survival"]
    assert set(res["surv"]) == {"survival", "survival_meanpool"}
    assert len(surv["c_index_folds"]) == 3 and surv["n_patients"] == 12 and surv["n_events"] == sum(event) // 2
    assert (tmp_path / "out" / "results.png").is_file()


def test_cli_names_slides_without_patches(tmp_path):
    bags, y = planted_bags(n=6, patches=10, dim=4)
    write_clam(tmp_path / "clam", bags, "pt")
    write_slide_table(tmp_path / "slides.csv", list(bags) + ["lost-slide"], list(y) + [0],
                      patients=[f"p{i}" for i in range(7)])
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"task": "diagnosis", "slides": "slides.csv",
                                                     "patches": "clam", "folds": 2}))
    proc = run_mmkd(tmp_path, "eval", "--model", "biomedclip", "--set", "d.yaml", "--out", "out", ok=False, env=ENV)
    assert proc.returncode != 0
    assert "1 of 7 slides in the slide table have no patches, e.g. ['lost-slide']" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()
