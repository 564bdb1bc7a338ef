"""Teacher parity: does mmkd embed like the teacher's own (upstream) code?

A parity folder holds one sub-folder per teacher, named as in ``pipelines.yaml``::

    <root>/<teacher>/checkpoint.*      weights in the upstream container format (custom teachers),
                                       or checkpoint/ (an open_clip local-dir or transformers folder)
    <root>/<teacher>/arch.json         reduced dims: mmkd_model_config, reduced.embed_dim (custom)
    <root>/<teacher>/tokenizer/        tokenizer folder (optional for open_clip / transformers)
    <root>/<teacher>/reference.npz     upstream outputs: ids, image_paths, image, captions, text,
                                       pixels_<id> (upstream preprocessed tensors), optional extras

:func:`run_parity` builds each teacher from its ``pipelines.yaml`` entry with only the
weights, tokenizer and dims swapped for the folder's, through the real loader
(:func:`mmkd.teachers.load_teacher`), embeds the reference images and captions and
compares row by row. ``image_paths`` are relative to the parity root's parent (the shared
fixtures layout) or to the root itself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmkd.jsontypes import JSONDict
from mmkd.teachers.loaders import load_teacher
from mmkd.teachers.spec import TeacherError, TeacherSpec
from mmkd.teachers.weights import CHECKPOINT_SUFFIXES

log = logging.getLogger(__name__)

THRESHOLD = 0.9999
# MedCLIP's upstream text pooling averages over [PAD] positions too, so the README's padded-batch call gives
# each caption an embedding that depends on the longest caption beside it. A stored feature must not depend
# on its batch: mmkd reproduces the caption encoded alone, which the fixture stores as text_raw_single.
BATCH_FREE_TEXT_KEY = "text_raw_single"


class ParityError(TeacherError):
    """A parity folder is incomplete or malformed."""


@dataclass
class ParityResult:
    """One teacher's agreement with its upstream reference.

    Attributes:
        teacher: the teacher's name (its folder and its pipelines.yaml key).
        passed: every cosine is at least the threshold (and the teacher loaded).
        image_cos_mean, image_cos_min: mmkd vs upstream image embeddings (own preprocessing).
        text_cos_mean, text_cos_min: mmkd vs upstream text embeddings.
        upstream_pixels_cos_min: mmkd's model fed upstream's preprocessed pixels (model-only check).
        pixel_max_diff: largest |mmkd - upstream| over the preprocessed reference images.
        text_reference: the reference.npz key the text was compared with.
        extra: other comparisons, reported and not gated (name -> per-caption cosines).
        error: why the teacher could not be checked (load failure), else None.
    """

    teacher: str
    passed: bool = False
    image_cos_mean: float | None = None
    image_cos_min: float | None = None
    text_cos_mean: float | None = None
    text_cos_min: float | None = None
    upstream_pixels_cos_min: float | None = None
    pixel_max_diff: float | None = None
    text_reference: str = "text"
    extra: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> JSONDict:
        """JSON-able form."""
        return asdict(self)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity, computed in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ParityError(f"cannot compare embeddings of shape {a.shape} with reference shape {b.shape}")
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _checkpoint(folder: Path) -> Path:
    found = sorted(p for p in folder.glob("checkpoint*") if p.is_dir() or p.suffix in CHECKPOINT_SUFFIXES)
    if not found:
        raise ParityError(f"parity folder {folder} has no checkpoint (checkpoint.pt/.bin/.safetensors, or a "
                          "checkpoint/ folder for open_clip and transformers teachers); add one")
    return found[0]


def parity_spec(folder: str | Path, base: TeacherSpec) -> TeacherSpec:
    """``base`` (the pipelines.yaml entry) with the parity folder's weights, tokenizer and dims.

    Raises:
        ParityError: the folder lacks a checkpoint, or a custom teacher's ``arch.json``
            lacks ``mmkd_model_config``.
    """
    folder = Path(folder)
    ckpt = _checkpoint(folder)
    arch_file = folder / "arch.json"
    arch = json.loads(arch_file.read_text()) if arch_file.is_file() else {}
    d = base.to_dict()
    tokenizer = folder / "tokenizer"
    if base.loader == "custom":
        if "mmkd_model_config" not in arch:
            raise ParityError(f"teacher {base.name!r}: {arch_file} needs 'mmkd_model_config' (the reduced "
                              "model_config) for a custom teacher")
        d.update(weights=str(ckpt), model_config=arch["mmkd_model_config"], tokenizer=str(tokenizer),
                 dim=arch.get("reduced", {}).get("embed_dim"))
    else:
        weights = f"local-dir:{ckpt}" if base.loader == "open_clip" else str(ckpt)
        d.update(weights=weights, arch=None, model_config={}, revision=None,
                 tokenizer=str(tokenizer) if tokenizer.is_dir() else None,
                 dim=arch.get("reduced", {}).get("embed_dim"))
    return TeacherSpec.from_dict(d)


def _image_root(root: Path, rel: str) -> Path:
    for base in (root.parent, root):
        if (base / rel).is_file():
            return base
    raise ParityError(f"reference image {rel!r} not found under {root.parent} or {root}; the parity folder must "
                      "sit beside the images reference.npz lists (as in shared/fixtures)")


def _load_images(paths: list[Path]) -> list[Any]:
    from PIL import Image

    images = []
    for p in paths:
        with Image.open(p) as im:
            im.load()
            images.append(im)
    return images


def check_teacher(folder: str | Path, spec: TeacherSpec, threshold: float = THRESHOLD,
                  device: str = "cpu") -> ParityResult:
    """Build ``spec`` through the real loader and compare it with ``folder/reference.npz``.

    A load failure is recorded in :attr:`ParityResult.error` (the loader's message names the
    teacher, the file and the first mismatching key) rather than raised.

    Raises:
        ParityError: ``reference.npz`` or a reference image is missing.
    """
    import torch

    folder = Path(folder)
    ref_file = folder / "reference.npz"
    if not ref_file.is_file():
        raise ParityError(f"teacher {spec.name!r}: {ref_file} not found; a parity folder needs the upstream "
                          "reference embeddings")
    ref = np.load(ref_file)
    result = ParityResult(teacher=spec.name)
    try:
        teacher = load_teacher(spec, device)
    except TeacherError as e:
        result.error = str(e) + (f" (model_config from {folder / 'arch.json'})" if spec.loader == "custom" else "")
        return result
    ids = [str(i) for i in ref["ids"]]
    rels = [str(p) for p in ref["image_paths"]]
    root = _image_root(folder.parent, rels[0])
    images = _load_images([root / r for r in rels])
    with torch.inference_mode():
        pixels = torch.stack([teacher.preprocess(im) for im in images])
        c_img = cosines(teacher.encode_images(pixels).numpy(), ref["image"])
        pix_keys = [k for k in ref.files if k.startswith("pixels_")]
        if pix_keys:
            rows = [ids.index(k[len("pixels_"):]) for k in pix_keys]
            upstream = torch.from_numpy(np.stack([ref[k] for k in pix_keys])).float()
            c_pix = cosines(teacher.encode_images(upstream).numpy(), ref["image"][rows])
            result.upstream_pixels_cos_min = float(c_pix.min())
            result.pixel_max_diff = float(max(np.abs(pixels[r].numpy() - ref[k]).max() for r, k in zip(rows, pix_keys)))
        text = teacher.encode_texts([str(c) for c in ref["captions"]]).numpy()
    result.text_reference = BATCH_FREE_TEXT_KEY if BATCH_FREE_TEXT_KEY in ref.files else "text"
    c_txt = cosines(text, ref[result.text_reference])
    for key in ("text", "text_raw_with_attention_mask"):
        if key in ref.files and key != result.text_reference:
            result.extra[key] = [round(float(c), 6) for c in cosines(text, ref[key])]
    result.image_cos_mean, result.image_cos_min = float(c_img.mean()), float(c_img.min())
    result.text_cos_mean, result.text_cos_min = float(c_txt.mean()), float(c_txt.min())
    gated = [result.image_cos_min, result.text_cos_min]
    if result.upstream_pixels_cos_min is not None:
        gated.append(result.upstream_pixels_cos_min)
    result.passed = min(gated) >= threshold
    return result


def teacher_folders(root: str | Path) -> list[Path]:
    """The teacher sub-folders of a parity folder (those holding a ``reference.npz``).

    Raises:
        ParityError: ``root`` is not a folder or holds no teacher folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ParityError(f"parity folder {root} does not exist; give a folder of <teacher>/reference.npz")
    found = sorted(p for p in root.iterdir() if (p / "reference.npz").is_file())
    if not found:
        raise ParityError(f"parity folder {root} has no <teacher>/reference.npz sub-folder")
    return found


