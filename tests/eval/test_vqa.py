"""Closed-set VQA: the fusion head learns an answer that is a function of the image class; bad rows are named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmkd.config import ConfigError
from mmkd.eval.cv import group_folds
from mmkd.eval.vqa import VqaHeadConfig, build_vqa_set, evaluate_vqa_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ("lung", "liver", "brain", "heart")


def synthetic_vqa(n_images: int = 40, dim: int = 16, seed: int = 0):
    """Image features = class direction + noise; questions 'what organ' (open) and 'is this X' (closed)."""
    rng = np.random.default_rng(seed)
    qtexts = ["what organ is shown?"] + [f"is this a {c}?" for c in CLASSES]
    qvec = {q: v / np.linalg.norm(v) for q, v in zip(qtexts, rng.standard_normal((len(qtexts), dim)))}
    img, qs, answers, closed, groups = [], [], [], [], []
    for i in range(n_images):
        c = i % len(CLASSES)
        x = 0.1 * rng.standard_normal(dim)
        x[c] += 1.0
        for q in qtexts:
            img.append(x / np.linalg.norm(x))
            qs.append(qvec[q])
            answers.append(CLASSES[c] if q == qtexts[0] else ("yes" if CLASSES[c] in q else "no"))
            closed.append(q != qtexts[0])
            groups.append(f"img{i}")
    return (np.array(img, np.float32), np.array(qs, np.float32), answers, np.array(closed), groups)


def test_vqa_head_answers_a_function_of_the_image_class():
    img, q, answers, closed, groups = synthetic_vqa()
    fold = group_folds(groups, 4, seed=0)
    res = evaluate_vqa_features(img, q, answers, closed, fold, VqaHeadConfig(epochs=100, lr=3e-3), resamples=100)
    assert res["accuracy"] >= 0.97, res
    assert res["accuracy_closed"] >= 0.97 and res["accuracy_open"] >= 0.97
    assert res["n_questions"] == 200 and res["n_closed"] == 160 and res["n_open"] == 40
    assert res["unseen_answers"] == 0 and len(res["accuracy_folds"]) == 4
    assert res["accuracy_ci95"][0] <= res["accuracy"] <= res["accuracy_ci95"][1]


def test_vqa_answer_seen_only_in_test_is_counted_and_reported():
    img, q, answers, closed, groups = synthetic_vqa(n_images=8)
    answers[3] = "zebra"
    fold = np.where(np.arange(len(answers)) < 10, 0, -1)  # rows 0..9 are the test split
    res = evaluate_vqa_features(img, q, answers, closed, fold, VqaHeadConfig(epochs=5), resamples=0)
    assert res["unseen_answers"] == 1 and res["unseen_answer_examples"] == ["zebra"]
    assert res["n_questions"] == 10


def test_vqa_spec_errors_name_the_row(tmp_path):
    rows = [{"image": "a.png", "question": "is it?", "answer": "Yes "}, {"image": "b.png", "question": "what?"}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"row 2 .* has no \['answer'\]"):
        build_vqa_set("v", {"task": "vqa", "questions": "q.jsonl"}, tmp_path)
    rows[1]["answer"] = "Lung"
    rows[1]["answer_type"] = "OPEN"
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="needs folds >= 2 and at least 5 images; the table has 2"):
        build_vqa_set("v", {"task": "vqa", "questions": "q.jsonl"}, tmp_path)
    vset = build_vqa_set("v", {"task": "vqa", "questions": "q.jsonl", "folds": 2}, tmp_path)
    assert [(r.answer, r.closed) for r in vset.rows] == [("yes", True), ("lung", False)]
