"""Eval sets: labelled image sets (zero-shot, linear probe, kNN) and image-caption sets (retrieval).

An eval set is a mapping, written under ``eval_sets:`` in pipelines.yaml or in a
standalone ``.yaml``/``.json`` file (``mmkd/eval/sets/*.yaml`` ship with mmkd)::

    samples: modality9.jsonl          # one JSON object per sample (or ...)
    data: my_dataset                  # ... any image-caption data `mmkd extract --data` takes:
                                      #     a `datasets:` name, a path, or a dataset spec mapping
    root: fixtures:modality-examples  # folder that `samples` image paths are relative to
    fields: {id: id, image: image, caption: caption, label: label, split: split}
    label_key: modality               # with `data:`: key in each sample's labels
    classes: [ct, mri, ...]           # label order; default: sorted distinct labels
    class_prompts: {ct: a CT scan}    # text put into the templates; default: class name
    templates: ["a {} image."]        # zero-shot prompts, several per class, averaged
    store: path/to/store              # optional: a feature store built over this set

Paths are relative to the file that declares them; ``fixtures:<rel>`` resolves
against ``$MMKD_FIXTURES`` (``mmkd --fixtures DIR``; default ``../shared/fixtures``
beside a source checkout). A set whose files are absent is refused up front with the
missing files named. Labels may be class names or integer indices into ``classes``;
``split`` (train/val/test) is optional. ``mmkd eval --data`` builds a set from any
image-caption data (:func:`eval_set_from_data`).

Other task sets (built by :mod:`mmkd.eval.tasksets`):

* ``task: diagnosis`` / ``task: survival`` -- slide tables over patch features
  (keys ``slides``, ``patches`` or ``store``, ``slide_key``, ``slide_field``,
  ``patient_field``, ``label_field``, ``classes``, ``time_field``, ``event_field``,
  ``folds``, ``mil``, ``memo_mb``): see :mod:`mmkd.eval.slides`.
* ``task: vqa`` -- question tables (``questions``, ``root``, ``fields``,
  ``closed_answers``, ``folds``, ``head``): see :mod:`mmkd.eval.vqa`.
* ``clip_benchmark: <folder>`` (optional ``split``), or the folder itself as the
  set name -- a LAION clip_benchmark webdataset folder: see :mod:`mmkd.eval.clip_benchmark`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mmkd.config import ConfigError, Pipelines, fixtures_root, read_yaml_mapping, resolve_path, section
from mmkd.data import DatasetError, open_dataset, resolve_data
from mmkd.eval.tasksets import build_task_set
from mmkd.eval.types import EvalItem, EvalSet  # noqa: F401  (EvalItem: re-exported, the item type of a set)
from mmkd.eval.zeroshot import DEFAULT_TEMPLATES
from mmkd.jsontypes import JSONDict

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "sets"
DEFAULT_FIELDS = {"id": "id", "image": "image", "caption": "caption", "label": "label", "split": "split"}
SPEC_KEYS = {"description", "samples", "data", "root", "fields", "label_key", "classes", "class_prompts",
             "templates", "store", "spec"}
SPLITS = ("train", "val", "test")


def _resolve(value: str, base: Path) -> Path:
    return resolve_path(None, value, base=base)


def builtin_sets() -> dict[str, Path]:
    """Eval sets shipped in ``mmkd/eval/sets`` (name -> spec file)."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def load_eval_set(name_or_path: str, pipelines: Pipelines | None = None, *, split: str | None = None) -> EvalSet:
    """Load an eval set by name (pipelines ``eval_sets:``, then the shipped sets) or spec-file path.

    Args:
        name_or_path: a set name, or a ``.yaml``/``.json`` spec file, or a ``.jsonl`` of samples.
        pipelines: the loaded pipelines mapping (for ``eval_sets:`` and ``datasets:``).
        split: the split of a clip_benchmark set (its spec's ``split``, default ``test``).

    Raises:
        ConfigError: unknown name (lists the known ones), or a malformed spec.
    """
    pipelines = Pipelines.of(pipelines)
    declared = section(pipelines, "eval_sets")
    if name_or_path in declared:
        spec = dict(declared[name_or_path] or {})
        base = resolve_path(pipelines, ".", section="eval_sets", entry=name_or_path)
        if "spec" in spec:
            ref = str(spec.pop("spec"))
            spec_path = builtin_sets()[ref] if ref in builtin_sets() else resolve_path(
                pipelines, ref, section="eval_sets", entry=name_or_path)
            return _from_spec_file(spec_path, pipelines, name=name_or_path, overrides=spec, split=split)
        return build_eval_set(name_or_path, spec, base, pipelines, split=split)
    if name_or_path in builtin_sets():
        return _from_spec_file(builtin_sets()[name_or_path], pipelines, name=name_or_path, split=split)
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".jsonl":
        return build_eval_set(path.stem, {"samples": str(path.resolve())}, path.parent, pipelines)
    if path.is_file():
        return _from_spec_file(path, pipelines, name=path.stem, split=split)
    if path.is_dir() and ((path / "classnames.txt").is_file() or (path / "dataset_type.txt").is_file()):
        return build_eval_set(path.name, {"clip_benchmark": str(path.resolve())}, path.parent, pipelines, split=split)
    known = sorted(set(declared) | set(builtin_sets()))
    raise ConfigError(f"eval set {name_or_path!r} is neither a declared eval set ({known}) nor an existing "
                      f"spec file (.yaml/.json/.jsonl); declare it under `eval_sets:` in pipelines.yaml")


