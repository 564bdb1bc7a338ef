"""Eval outputs: results.json (every number), results.md (headline table, best per column bold),
results.png (small multiples per task) and a plain-text summary for the terminal.

Eval images that could not be read are listed under ``results[model][set]["skipped"]``
(``count``, ``of``, ``samples``) and in a footnote under the tables; the columns of
such a set are marked with ``†``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from mmkd.jsontypes import JSONDict
import numpy as np

log = logging.getLogger(__name__)

# The number each task is summarised by in the table and chart (results.json has them all).
HEADLINE = {
    "zeroshot": ("accuracy", "macro_auc"),
    "linear": ("accuracy", "macro_auc"),
    "knn": ("accuracy",),
    "retrieval": ("image_to_text_R@1", "text_to_image_R@1"),
    "diagnosis": ("balanced_accuracy", "macro_auc"),
    "diagnosis_meanpool": ("macro_auc",),
    "survival": ("c_index",),
    "survival_meanpool": ("c_index",),
    "vqa": ("accuracy", "accuracy_closed", "accuracy_open"),
}
SHORT = {"accuracy": "acc", "macro_auc": "AUC", "balanced_accuracy": "bal acc", "c_index": "C-index",
         "accuracy_closed": "closed acc", "accuracy_open": "open acc", "image_to_text_R@1": "i→t R@1",
         "text_to_image_R@1": "t→i R@1"}


def columns(results: dict) -> list[tuple[str, str, str]]:
    """(dataset, task, metric) headline columns present in ``results``, in a stable order."""
    seen: list[tuple[str, str, str]] = []
    for per_set in results.values():
        for ds, tasks in per_set.items():
            for task in tasks:
                for metric in HEADLINE.get(task, ()):
                    if (ds, task, metric) not in seen:
                        seen.append((ds, task, metric))
    order = {t: i for i, t in enumerate(HEADLINE)}
    return sorted(seen, key=lambda c: (c[0], order.get(c[1], 99)))


def _value(results: dict, model: str, col: tuple[str, str, str]) -> float | None:
    v = results.get(model, {}).get(col[0], {}).get(col[1], {}).get(col[2])
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _best(results: dict, col: tuple[str, str, str]) -> float | None:
    vals = [v for m in results if (v := _value(results, m, col)) is not None]
    return max(vals) if vals else None


def _cell(results: dict, model: str, col: tuple[str, str, str]) -> tuple[str, bool]:
    v = _value(results, model, col)
    if v is None:
        return "–", False
    text = f"{v:.3f}"
    ci = results[model][col[0]][col[1]].get(f"{col[2]}_ci95")
    if ci and all(c is not None and not math.isnan(c) for c in ci):
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text, v == _best(results, col)


def skipped_images(results: dict) -> dict[str, dict[str, Any]]:
    """Eval set -> its ``skipped`` record (unreadable images left out), from any model's results."""
    out: dict[str, dict[str, Any]] = {}
    for per_set in results.values():
        for ds, tasks in per_set.items():
            if "skipped" in tasks and ds not in out:
                out[ds] = tasks["skipped"]
    return out


def _header(col: tuple[str, str, str], marked: dict | None = None) -> str:
    mark = "†" if marked and col[0] in marked else ""
    return f"{col[0]}{mark} {col[1]} {SHORT.get(col[2], col[2])}"


def footnote(results: dict, limit: int = 20) -> str:
    """``† <set>: N of M images unreadable, left out for every model: id (reason), ...`` lines ('' when none)."""
    lines = []
    for ds, rec in skipped_images(results).items():
        samples = rec.get("samples", [])
        listed = ", ".join(f"{s['sample_id']} ({s['reason']})" for s in samples[:limit])
        more = f", and {len(samples) - limit} more (see results.json)" if len(samples) > limit else ""
        lines.append(f"† {ds}: {rec['count']} of {rec['of']} images unreadable, left out for every model: "
                     f"{listed}{more}")
    return "\n".join(lines) + ("\n" if lines else "")


