"""Paired bootstrap of the KD gain and the seed aggregate, on planted numbers."""

from __future__ import annotations

import numpy as np
import pytest

from mmkd.demo.claims import aggregate_seeds, paired_gain


def test_paired_gain_value_and_interval():
    rng = np.random.default_rng(0)
    base = {m: rng.random(400) < 0.6 for m in ("a", "b")}
    better = {m: base[m] | (rng.random(400) < 0.3) for m in base}
    g = paired_gain(better, base, resamples=500, seed=1)
    expect = np.mean([better[m].mean() - base[m].mean() for m in base])
    assert g["value"] == pytest.approx(expect)
    assert 0 < g["ci95"][0] < g["value"] < g["ci95"][1] and g["holds"]
    same = paired_gain(base, base, resamples=100)
    assert same == {"value": 0.0, "ci95": [0.0, 0.0], "holds": False}


def test_paired_gain_noise_does_not_hold():
    rng = np.random.default_rng(3)
    a = {"m": rng.random(60) < 0.5}
    b = {"m": rng.random(60) < 0.5}
    g = paired_gain(a, b, resamples=1000)
    assert g["ci95"][0] < g["value"] < g["ci95"][1] and g["ci95"][0] < 0 < g["ci95"][1] and not g["holds"]


def test_paired_gain_refuses_unpaired():
    with pytest.raises(ValueError, match="same eval images"):
        paired_gain({"m": np.ones(3, bool)}, {"m": np.ones(4, bool)})


def test_aggregate_reports_mean_and_worst():
    def run(v, lo, beats):
        return {"claims": {"multi": {"beats_every_teacher_on_mean": beats, "reaches_90pct_of_best_expert_everywhere": True,
                                     "kd_gain_over_no_kd": {"value": v, "ci95": [lo, v + 0.1], "holds": lo > 0}}}}

    agg = aggregate_seeds([run(0.1, 0.02, True), run(0.04, -0.01, False)])["multi"]
    assert agg["beats_every_teacher_on_mean"] == {"share": 0.5, "all": False}
    assert agg["kd_gain_over_no_kd"]["mean"] == pytest.approx(0.07)
    assert agg["kd_gain_over_no_kd"]["worst"] == pytest.approx(0.04)
    assert agg["kd_gain_over_no_kd"]["worst_ci95_lo"] == pytest.approx(-0.01)
    assert agg["kd_gain_over_no_kd"]["holds_every_seed"] is False


def test_aggregate_reports_each_ablation_run_over_seeds():
    def run(v, lo):
        g = {"value": v, "ci95": [lo, v + 0.1], "holds": lo > 0}
        return {"claims": {"ablation": {"multi-drop": {"kd": "multi", "settings": {"teacher_drop": 0.5},
                                                       "mean_zeroshot_acc": 0.8, "gain_over_no_kd": g}}}}

    agg = aggregate_seeds([run(0.2, 0.1), run(0.05, -0.02)])["ablation"]["multi-drop"]["gain_over_no_kd"]
    assert agg["mean"] == pytest.approx(0.125) and agg["worst"] == pytest.approx(0.05)
    assert agg["worst_ci95_lo"] == pytest.approx(-0.02) and agg["holds_every_seed"] is False


def test_aggregate_and_text_report_the_view_matched_student():
    from mmkd.demo.claims import gain_text

    def run(v, lo):
        g = {"value": v, "ci95": [lo, v + 0.1], "holds": lo > 0}
        return {"claims": {"views_vs_single_view": {"gain": g, "gain_over_no_kd": {**g, "value": v + 0.2},
                                                    "views": 4, "view_scale": [0.35, 1.0]}}}

    runs = [run(0.03, 0.01), run(-0.01, -0.04)]
    agg = aggregate_seeds(runs)["views_vs_single_view"]
    assert agg["gain"]["mean"] == pytest.approx(0.01) and agg["gain"]["worst"] == pytest.approx(-0.01)
    assert agg["gain"]["worst_ci95_lo"] == pytest.approx(-0.04) and agg["gain"]["holds_every_seed"] is False
    assert agg["gain_over_no_kd"]["mean"] == pytest.approx(0.21)
    text = gain_text(runs[0]["claims"])
    assert "--views (4 views, crop scale [0.35, 1.0]) vs single-view mmkd-clip: +0.030" in text
    assert "95% CI +0.010 .. +0.130; holds: True" in text
