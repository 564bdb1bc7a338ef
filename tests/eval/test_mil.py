"""Slide-level tasks: patient folds, C-index, Cox loss, ABMIL vs mean pooling, bag sources and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mmkd.config import ConfigError
from mmkd.eval.bags import BagError, BagSource, ClamBags, StoreBags
from mmkd.eval.cv import group_folds
from mmkd.eval.mil import MILConfig
from mmkd.eval.slide_tasks import run_diagnosis, run_survival
from mmkd.eval.slides import SlideSet, build_slide_set
from mmkd.eval.survival import SurvivalDataError, check_survival, concordance_index, cox_loss
from tests.eval.slide_data import planted_bags, write_clam, write_patch_store, write_slide_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class MemBags(BagSource):
    def __init__(self, bags: dict[str, np.ndarray]) -> None:
        super().__init__(0)
        self.bags, self.kind = bags, "memory"

    def available(self) -> set[str]:
        return set(self.bags)

    def _load(self, slide_id: str) -> np.ndarray:
        return self.bags[slide_id]


@pytest.mark.parametrize("folds,seed", [(2, 0), (5, 1), (7, 3)])
def test_group_folds_never_split_a_patient(folds, seed):
    rng = np.random.default_rng(seed)
    patients = [f"p{int(p)}" for p in rng.integers(0, 40, 200)]
    labels = rng.integers(0, 3, 200)
    fold = group_folds(patients, folds, labels=labels, seed=seed)
    for p in set(patients):
        assert len({int(f) for f, q in zip(fold, patients) if q == p}) == 1, p
    assert set(fold.tolist()) == set(range(folds))
    sizes = np.bincount(fold)
    assert sizes.max() - sizes.min() <= max(np.bincount(np.unique(patients, return_inverse=True)[1]))
    assert np.array_equal(fold, group_folds(patients, folds, labels=labels, seed=seed))  # fixed seed


def test_group_folds_refuses_fewer_patients_than_folds():
    with pytest.raises(ValueError, match="needs >= 5 distinct patients"):
        group_folds(["a", "a", "b"], 5)


def _brute_c_index(t, e, r):
    num = den = 0.0
    for i, j in itertools.permutations(range(len(t)), 2):
        if not e[i]:
            continue
        if t[i] < t[j] or (t[i] == t[j] and not e[j]):
            den += 1
            num += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
    return num / den


def _survival_sample(n: int, seed: int):
    rng = np.random.default_rng(seed)
    t = rng.integers(1, 12, n).astype(float)  # many tied times
    e = (rng.random(n) < 0.6).astype(int)  # censoring
    r = np.round(rng.standard_normal(n) - 0.1 * t, 1)  # tied risks
    return t, e, r


@pytest.mark.parametrize("seed", range(5))
def test_c_index_equals_brute_force_with_ties_and_censoring(seed):
    t, e, r = _survival_sample(60, seed)
    assert concordance_index(t, e, r) == pytest.approx(_brute_c_index(t, e, r), abs=1e-12)


def test_c_index_equals_lifelines():
    utils = pytest.importorskip("lifelines.utils", reason="lifelines (dev extra) not installed: "
                                "pip install -e .[dev] for the cross-check against an established survival library")
    for seed in range(5):
        t, e, r = _survival_sample(300, seed)
        # lifelines scores survival times (higher = longer life): pass -risk
        assert concordance_index(t, e, r) == pytest.approx(utils.concordance_index(t, -r, e), abs=1e-12)


def test_cox_loss_equals_breslow_partial_likelihood():
    t, e, r = _survival_sample(20, 7)
    ref = 0.0
    for i in np.flatnonzero(e):
        ref -= r[i] - np.log(np.exp(r[t >= t[i]]).sum())
    got = cox_loss(torch.tensor(r), torch.tensor(t), torch.tensor(e))
    assert float(got) == pytest.approx(ref / e.sum(), rel=1e-9)


def test_check_survival_names_bad_rows():
    with pytest.raises(SurvivalDataError, match=r"negative or missing time.*'b', -1\.0"):
        check_survival([1, -1, 3], [1, 0, 1], ["a", "b", "c"])
    with pytest.raises(SurvivalDataError, match=r"not in \{0, 1\}.*'c', 2\.0"):
        check_survival([1, 2, 3], [1, 0, 2], ["a", "b", "c"])


def test_patient_bootstrap_equals_slide_bootstrap_with_one_slide_per_patient():
    from mmkd.eval.metrics import bootstrap_ci
    from mmkd.eval.slide_tasks import patient_bootstrap

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 80)
    scores = rng.random((80, 3))
    ours = patient_bootstrap(y, scores, [f"p{i}" for i in range(80)], resamples=300, seed=4)
    ref = bootstrap_ci(y, scores, resamples=300, seed=4)
    assert ours == {f"{k}_ci95": v for k, v in ref.items()}
    # two identical slides per patient: resampling patients gives wider intervals than treating slides as independent
    y2, s2 = np.repeat(y, 2), np.repeat(scores, 2, axis=0)
    wide = patient_bootstrap(y2, s2, [f"p{i // 2}" for i in range(160)], resamples=300, seed=4)
    narrow = bootstrap_ci(y2, s2, resamples=300, seed=4)
    assert np.diff(wide["accuracy_ci95"])[0] > np.diff(narrow["accuracy"])[0]


def test_abmil_finds_a_planted_patch_that_mean_pooling_misses():
    bags, y = planted_bags(n=60, patches=200, dim=16, planted=2, strength=8.0)  # 1% of a bag decides
    ids = list(bags)
    sset = SlideSet(name="planted", task="diagnosis", slide_ids=ids, patients=[f"p{i // 2}" for i in range(60)],
                    source="memory", labels=y, class_names=["neg", "pos"], folds=3)
    res = run_diagnosis(MemBags(bags), sset, MILConfig(epochs=15, lr=2e-3), seed=0, resamples=200)
    abmil, mean = res["diagnosis"], res["diagnosis_meanpool"]
    assert abmil["macro_auc"] >= 0.95 and abmil["balanced_accuracy"] >= 0.9, abmil
    assert mean["macro_auc"] <= 0.85, mean
    assert abmil["macro_auc"] - mean["macro_auc"] >= 0.15
    assert len(abmil["macro_auc_folds"]) == 3 and abmil["macro_auc_ci95"][0] <= abmil["macro_auc"]
    assert {"macro_f1", "macro_f1_ci95", "balanced_accuracy_ci95"} <= set(abmil)


def test_survival_ranks_patients_by_planted_share():
    rng = np.random.default_rng(1)
    bags, time, event, patients = {}, [], [], []
    for i in range(48):
        share = rng.random()
        x = rng.standard_normal((120, 8)).astype(np.float32)
        x[: int(share * 30), 0] += 5.0
        bags[f"s{i}"] = x
        time.append(float(np.round(10 * (1.2 - share) + rng.random(), 2)))
        event.append(int(rng.random() < 0.8))
        patients.append(f"p{i}")
    sset = SlideSet(name="surv", task="survival", slide_ids=list(bags), patients=patients, source="memory",
                    time=np.array(time), event=np.array(event), folds=3)
    res = run_survival(MemBags(bags), sset, MILConfig(epochs=15, lr=1e-3, batch_bags=16), seed=0)
    assert res["survival"]["c_index"] >= 0.75, res["survival"]
    assert len(res["survival"]["c_index_folds"]) == 3 and res["survival"]["n_events"] == sum(event)
    assert 0.0 <= res["survival_meanpool"]["c_index"] <= 1.0


def test_clam_h5_pt_and_store_give_the_same_bags(tmp_path):
    bags, _ = planted_bags(n=5, patches=30, dim=8)
    sources = [ClamBags(write_clam(tmp_path / "pt", bags, "pt"))]
    if pytest.importorskip("h5py", reason="h5py needed for CLAM h5_files"):
        sources.append(ClamBags(write_clam(tmp_path / "h5", bags, "h5")))
    store = write_patch_store(tmp_path / "store", bags)
    sources.append(StoreBags(store, "biomedclip"))
    for src in sources:
        assert src.available() == set(bags)
        for s, x in bags.items():
            # the store keeps float16: compare at its precision
            np.testing.assert_allclose(src.load(s), x, rtol=1e-3, atol=2e-3)


def test_bad_bags_are_named(tmp_path):
    bags, _ = planted_bags(n=4, patches=20, dim=8)
    src = ClamBags(write_clam(tmp_path / "clam", bags))
    with pytest.raises(BagError, match=r"2 of 6 slides .* no patches, e.g. \['ghost-1', 'ghost-2'\]"):
        src.check(list(bags) + ["ghost-1", "ghost-2"])
    odd = {"a": np.zeros((3, 8), np.float32), "b": np.zeros((3, 6), np.float32)}
    src = ClamBags(write_clam(tmp_path / "odd", odd))
    src.load("a")
    with pytest.raises(BagError, match="slide 'b' has 6-d patch features, other slides 8-d"):
        src.load("b")
    with pytest.raises(BagError, match=r"1 of \d+ patches have no 'slide_id' label, e.g. \['stray-0'\]"):
        StoreBags(write_patch_store(tmp_path / "store", bags, unassigned=1), "biomedclip")


def test_slide_table_errors(tmp_path):
    slides = ["a", "b", "c", "d"]
    table = write_slide_table(tmp_path / "s.csv", slides, time=[1, -2, 3, 4], event=[1, 0, 1, 1],
                              patients=["p1", "p2", "p3", "p4"])
    spec = {"task": "survival", "slides": "s.csv", "patches": "feats", "folds": 2}
    with pytest.raises(ConfigError, match=r"negative or missing time, e.g. \[\('b', -2.0\)\]"):
        build_slide_set("x", spec, tmp_path)
    write_slide_table(table, slides, time=[1, 2, 3, 4], event=[1, 0, 3, 1], patients=["p1", "p2", "p3", "p4"])
    with pytest.raises(ConfigError, match=r"event indicator not in \{0, 1\}, e.g. \[\('c', 3.0\)\]"):
        build_slide_set("x", spec, tmp_path)
    write_slide_table(table, slides, time=[1, 2, 3, 4], event=[1, 0, 1, 1], patients=["p1", "p1", "p3", "p4"])
    with pytest.raises(ConfigError, match="patient 'p1' has slides with different"):
        build_slide_set("x", spec, tmp_path)
    write_slide_table(table, slides, labels=["t", "n", "t", "x"])
    with pytest.raises(ConfigError, match=r"labels \['x'\] are not among `classes`"):
        build_slide_set("x", {"task": "diagnosis", "slides": "s.csv", "patches": "f", "classes": ["n", "t"],
                              "folds": 2}, tmp_path)
    with pytest.raises(ConfigError, match="5-fold cross-validation by patient needs .* the table has 2"):
        build_slide_set("x", {"task": "diagnosis", "slides": "s.csv", "patches": "f"}, tmp_path)
    sset = build_slide_set("x", {"task": "diagnosis", "slides": "s.csv", "patches": "f", "folds": 2}, tmp_path)
    assert sset.patients == ["pat-000", "pat-000", "pat-001", "pat-001"]  # CLAM's case_id column
    assert sset.class_names == ["n", "t", "x"] and sset.labels.tolist() == [1, 0, 1, 2]


@pytest.mark.parametrize("kind", ["abmil", "meanpool"])
@pytest.mark.parametrize("separable", [True, False])
def test_padded_batch_step_has_the_bag_by_bag_gradient(kind, separable):
    """A mini-batch run as one padded, masked tensor (one forward, one backward) gives the gradient of the
    bag-by-bag path (separable: mean of per-bag terms; Cox: the two-pass scheme), with the same patch subsets;
    dropout 0, so nothing else is random. Tolerance: 1e-5 absolute, 1e-4 relative (float32 sums in another order)."""
    import torch

    from mmkd.eval.mil import MILConfig, _batch_step, _bag_tensor, _two_pass_step, build_head
    from mmkd.eval.survival import cox_loss

    rng = np.random.default_rng(0)
    bags = [rng.standard_normal((int(rng.integers(3, 40)), 8)).astype(np.float32) for _ in range(6)]
    labels = torch.tensor(rng.integers(0, 2, 6))
    times, events = torch.tensor(rng.random(6)), torch.tensor([True, False, True, True, False, True])

    def loss(out, b):
        b = list(b)
        return torch.nn.functional.cross_entropy(out, labels[b]) if separable else cox_loss(out[:, 0], times[b],
                                                                                                 events[b])
    cfg = MILConfig(hidden=16, dropout=0.0, max_patches=25)
    torch.random.default_generator.manual_seed(0)
    model = build_head(kind, 8, 2 if separable else 1, cfg)
    batch, seeds, dev = [4, 0, 5, 2], np.array([11, 12, 13, 14]), torch.device("cpu")
    load = bags.__getitem__
    assert _batch_step(model, load, batch, seeds, loss, dev, cfg, separable)
    batched = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    if separable:
        for b, s in zip(batch, seeds):
            x = _bag_tensor(load, b, dev, cfg.max_patches, np.random.default_rng(int(s)))
            (loss(model(x)[None], [b]) / len(batch)).backward()
    else:
        _two_pass_step(model, load, batch, seeds, loss, dev, cfg.max_patches)
    for n, p in model.named_parameters():
        assert torch.allclose(batched[n], p.grad, atol=1e-5, rtol=1e-4), n
    assert any(float(g.abs().max()) > 1e-3 for g in batched.values())
    # over the patch budget: the step is left to the streamed path
    assert not _batch_step(model, load, batch, seeds, loss, dev, MILConfig(batch_patches=8), separable)