def markdown_table(results: dict) -> str:
    """Rows = models, columns = dataset x task headline metrics; best per column in bold; skipped-image footnote."""
    cols, marked = columns(results), skipped_images(results)
    lines = ["| model | " + " | ".join(_header(c, marked) for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model in results:
        cells = []
        for c in cols:
            text, best = _cell(results, model, c)
            cells.append(f"**{text}**" if best else text)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    note = footnote(results)
    return "\n".join(lines) + "\n" + (f"\n{note}" if note else "")


def summary_text(results: dict) -> str:
    """The headline table as aligned plain text; ``*`` marks the best per column."""
    cols, marked = columns(results), skipped_images(results)
    rows = [["model"] + [_header(c, marked) for c in cols]]
    for model in results:
        row = [model]
        for c in cols:
            text, best = _cell(results, model, c)
            row.append(text + (" *" if best else ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n" + footnote(results, limit=5)


# Chart panels: (task, metric) in this order; a task not listed gets a panel for its first headline metric.
CHART = (("zeroshot", "accuracy"), ("linear", "accuracy"), ("knn", "accuracy"), ("retrieval", "image_to_text_R@1"),
         ("retrieval", "text_to_image_R@1"), ("diagnosis", "macro_auc"), ("diagnosis_meanpool", "macro_auc"),
         ("survival", "c_index"), ("survival_meanpool", "c_index"), ("vqa", "accuracy"))
CHART_MAX_PX = 1600  # figure width bound at any number of sets
_DPI = 100
_HEATMAP_BARS = 48  # more bars than this in a panel (sets x models): a heatmap instead


def _panels(results: dict) -> list[tuple[str, str, list[str]]]:
    """(task, metric, datasets) for every chart panel with at least one value."""
    out = []
    tasks = [t for per_set in results.values() for ts in per_set.values() for t in ts]
    known = list(CHART) + [(t, m) for t in dict.fromkeys(tasks) if t not in {c[0] for c in CHART}
                           for m in HEADLINE.get(t, ())[:1]]
    for task, metric in known:
        sets = sorted({ds for m in results for ds in results[m] if _value(results, m, (ds, task, metric)) is not None})
        if sets:
            out.append((task, metric, sets))
    return out


def _chance(results: dict, ds: str, task: str, metric: str, classes: dict[str, int]) -> float | None:
    """Chance level of ``metric``: stated by the task (``<metric>_chance``), 0.5 for AUC / C-index, 1/classes."""
    for per_set in results.values():
        c = per_set.get(ds, {}).get(task, {}).get(f"{metric}_chance")
        if c is not None:
            return float(c)
    if metric in ("macro_auc", "c_index"):
        return 0.5
    if metric in ("accuracy", "balanced_accuracy") and classes.get(ds):
        return 1.0 / classes[ds]
    return None


def _err(results: dict, model: str, col: tuple[str, str, str], v: float) -> tuple[float, float]:
    """(below, above) error-bar lengths: the 95% CI, else +- the std over folds, else none."""
    m = results.get(model, {}).get(col[0], {}).get(col[1], {})
    ci, sd = m.get(f"{col[2]}_ci95"), m.get(f"{col[2]}_std")
    if ci and all(c is not None and not math.isnan(c) for c in ci):
        return max(v - ci[0], 0.0), max(ci[1] - v, 0.0)
    if isinstance(sd, (int, float)) and not math.isnan(sd):
        return float(sd), float(sd)
    return 0.0, 0.0


def _bars(ax, results: dict, models: list[str], task: str, metric: str, sets: list[str], classes: dict,
          colors: list) -> None:
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(sets))
    for i, model in enumerate(models):
        cols = [(ds, task, metric) for ds in sets]
        vals = [_value(results, model, c) for c in cols]
        errs = np.array([_err(results, model, c, v) if v is not None else (0, 0) for c, v in zip(cols, vals)]).T
        ax.bar(x + (i - (len(models) - 1) / 2) * width, [v if v is not None else 0 for v in vals], width,
               yerr=errs if errs.any() else None, capsize=2, color=colors[i % len(colors)], label=model,
               error_kw={"elinewidth": 0.8})
    for j, ds in enumerate(sets):
        c = _chance(results, ds, task, metric, classes)
        if c is not None:
            ax.hlines(c, j - 0.45, j + 0.45, colors="k", linestyles="--", linewidth=1, label="_chance")
    ax.set_xticks(x, [ds if len(ds) <= 18 else ds[:17] + "…" for ds in sets], fontsize=8,
                  rotation=30 if len(sets) > 3 else 0, ha="right" if len(sets) > 3 else "center")
    ax.set_ylim(0, 1.05)


def _heatmap(ax, results: dict, models: list[str], task: str, metric: str, sets: list[str]) -> None:
    grid = np.array([[_value(results, m, (ds, task, metric)) or np.nan for ds in sets] for m in models], dtype=float)
    im = ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    if grid.size <= 240:
        for (r, c), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
    ax.set_yticks(range(len(models)), models, fontsize=7)
    step = max(1, len(sets) // 70)
    ax.set_xticks(range(0, len(sets), step), [sets[i][:14] for i in range(0, len(sets), step)], fontsize=6,
                  rotation=90)
    ax.figure.colorbar(im, ax=ax, fraction=0.03, pad=0.01)


def bar_chart(results: dict, path: Path, run_info: JSONDict | None = None) -> None:
    """Small multiples: one panel per (task, headline metric), datasets grouped, models as bars.

    Error bars are the 95% CIs (else +- std over folds) where results hold them; a
    dashed line over each group marks chance (0.5 for AUC and C-index, 1/classes
    for accuracy when ``run_info`` gives the set's classes, or the task's own
    ``<metric>_chance``). Panels with more than ``_HEATMAP_BARS`` bars become
    model x set heatmaps; the figure is never wider than ``CHART_MAX_PX``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    panels = _panels(results) or [("none", "none", [])]
    classes = {k: int(v.get("classes") or 0) for k, v in ((run_info or {}).get("sets") or {}).items()}
    heat = [len(sets) * len(models) > _HEATMAP_BARS for _, _, sets in panels]
    ncols = 1 if any(heat) else min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    widest = max(len(sets) for _, _, sets in panels) or 1
    if any(heat):  # one column of panels, as wide as the sets need
        width = min(CHART_MAX_PX / _DPI, max(6.0, 3.0 + 0.2 * widest))
    else:
        width = min(CHART_MAX_PX / _DPI, max(5.0, ncols * min(5.5, 1.5 + 0.35 * widest * max(1, len(models)) ** 0.5)))
    row_h = [max(2.6, 0.3 * len(models) + 1.6) if h else 3.0 for h in heat]
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, sum(row_h[::ncols]) + 0.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (task, metric, sets), h in zip(axes.flat, panels, heat):
        if not sets:
            ax.text(0.5, 0.5, "no results", ha="center")
        elif h:
            _heatmap(ax, results, models, task, metric, sets)
        else:
            _bars(ax, results, models, task, metric, sets, classes, colors)
        ax.set_title(f"{task} — {SHORT.get(metric, metric)}", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if not all(heat):
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i % len(colors)]) for i in range(len(models))]
        handles.append(plt.Line2D([], [], color="k", linestyle="--", linewidth=1))
        fig.legend(handles, models + ["chance"], loc="upper center", ncol=min(len(models) + 1, 6), fontsize=8,
                   frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94 if not all(heat) else 1))
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def results_json(results: dict) -> str:
    """``results`` as indented JSON (NaN written as null)."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return None if isinstance(v, float) and v != v else v

    return json.dumps(clean(results), indent=2)


def write_report(results: dict, out: str | Path, run_info: JSONDict | None = None) -> dict[str, Path]:
    """Write results.json, results.md, results.png (and eval_run.json with the run settings) into ``out``.

    Returns:
        Mapping kind -> written path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "chart": out / "results.png"}
    paths["json"].write_text(results_json(results) + "\n")
    paths["markdown"].write_text("# mmkd eval\n\nHeadline metrics (95% bootstrap CI); best per column in bold. "
                                 "Every number is in results.json.\n\n" + markdown_table(results))
    bar_chart(results, paths["chart"], run_info)
    if run_info is not None:
        paths["run"] = out / "eval_run.json"
        paths["run"].write_text(json.dumps(run_info, indent=2, default=str) + "\n")
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
