"""``run_demo``: the whole method end to end, in miniature, through the library calls the CLI makes.

corpus -> expert teachers (each on its private data) -> ``run_extract`` (all experts
into one store) -> ``mmkd store trust`` -> ``distill`` stage 1 -> from its checkpoint,
on the same budget, the students of :func:`~mmkd.demo.config.student_runs` (no KD,
``multi``, ``mmkd-clip``, trusted ``multi``, and with ``ablation`` five more) ->
``evaluate`` (zero-shot, linear probe, retrieval per modality; slide diagnosis,
survival, VQA) for every teacher and student -> the claims (:mod:`mmkd.demo.claims`)
-> ``summary.json`` / ``summary.md`` / ``summary.png``.

Layout of ``out``::

    corpus/train/{data.jsonl,images/}   distillation corpus (all modalities)
    corpus/eval/<modality>.yaml         held-out eval sets (mmkd eval spec files)
    corpus/tasks/*.yaml                 slide diagnosis, survival and VQA sets (mmkd.demo.tasks)
    experts/<name>/                     open_clip local-dir teachers
    pipelines.yaml                      declares the experts (loader: open_clip)
    store/                              one feature store, every expert
    runs/<student>/export               students (stage1, stage1-only, multi, ...)
    eval/results.{json,md,png}          mmkd eval's own report
    summary.{json,md,png}               the demo's table
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from mmkd.config import load_pipelines
from mmkd.demo.claims import paired_gain, zeroshot_correct
from mmkd.demo.config import ABLATION_RUNS, VIEWS_RUN, DemoConfig, needs_trust, student_runs
from mmkd.errors import DemoError
from mmkd.jsontypes import JSON, JSONDict
from mmkd.demo.corpus import make_batch, write_eval_set, write_jsonl_dataset
from mmkd.demo.experts import PREPROCESS_CFG, ExpertSpec, expert_job, teacher_spec
from mmkd.demo.report import summarize, write_summary
from mmkd.demo.students import student_job, warm_job
from mmkd.demo.tasks import task_summary, write_task_sets
from mmkd.eval.report import write_report
from mmkd.eval.rows import Results
from mmkd.eval.runner import EvalConfig, score
from mmkd.extract import ExtractJob, run_extract
from mmkd.store import FeatureStore
from mmkd.store.trust import compute_trust
from mmkd.teachers.tiny import write_pipelines

log = logging.getLogger(__name__)


class DemoOutExistsError(DemoError, FileExistsError):
    """The demo's --out folder holds a store from an earlier run."""


def build_corpus(out: Path, cfg: DemoConfig) -> JSONDict:
    """Write the distillation corpus and the per-modality eval sets; returns their paths."""
    batch = make_batch(cfg.modalities, cfg.corpus_per_class, cfg.seed, cfg.image_size, vague=cfg.vague)
    table = write_jsonl_dataset(out / "corpus" / "train", batch, prefix="train")
    evals = {m: write_eval_set(out / "corpus" / "eval", m, cfg.eval_per_class, cfg.seed + 1, cfg.image_size)
             for m in cfg.modalities}

    return {"train": str(table.parent), "train_rows": len(batch), "eval_sets": {m: str(p) for m, p in evals.items()},
            "task_sets": write_task_sets(out / "corpus" / "tasks", cfg)}


def _pool(cfg: DemoConfig, workers: int | None = None):
    """A pool of ``workers`` (default ``cfg.jobs``) fresh (spawned) processes for independent trainings.

    Tiny models use a second core poorly within one process (2 threads: 1.4x one
    thread), so two trainings side by side, one thread each, finish sooner than
    one after the other with two threads each.
    """
    return ProcessPoolExecutor(max_workers=workers or cfg.jobs, mp_context=multiprocessing.get_context("spawn"))


