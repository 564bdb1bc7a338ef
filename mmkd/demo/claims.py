"""What distillation adds, measured: paired bootstrap of a KD student against the no-KD student.

Per eval image, whether each model's zero-shot prediction is right is read from the
features ``mmkd eval`` cached (no model runs twice). The gain of model A over
model B is the mean over modalities of ``acc_A - acc_B``; its 95 % interval comes
from a paired bootstrap that resamples the eval images of each modality (the same
draw for both models), and the claim ``holds`` when the interval's low end is
above 0. ``--seeds N`` reports each claim's mean and worst case over the seeds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from mmkd.errors import DemoError
from mmkd.config import Pipelines
from mmkd.jsontypes import JSONDict
from mmkd.eval.features import FeatureCache, set_features
from mmkd.eval.runner import _Models
from mmkd.eval.sets import load_eval_set

log = logging.getLogger(__name__)


def zeroshot_correct(model: str, sets: dict[str, str], pipelines: Pipelines, cache_dir: str | Path,
                     device: str = "cpu") -> dict[str, np.ndarray]:
    """Per modality, a bool per eval image: the model's zero-shot prediction is right.

    Args:
        model: a student export folder or a teacher name (as given to ``mmkd eval``).
        sets: modality -> eval set spec file.
        pipelines: the loaded pipelines mapping (declares the teachers).
        cache_dir: the eval feature cache (``<eval out>/cache``), filled by the eval run.
        device: where to encode what the cache misses.
    """
    builder = _Models(pipelines, device)
    cache = FeatureCache(cache_dir)
    out = {}
    for mod, path in sets.items():
        evalset = load_eval_set(path, pipelines)
        feats = set_features(builder.for_set(model, evalset, None), evalset, need_classes=True, cache=cache)
        pred = np.argmax(np.asarray(feats.image) @ np.asarray(feats.classes).T, axis=1)
        labels = np.asarray(evalset.labels)
        if feats.kept is not None and len(feats.kept) != len(labels):
            raise DemoError(f"eval set {path}: {len(labels) - len(feats.kept)} image(s) unreadable under {model}; "
                             "a paired comparison needs every image (regenerate the demo's eval sets)")
        out[mod] = pred == labels
    return out


def paired_gain(a: dict[str, np.ndarray], b: dict[str, np.ndarray], resamples: int = 1000,
                seed: int = 0) -> JSONDict:
    """Mean over modalities of ``acc_a - acc_b``, with a paired percentile bootstrap 95 % interval.

    Args:
        a, b: modality -> per-image correctness of the two models (same images, same order).
        resamples: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        ``{"value", "ci95": [lo, hi], "holds": lo > 0}``.

    Raises:
        ValueError: the two models were scored on different modalities or image counts.
    """
    if set(a) != set(b) or any(len(a[m]) != len(b[m]) for m in a):
        raise DemoError(f"paired gain needs the same eval images for both models; got modalities {sorted(a)} vs "
                         f"{sorted(b)} with sizes {[len(a[m]) for m in sorted(a)]} vs {[len(b[m]) for m in sorted(b)]}")
    rng = np.random.default_rng(seed)
    diffs = {m: a[m].astype(np.float64) - b[m].astype(np.float64) for m in a}
    value = float(np.mean([d.mean() for d in diffs.values()]))
    boot = np.zeros(resamples)
    for d in diffs.values():
        idx = rng.integers(0, len(d), size=(resamples, len(d)))
        boot += d[idx].mean(axis=1)
    boot /= len(diffs)
    lo, hi = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
    return {"value": value, "ci95": [lo, hi], "holds": lo > 0}


def _gain_over_seeds(per: list[JSONDict]) -> JSONDict:
    """One gain (``{value, ci95, holds}`` per seed): its mean, worst value, worst CI low end, holds on every seed."""
    return {"mean": float(np.mean([p["value"] for p in per])), "worst": float(min(p["value"] for p in per)),
            "worst_ci95_lo": float(min(p["ci95"][0] for p in per)), "holds_every_seed": all(p["holds"] for p in per)}


def aggregate_seeds(summaries: list[JSONDict]) -> JSONDict:
    """Each claim's mean and worst case over seeds (booleans: share of seeds where it holds, and all)."""
    out: dict[str, Any] = {}
    for kd in ("multi", "mmkd-clip", "trusted_vs_valid", "best_student"):
        per = [s["claims"].get(kd) for s in summaries if s["claims"].get(kd)]
        if not per:
            continue
        agg: dict[str, Any] = {}
        for key in ("beats_every_teacher_on_mean", "reaches_90pct_of_best_expert_everywhere"):
            if key in per[0]:
                vals = [bool(p[key]) for p in per]
                agg[key] = {"share": sum(vals) / len(vals), "all": all(vals)}
        for key in ("kd_gain_over_no_kd", "gain", "gain_over_no_kd"):
            if key in per[0]:
                agg[key] = _gain_over_seeds([p[key] for p in per])
        out[kd] = agg
    names = sorted({n for s in summaries for n in s["claims"].get("ablation", {})})
    if names:
        out["ablation"] = {}
        for name in names:
            per = [s["claims"]["ablation"][name]["gain_over_no_kd"] for s in summaries
                   if name in s["claims"].get("ablation", {})]
            out["ablation"][name] = {"gain_over_no_kd": _gain_over_seeds(per)}
    return out


def gain_text(claims: JSONDict) -> str:
    """The gains as readable lines."""
    lines = []
    for kd in ("multi", "mmkd-clip"):
        g = (claims.get(kd) or {}).get("kd_gain_over_no_kd")
        if g:
            lines.append(f"student --kd {kd}: gain over no-KD student {g['value']:+.3f} mean zero-shot "
                         f"(95% CI {g['ci95'][0]:+.3f} .. {g['ci95'][1]:+.3f}; holds: {g['holds']})")
    t = claims.get("trusted_vs_valid")
    if t:
        g = t["gain"]
        lines.append(f"--kd multi, --teacher-mask trusted vs valid: {g['value']:+.3f} (95% CI {g['ci95'][0]:+.3f} .. "
                     f"{g['ci95'][1]:+.3f}; trust coverage {t['coverage']})")
        g = t.get("gain_over_no_kd")
        if g:
            lines.append(f"--kd multi --teacher-mask trusted: gain over no-KD student {g['value']:+.3f} "
                         f"(95% CI {g['ci95'][0]:+.3f} .. {g['ci95'][1]:+.3f}; holds: {g['holds']})")
    for name, a in (claims.get("ablation") or {}).items():
        g = a["gain_over_no_kd"]
        lines.append(f"ablation {name} ({a['kd']}, {a['settings']}): mean zero-shot {a['mean_zeroshot_acc']:.3f}, "
                     f"gain over no-KD {g['value']:+.3f} (95% CI {g['ci95'][0]:+.3f} .. {g['ci95'][1]:+.3f})")
    return "\n".join(lines) + ("\n" if lines else "")


__all__ = ["aggregate_seeds", "gain_text", "paired_gain", "zeroshot_correct"]
