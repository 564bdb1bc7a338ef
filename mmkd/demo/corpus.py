"""A seeded, procedurally drawn biomedical-like image-caption corpus.

Four "modalities", three classes each; the class is a visual cue drawn into the
image (a nodule, dense nuclei, an irregular lesion, an enlarged optic cup...) and
named, in varied wording, by the caption. Images are drawn for a whole batch at
once with numpy broadcasting, so thousands of 48 px images take seconds.

============  =====================  ==================================================
modality      classes                cue
============  =====================  ==================================================
xray          normal nodule effusion grey chest; bright round spots; white-out lung base
histology     benign carcinoma       pink tissue; few small nuclei; large irregular
              inflamed               dark nuclei; many tiny dark cells
dermoscopy    nevus melanoma         skin; small round brown spot; large irregular dark
              keratosis              lesion; tan rough textured lesion
fundus        healthy glaucoma       orange retina; small optic cup; large pale cup;
              retinopathy            red haemorrhage dots and yellow exudates
============  =====================  ==================================================

A *vague* caption names the modality but not the finding ("chest radiograph,
figure 3."), as many real figure captions do; ``vague`` sets their share.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

log = logging.getLogger(__name__)

Array = np.ndarray


@dataclass(frozen=True)
class Modality:
    """One synthetic modality.

    Attributes:
        name: key (``xray``...).
        classes: class names, label order.
        class_prompts: class -> phrase used in zero-shot prompts.
        phrases: wordings of the modality in captions.
        findings: class -> wordings of the finding in captions.
        templates: zero-shot prompt templates (``{}`` = the class phrase).
        draw: ``(labels, rng, size) -> (n, size, size, 3) float32 in [0, 1]``.
    """

    name: str
    classes: tuple[str, ...]
    class_prompts: dict[str, str]
    phrases: tuple[str, ...]
    findings: dict[str, tuple[str, ...]]
    templates: tuple[str, ...]
    draw: Callable[[Array, np.random.Generator, int], Array]


# ---------------------------------------------------------------- drawing helpers
def _grid(size: int) -> tuple[Array, Array]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return yy[None], xx[None]


def _col(v: Array | float) -> Array:
    """(n,) -> (n, 1, 1) for broadcasting against (n, S, S)."""
    return np.asarray(v, dtype=np.float32).reshape(-1, 1, 1)


def _ellipse(yy: Array, xx: Array, cy: Array, cx: Array, ry: Array, rx: Array, soft: float = 4.0) -> Array:
    """Soft-edged filled ellipses, one per image: (n, S, S) in [0, 1]."""
    d = ((xx - _col(cx)) / _col(rx)) ** 2 + ((yy - _col(cy)) / _col(ry)) ** 2
    return np.clip((1.0 - d) * soft, 0.0, 1.0)


def _blobs(yy: Array, xx: Array, count: Array, radius: tuple[float, float], rng: np.random.Generator,
           region: tuple[float, float], max_count: int, aspect: float = 0.0) -> Array:
    """Union of ``count[i]`` random ellipses per image inside the centred square ``region``: (n, S, S).

    ``yy`` varies along rows only and ``xx`` along columns only (a grid, possibly shifted per
    image), so each ellipse's x and y terms are computed on one row and one column and
    broadcast, and the union is taken one ellipse at a time: the same values as the whole
    (n, max_count, S, S) array at a fraction of its work and memory.
    """
    n = len(count)
    lo, hi = region
    cy, cx = rng.uniform(lo, hi, (2, n, max_count))
    r = rng.uniform(*radius, (n, max_count))
    stretch = 1.0 + aspect * rng.uniform(0, 1, (n, max_count))
    active = np.arange(max_count)[None] < count[:, None]
    tx = ((xx[:, None, :1, :] - cx[..., None, None]) / (r * stretch)[..., None, None]) ** 2  # (n, m, 1, S)
    ty = ((yy[:, None, :, :1] - cy[..., None, None]) / (r / stretch)[..., None, None]) ** 2  # (n, m, S, 1)
    union = np.zeros((n, *np.broadcast_shapes(xx.shape[1:], yy.shape[1:])))
    for j in range(max_count):
        mask = np.clip((1.0 - (tx[:, j] + ty[:, j])) * 3.0, 0.0, 1.0) * active[:, j, None, None]
        np.maximum(union, mask, out=union)
    return union


def _paint(img: Array, mask: Array, colour: Array | tuple[float, float, float]) -> Array:
    """Blend ``colour`` (3,) or (n, 3) into ``img`` (n, S, S, 3) where ``mask`` (n, S, S) is 1."""
    c = np.asarray(colour, dtype=np.float32)
    c = c[:, None, None, :] if c.ndim == 2 else c[None, None, None, :]
    m = mask[..., None]
    return img * (1.0 - m) + c * m


def _finish(img: Array, rng: np.random.Generator, noise: float = 0.04) -> Array:
    """Per-image brightness / contrast jitter and pixel noise (the nuisance the model must ignore)."""
    n = len(img)
    gain = rng.uniform(0.85, 1.15, (n, 1, 1, 1)).astype(np.float32)
    bias = rng.uniform(-0.06, 0.06, (n, 1, 1, 1)).astype(np.float32)
    img = img * gain + bias + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


# ---------------------------------------------------------------- modalities
def _draw_xray(labels: Array, rng: np.random.Generator, size: int) -> Array:
    n = len(labels)
    yy, xx = _grid(size)
    g = np.full((n, size, size), 0.08, np.float32)
    sx = rng.uniform(-0.04, 0.04, n)
    sy = rng.uniform(-0.03, 0.03, n)
    body = _ellipse(yy, xx, 0.55 + sy, 0.5 + sx, 0.48, rng.uniform(0.40, 0.46, n))
    g = g * (1 - body) + 0.62 * body
    lung_l = _ellipse(yy, xx, 0.5 + sy, 0.32 + sx, rng.uniform(0.25, 0.3, n), 0.13)
    lung_r = _ellipse(yy, xx, 0.5 + sy, 0.68 + sx, rng.uniform(0.25, 0.3, n), 0.13)
    lungs = np.maximum(lung_l, lung_r)
    g = g * (1 - lungs) + 0.22 * lungs
    ribs = 0.05 * (np.sin(yy * size * 0.9 + rng.uniform(0, 6, (n, 1, 1))) > 0.6) * lungs
    g = g + ribs
    nodule = labels == 1
    if nodule.any():
        k = int(nodule.sum())
        count = rng.integers(2, 5, k)
        side = np.where(rng.uniform(size=k) < 0.5, 0.32, 0.68) + sx[nodule]
        spots = _blobs(yy, xx - _col(side - 0.5), count, (0.06, 0.09), rng, (0.38, 0.62), 4)
        g[nodule] = g[nodule] * (1 - spots * lungs[nodule]) + 0.85 * spots * lungs[nodule]
    eff = labels == 2
    if eff.any():
        k = int(eff.sum())
        level = _col(rng.uniform(0.42, 0.55, k) + sy[eff])
        which = np.where(rng.uniform(size=k) < 0.5, 0, 1)
        lung = np.where(_col(which) == 0, lung_l[eff], lung_r[eff])
        fluid = lung * np.clip((yy - level) * 20.0, 0.0, 1.0)
        g[eff] = g[eff] * (1 - fluid) + 0.7 * fluid
    return np.repeat(g[..., None], 3, axis=-1)


def _draw_histology(labels: Array, rng: np.random.Generator, size: int) -> Array:
    n = len(labels)
    yy, xx = _grid(size)
    base = np.array([0.93, 0.72, 0.82], np.float32) + rng.uniform(-0.05, 0.05, (n, 3)).astype(np.float32)
    img = np.broadcast_to(base[:, None, None, :], (n, size, size, 3)).copy()
    fibres = 0.06 * np.sin(xx * size * rng.uniform(0.3, 0.6, (n, 1, 1)) + yy * size * 0.2)
    img = img - fibres[..., None] * np.array([0.2, 1.0, 0.5], np.float32)
    specs = {0: ((6, 10), (0.036, 0.05), 0.2, (0.55, 0.32, 0.66)),    # benign: few small round pale nuclei
             1: ((6, 10), (0.06, 0.09), 0.9, (0.32, 0.10, 0.42)),    # carcinoma: large irregular dark nuclei
             2: ((35, 50), (0.014, 0.02), 0.0, (0.18, 0.10, 0.50))}  # inflamed: many tiny dark cells
    for c, (count, radius, aspect, colour) in specs.items():
        sel = labels == c
        if sel.any():
            k = int(sel.sum())
            mask = _blobs(yy, xx, rng.integers(count[0], count[1] + 1, k), radius, rng, (0.05, 0.95), count[1],
                          aspect=aspect)
            img[sel] = _paint(img[sel], mask, colour)
    return img


def _irregular(yy: Array, xx: Array, cy: Array, cx: Array, r0: Array, wobble: Array,
               rng: np.random.Generator) -> Array:
    """Lesions with a radius modulated by random low harmonics of the angle."""
    n = len(r0)
    dy, dx = yy - _col(cy), xx - _col(cx)
    theta = np.arctan2(dy, dx)
    r = np.ones_like(theta)
    for k in (2, 3, 5):
        r = r + _col(wobble * rng.uniform(0.3, 1.0, n)) * np.sin(k * theta + _col(rng.uniform(0, 2 * np.pi, n))) / k
    dist = np.sqrt(dy ** 2 + dx ** 2) / (_col(r0) * r)
    return np.clip((1.0 - dist) * 6.0, 0.0, 1.0)


def _draw_dermoscopy(labels: Array, rng: np.random.Generator, size: int) -> Array:
    n = len(labels)
    yy, xx = _grid(size)
    skin = np.array([0.88, 0.68, 0.58], np.float32) + rng.uniform(-0.06, 0.06, (n, 1)).astype(np.float32)
    img = np.broadcast_to(skin[:, None, None, :], (n, size, size, 3)).copy()
    img *= 1.0 - 0.25 * (((yy - 0.5) ** 2 + (xx - 0.5) ** 2) * 2.0)[..., None]  # dermatoscope vignette
    cy, cx = rng.uniform(0.42, 0.58, (2, n))
    specs = {0: ((0.13, 0.19), 0.05, (0.52, 0.32, 0.20)),   # nevus: small, round, even brown
             1: ((0.24, 0.33), 0.9, (0.22, 0.12, 0.10)),    # melanoma: large, irregular, dark
             2: ((0.17, 0.24), 0.25, (0.74, 0.55, 0.36))}   # keratosis: tan, rough surface
    for c, (radius, wobble, colour) in specs.items():
        sel = labels == c
        if not sel.any():
            continue
        k = int(sel.sum())
        mask = _irregular(yy, xx, cy[sel], cx[sel], rng.uniform(*radius, k), np.full(k, wobble), rng)
        sub = _paint(img[sel], mask, colour)
        if c == 1:  # blue-grey veil patches
            veil = _blobs(yy, xx, rng.integers(2, 5, k), (0.05, 0.09), rng, (0.35, 0.65), 4) * mask
            sub = _paint(sub, veil, (0.35, 0.38, 0.5))
        if c == 2:  # warty texture
            tex = (rng.uniform(0, 1, (k, size, size)) > 0.6).astype(np.float32) * mask * 0.6
            sub = _paint(sub, tex, (0.45, 0.33, 0.22))
        img[sel] = sub
    return img


def _draw_fundus(labels: Array, rng: np.random.Generator, size: int) -> Array:
    n = len(labels)
    yy, xx = _grid(size)
    img = np.zeros((n, size, size, 3), np.float32)
    retina = _ellipse(yy, xx, np.full(n, 0.5), np.full(n, 0.5), 0.46, 0.46, soft=20.0)
    tint = np.array([0.85, 0.38, 0.12], np.float32) + rng.uniform(-0.05, 0.05, (n, 3)).astype(np.float32)
    img = _paint(img, retina * (1.0 - 0.4 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) * 4), tint)
    dy, dx = rng.uniform(0.42, 0.58, n), np.where(rng.uniform(size=n) < 0.5, 0.3, 0.7) + rng.uniform(-0.04, 0.04, n)
    for _ in range(4):  # vessels: thin dark-red rays leaving the optic disc
        ang = rng.uniform(0, 2 * np.pi, n)
        ux, uy = np.cos(ang), np.sin(ang)
        px, py = xx - _col(dx), yy - _col(dy)
        along = px * _col(ux) + py * _col(uy)
        across = np.abs(px * _col(-uy) + py * _col(ux) + 0.15 * along ** 2)
        vessel = np.clip((0.018 - across) * 80.0, 0, 1) * (along > 0) * retina
        img = _paint(img, vessel, (0.55, 0.08, 0.05))
    disc = _ellipse(yy, xx, dy, dx, 0.12, 0.11)
    img = _paint(img, disc, (0.98, 0.8, 0.45))
    cup_ratio = np.where(labels == 1, rng.uniform(0.75, 0.9, n), rng.uniform(0.2, 0.35, n))
    cup = _ellipse(yy, xx, dy, dx, 0.12 * cup_ratio, 0.11 * cup_ratio)
    img = _paint(img, cup, (1.0, 0.97, 0.88))
    dr = labels == 2
    if dr.any():
        k = int(dr.sum())
        red = _blobs(yy, xx, rng.integers(5, 9, k), (0.05, 0.07), rng, (0.22, 0.78), 8)
        yellow = _blobs(yy, xx, rng.integers(4, 8, k), (0.035, 0.05), rng, (0.22, 0.78), 8)
        img[dr] = _paint(_paint(img[dr], red * retina[dr], (0.3, 0.0, 0.02)), yellow * retina[dr],
                         (1.0, 0.95, 0.2))
    return img


MODALITIES: dict[str, Modality] = {
    "xray": Modality(
        "xray", ("normal", "nodule", "effusion"),
        {"normal": "clear lungs", "nodule": "a lung nodule", "effusion": "a pleural effusion"},
        ("chest x-ray", "chest radiograph", "frontal chest film", "posteroanterior chest x-ray"),
        {"normal": ("clear lungs", "no acute abnormality", "normal lung fields"),
         "nodule": ("a lung nodule", "a round pulmonary nodule", "small nodular opacities in the lung"),
         "effusion": ("a pleural effusion", "fluid layering at the lung base", "blunting of the lung base by fluid")},
        ("a chest x-ray showing {}.", "a chest radiograph with {}.", "frontal chest film: {}."), _draw_xray),
    "histology": Modality(
        "histology", ("benign", "carcinoma", "inflamed"),
        {"benign": "benign tissue", "carcinoma": "carcinoma", "inflamed": "dense inflammation"},
        ("H&E histology slide", "histopathology section", "stained tissue micrograph", "H&E stained biopsy"),
        {"benign": ("benign tissue", "sparse regular nuclei", "normal glandular tissue"),
         "carcinoma": ("carcinoma", "large pleomorphic malignant nuclei", "invasive carcinoma cells"),
         "inflamed": ("dense inflammation", "a dense lymphocytic infiltrate", "many small inflammatory cells")},
        ("an H&E histology slide of {}.", "a histopathology section showing {}.", "stained tissue: {}."),
        _draw_histology),
    "dermoscopy": Modality(
        "dermoscopy", ("nevus", "melanoma", "keratosis"),
        {"nevus": "a benign nevus", "melanoma": "a melanoma", "keratosis": "a seborrheic keratosis"},
        ("dermoscopy image", "dermatoscopic photograph", "skin lesion photograph", "dermoscopic view"),
        {"nevus": ("a benign nevus", "a small symmetric brown mole", "a regular pigmented nevus"),
         "melanoma": ("a melanoma", "a large irregular dark lesion with a blue veil", "an asymmetric melanoma"),
         "keratosis": ("a seborrheic keratosis", "a tan waxy stuck-on lesion", "a rough keratotic plaque")},
        ("a dermoscopy image of {}.", "a skin lesion photograph showing {}.", "dermoscopic view: {}."),
        _draw_dermoscopy),
    "fundus": Modality(
        "fundus", ("healthy", "glaucoma", "retinopathy"),
        {"healthy": "a healthy retina", "glaucoma": "glaucomatous cupping", "retinopathy": "diabetic retinopathy"},
        ("retinal fundus photograph", "fundus image", "color fundus photo", "fundoscopy image"),
        {"healthy": ("a healthy retina", "a normal optic disc", "no retinal disease"),
         "glaucoma": ("glaucomatous cupping", "an enlarged optic cup", "a pale cupped optic disc of glaucoma"),
         "retinopathy": ("diabetic retinopathy", "haemorrhages and hard exudates", "red dots and yellow exudates")},
        ("a retinal fundus photograph showing {}.", "a fundus image with {}.", "fundoscopy: {}."), _draw_fundus),
}

CAPTION_TEMPLATES = ("{mod} showing {find}.", "{find} seen on {mod}.", "{mod}: {find}.", "a {mod} with {find}.",
                     "this {mod} demonstrates {find}.")
VAGUE_TEMPLATES = ("{mod}, figure {k}.", "a {mod} from case {k}.", "{mod} of the patient.", "representative {mod}.")


def get_modality(name: str) -> Modality:
    """The modality called ``name``.

    Raises:
        KeyError: unknown name (the message lists the valid ones).
    """
    if name not in MODALITIES:
        raise KeyError(f"unknown synthetic modality {name!r}; valid: {sorted(MODALITIES)}")
    return MODALITIES[name]


def balanced_labels(n_per_class: int, num_classes: int, rng: np.random.Generator) -> Array:
    """``n_per_class`` of each class label, shuffled."""
    labels = np.repeat(np.arange(num_classes), n_per_class)
    rng.shuffle(labels)
    return labels


def draw_images(modality: str, labels: Array, rng: np.random.Generator, size: int = 48,
                chunk: int = 256) -> Array:
    """Images of ``modality`` with the cues of ``labels``: (n, size, size, 3) uint8."""
    mod = get_modality(modality)
    out = np.empty((len(labels), size, size, 3), np.uint8)
    for start in range(0, len(labels), chunk):
        part = np.asarray(labels[start:start + chunk])
        img = _finish(mod.draw(part, rng, size), rng)
        out[start:start + chunk] = np.round(img * 255.0).astype(np.uint8)
    return out


def make_captions(modality: str, labels: Array, rng: np.random.Generator, vague: float = 0.0) -> list[str]:
    """One caption per label: modality wording + finding wording, or (share ``vague``) no finding."""
    mod = get_modality(modality)
    captions = []
    for label in labels:
        phrase = mod.phrases[rng.integers(len(mod.phrases))]
        if rng.uniform() < vague:
            t = VAGUE_TEMPLATES[rng.integers(len(VAGUE_TEMPLATES))]
            captions.append(t.format(mod=phrase, k=int(rng.integers(1, 9))))
            continue
        finds = mod.findings[mod.classes[int(label)]]
        t = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
        captions.append(t.format(mod=phrase, find=finds[rng.integers(len(finds))]))
    return captions


@dataclass
class Batch:
    """In-memory samples: ``images`` (n, S, S, 3) uint8, and per sample caption, label, modality."""

    images: Array
    captions: list[str]
    labels: Array
    modalities: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def make_batch(modalities: tuple[str, ...] | list[str], n_per_class: int, seed: int, size: int = 48,
               vague: float = 0.0) -> Batch:
    """Balanced samples of several modalities (each modality its own stream of ``seed``), shuffled together."""
    parts = []
    for i, name in enumerate(modalities):
        rng = np.random.default_rng([seed, sorted(MODALITIES).index(name)])
        labels = balanced_labels(n_per_class, len(get_modality(name).classes), rng)
        parts.append((draw_images(name, labels, rng, size), make_captions(name, labels, rng, vague), labels,
                      [name] * len(labels)))
    order = np.random.default_rng([seed, 99]).permutation(sum(len(p[1]) for p in parts))
    images = np.concatenate([p[0] for p in parts])[order]
    captions = [c for p in parts for c in p[1]]
    labels = np.concatenate([p[2] for p in parts])[order]
    mods = [m for p in parts for m in p[3]]
    return Batch(images, [captions[i] for i in order], labels, [mods[i] for i in order])


def _png(image: Array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_jsonl_dataset(folder: str | Path, batch: Batch, prefix: str, splits: list[str] | None = None) -> Path:
    """Write ``batch`` as PNG files plus ``data.jsonl`` (id, image, caption, modality, label[, split]).

    The folder opens with ``open_dataset(folder, format="jsonl")``; ``label`` is the
    class name, ``modality`` the modality name, ``split`` (when given) ``train``/``test``.

    Returns:
        The ``data.jsonl`` path.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(batch)):
        sid = f"{prefix}-{i:06d}"
        rel = f"images/{sid}.png"
        (folder / rel).write_bytes(_png(batch.images[i]))
        mod = get_modality(batch.modalities[i])
        rows.append({"id": sid, "image": rel, "caption": batch.captions[i], "modality": mod.name,
                     "label": mod.classes[int(batch.labels[i])]})
        if splits is not None:
            rows[-1]["split"] = splits[i]
    table = folder / "data.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return table