def run_parity(root: str | Path, specs: dict[str, TeacherSpec], teachers: list[str] | None = None,
               threshold: float = THRESHOLD, device: str = "cpu") -> list[ParityResult]:
    """Check every teacher of a parity folder against its upstream reference.

    Args:
        root: the parity folder (one sub-folder per teacher, named as in ``specs``).
        specs: the declared teachers (``teachers_from_config``); each folder's entry
            supplies loader, arch and preprocessing.
        teachers: only these teachers (default: every folder found).
        threshold: smallest cosine that passes.
        device: where the models run.

    Returns:
        One result per teacher, in folder order.

    Raises:
        ParityError: the folder is malformed, or a sub-folder names an undeclared teacher.
    """
    folders = teacher_folders(root)
    if teachers:
        unknown = sorted(set(teachers) - {f.name for f in folders})
        if unknown:
            raise ParityError(f"no parity folder for {unknown} in {root}; found {[f.name for f in folders]}")
        folders = [f for f in folders if f.name in teachers]
    results = []
    for folder in folders:
        if folder.name not in specs:
            raise ParityError(f"parity folder {folder} names teacher {folder.name!r}, which is not declared; "
                              f"declared teachers: {sorted(specs)}")
        spec = parity_spec(folder, specs[folder.name])
        log.info("parity: %s (%s) from %s", spec.name, spec.loader, spec.weights)
        results.append(check_teacher(folder, spec, threshold, device))
    return results


