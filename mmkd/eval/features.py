"""Features of one eval set under one model, with an on-disk cache per (model, set).

Cache files are ``<cache_dir>/<model name>-<model id>__<set name>-<set fingerprint>.npz``
holding any of ``image`` (n, D), ``text`` (n, D: captions) and ``classes`` (C, D:
averaged prompt embeddings) and the model's ``logit_scale`` (so a cache hit never
has to load a teacher). A changed model (weights digest) or set (items,
prompts, image files) gets a new file; missing parts are computed and added.

An image that cannot be read or decoded is skipped (unless ``strict``): ``image``
then holds rows for the items listed in ``kept`` only, and ``skipped`` (JSON in
the cache) says which items were left out and why.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmkd.eval.encoders import Encoder, EncoderError
from mmkd.eval.types import EvalSet
from mmkd.eval.zeroshot import class_embeddings

log = logging.getLogger(__name__)

PARTS = ("image", "text", "classes", "logit_scale", "kept", "skipped")


@dataclass
class SetFeatures:
    """Embeddings of one eval set under one model.

    Attributes:
        image: one row per item in ``kept`` (every item when ``kept`` is None).
        text: one row per item of ``EvalSet.items`` (captions need no image).
        classes: class prompt embeddings.
        logit_scale: the model's logit scale.
        kept: indices of the items whose image was read, ascending; None: all.
        skipped: the items whose image could not be read (``sample_id``, ``image``,
            ``reason``, ``detail``).
    """

    image: np.ndarray
    text: np.ndarray | None = None
    classes: np.ndarray | None = None
    logit_scale: float = 100.0
    kept: np.ndarray | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)


class FeatureCache:
    """npz files keyed by model id and eval-set fingerprint.

    Args:
        root: cache folder (created on first write); ``None`` disables caching.
    """

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None

    def path(self, encoder: Encoder, evalset: EvalSet) -> Path | None:
        if self.root is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{encoder.name}-{encoder.model_id}__{evalset.name}")
        return self.root / f"{safe}-{evalset.fingerprint()}.npz"

    def load(self, encoder: Encoder, evalset: EvalSet) -> dict[str, np.ndarray]:
        p = self.path(encoder, evalset)
        if p is None or not p.is_file():
            return {}
        try:
            with np.load(p) as z:
                return {k: z[k] for k in z.files if k in PARTS}
        except (OSError, ValueError) as e:  # a torn file from a killed run: recompute
            log.warning("ignoring unreadable feature cache %s (%s)", p, e)
            return {}

    def save(self, encoder: Encoder, evalset: EvalSet, parts: dict[str, np.ndarray]) -> None:
        p = self.path(encoder, evalset)
        if p is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.stem}.{os.getpid()}.npz")
        np.savez(tmp, **parts)
        os.replace(tmp, p)


def _encode_images(encoder: Encoder, evalset: EvalSet, batch_size: int, progress: bool,
                   strict: bool = False) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]]]:
    """(image features of the readable items, their indices or None for all, the skipped items)."""
    if hasattr(encoder, "lookup_images"):
        return encoder.lookup_images(evalset.sample_ids), None, []
    from tqdm import tqdm

    out, kept, skipped = [], [], []
    items = evalset.items
    for start in tqdm(range(0, len(items), batch_size), desc=f"{encoder.name} images", disable=not progress,
                      unit="batch"):
        images = []
        for i, it in enumerate(items[start:start + batch_size], start):
            try:
                images.append(evalset.load_image(it))
            except Exception as e:  # BadSample, a missing file, a reader error: one unusable sample
                if strict:
                    raise EncoderError(f"eval set {evalset.name!r}: cannot read image of sample {it.sample_id!r} "
                                       f"({it.image}): {e}; fix or remove it, or run without --strict to skip "
                                       "unreadable images") from e
                skipped.append({"sample_id": it.sample_id, "image": it.image,
                                "reason": getattr(e, "reason", type(e).__name__), "detail": str(e)})
                continue
            kept.append(i)
        if images:
            out.append(encoder.encode_images(images))
    if not out:
        raise EncoderError(f"eval set {evalset.name!r}: none of its {len(items)} images could be read "
                           f"(e.g. {skipped[0]['sample_id']!r}: {skipped[0]['detail']})")
    if skipped:
        log.warning("eval set %s: %d of %d images unreadable, skipped (listed in results.json): %s", evalset.name,
                    len(skipped), len(items), ", ".join(s["sample_id"] for s in skipped[:5]))
    feats = np.concatenate(out).astype(np.float32)
    return feats, (np.asarray(kept, dtype=np.int64) if skipped else None), skipped


def _encode_texts(encoder: Encoder, texts: list[str], batch_size: int) -> np.ndarray:
    return np.concatenate([encoder.encode_texts(texts[i:i + batch_size])
                           for i in range(0, len(texts), batch_size)]).astype(np.float32)


def set_features(encoder: Encoder, evalset: EvalSet, *, need_text: bool = False, need_classes: bool = False,
                 cache: FeatureCache | None = None, batch_size: int = 32, progress: bool = False,
                 strict: bool = False) -> SetFeatures:
    """Image features of ``evalset`` (and caption / class embeddings when asked), from cache when possible.

    Args:
        encoder: the model.
        evalset: the eval set.
        need_text: also embed the captions (retrieval).
        need_classes: also embed the class prompts (zero-shot).
        cache: feature cache; ``None`` computes everything.
        batch_size: images / texts per forward pass.
        progress: show tqdm bars.
        strict: an unreadable image is an error instead of a skipped item.

    Raises:
        EncoderError: with ``strict``, an unreadable image (also one skipped by an
            earlier, cached run); without it, when no image at all can be read.
    """
    cache = cache or FeatureCache(None)
    parts = cache.load(encoder, evalset)
    before = set(parts)
    if "image" not in parts:
        parts["image"], kept, skipped = _encode_images(encoder, evalset, batch_size, progress, strict)
        if skipped:
            parts["kept"], parts["skipped"] = kept, np.array(json.dumps(skipped))
    skipped = json.loads(str(parts["skipped"])) if "skipped" in parts else []
    if strict and skipped:
        raise EncoderError(f"eval set {evalset.name!r}: {len(skipped)} image(s) cannot be read, e.g. sample "
                           f"{skipped[0]['sample_id']!r} ({skipped[0]['image']}): {skipped[0]['detail']}; fix or "
                           "remove them, or run without --strict to skip unreadable images")
    if need_text and "text" not in parts:
        captions = [it.caption or "" for it in evalset.items]
        if hasattr(encoder, "lookup_texts"):
            parts["text"] = encoder.lookup_texts(evalset.sample_ids, captions)
        else:
            parts["text"] = _encode_texts(encoder, captions, batch_size)
    if need_classes and "classes" not in parts:
        parts["classes"] = class_embeddings(lambda t: _encode_texts(encoder, t, batch_size), evalset.prompt_names,
                                            evalset.templates)
    if "logit_scale" not in parts:
        parts["logit_scale"] = np.float64(encoder.logit_scale)
    if set(parts) != before:
        cache.save(encoder, evalset, parts)
    else:
        log.info("features of %s on %s from cache", encoder.name, evalset.name)
    return SetFeatures(parts["image"], parts.get("text"), parts.get("classes"), float(parts["logit_scale"]),
                       parts.get("kept"), skipped)
