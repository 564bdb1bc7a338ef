"""LAION clip_benchmark interop: its webdataset eval folders as eval sets, and its ``build`` CSV as an output.

A clip_benchmark folder (github:LAION-AI/CLIP_benchmark, ``build_wds_dataset``)::

    <dir>/classnames.txt                          # one class name per line (classification)
    <dir>/zeroshot_classification_templates.txt   # one template per line, "{c}" = class name
    <dir>/dataset_type.txt                        # optional: classification (default) or retrieval
    <dir>/<split>/nshards.txt                     # number of shards
    <dir>/<split>/0.tar, 1.tar, ...               # <key>.webp|png|jpg|jpeg + <key>.cls (label)
                                                  #   or + <key>.txt (captions, one per line)

``mmkd eval --set <dir>`` (or a spec ``clip_benchmark: <dir>`` with optional
``split: test``) evaluates it unchanged: classification folders get zero-shot,
linear probe and kNN, retrieval folders Recall@k (each caption line is a caption of
its image). ``mmkd eval --format csv`` writes ``results.csv`` with the columns
``clip_benchmark build`` writes (metrics, dataset, model, pretrained, task, language,
model_fullname) for the tasks clip_benchmark runs (zero-shot classification, linear
probe, retrieval), under its metric and dataset names (``wds/<set>``), so rows of both
tools join; ``--split`` picks the folder's split (default ``test``).
"""

from __future__ import annotations

import csv
import json
import logging
import tarfile
from pathlib import Path

from mmkd.config import ConfigError, resolve_path
from mmkd.eval.rows import ClipBenchmarkRow
from mmkd.eval.types import EvalItem, EvalSet
from mmkd.jsontypes import JSONDict

log = logging.getLogger(__name__)

CB_KEYS = {"clip_benchmark", "split", "description", "store", "class_prompts"}
IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")


class TarMembers:
    """Random access to members of local tar shards: ``<shard>.tar::<member>`` -> bytes (offsets indexed once)."""

    def __init__(self, shards: list[Path]) -> None:
        self.shards = shards
        self.offsets: dict[str, tuple[Path, int, int]] = {}
        self.groups: dict[str, dict[str, str]] = {}  # "<shard>::<key>" -> {ext: ref}
        for shard in shards:
            with tarfile.open(shard) as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    ref = f"{shard.name}::{m.name}"
                    self.offsets[ref] = (shard, m.offset_data, m.size)
                    base = m.name.rsplit("/", 1)[-1]
                    key, _, ext = base.partition(".")
                    prefix = m.name[: len(m.name) - len(base)]
                    self.groups.setdefault(f"{shard.name}::{prefix}{key}", {})[ext.lower()] = ref

    def read(self, ref: str) -> bytes:
        shard, offset, size = self.offsets[ref]
        with shard.open("rb") as f:
            f.seek(offset)
            return f.read(size)

    def read_image_bytes(self, ref: str) -> bytes:
        """Encoded image bytes of member ``ref`` (the :class:`~mmkd.eval.sets.EvalSet` reader interface)."""
        return self.read(ref)

    def fingerprint(self) -> str:
        return json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in self.shards])


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _shards(root: Path, split: str, name: str) -> list[Path]:
    nshards = root / split / "nshards.txt"
    if not nshards.is_file():
        raise ConfigError(f"eval set {name!r}: {str(nshards)!r} not found; a clip_benchmark folder holds "
                          f"<split>/nshards.txt and <split>/0.tar ...; pick the split with `split:`")
    n = int(nshards.read_text().strip())
    shards = [root / split / f"{i}.tar" for i in range(n)]
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise ConfigError(f"eval set {name!r}: nshards.txt says {n} shards but {len(missing)} are absent, "
                          f"e.g. {missing[:3]}")
    return shards


def build_clip_benchmark_set(name: str, spec: JSONDict, base: Path) -> EvalSet:
    """An :class:`~mmkd.eval.sets.EvalSet` over a clip_benchmark webdataset folder.

    Raises:
        ConfigError: unknown keys, missing shards / class names, a multilabel set,
            or a sample without an image, label or caption (named).
    """
    unknown = sorted(set(spec) - CB_KEYS)
    if unknown:
        raise ConfigError(f"eval set {name!r}: unknown keys {unknown} for a clip_benchmark set; valid: {sorted(CB_KEYS)}")
    root = resolve_path(None, str(spec["clip_benchmark"]), base=base)
    kind = _lines(root / "dataset_type.txt")[0].lower() if (root / "dataset_type.txt").is_file() else "classification"
    if kind not in ("classification", "retrieval"):
        raise ConfigError(f"eval set {name!r}: clip_benchmark dataset type {kind!r} is not supported by mmkd eval "
                          "(classification and retrieval are)")
    reader = TarMembers(_shards(root, str(spec.get("split", "test")), name))
    classes, templates = [], []
    if kind == "classification":
        if not (root / "classnames.txt").is_file():
            raise ConfigError(f"eval set {name!r}: {str(root / 'classnames.txt')!r} not found")
        classes = _lines(root / "classnames.txt")
        tfile = root / "zeroshot_classification_templates.txt"
        templates = [t.replace("{c}", "{}") for t in _lines(tfile)] if tfile.is_file() else []
    items = []
    for key, members in sorted(reader.groups.items()):
        image = next((members[e] for e in IMAGE_EXTS if e in members), None)
        if image is None:
            raise ConfigError(f"eval set {name!r}: sample {key!r} has no image ({'/'.join(IMAGE_EXTS)}); "
                              f"it has {sorted(members)}")
        if kind == "classification":
            if "cls" not in members:
                raise ConfigError(f"eval set {name!r}: sample {key!r} has no .cls label")
            label = int(reader.read(members["cls"]).decode().strip())
            if not 0 <= label < len(classes):
                raise ConfigError(f"eval set {name!r}: sample {key!r} has label {label}, outside the "
                                  f"{len(classes)} classes of classnames.txt")
            items.append(EvalItem(key, image, None, label))
        else:
            if "txt" not in members:
                raise ConfigError(f"eval set {name!r}: retrieval sample {key!r} has no .txt captions")
            for j, cap in enumerate(reader.read(members["txt"]).decode().splitlines()):
                if cap.strip():
                    items.append(EvalItem(f"{key}#{j}", image, cap.strip()))
    if not items:
        raise ConfigError(f"eval set {name!r}: no samples in the shards of {str(root)!r}")
    prompts = spec.get("class_prompts") or {}
    out = EvalSet(name=name, benchmark_name=f"wds/{name}", items=items, class_names=classes, prompt_names=[str(prompts.get(c, c)) for c in classes],
                  reader=reader, source=str(root), store=resolve_path(None, str(spec["store"]), base=base)
                  if spec.get("store") else None)
    if templates:
        out.templates = templates
    return out


def write_clip_benchmark_csv(rows: list[ClipBenchmarkRow], path: str | Path) -> Path:
    """Write ``rows`` to ``path`` as ``clip_benchmark build`` does (a header of every field, ``csv.DictWriter``)."""
    dicts = [r.to_dict() for r in rows]
    fields: list[str] = []
    for r in dicts:
        fields += [k for k in r if k not in fields]
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(dicts)
    log.info("wrote %s (%d rows)", path, len(dicts))
    return path