def format_parity(results: list[ParityResult], threshold: float = THRESHOLD) -> str:
    """A table of the results, then the load errors and the comparisons that are not gated."""

    def num(v: float | None, fmt: str = ".6f") -> str:
        return "-" if v is None else format(v, fmt)

    width = max([len(r.teacher) for r in results] + [7])
    lines = [f"{'teacher':<{width}}  {'image cos mean / worst':>24}  {'text cos mean / worst':>23}  "
             f"{'upstream-pixels cos':>19}  {'pixel max|diff|':>15}  result"]
    for r in results:
        state = "ERROR" if r.error else ("ok" if r.passed else "FAIL")
        lines.append(f"{r.teacher:<{width}}  {num(r.image_cos_mean):>11} / {num(r.image_cos_min):<10}  "
                     f"{num(r.text_cos_mean):>10} / {num(r.text_cos_min):<10}  {num(r.upstream_pixels_cos_min):>19}  "
                     f"{num(r.pixel_max_diff, '.3g'):>15}  {state}")
    for r in results:
        if r.error:
            lines.append(f"\n{r.teacher}: {r.error}")
        if r.text_reference != "text":
            lines.append(f"\n{r.teacher}: text compared with {r.text_reference!r} (upstream, one caption per batch)")
        for key, values in r.extra.items():
            lines.append(f"  {r.teacher}: not gated, text cos vs {key!r}: {values}")
    failed = [r.teacher for r in results if not r.passed]
    lines.append(f"\n{len(results) - len(failed)} of {len(results)} teachers at cosine >= {threshold}"
                 + (f"; failing: {failed}" if failed else ""))
    return "\n".join(lines)
