"""The demo's slide diagnosis, survival and VQA sets load as mmkd eval sets with the planted structure."""

from __future__ import annotations

import numpy as np

from mmkd.demo.config import DemoConfig
from mmkd.demo.tasks import PATCHES, task_summary, write_task_sets
from mmkd.eval.sets import load_eval_set


def test_demo_task_sets_load_and_carry_the_planted_signal(tmp_path):
    cfg = DemoConfig.preset(True, seed=3, eval_per_class=20, image_size=24)
    specs = write_task_sets(tmp_path, cfg)
    assert set(specs) == {"diagnosis-histology", "survival-histology", "vqa-histology"}
    diag = load_eval_set(specs["diagnosis-histology"])
    surv = load_eval_set(specs["survival-histology"])
    vqa = load_eval_set(specs["vqa-histology"])
    assert diag.task == "diagnosis" and len(diag.slide_ids) == 20 and len(set(diag.patients)) == 10
    assert diag.class_names == ["benign", "carcinoma"] and 0 < diag.labels.sum() < 20
    assert all(len(list((tmp_path / "slides" / s).glob("*.png"))) == PATCHES for s in diag.slide_ids)
    # survival: patients with carcinoma slides live shorter
    sick = np.array([any(diag.labels[i] for i, p in enumerate(diag.patients) if p == q) for q in surv.patients])
    assert surv.time[sick].mean() < surv.time[~sick].mean()
    assert vqa.task == "vqa" and sum(r.closed for r in vqa.rows) == len(vqa.rows) // 2
    results = {"m": {"diagnosis-histology": {"diagnosis": {"macro_auc": 0.9}},
                     "vqa-histology": {"vqa": {"accuracy": 0.5}}}}
    assert task_summary(results, list(specs)) == {"m": {"diagnosis macro_auc": 0.9, "vqa accuracy": 0.5}}
