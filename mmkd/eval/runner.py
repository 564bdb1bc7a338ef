"""Run every (model, eval set, task) and write the report: the one library call behind ``mmkd eval``."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmkd.config import ConfigError, Pipelines, merge_entry, resolve_path, section
from mmkd.errors import MMKDError
from mmkd.eval.clip_benchmark import write_clip_benchmark_csv
from mmkd.eval.encoders import Encoder, StoreEncoder, StudentEncoder, TeacherEncoder
from mmkd.eval.features import FeatureCache, SetFeatures, set_features
from mmkd.eval.linear_probe import ProbeConfig, evaluate_linear_probe
from mmkd.eval.report import write_report
from mmkd.eval.retrieval import evaluate_knn, evaluate_retrieval
from mmkd.eval.rows import Metrics, Results, clip_benchmark_rows, result_rows
from mmkd.eval.sets import EvalSet, eval_set_from_data, load_eval_set
from mmkd.eval.splits import TaskNotApplicable
from mmkd.eval.tasksets import check_task_sets, run_task_set
from mmkd.eval.zeroshot import evaluate_zeroshot
from mmkd.jsontypes import JSONDict
from mmkd.store import FeatureStore
from mmkd.teachers import TeacherError
from mmkd.data.images import BadSample
from mmkd.eval.encoders import EncoderError
from mmkd.store.content import has_hashes, recorded_hashes, sha256_of

log = logging.getLogger(__name__)

TASKS = ("zeroshot", "linear", "retrieval", "knn", "diagnosis", "survival", "vqa")


class EvalError(MMKDError, RuntimeError):
    """Nothing could be evaluated, or the request is contradictory."""


@dataclass
class EvalConfig:
    """Settings of one eval run (also readable from a pipelines ``eval:`` job entry).

    Attributes:
        tasks: which of :data:`TASKS` to run (each only where the set allows it).
        resamples: bootstrap resamples for the CIs (0: no CIs).
        seed: bootstrap and split seed.
        knn_k: neighbours for kNN classification.
        probe: linear-probe settings.
        batch_size: images / texts per forward pass.
        device: torch device (default: cuda when available).
        cache_dir: feature cache folder (default ``<out>/cache``).
        stores: eval-set name -> feature store built over it (teachers are read from it).
        progress: show progress bars.
        strict: an unreadable eval image is an error; by default it is skipped, and
            every model is evaluated on the items all of them could read (the skipped
            ones are listed in results.json and under the table of results.md).
        split: the split of clip_benchmark sets (default: each spec's, else ``test``).
    """

    tasks: tuple[str, ...] = TASKS
    resamples: int = 1000
    seed: int = 0
    knn_k: int = 20
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    batch_size: int = 32
    device: str | None = None
    cache_dir: str | None = None
    stores: dict[str, str] = field(default_factory=dict)
    progress: bool = False
    strict: bool = False
    split: str | None = None

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ConfigError(f"unknown eval tasks {bad or list(self.tasks)}; valid: {list(TASKS)} or 'all'")


def parse_tasks(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``all`` / ``None`` -> every task; ``zeroshot,knn`` or a list -> those."""
    if value is None or value == "all" or value == ["all"] or value == ("all",):
        return TASKS
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    out = tuple(t.strip() for t in items if t.strip())
    return TASKS if "all" in out else out


JOB_KEYS = ("models", "sets", "data", "label", "tasks", "out", "resamples", "seed", "knn_k", "batch_size", "device",
            "cache_dir", "stores", "probe", "strict", "split")
_RUN_ONLY = ("models", "sets", "data", "label", "tasks", "out")


@dataclass
class EvalPlan:
    """One resolved ``mmkd eval`` run: what to evaluate on what, where, with which settings."""

    models: list[str]
    sets: list[str | EvalSet]
    out: str
    config: EvalConfig


def plan_eval(pipelines: Pipelines, run: str | None, flags: JSONDict) -> EvalPlan:
    """Merge a named ``eval:`` entry with command-line flags (:func:`mmkd.config.merge_entry`) into a plan.

    ``flags`` uses the entry's keys; list values (``models``, ``sets``, ``data``)
    given on the command line replace the entry's, ``stores`` add to them. Each
    ``data`` item (anything ``mmkd extract --data`` takes) becomes an eval set over
    that data (:func:`mmkd.eval.sets.eval_set_from_data`), labelled by ``label``.

    Raises:
        ConfigError: unknown run or key, no ``out``, or data that cannot be opened.
    """
    given = {k: (v or None) if isinstance(v, (list, tuple, dict)) else v for k, v in flags.items()}
    cli_stores = given.pop("stores", None) or {}
    entry = merge_entry(pipelines, "eval", run, given, allowed=JOB_KEYS, path_keys=("out", "cache_dir"), what="eval run")
    if run is not None and entry.get("stores"):
        entry["stores"] = {k: str(resolve_path(pipelines, v, section="eval", entry=run)) for k, v in entry["stores"].items()}
    entry["stores"] = {**(entry.get("stores") or {}), **cli_stores}
    if "probe" in entry and isinstance(entry["probe"], dict):
        entry["probe"] = ProbeConfig(**{k: tuple(v) if k == "l2_grid" else v for k, v in entry["probe"].items()})
    if not entry.get("out"):
        raise ConfigError("eval: give --out DIR (or a --run whose entry has `out:`)")
    data_sets = []
    for value in entry.get("data") or []:
        if run is not None and "data" not in given and isinstance(value, str) and value not in section(pipelines, "datasets"):
            value = str(resolve_path(pipelines, value, section="eval", entry=run))
        data_sets.append(eval_set_from_data(value, pipelines, label_key=entry.get("label")))
    settings = {k: v for k, v in entry.items() if k not in _RUN_ONLY}
    ecfg = EvalConfig(tasks=parse_tasks(entry.get("tasks")), **settings)
    return EvalPlan(models=list(entry.get("models") or []), sets=list(entry.get("sets") or []) + data_sets,
                    out=str(entry["out"]), config=ecfg)


class _Models:
    """Builds each model once per run; picks the store encoder where a set's store holds the teacher."""

    def __init__(self, pipelines: Pipelines, device: str | None) -> None:
        self.pipelines, self.device = pipelines, device
        self._built: dict[str, Encoder] = {}
        self._checked: set[tuple[str, str]] = set()  # (store, eval set) whose images were checked

    def base(self, model: str) -> Encoder:
        if model not in self._built:
            path = Path(model)
            if (path / "open_clip_config.json").is_file():
                self._built[model] = StudentEncoder(path, self.device)
            elif path.exists():
                raise EvalError(f"model {model!r} is a path but not a student export (no open_clip_config.json)")
            else:
                try:
                    self._built[model] = TeacherEncoder(model, self.pipelines, self.device)
                except TeacherError as e:
                    raise EvalError(f"model {model!r} is neither a student export folder (with "
                                    f"open_clip_config.json) nor a usable teacher: {e}") from e
        return self._built[model]

    def pretrained(self, model: str) -> str:
        """What clip_benchmark's ``--pretrained`` names for ``model``: a student's export folder, a teacher's weights."""
        enc = self.base(model)
        return enc.spec.weights if isinstance(enc, TeacherEncoder) else model

    def for_set(self, model: str, evalset: EvalSet, store: str | None) -> Encoder:
        enc = self.base(model)
        if store and isinstance(enc, TeacherEncoder):
            fs = FeatureStore.open(store)
            if enc.name in fs.teachers:
                log.info("%s on %s: features from store %s", enc.name, evalset.name, store)
                if (store, evalset.name) not in self._checked:
                    check_store_images(fs, evalset)
                    self._checked.add((store, evalset.name))
                return StoreEncoder(fs, enc.name, prompt_encoder=enc)
        return enc


def check_store_images(store: Any, evalset: EvalSet) -> None:
    """Refuse a store built over other images than the ones ``evalset`` scores (ids and captions may agree).

    Raises:
        EncoderError: an image's bytes differ from the ones the store recorded (sample, both hashes named).
    """
    if not has_hashes(store):
        log.warning("store %s records no image hashes (made before extract recorded them): its images are not "
                    "checked against eval set %s", store.path, evalset.name)
        return
    try:
        rows = np.asarray(store.rows(evalset.sample_ids), dtype=np.int64)
    except KeyError:
        return  # StoreEncoder names the samples the store lacks
    for item, recorded in zip(evalset.items, recorded_hashes(store, rows)):
        if recorded is None:
            continue
        try:
            now = sha256_of(evalset.read_image_bytes(item))
        except (OSError, ValueError, BadSample):
            continue  # an unreadable image is skipped and reported by the feature pass
        if now != recorded:
            raise EncoderError(f"store {store.path} was built over other images than eval set {evalset.name!r}: "
                               f"sample {item.sample_id!r} has sha256 {now}, the store recorded {recorded}; "
                               "extract a store over this set's images, or drop --store")


def _labels_report(results: dict, name: str, fn, *args, **kwargs) -> None:
    try:
        results[name] = fn(*args, **kwargs)
    except TaskNotApplicable as e:
        log.warning("skipping %s: %s", name, e)


def run_tasks(feats: SetFeatures, evalset: EvalSet, ecfg: EvalConfig) -> dict[str, Metrics]:
    """Every requested task this set supports, on precomputed features."""
    out: dict[str, dict[str, Any]] = {}
    boot = {"resamples": ecfg.resamples, "seed": ecfg.seed}
    if evalset.labelled:
        y, k = evalset.labels, len(evalset.class_names)
        if "zeroshot" in ecfg.tasks:
            out["zeroshot"] = evaluate_zeroshot(feats.image, y, feats.classes, logit_scale=feats.logit_scale, **boot)
        if "linear" in ecfg.tasks:
            probe = replace(ecfg.probe, seed=ecfg.seed)
            _labels_report(out, "linear", evaluate_linear_probe, feats.image, y, k, splits=evalset.splits,
                           cfg=probe, **boot)
        if "knn" in ecfg.tasks:
            _labels_report(out, "knn", evaluate_knn, feats.image, y, k, splits=evalset.splits, k=ecfg.knn_k, **boot)
    if evalset.captioned and "retrieval" in ecfg.tasks:
        keys = [it.image for it in evalset.items]
        _labels_report(out, "retrieval", evaluate_retrieval, feats.image, feats.text, keys)
    return out


def evaluate(models: list[str], datasets: list[str | EvalSet], out: str | Path, *, pipelines: Pipelines | None = None,
             ecfg: EvalConfig | None = None, csv: str | Path | None = None) -> Results:
    """Evaluate models on eval sets and write ``results.json``, ``results.md`` and ``results.png`` to ``out``.

    Args:
        models: student export folders and/or teacher names.
        datasets: eval-set names or spec paths (see :mod:`mmkd.eval.sets`), or built
            :class:`EvalSet` objects (``mmkd eval --data``: :func:`mmkd.eval.sets.eval_set_from_data`).
        out: output folder.
        pipelines: the loaded pipelines mapping.
        ecfg: run settings.
        csv: also write the clip_benchmark ``build`` rows here (:mod:`mmkd.eval.rows`).

    Returns:
        ``{model: {dataset: {task: {metric: value}}}}``.

    Raises:
        EvalError: no models / sets, or no task applied to any set.
    """
    run = _score(models, datasets, out, pipelines, ecfg)
    write_report(run.results, out, run.run_info)
    if csv is not None:
        pretrained = {name: run.models.pretrained(model) for model, name in zip(models, run.names)}
        write_clip_benchmark_csv(clip_benchmark_rows(result_rows(run.results), pretrained,
                                                     run.bench_names), csv)
    return run.results


def score(models: list[str], datasets: list[str | EvalSet], out: str | Path, *, pipelines: Pipelines | None = None,
          ecfg: EvalConfig | None = None) -> tuple[Results, JSONDict]:
    """What :func:`evaluate` computes, without writing the report: ``(results, run_info)``.

    ``run_info`` is what ``eval_run.json`` records; the feature cache under ``out`` is used
    and filled as by :func:`evaluate`. Each model's results depend on that model and the
    sets only (every task is seeded from ``ecfg.seed``), so models scored in separate
    calls (or processes) and merged give what one call gives, as long as every model
    read every image (``run_info["sets"][name]["skipped"]`` is 0).
    """
    run = _score(models, datasets, out, pipelines, ecfg)
    return run.results, run.run_info


@dataclass
class _Scored:
    results: Results
    run_info: JSONDict
    models: _Models
    names: list[str]
    bench_names: dict[str, str]


def _score(models: list[str], datasets: list[str | EvalSet], out: str | Path, pipelines: Pipelines | None,
           ecfg: EvalConfig | None) -> _Scored:
    pipelines, ecfg = pipelines or {}, ecfg or EvalConfig()
    if not models or not datasets:
        raise EvalError(f"need at least one --model and one --set or --data; got models={models} sets={datasets}")
    out = Path(out)
    cache = FeatureCache(ecfg.cache_dir or out / "cache")
    sets = [d if isinstance(d, EvalSet) else load_eval_set(d, pipelines, split=ecfg.split) for d in datasets]
    bench_names = {s.name: s.benchmark_name for s in sets if getattr(s, "benchmark_name", "")}  # task sets have none
    if ecfg.split and not bench_names:
        raise EvalError(f"--split {ecfg.split} chooses the split of a clip_benchmark set, and none of the sets "
                        f"{[s.name for s in sets]} is one; drop --split")
    datasets = [s.name if isinstance(d, EvalSet) else d for d, s in zip(datasets, sets)]
    stray = sorted(set(ecfg.stores) - {s.name for s in sets})
    if stray:
        raise EvalError(f"stores given for {stray}, which are not among the eval sets {[s.name for s in sets]}; "
                        "write --store <set name>=<store path>")
    check_task_sets(sets, models)
    builder = _Models(pipelines, ecfg.device)
    names = [builder.base(m).name for m in models]
    names = [n if names.count(n) == 1 else m for n, m in zip(names, models)]  # two exports named alike
    computed: dict[str, dict[str, SetFeatures]] = {s.name: {} for s in sets}
    results: Results = {}
    for model, name in zip(models, names):
        for evalset in sets:
            store = ecfg.stores.get(evalset.name) or (str(evalset.store) if evalset.store else None)
            enc = builder.for_set(model, evalset, store)
            if getattr(evalset, "task", None):  # slide / VQA set: its own task (mmkd.eval.tasksets)
                if tasks := run_task_set(enc, evalset, ecfg, cache):
                    results.setdefault(name, {})[evalset.name] = tasks
                continue
            need_classes = evalset.labelled and "zeroshot" in ecfg.tasks
            need_text = evalset.captioned and "retrieval" in ecfg.tasks
            if not (evalset.labelled or need_text):
                log.warning("eval set %s supports none of the tasks %s", evalset.name, list(ecfg.tasks))
                continue
            computed[evalset.name][name] = set_features(
                enc, evalset, need_text=need_text, need_classes=need_classes, cache=cache,
                batch_size=ecfg.batch_size, progress=ecfg.progress, strict=ecfg.strict)
    skipped_by_set: dict[str, list[dict[str, Any]]] = {}
    for evalset in sets:
        keep, skipped = _common_items(evalset, computed[evalset.name])
        if skipped:
            skipped_by_set[evalset.name] = skipped
        for name, feats in computed[evalset.name].items():
            sub_feats, sub_set = _restrict(feats, evalset, keep)
            tasks = run_tasks(sub_feats, sub_set, ecfg)
            if tasks:
                if skipped:
                    tasks["skipped"] = {"count": len(skipped), "of": len(evalset.items), "samples": skipped}
                results.setdefault(name, {})[evalset.name] = tasks
    if not results:
        raise EvalError(f"no task in {list(ecfg.tasks)} applies to the eval sets {datasets}: retrieval needs "
                        "captions, zero-shot / linear / knn need labels (probes >= 2 samples per class)")
    run_info = {"models": models, "datasets": datasets, "config": asdict(ecfg),
                "sets": {s.name: {"source": s.source, "fingerprint": s.fingerprint(), "n": len(s.items),
                                  "skipped": len(skipped_by_set.get(s.name, [])),
                                  "classes": len(getattr(s, "class_names", None) or [])} for s in sets}}
    return _Scored(results, run_info, builder, names, bench_names)


def _common_items(evalset: EvalSet, feats: dict[str, SetFeatures]) -> tuple[np.ndarray | None,
                                                                             list[dict[str, Any]]]:
    """Items every model could read (None: all), and the skipped ones, so all models see the same items."""
    n = len(evalset.items)
    ok = np.ones(n, bool)
    skipped: dict[str, dict[str, Any]] = {}
    for f in feats.values():
        if f.kept is not None:
            mask = np.zeros(n, bool)
            mask[f.kept] = True
            ok &= mask
        for s in f.skipped:
            skipped.setdefault(s["sample_id"], s)
    if ok.all():
        return None, []
    if not ok.any():
        raise EvalError(f"eval set {evalset.name!r}: no image could be read by every model "
                        f"({len(skipped)} unreadable); see the warnings above")
    return np.flatnonzero(ok), [skipped[it.sample_id] for it in evalset.items if it.sample_id in skipped]


def _restrict(feats: SetFeatures, evalset: EvalSet, keep: np.ndarray | None) -> tuple[SetFeatures, EvalSet]:
    """``feats`` and ``evalset`` cut down to the items ``keep`` (unchanged when None)."""
    if keep is None:
        return feats, evalset
    rows = keep if feats.kept is None else np.searchsorted(feats.kept, keep)
    sub = replace(feats, image=feats.image[rows], text=None if feats.text is None else feats.text[keep],
                  kept=None, skipped=[])
    return sub, replace(evalset, items=[evalset.items[i] for i in keep])