def _from_spec_file(path: Path, cfg: dict, *, name: str, overrides: dict | None = None,
                    split: str | None = None) -> EvalSet:
    if not path.is_file():
        raise ConfigError(f"eval set spec {str(path)!r} not found")
    spec = read_yaml_mapping(path, "eval set spec")
    spec.update(overrides or {})
    return build_eval_set(name, spec, path.parent, cfg, source=str(path), split=split)


def build_eval_set(name: str, spec: JSONDict, base: Path, cfg: dict | None = None, *,
                   source: str = "", split: str | None = None) -> EvalSet:
    """Build an :class:`EvalSet` from a spec mapping; relative paths resolve against ``base``.

    A spec with ``task:`` (diagnosis, survival, vqa) or ``clip_benchmark:`` is built
    by :func:`mmkd.eval.tasksets.build_task_set` instead; ``split`` replaces a clip_benchmark spec's ``split``.
    """
    if split and "clip_benchmark" in spec:
        spec = {**spec, "split": split}
    if "task" in spec or "clip_benchmark" in spec:
        return build_task_set(name, spec, base, source=source)
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"eval set {name!r}: unknown keys {unknown}; valid keys: {sorted(SPEC_KEYS)}")
    if ("samples" in spec) == ("data" in spec):
        raise ConfigError(f"eval set {name!r} needs exactly one of `samples:` (a jsonl) or `data:` (image-caption "
                          f"data, as `mmkd extract --data` takes)")
    root = _resolve(str(spec["root"]), base) if spec.get("root") else None
    reader = None
    if "samples" in spec:
        samples_path = _resolve(str(spec["samples"]), base)
        raw = _read_jsonl(samples_path, name, {**DEFAULT_FIELDS, **(spec.get("fields") or {})})
        root = root or samples_path.parent
        source = source or str(samples_path)
    else:
        reader, raw = _read_dataset(spec, cfg or {}, name, base)
        source = source or str(spec["data"])
    classes = [str(c) for c in spec.get("classes") or sorted({str(r["label"]) for r in raw if r["label"] is not None})]
    prompts = spec.get("class_prompts") or {}
    if not isinstance(prompts, dict) or set(prompts) - set(classes):
        raise ConfigError(f"eval set {name!r}: `class_prompts` must map class names {classes} to text")
    items = [_item(r, classes, name) for r in raw]
    if not items:
        raise ConfigError(f"eval set {name!r} has no samples ({source})")
    with_split = sum(it.split is not None for it in items)
    if 0 < with_split < len(items):
        raise ConfigError(f"eval set {name!r}: {with_split} of {len(items)} samples have a `split`; give every "
                          "sample one (train / val / test) or none (the probes then cross-fit)")
    templates = [str(t) for t in spec.get("templates") or DEFAULT_TEMPLATES]
    if reader is None:
        _check_images(name, root, raw, source)
    return EvalSet(name=name, items=items, class_names=classes, prompt_names=[str(prompts.get(c, c)) for c in classes],
                   templates=templates, root=root, reader=reader, source=source,
                   store=_resolve(str(spec["store"]), base) if spec.get("store") else None)