def _expert_workers(cfg: DemoConfig) -> int:
    """Processes the experts train in: ``cfg.jobs``, or all of them at once when they do not fill whole rounds.

    Three experts in two jobs would train two, then one alone with a core idle (2 rounds of
    one expert's time); all three side by side on the two cores take 1.5 rounds and give the
    same experts (each trains with its own seed and thread count, whatever runs beside it).
    """
    n = len(cfg.experts)
    return n if n % cfg.jobs else cfg.jobs


def _job_threads(cfg: DemoConfig) -> int:
    """torch threads of one pooled training: ``--threads``, else the cores shared among the jobs."""
    return cfg.threads or max(1, (os.cpu_count() or 1) // cfg.jobs)


Progress = Callable[[str], None]


def _finished(futures: dict[str, Any], what: str, progress: Progress | None) -> dict[str, Any]:
    """Each future's result by name, telling ``progress`` as each one finishes (in finishing order)."""
    names = {f: n for n, f in futures.items()}
    t0, done = time.perf_counter(), {}
    for k, f in enumerate(as_completed(names), 1):
        done[names[f]] = f.result()
        if progress is not None:
            progress(f"  {what} {names[f]} trained ({k}/{len(names)}, +{time.perf_counter() - t0:.0f}s)")
    return {n: done[n] for n in futures}


def build_experts(out: Path, cfg: DemoConfig, progress: Progress | None = None) -> JSONDict:
    """Train and save every expert (``cfg.jobs`` at a time), write ``pipelines.yaml`` declaring them."""
    specs = {name: ExpertSpec(name, tuple(mods), n_per_class=cfg.expert_per_class, steps=cfg.expert_steps,
                              batch_size=cfg.expert_batch_size, seed=cfg.seed * 100 + i)
             for i, (name, mods) in enumerate(cfg.experts.items())}
    with _pool(cfg, _expert_workers(cfg)) as pool:
        futures = {name: pool.submit(expert_job, spec, str(out / "experts" / name), tuple(cfg.modalities), cfg.seed,
                                     cfg.image_size, _job_threads(cfg)) for name, spec in specs.items()}
        info = _finished(futures, "expert", progress)
    for name, entry in info.items():
        log.info("expert %s quick zero-shot: %s", name, entry["quick_zeroshot"])
    pipelines = write_pipelines(out / "pipelines.yaml",
                                {name: teacher_spec(name, info[name]["folder"], spec) for name, spec in specs.items()})
    return {"pipelines": str(pipelines), "experts": info}


def extract_teachers(out: Path, cfg: DemoConfig, corpus: JSONDict, pipelines: str) -> JSONDict:
    """Every expert over the corpus into ``out/store`` (what ``mmkd extract`` runs)."""
    job = ExtractJob(data={"path": corpus["train"], "format": "jsonl", "fields": {"labels": ["modality", "label"]}},
                     teachers=list(cfg.experts), store=str(out / "store"), runner=cfg.runner, pipeline=pipelines,
                     batch_size=256, precision="fp32", workers=2, device="cpu", block_size=1024,
                     views=cfg.views or None, view_scale=tuple(cfg.view_scale) if cfg.views else None)
    summary = run_extract(job)
    return {"store": str(out / "store"), "wall_s": summary.wall_s, "teachers": list(cfg.experts)}


def _distill_settings(cfg: DemoConfig) -> dict[str, Any]:
    """The distill settings every student run of the demo shares."""
    return {"batch_size": cfg.batch_size, "lr": cfg.lr, "warmup_steps": cfg.warmup_steps, "seed": cfg.seed,
            "num_workers": cfg.num_workers, "fd_weight": cfg.fd_weight, "icl_weight": cfg.icl_weight}


def train_students(out: Path, cfg: DemoConfig, store: str, pool: ProcessPoolExecutor,
                   progress: Progress | None = None) -> JSONDict:
    """Stage 1, then from its checkpoint every :func:`student_runs` run, ``cfg.jobs`` at a time in ``pool``.

    Each run trains in a fresh (spawned) process that never imports a teacher, as
    on a real distillation machine, and reports whether it did.

    Returns:
        ``exports`` (run name -> export folder) and ``teachers_imported_by_distill``.

    Raises:
        RuntimeError: a run imported the teacher registry.
    """
    student = out / "student.json"
    student.write_text(json.dumps({"model_cfg": cfg.student, "preprocess_cfg": _preprocess()}, indent=2))
    runs = out / "runs"
    threads = _job_threads(cfg)
    base = _distill_settings(cfg)
    t0 = time.perf_counter()
    first = pool.submit(student_job, store, str(runs / "stage1"), str(student), base, 1, cfg.stage1_steps,
                        cfg.batch_size, cfg.threads or threads * cfg.jobs, {})
    # the pool's other processes start and import while stage 1 trains (it leaves most of a core idle:
    # tiny models use a second thread poorly), not after it, when every student waits for them
    warm = [pool.submit(warm_job) for _ in range(cfg.jobs - 1)]
    stage1, imported = first.result()
    if progress is not None:
        progress(f"  student stage1 trained (+{time.perf_counter() - t0:.0f}s)")
    exports, loaded = {"stage1": stage1}, {"stage1": imported, "pool warm-up": any(w.result() for w in warm)}
    futures = {}
    # the KD runs (which also read teacher features) first, the no-KD baseline last: the pool ends sooner
    runs_by_cost = sorted(student_runs(cfg).items(), key=lambda item: item[1].get("kd") is None)
    for name, settings in runs_by_cost:
        settings = dict(settings)
        kd = settings.pop("kd")
        futures[name] = pool.submit(student_job, store, str(runs / name), str(student), base, 2 if kd else 1,
                                    cfg.stage2_steps, cfg.stage2_batch_size or cfg.batch_size, threads,
                                    {"kd": kd, "init": str(runs / "stage1"), **settings})
    for name, (export, imported) in _finished(futures, "student", progress).items():
        exports[name], loaded[name] = export, imported
    exports = {"stage1": exports["stage1"], **{n: exports[n] for n in student_runs(cfg)}}  # the config's order
    bad = sorted(n for n, v in loaded.items() if v)
    if bad:
        raise RuntimeError(f"distill runs {bad} imported the teacher registry; the student must never see a teacher")
    return {"exports": exports, "teachers_imported_by_distill": False}


def score_trust(store: str, cfg: DemoConfig) -> JSONDict:
    """``mmkd store trust`` (pair-rank) of every expert over the corpus; coverage per teacher."""
    fs = FeatureStore.open(store)
    return {t: round(compute_trust(fs, t, "pair-rank", cfg.trust_threshold, seed=cfg.seed)["coverage"], 3)
            for t in cfg.experts}


def add_gains(summary: JSONDict, out: Path, cfg: DemoConfig, corpus: JSONDict, pipelines: str,
              exports: dict[str, str], trust: JSONDict) -> None:
    """Add ``kd_gain_over_no_kd`` per KD mode (and ``trusted_vs_valid``) to ``summary["claims"]``."""
    pcfg = load_pipelines(pipelines)
    correct = {n: zeroshot_correct(exports[n], corpus["eval_sets"], pcfg, out / "eval" / "cache")
               for n in exports if n != "stage1"}
    claims = summary["claims"]
    for kd in ("multi", "mmkd-clip"):
        if kd in claims:
            claims[kd]["kd_gain_over_no_kd"] = paired_gain(correct[kd], correct["stage1-only"], seed=cfg.seed)
    if "multi-trusted" in correct:
        claims["trusted_vs_valid"] = {
            "gain": paired_gain(correct["multi-trusted"], correct["multi"], seed=cfg.seed),
            "gain_over_no_kd": paired_gain(correct["multi-trusted"], correct["stage1-only"], seed=cfg.seed),
            "coverage": trust}
    if VIEWS_RUN in correct:  # the same budget, the same start: only the targets (and the crops) differ
        claims["views_vs_single_view"] = {
            "gain": paired_gain(correct[VIEWS_RUN], correct["mmkd-clip"], seed=cfg.seed),
            "gain_over_no_kd": paired_gain(correct[VIEWS_RUN], correct["stage1-only"], seed=cfg.seed),
            "views": cfg.views, "view_scale": list(cfg.view_scale)}
    if cfg.ablation:
        runs = student_runs(cfg)
        claims["ablation"] = {
            name: {"kd": runs[name]["kd"], "settings": {k: v for k, v in runs[name].items() if k != "kd"},
                   "mean_zeroshot_acc": float(np.mean([v.mean() for v in correct[name].values()])),
                   "gain_over_no_kd": paired_gain(correct[name], correct["stage1-only"], seed=cfg.seed),
                   "gain_over_" + runs[name]["kd"]: paired_gain(correct[name], correct[runs[name]["kd"]],
                                                                seed=cfg.seed)}
            for name in ABLATION_RUNS if name in correct}


def _preprocess() -> dict[str, Any]:
    return dict(PREPROCESS_CFG)


def eval_job(models: list[str], sets: list[str], out: str, pipelines: str, ecfg: EvalConfig,
             threads: int) -> tuple[Results, JSONDict]:
    """``mmkd eval``'s scores of some of the models (in a pool process, or in the demo's own)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return score(models, sets, out, pipelines=load_pipelines(pipelines), ecfg=ecfg)
    finally:
        torch.set_num_threads(before)


def evaluate_all(out: Path, cfg: DemoConfig, corpus: JSONDict, pipelines: str, exports: dict[str, str],
                 pool: ProcessPoolExecutor, progress: Progress | None = None) -> Results:
    """Zero-shot, linear probe, retrieval per modality, slide diagnosis / survival and VQA, for every model.

    The models are scored in ``cfg.jobs`` groups side by side (this process and ``jobs - 1``
    of ``pool``'s, one torch thread each: eval's tiny heads use a second thread poorly),
    sharing the feature cache, and their results merged into one ``mmkd eval`` report:
    each model's scores depend on it and the sets alone (:func:`mmkd.eval.runner.score`).

    Raises:
        DemoError: a model could not read an eval image (the paired claims need every image).
    """
    ecfg = EvalConfig(tasks=("zeroshot", "linear", "retrieval", "diagnosis", "survival", "vqa"),
                      resamples=cfg.eval_resamples, seed=cfg.seed, batch_size=256, device="cpu")
    models = list(cfg.experts) + list(exports.values())
    sets = list(corpus["eval_sets"].values()) + list(corpus.get("task_sets", {}).values())
    groups = [g for g in (models[i::cfg.jobs] for i in range(cfg.jobs)) if g]
    args = (sets, str(out / "eval"), pipelines, ecfg, 1 if len(groups) > 1 else _job_threads(cfg) * cfg.jobs)
    t0, parts = time.perf_counter(), []
    futures = [pool.submit(eval_job, g, *args) for g in groups[1:]]
    for k, group in enumerate(groups):
        parts.append(eval_job(group, *args) if k == 0 else futures[k - 1].result())
        if progress is not None:
            shown = ", ".join(Path(m).parent.name if os.sep in m else m for m in group)  # runs/<name>/export
            progress(f"  eval of {shown} done ({k + 1}/{len(groups)}, +{time.perf_counter() - t0:.0f}s)")
    return _merge_scores(out / "eval", groups, parts)


def _merge_scores(out: Path, groups: list[list[str]], parts: list[tuple[Results, JSONDict]]) -> Results:
    """One report (``results.*``, ``eval_run.json``) from the groups' scores, the models in their given order.

    ``groups[j]`` is every ``len(groups)``-th model from the ``j``-th: the interleave is undone.
    """
    names: list[list[str]] = []
    for group, (part, info) in zip(groups, parts):
        skipped = {name: s["skipped"] for name, s in info["sets"].items() if s["skipped"]}
        if skipped:
            raise DemoError(f"eval images unreadable (set: count) {skipped}; the demo's claims pair every image "
                            "across models: regenerate the demo in a fresh --out folder")
        if len(part) != len(group):
            raise DemoError(f"eval scored {len(part)} of the models {group}; every demo model needs results")
        names.append(list(part))  # a group's results are in its models' order
    n, total = len(groups), sum(len(g) for g in groups)
    order = [names[i % n][i // n] for i in range(total)]
    if len(set(order)) != len(order):
        raise DemoError(f"two demo models share a name in eval ({order}); every teacher and run needs its own")
    merged = {name: parts[i % n][0][name] for i, name in enumerate(order)}
    info = {**parts[0][1], "models": [groups[i % n][i // n] for i in range(total)]}
    write_report(merged, out, info)
    return merged


def run_demo(out: str | Path, quick: bool = False, seed: int = 0, runner: str | None = None,
             progress: Progress | None = None, **overrides: JSON) -> JSONDict:
    """Run the demo into ``out``; returns the summary (also written to ``out/summary.json``).

    Args:
        out: output folder (created; an existing demo there is overwritten piece by piece).
        quick: the small preset (about a third of the work).
        seed: seed of everything.
        runner: extract runner, ``ray`` or ``local`` (None: the preset's, ``local`` for ``quick``, else ``ray``).
        progress: called with one line per phase (start, end with its time) and per trained model.
        **overrides: any :class:`~mmkd.demo.config.DemoConfig` field.
    """
    cfg = DemoConfig.preset(quick, seed=seed, **({"runner": runner} if runner else {}), **overrides)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    out = Path(out)
    if (out / "store").exists():
        raise DemoOutExistsError(f"{out}/store exists from an earlier demo; pass a fresh --out folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    times: dict[str, float] = {}

    start = time.perf_counter()

    def say(line: str) -> None:
        log.info("demo: %s", line.strip())
        if progress is not None:
            progress(f"[{time.perf_counter() - start:6.0f}s] {line}")

    def timed(name: str, fn, *args, **kw):
        t0 = time.perf_counter()
        say(f"{name} ...")
        result = fn(*args, **kw)
        times[name] = round(time.perf_counter() - t0, 1)
        say(f"{name} done in {times[name]:.1f}s")
        return result

    corpus = timed("corpus", build_corpus, out, cfg)
    experts = timed("experts", build_experts, out, cfg, progress=say)
    store = timed("extract", extract_teachers, out, cfg, corpus, experts["pipelines"])
    trust = timed("trust", score_trust, store["store"], cfg) if needs_trust(cfg) else {}
    # one pool for the students and then eval: eval's side jobs start in processes that have imported torch
    # and open_clip already (~7 CPU seconds each); every student job has finished (and reported that it
    # imported no teacher) before an eval job, which loads teachers, reaches the pool
    with _pool(cfg) as pool:
        distilled = timed("distill", train_students, out, cfg, store["store"], pool, progress=say)
        exports = distilled["exports"]
        results = timed("eval", evaluate_all, out, cfg, corpus, experts["pipelines"], exports, pool, progress=say)
    summary = summarize(results, cfg, exports, experts["experts"])
    timed("claims", add_gains, summary, out, cfg, corpus, experts["pipelines"], exports, trust)

    summary["slide_and_vqa_tasks"] = task_summary(results, list(corpus["task_sets"]))
    summary["artefacts"] = {"corpus": corpus, "pipelines": experts["pipelines"], "store": store["store"],
                            "students": exports, "eval": str(out / "eval"), "summary": str(out / "summary.json")}
    summary["teachers_imported_by_distill"] = distilled["teachers_imported_by_distill"]
    summary["wall_s"] = {**times, "total": round(sum(times.values()), 1)}
    summary["output_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    write_summary(summary, out)
    return summary
