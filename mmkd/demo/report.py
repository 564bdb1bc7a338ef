"""The demo's summary: per model its role, KD mode and per-modality accuracies; the claims checked."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from mmkd.demo.claims import gain_text
from mmkd.demo.config import DemoConfig, student_runs
from mmkd.eval.rows import Results
from mmkd.jsontypes import JSONDict

log = logging.getLogger(__name__)


def _metric(results: dict, model: str, dataset: str, task: str, key: str) -> float:
    value = results.get(model, {}).get(dataset, {}).get(task, {}).get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


def summarize(results: Results, cfg: DemoConfig, exports: dict[str, str],
              experts: JSONDict) -> JSONDict:
    """Build ``summary.json`` from ``mmkd eval`` results.

    Args:
        results: ``{model: {dataset: {task: {metric: value}}}}`` from :func:`mmkd.eval.evaluate`.
        cfg: the run's settings.
        exports: student run name -> export folder (results name students by run name).
        experts: expert name -> info (``modalities``).
    """
    models: dict[str, Any] = {}
    roles = {name: ("teacher", None) for name in experts}
    kd_of = {"stage1": None, **{name: run["kd"] for name, run in student_runs(cfg).items()}}
    roles.update({run: ("student", kd_of[run]) for run in exports})
    for name, (role, kd) in roles.items():
        zs = {m: _metric(results, name, m, "zeroshot", "accuracy") for m in cfg.modalities}
        entry: dict[str, Any] = {"role": role}
        if role == "student":
            entry["kd"] = kd
            entry["stages"] = "1" if kd is None else "1+2"
            entry["steps"] = cfg.stage1_steps + (cfg.stage2_steps if name != "stage1" else 0)
        else:
            entry["modalities"] = experts[name]["modalities"]
        entry["mean_zeroshot_acc"] = sum(zs.values()) / len(zs)
        entry["zeroshot_acc"] = zs
        entry["linear_probe_acc"] = {m: _metric(results, name, m, "linear", "accuracy") for m in cfg.modalities}
        entry["retrieval_i2t_R@1"] = {m: _metric(results, name, m, "retrieval", "image_to_text_R@1")
                                      for m in cfg.modalities}
        models[name] = entry
    return {"models": models, "modalities": list(cfg.modalities), "claims": check_claims(models, cfg.modalities),
            "config": cfg.to_dict()}


def check_claims(models: JSONDict, modalities: list[str] | tuple[str, ...]) -> JSONDict:
    """The issue's claims, each with the numbers behind it (nothing here is tuned to pass)."""
    teachers = {k: v for k, v in models.items() if v["role"] == "teacher"}
    best_teacher = max(v["mean_zeroshot_acc"] for v in teachers.values())
    best_per_mod = {m: max(v["zeroshot_acc"][m] for v in teachers.values()) for m in modalities}
    out: dict[str, Any] = {"best_teacher_mean_zeroshot_acc": best_teacher, "best_expert_per_modality": best_per_mod}

    def against_experts(s: JSONDict) -> JSONDict:
        """Claims (a) and (b) of one student: beats every teacher's mean; >= 90 % of the best expert everywhere."""
        ratio = {m: s["zeroshot_acc"][m] / best_per_mod[m] if best_per_mod[m] > 0 else math.nan for m in modalities}
        return {"beats_every_teacher_on_mean": s["mean_zeroshot_acc"] > best_teacher, "ratio_to_best_expert": ratio,
                "reaches_90pct_of_best_expert_everywhere": all(r >= 0.9 for r in ratio.values())}

    for kd in ("multi", "mmkd-clip"):
        s = models.get(kd)
        if s is None:
            continue
        out[kd] = {**against_experts(s),
                   "beats_stage1_only_baseline": s["mean_zeroshot_acc"] > models["stage1-only"]["mean_zeroshot_acc"]}
    distilled = {k: v for k, v in models.items() if v["role"] == "student" and v.get("kd")}
    if distilled:  # claims (a) and (b) as the issue words them: of the best distilled student
        name = max(distilled, key=lambda k: distilled[k]["mean_zeroshot_acc"])
        out["best_student"] = {"name": name, "mean_zeroshot_acc": distilled[name]["mean_zeroshot_acc"],
                               **against_experts(distilled[name])}
    return out


def table_markdown(summary: JSONDict) -> str:
    """Zero-shot accuracy per modality, mean, linear-probe mean and retrieval mean, one row per model."""
    mods = summary["modalities"]
    head = ["model", "role", "kd", *mods, "mean zero-shot", "mean linear", "mean i2t R@1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["models"].items():
        lin = list(m["linear_probe_acc"].values())
        ret = list(m["retrieval_i2t_R@1"].values())
        row = [name, m["role"], str(m.get("kd") or "-"), *(f"{m['zeroshot_acc'][x]:.3f}" for x in mods),
               f"{m['mean_zeroshot_acc']:.3f}", f"{sum(lin) / len(lin):.3f}", f"{sum(ret) / len(ret):.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def claims_text(claims: JSONDict) -> str:
    """The claims as readable lines."""
    lines = [f"best teacher mean zero-shot: {claims['best_teacher_mean_zeroshot_acc']:.3f}"]
    for kd in ("multi", "mmkd-clip"):
        if kd in claims:
            c = claims[kd]
            worst = min(c["ratio_to_best_expert"].values())
            lines.append(f"student --kd {kd}: beats every teacher on mean: {c['beats_every_teacher_on_mean']}; "
                         f">= 90% of best expert on every modality: {c['reaches_90pct_of_best_expert_everywhere']} "
                         f"(worst ratio {worst:.2f}); beats stage-1-only: {c['beats_stage1_only_baseline']}")
    b = claims.get("best_student")
    if b:
        worst = min(b["ratio_to_best_expert"], key=b["ratio_to_best_expert"].get)
        lines.append(f"best distilled student {b['name']} ({b['mean_zeroshot_acc']:.3f}): beats every teacher on mean: "
                     f"{b['beats_every_teacher_on_mean']}; >= 90% of best expert on every modality: "
                     f"{b['reaches_90pct_of_best_expert_everywhere']} (worst: {worst} "
                     f"{b['ratio_to_best_expert'][worst]:.2f})")
    return "\n".join(lines) + "\n"


def bar_chart(summary: JSONDict, path: Path) -> Path:
    """Grouped bars: zero-shot accuracy per modality (and the mean) for every model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*summary["modalities"], "mean"]
    names = list(summary["models"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(groups), 4.2))
    for i, name in enumerate(names):
        m = summary["models"][name]
        vals = [m["zeroshot_acc"][g] for g in summary["modalities"]] + [m["mean_zeroshot_acc"]]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, vals, width, label=f"{name} ({m['role']})", hatch="" if m["role"] == "student" else "//",
               alpha=0.9)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("zero-shot accuracy")
    ax.set_ylim(0, 1.0)
    ax.axhline(1 / 3, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("mmkd demo: experts vs distilled students (synthetic modalities)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_summary(summary: JSONDict, out: Path) -> None:
    """``summary.json``, ``summary.md`` (table + claims) and ``summary.png`` under ``out``."""
    out = Path(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))

    text = table_markdown(summary) + "\n" + claims_text(summary["claims"]) + gain_text(summary["claims"])
    (out / "summary.md").write_text(text)
    bar_chart(summary, out / "summary.png")