def half_splits(labels: Array) -> list[str]:
    """``train`` for the first half of each class's samples, ``test`` for the rest (for the linear probe)."""
    out = []
    seen: dict[int, int] = {}
    counts = {int(c): int((labels == c).sum()) for c in np.unique(labels)}
    for label in labels:
        k = seen.get(int(label), 0)
        seen[int(label)] = k + 1
        out.append("train" if k < counts[int(label)] // 2 else "test")
    return out


def write_eval_set(folder: str | Path, modality: str, n_per_class: int, seed: int, size: int = 48) -> Path:
    """A held-out labelled, captioned eval set of one modality, with its ``mmkd eval`` spec file.

    Each class is split in half, ``train`` / ``test``, for the linear probe; zero-shot
    and retrieval use every sample.

    Returns:
        The spec file ``<folder>/<modality>.yaml`` (``samples``, ``classes``,
        ``class_prompts``, ``templates``; see :mod:`mmkd.eval.sets`).
    """
    mod = get_modality(modality)
    folder = Path(folder)
    batch = make_batch((modality,), n_per_class, seed, size)
    table = write_jsonl_dataset(folder / modality, batch, prefix=f"eval-{modality}",
                                splits=half_splits(batch.labels))
    spec = {"description": f"synthetic {modality}: {', '.join(mod.classes)} ({n_per_class} per class, seed {seed})",
            "samples": str(table.relative_to(folder)), "classes": list(mod.classes),
            "class_prompts": dict(mod.class_prompts), "templates": list(mod.templates)}
    path = folder / f"{modality}.yaml"
    path.write_text("# Written by mmkd.demo.corpus.write_eval_set\n" + yaml.safe_dump(spec, sort_keys=False))
    return path
