"""The demo's slide-level and VQA eval sets: synthetic slides of histology patches, and questions about images.

* ``diagnosis-<mod>``: slides of ``PATCHES`` patch images; a "carcinoma" slide holds
  one or two carcinoma patches among benign ones (the label a slide-level MIL head
  has to find), two slides per patient.
* ``survival-<mod>``: the same slides; a patient's time shrinks with the number of
  carcinoma patches over their slides (with noise and ~25% censoring).
* ``vqa-<mod>``: per image one open question (what it shows: the class) and one
  closed question (is the class-1 finding there: yes/no).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mmkd.demo.config import DemoConfig
from mmkd.demo.corpus import _png, draw_images, get_modality
from mmkd.eval.rows import Results
from mmkd.jsontypes import JSONDict

PATCHES = 6


def _modality(cfg: DemoConfig) -> str:
    return "histology" if "histology" in cfg.modalities else cfg.modalities[0]


def write_slides(folder: Path, cfg: DemoConfig, rng: np.random.Generator) -> Path:
    """Patch-image folders ``slides/<slide_id>/`` and ``slides.csv`` (patient, slide, label, time, event)."""
    mod = _modality(cfg)
    names = get_modality(mod).classes
    n_patients = max(8, cfg.eval_per_class // 2)
    planted = rng.integers(0, 3, size=(n_patients, 2)) * (rng.random((n_patients, 2)) < 0.6)
    rows = []
    for p in range(n_patients):
        total = int(planted[p].sum())
        time = round(2.0 + 8.0 * np.exp(-total / 1.5) + rng.random(), 2)
        event = int(rng.random() < 0.75)
        for s in range(2):
            k = int(planted[p, s])
            labels = np.zeros(PATCHES, dtype=np.int64)
            labels[rng.choice(PATCHES, k, replace=False)] = 1
            sid = f"slide-{p:03d}-{s}"
            (folder / "slides" / sid).mkdir(parents=True, exist_ok=True)
            for j, img in enumerate(draw_images(mod, labels, rng, cfg.image_size)):
                (folder / "slides" / sid / f"{j}.png").write_bytes(_png(img))
            rows.append([f"patient-{p:03d}", sid, names[1] if k else names[0], time, event])
    table = folder / "slides.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "slide_id", "label", "time", "event"])
        w.writerows(rows)
    return table


def write_vqa(folder: Path, cfg: DemoConfig, rng: np.random.Generator) -> Path:
    """``vqa_images/`` and ``vqa.jsonl``: an open and a closed question per image."""
    mod = get_modality(_modality(cfg))
    n = max(4, cfg.eval_per_class // 4)
    labels = np.repeat(np.arange(len(mod.classes)), n)
    (folder / "vqa_images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (label, img) in enumerate(zip(labels, draw_images(mod.name, labels, rng, cfg.image_size))):
        (folder / "vqa_images" / f"{i}.png").write_bytes(_png(img))
        rows.append({"image": f"{i}.png", "question": f"what does this {mod.name} image show?",
                     "answer": mod.classes[label], "answer_type": "open"})
        rows.append({"image": f"{i}.png", "question": f"is there {mod.class_prompts[mod.classes[1]]}?",
                     "answer": "yes" if label == 1 else "no", "answer_type": "closed"})
    path = folder / "vqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_task_sets(folder: str | Path, cfg: DemoConfig) -> dict[str, str]:
    """Write the three task sets under ``folder``; returns set name -> spec file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed + 17)
    mod = _modality(cfg)
    write_slides(folder, cfg, rng)
    write_vqa(folder, cfg, rng)
    mil = {"epochs": 10, "hidden": 32, "lr": 1.0e-3}
    specs: dict[str, dict[str, Any]] = {
        f"diagnosis-{mod}": {"task": "diagnosis", "slides": "slides.csv", "patches": "slides", "folds": 3, "mil": mil},
        f"survival-{mod}": {"task": "survival", "slides": "slides.csv", "patches": "slides", "folds": 3,
                            "mil": {**mil, "batch_bags": 8}},
        f"vqa-{mod}": {"task": "vqa", "questions": "vqa.jsonl", "root": "vqa_images", "folds": 3,
                       "head": {"epochs": 60}},
    }
    out = {}
    for name, spec in specs.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        out[name] = str(folder / f"{name}.yaml")
    return out


def task_summary(results: Results, names: list[str]) -> dict[str, JSONDict]:
    """Per model, the headline of each task set: diagnosis AUC (ABMIL, mean pool), C-index, VQA accuracies."""
    keys = {"diagnosis": "macro_auc", "diagnosis_meanpool": "macro_auc", "survival": "c_index",
            "survival_meanpool": "c_index", "vqa": "accuracy"}
    out: dict[str, dict[str, Any]] = {}
    for model, per_set in results.items():
        for name in names:
            for task, metric in keys.items():
                v = per_set.get(name, {}).get(task, {}).get(metric)
                if v is not None:
                    out.setdefault(model, {})[f"{task} {metric}"] = v
    return out
