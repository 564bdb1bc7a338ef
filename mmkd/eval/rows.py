"""Eval results as typed rows, and the rows ``clip_benchmark build`` writes.

``evaluate`` returns ``{model: {set: {task: metrics}}}`` (results.json keeps that
shape); :func:`result_rows` flattens it into :class:`ResultRow` records, one per
(model, set, task), for the CSV and anything else that wants a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias

from mmkd.jsontypes import JSONDict

Metrics: TypeAlias = "JSONDict"  # metric -> value (scalars, ``*_ci95`` pairs, per-fold lists, notes)
Results: TypeAlias = "dict[str, dict[str, dict[str, Metrics]]]"  # model -> set -> task -> metrics

# mmkd task -> (clip_benchmark task, {mmkd metric: clip_benchmark metric}); only these columns are written
CB_TASKS: dict[str, tuple[str, dict[str, str]]] = {
    "zeroshot": ("zeroshot_classification", {"accuracy": "acc1", "top5_accuracy": "acc5",
                                             "balanced_accuracy": "mean_per_class_recall"}),
    "linear": ("linear_probe", {"accuracy": "lp_acc1", "top5_accuracy": "lp_acc5",
                                "balanced_accuracy": "lp_mean_per_class_recall"}),
    "retrieval": ("zeroshot_retrieval", {**{f"text_to_image_R@{k}": f"image_retrieval_recall@{k}" for k in (1, 5, 10)},
                                         **{f"image_to_text_R@{k}": f"text_retrieval_recall@{k}" for k in (1, 5, 10)}}),
}


@dataclass(frozen=True)
class ResultRow:
    """One model's metrics for one task on one eval set (as in results.json)."""

    model: str
    dataset: str
    task: str
    metrics: Metrics = field(default_factory=dict)


def result_rows(results: Results) -> list[ResultRow]:
    """``results`` as rows, in its order."""
    return [ResultRow(model, dataset, task, metrics) for model, per_set in results.items()
            for dataset, tasks in per_set.items() for task, metrics in tasks.items()]


@dataclass(frozen=True)
class ClipBenchmarkRow:
    """A row as ``clip_benchmark build`` writes it: the result JSON's metrics, then its keys, then
    ``model_fullname`` (``model + ' ' + pretrained``)."""

    dataset: str
    model: str
    pretrained: str
    task: str
    metrics: dict[str, float]
    language: str = "en"

    def to_dict(self) -> JSONDict:
        return {**self.metrics, "dataset": self.dataset, "model": self.model, "pretrained": self.pretrained,
                "task": self.task, "language": self.language, "model_fullname": f"{self.model} {self.pretrained}"}


def clip_benchmark_rows(rows: list[ResultRow], pretrained: dict[str, str] | None = None,
                        datasets: dict[str, str] | None = None) -> list[ClipBenchmarkRow]:
    """The rows of the tasks clip_benchmark also runs, under its names; mmkd-only tasks stay in results.json.

    Args:
        pretrained: model -> what clip_benchmark's ``--pretrained`` would be (a student's export
            folder, a teacher's weights); default: the model name.
        datasets: set -> clip_benchmark's dataset name (``wds/<name>`` for a clip_benchmark folder);
            default: the set name.
    """
    out = []
    for r in rows:
        if r.task not in CB_TASKS:
            continue
        cb_task, names = CB_TASKS[r.task]
        metrics = {cb: float(r.metrics[k]) for k, cb in names.items() if k in r.metrics}
        out.append(ClipBenchmarkRow(dataset=(datasets or {}).get(r.dataset, r.dataset), model=r.model,
                                    pretrained=(pretrained or {}).get(r.model) or r.model, task=cb_task,
                                    metrics=metrics))
    return out