def _missing_hint() -> str:
    return (f"fixtures: paths point into {str(fixtures_root())!r}; set MMKD_FIXTURES=DIR or pass "
            f"`mmkd --fixtures DIR eval ...` (or `mmkd eval --fixtures DIR`) to the folder holding them")


def _check_images(name: str, root: Path, raw: list[JSONDict], source: str) -> None:
    """Refuse a set whose image files are absent, naming them (a wrong root or fixtures folder)."""
    missing = [str(root / r["image"]) for r in raw if not (root / str(r["image"])).is_file()]
    if missing and len(missing) == len(raw):
        raise ConfigError(f"eval set {name!r} ({source}): none of its {len(raw)} image files exist under "
                          f"{str(root)!r} (e.g. {missing[0]!r}); {_missing_hint()}")
    if missing:
        log.warning("eval set %r: %d of %d image files absent (e.g. %s); they are skipped as unreadable",
                    name, len(missing), len(raw), missing[0])


def _read_jsonl(path: Path, name: str, fields: dict[str, str]) -> list[JSONDict]:
    if not path.is_file():
        raise ConfigError(f"eval set {name!r}: samples file {str(path)!r} not found; {_missing_hint()}")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{i}: not valid JSON ({e})") from e
        if fields["image"] not in rec:
            raise ConfigError(f"{path}:{i}: no image field {fields['image']!r}; map it with `fields: {{image: ...}}`")
        rows.append({k: rec.get(f) for k, f in fields.items()})
        rows[-1]["id"] = str(rows[-1]["id"] if rows[-1]["id"] is not None else rec[fields["image"]])
    return rows


def _read_dataset(spec: dict, cfg: dict, name: str, base: Path) -> tuple[Any, list[dict[str, Any]]]:
    ds = spec["data"]
    try:
        dataset = open_dataset(resolve_data(ds, cfg, base=base))
    except DatasetError as e:
        raise ConfigError(f"eval set {name!r}: cannot open data {ds!r}: {e}") from e
    key = spec.get("label_key")
    try:
        samples = list(dataset.samples())
    except DatasetError as e:
        raise ConfigError(f"eval set {name!r}: cannot read data {ds!r}: {e}") from e
    rows = []
    for s in samples:
        labels = s.labels or {}
        if key and key not in labels:
            raise ConfigError(f"eval set {name!r}: sample {s.sample_id!r} has no label {key!r} "
                              f"(its labels: {sorted(labels)})")
        rows.append({"id": s.sample_id, "image": s.image, "caption": s.caption,
                     "label": labels.get(key) if key else None, "split": labels.get("split")})
    return dataset, rows


def _item(r: JSONDict, classes: list[str], name: str) -> EvalItem:
    label = r.get("label")
    if label is not None:
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(classes):
            label_idx = label
        elif str(label) in classes:
            label_idx = classes.index(str(label))
        else:
            raise ConfigError(f"eval set {name!r}: sample {r['id']!r} has label {label!r}, not one of {classes}")
    else:
        label_idx = None
    split = r.get("split")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"eval set {name!r}: sample {r['id']!r} has split {split!r}; valid: {list(SPLITS)}")
    caption = r.get("caption")
    return EvalItem(str(r["id"]), str(r["image"]), str(caption) if caption else None, label_idx, split)


def eval_set_from_data(data: Any, pipelines: Pipelines | None = None, *, label_key: str | None = None,
                       name: str | None = None) -> EvalSet:
    """An eval set over any image-caption data ``mmkd extract --data`` takes (``mmkd eval --data``).

    Retrieval runs on its captions; zero-shot, linear probe and kNN too when
    ``label_key`` names a label every sample has (classes: the distinct values).

    Raises:
        ConfigError: the data cannot be opened, or a sample lacks ``label_key``.
    """
    if name is None:
        text = str(data.get("name") or data.get("path")) if isinstance(data, dict) else str(data)
        p = Path(text.rstrip("/"))
        name = p.parent.name if p.name in ("meta.jsonl", "metadata.jsonl", "data.jsonl") else (p.stem or p.name)
    spec: dict[str, Any] = {"data": data}
    if label_key:
        spec["label_key"] = label_key
    return build_eval_set(name, spec, Path.cwd(), pipelines or {}, source=str(data))
