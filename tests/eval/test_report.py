"""Report files: results.json, markdown table with the best per column in bold, bar chart, summary."""

from __future__ import annotations

import json

from mmkd.eval.report import columns, markdown_table, summary_text, write_report

RESULTS = {
    "student": {"setA": {"zeroshot": {"accuracy": 0.9, "macro_auc": 0.95, "accuracy_ci95": [0.8, 0.97]},
                         "knn": {"accuracy": 0.5}},
                "setB": {"retrieval": {"image_to_text_R@1": 0.2, "text_to_image_R@1": 0.4}}},
    "teacher": {"setA": {"zeroshot": {"accuracy": 0.7, "macro_auc": float("nan")}, "knn": {"accuracy": 0.5}},
                "setB": {"retrieval": {"image_to_text_R@1": 0.3, "text_to_image_R@1": 0.1}}},
}


def test_columns_cover_tasks_and_datasets():
    assert columns(RESULTS) == [("setA", "zeroshot", "accuracy"), ("setA", "zeroshot", "macro_auc"),
                                ("setA", "knn", "accuracy"), ("setB", "retrieval", "image_to_text_R@1"),
                                ("setB", "retrieval", "text_to_image_R@1")]


def test_markdown_bolds_best_per_column_including_ties():
    md = markdown_table(RESULTS).splitlines()
    student, teacher = md[2], md[3]
    assert student.startswith("| student | **0.900 [0.80, 0.97]** | **0.950** | **0.500** | 0.200 | **0.400** |")
    assert teacher == "| teacher | 0.700 | – | **0.500** | **0.300** | 0.100 |"


def test_write_report_files(tmp_path):
    paths = write_report(RESULTS, tmp_path / "out", {"models": ["student", "teacher"]})
    data = json.loads(paths["json"].read_text())
    assert data["teacher"]["setA"]["zeroshot"]["macro_auc"] is None  # NaN -> null
    assert data["student"]["setA"]["zeroshot"]["accuracy_ci95"] == [0.8, 0.97]
    assert "**0.300**" in paths["markdown"].read_text()
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["run"].read_text())["models"] == ["student", "teacher"]


def test_summary_marks_best():
    text = summary_text(RESULTS)
    assert "0.900 [0.80, 0.97] *" in text and "0.700 *" not in text


def _png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def test_chart_is_small_multiples_with_bounded_width(tmp_path):
    from mmkd.eval.report import bar_chart

    rng = __import__("numpy").random.default_rng(0)
    models = [f"model-{i}" for i in range(10)]
    many = {m: {f"set-{j:03d}": {"zeroshot": {"accuracy": float(rng.random()), "macro_auc": 0.7},
                                 "linear": {"accuracy": 0.5}} for j in range(80)} for m in models}
    bar_chart(many, tmp_path / "many.png")
    w, h = _png_size(tmp_path / "many.png")
    assert w <= 1600 and h <= 2000, (w, h)
    few = {m: {"a": {"zeroshot": {"accuracy": 0.6, "accuracy_ci95": [0.5, 0.7]}},
               "b": {"diagnosis": {"macro_auc": 0.8, "macro_auc_ci95": [0.7, 0.9], "balanced_accuracy": 0.7},
                     "survival": {"c_index": 0.6, "c_index_std": 0.05}},
               "c": {"vqa": {"accuracy": 0.7, "accuracy_chance": 0.4}}} for m in ("student", "teacher")}
    bar_chart(few, tmp_path / "few.png", {"sets": {"a": {"classes": 4}}})
    w, h = _png_size(tmp_path / "few.png")
    assert w <= 1600 and h < 1200, (w, h)
    for n in (1, 9, 30):  # width stays bounded as sets grow
        res = {m: {f"s{j}": {"zeroshot": {"accuracy": 0.5}} for j in range(n)} for m in ("a", "b", "c")}
        bar_chart(res, tmp_path / f"n{n}.png")
        assert _png_size(tmp_path / f"n{n}.png")[0] <= 1600
