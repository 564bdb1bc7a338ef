"""Slide-level eval sets: cancer diagnosis (MIL classification) and survival (MIL + Cox), cross-validated by patient.

A slide set is an eval-set spec with ``task: diagnosis`` or ``task: survival``::

    task: diagnosis                  # or survival
    slides: slides.csv               # one row per slide (.csv / .tsv / .jsonl / .parquet)
    patches: features/{model}        # a CLAM folder (h5_files/ or pt_files/) or a folder of
                                     #   <slide_id>/ patch-image folders; {model} -> the model's name
    store: patches_store             # ... or a feature store whose rows are patches (teachers in it)
    slide_key: slide_id              # with store: the index label naming a patch's slide
    slide_field: slide_id            # columns of the slide table
    patient_field: patient_id        #   default patient_id, else CLAM's case_id
    label_field: label               # diagnosis
    classes: [normal, tumor]         # diagnosis label order; default: sorted distinct labels
    time_field: time                 # survival: per patient (equal on all of its slides)
    event_field: event               #   1 = event observed, 0 = censored
    folds: 5                         # k-fold CV; a patient is never in two folds
    mil: {epochs: 20, lr: 2.0e-4, hidden: 128, max_patches: null, batch_bags: null}
    memo_mb: 1024                    # keep bags in memory up to this size (0: stream from disk)

Diagnosis trains a gated-attention ABMIL head and a mean-pooling baseline per fold
on the slides' frozen features and reports out-of-fold balanced accuracy, macro AUC
and macro F1 with bootstrap CIs (``diagnosis``, ``diagnosis_meanpool``). Survival
pools each patient's slides into one bag, trains both heads with the Cox partial
likelihood and reports Harrell's C-index per fold, mean and std (``survival``,
``survival_meanpool``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmkd.config import ConfigError, resolve_path
from mmkd.eval.bags import BagError, BagSource, ClamBags, ImageBags, StoreBags
from mmkd.eval.encoders import Encoder
from mmkd.eval.features import FeatureCache
from mmkd.eval.mil import MILConfig
from mmkd.eval.survival import SurvivalDataError, check_survival
from mmkd.eval.tables import column, read_rows
from mmkd.jsontypes import JSON, JSONDict

log = logging.getLogger(__name__)

SLIDE_TASKS = ("diagnosis", "survival")
SLIDE_KEYS = {"task", "description", "slides", "patches", "store", "slide_key", "slide_field", "patient_field",
              "label_field", "classes", "time_field", "event_field", "folds", "mil", "memo_mb"}


@dataclass
class SlideSet:
    """A loaded slide-level eval set (build with :func:`build_slide_set`)."""

    name: str
    task: str
    slide_ids: list[str]
    patients: list[str]
    source: str
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    time: np.ndarray | None = None
    event: np.ndarray | None = None
    patches: str | None = None
    store: Path | None = None
    slide_key: str = "slide_id"
    folds: int = 5
    mil: MILConfig = field(default_factory=MILConfig)
    memo_bytes: int = 1 << 30

    labelled = False  # not a zero-shot / probe set
    captioned = False

    @property
    def items(self) -> list[str]:
        return self.slide_ids

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.task, self.slide_ids, self.patients, self.class_names, self.patches,
                                       None if self.labels is None else self.labels.tolist(),
                                       None if self.time is None else self.time.tolist(),
                                       None if self.event is None else self.event.tolist()]).encode())
        return h.hexdigest()[:16]


def _mil_config(name: str, raw: JSON) -> MILConfig:
    raw = raw or {}
    valid = {f.name for f in fields(MILConfig)} - {"folds", "device"}
    if not isinstance(raw, dict) or set(raw) - valid:
        raise ConfigError(f"eval set {name!r}: `mil:` keys must be among {sorted(valid)}; got {raw!r}")
    return MILConfig(**raw)


def build_slide_set(name: str, spec: JSONDict, base: Path) -> SlideSet:
    """A :class:`SlideSet` from a spec mapping; relative paths resolve against ``base``.

    Raises:
        ConfigError: unknown keys, a missing column, labels outside ``classes``,
            survival rows with a negative time / event not in {0, 1}, a patient whose
            slides disagree on time or event, or neither ``patches`` nor ``store``.
    """
    unknown = sorted(set(spec) - SLIDE_KEYS)
    if unknown:
        raise ConfigError(f"eval set {name!r}: unknown keys {unknown} for a slide set; valid: {sorted(SLIDE_KEYS)}")
    task = spec.get("task")
    if task not in SLIDE_TASKS or not spec.get("slides"):
        raise ConfigError(f"eval set {name!r}: a slide set needs `task:` one of {list(SLIDE_TASKS)} and `slides:`")
    if bool(spec.get("patches")) == bool(spec.get("store")):
        raise ConfigError(f"eval set {name!r}: give exactly one of `patches:` (a CLAM features folder or a folder "
                          "of per-slide patch-image folders) and `store:` (a feature store of patches)")
    table = resolve_path(None, str(spec["slides"]), base=base)
    what = f"eval set {name!r}"
    rows = read_rows(table, what)
    cols = set(rows[0])
    patient_field = spec.get("patient_field") or ("patient_id" if "patient_id" in cols or "case_id" not in cols
                                                  else "case_id")
    slides = [str(s) for s in column(rows, spec.get("slide_field", "slide_id"), what, table)]
    dup = sorted({s for s in slides if slides.count(s) > 1}) if len(set(slides)) < len(slides) else []
    if dup:
        raise ConfigError(f"{what}: slides {dup[:5]} appear more than once in {str(table)!r}")
    patients = [str(p) for p in column(rows, patient_field, what, table)]
    out = SlideSet(name=name, task=task, slide_ids=slides, patients=patients, source=str(table),
                   slide_key=str(spec.get("slide_key", "slide_id")), folds=int(spec.get("folds", 5)),
                   mil=_mil_config(name, spec.get("mil")), memo_bytes=int(float(spec.get("memo_mb", 1024)) * 2**20))
    if spec.get("patches"):
        text = str(spec["patches"])
        out.patches = text if "{model}" in text and Path(text).is_absolute() else (
            str(base / text) if "{model}" in text else str(resolve_path(None, text, base=base)))
    else:
        out.store = resolve_path(None, str(spec["store"]), base=base)
    if out.folds < 2 or len(set(patients)) < out.folds:
        raise ConfigError(f"{what}: {out.folds}-fold cross-validation by patient needs folds >= 2 and at least "
                          f"{out.folds} patients; the table has {len(set(patients))}. Lower `folds:`")
    if task == "diagnosis":
        raw = [str(v) for v in column(rows, spec.get("label_field", "label"), what, table)]
        classes = [str(c) for c in spec.get("classes") or sorted(set(raw))]
        bad = sorted(set(raw) - set(classes))
        if bad:
            raise ConfigError(f"{what}: labels {bad} are not among `classes` {classes}")
        out.class_names, out.labels = classes, np.array([classes.index(v) for v in raw], dtype=np.int64)
    else:
        _survival_columns(out, rows, spec, table)
    return out


def _survival_columns(out: SlideSet, rows: list[dict], spec: Mapping[str, Any], table: Path) -> None:
    what = f"eval set {out.name!r}"
    try:
        t, e = check_survival([_num(v) for v in column(rows, spec.get("time_field", "time"), what, table)],
                              [_num(v) for v in column(rows, spec.get("event_field", "event"), what, table)],
                              out.slide_ids, what=f"{what} ({table.name})")
    except SurvivalDataError as err:
        raise ConfigError(str(err)) from err
    first: dict[str, tuple[float, int]] = {}
    for p, ti, ei, s in zip(out.patients, t.tolist(), e.tolist(), out.slide_ids):
        if first.setdefault(p, (ti, ei)) != (ti, ei):
            raise ConfigError(f"{what}: patient {p!r} has slides with different (time, event): {first[p]} and "
                              f"{(ti, ei)} (slide {s!r}); survival is per patient, give every slide the same values")
    out.time, out.event = t, e


def _num(v: JSON) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def bag_source(sset: SlideSet, encoder: Encoder, cache: FeatureCache | None, batch_size: int = 32) -> BagSource:
    """Where ``encoder``'s patch features of ``sset`` come from.

    Raises:
        BagError: the patches path is absent, or the model has no features in the set's store.
    """
    if sset.patches:
        path = Path(sset.patches.format(model=encoder.name))
        if ClamBags.is_clam(path):
            return ClamBags(path, sset.memo_bytes)
        if path.is_dir():
            return ImageBags(path, encoder, cache, sset.name, batch_size, sset.memo_bytes)
        raise BagError(f"eval set {sset.name!r}: patches {str(path)!r} for model {encoder.name!r} is neither a CLAM "
                       "features folder (h5_files/ or pt_files/) nor a folder of per-slide patch-image folders")
    if hasattr(encoder, "lookup_images") and hasattr(encoder, "store"):
        return StoreBags(encoder.store, encoder.teacher, sset.slide_key, sset.memo_bytes)
    raise BagError(f"eval set {sset.name!r}: model {encoder.name!r} has no features in the patch store "
                   f"{str(sset.store)!r}; evaluate a teacher the store holds, or give `patches:` images to embed")


def check_models(sset: SlideSet, models: list[str]) -> None:
    """Refuse one fixed CLAM folder for several models: its features are one extractor's, not each model's.

    Raises:
        ConfigError: several models and a ``patches`` CLAM folder without ``{model}``.
    """
    if sset.patches and "{model}" not in sset.patches and len(models) > 1 and ClamBags.is_clam(Path(sset.patches)):
        raise ConfigError(f"eval set {sset.name!r}: CLAM folder {sset.patches!r} holds one extractor's features, "
                          f"but {len(models)} models are evaluated; write `patches: .../{{model}}` with one folder "
                          "per model, or evaluate one model")
