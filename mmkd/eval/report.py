"""Eval outputs: results.json (every number), results.md (headline table, best per column bold),
results.png (grouped bar chart) and a plain-text summary for the terminal.

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

log = logging.getLogger(__name__)

# The number each task is summarised by in the table and chart (results.json has them all).
HEADLINE = {
    "zeroshot": ("accuracy", "macro_auc"),
    "linear": ("accuracy", "macro_auc"),
    "knn": ("accuracy",),
    "retrieval": ("image_to_text_R@1", "text_to_image_R@1"),
}
SHORT = {"accuracy": "acc", "macro_auc": "AUC", "image_to_text_R@1": "i→t R@1", "text_to_image_R@1": "t→i R@1"}


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


def bar_chart(results: dict, path: Path) -> None:
    """Grouped bars: one group per headline column, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols, models = columns(results), list(results)
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(cols) * max(1, len(models)) ** 0.5 + 2), 4.5))
    x = np.arange(len(cols))
    for i, model in enumerate(models):
        vals = [_value(results, model, c) for c in cols]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, [v if v is not None else 0 for v in vals], width,
               label=model)
    ax.set_xticks(x, ["\n".join(_header(c).split(" ", 1)) for c in cols], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("mmkd eval")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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


def write_report(results: dict, out: str | Path, run_info: dict[str, Any] | None = None) -> dict[str, Path]:
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
    bar_chart(results, paths["chart"])
    if run_info is not None:
        paths["run"] = out / "eval_run.json"
        paths["run"].write_text(json.dumps(run_info, indent=2, default=str) + "\n")
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
