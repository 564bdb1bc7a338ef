"""Features of one eval set under one model, with an on-disk cache per (model, set).

Cache files are ``<cache_dir>/<model name>-<model id>__<set name>-<set fingerprint>.npz``
holding any of ``image`` (n, D), ``text`` (n, D: captions) and ``classes`` (C, D:
averaged prompt embeddings) and the model's ``logit_scale`` (so a cache hit never
has to load a teacher). A changed model (weights digest) or set (items,
prompts, image files) gets a new file; missing parts are computed and added.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmkd.eval.encoders import Encoder, EncoderError
from mmkd.eval.sets import EvalSet
from mmkd.eval.zeroshot import class_embeddings

log = logging.getLogger(__name__)

PARTS = ("image", "text", "classes", "logit_scale")


@dataclass
class SetFeatures:
    """Embeddings of one eval set under one model (rows follow ``EvalSet.items``)."""

    image: np.ndarray
    text: np.ndarray | None = None
    classes: np.ndarray | None = None
    logit_scale: float = 100.0


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


def _encode_images(encoder: Encoder, evalset: EvalSet, batch_size: int, progress: bool) -> np.ndarray:
    if hasattr(encoder, "lookup_images"):
        return encoder.lookup_images(evalset.sample_ids)
    from tqdm import tqdm

    out = []
    items = evalset.items
    for start in tqdm(range(0, len(items), batch_size), desc=f"{encoder.name} images", disable=not progress,
                      unit="batch"):
        batch = items[start:start + batch_size]
        images = []
        for it in batch:
            try:
                images.append(evalset.load_image(it))
            except Exception as e:
                raise EncoderError(f"eval set {evalset.name!r}: cannot read image of sample {it.sample_id!r} "
                                   f"({it.image}): {e}") from e
        out.append(encoder.encode_images(images))
    return np.concatenate(out).astype(np.float32)


def _encode_texts(encoder: Encoder, texts: list[str], batch_size: int) -> np.ndarray:
    return np.concatenate([encoder.encode_texts(texts[i:i + batch_size])
                           for i in range(0, len(texts), batch_size)]).astype(np.float32)


def set_features(encoder: Encoder, evalset: EvalSet, *, need_text: bool = False, need_classes: bool = False,
                 cache: FeatureCache | None = None, batch_size: int = 32, progress: bool = False) -> SetFeatures:
    """Image features of ``evalset`` (and caption / class embeddings when asked), from cache when possible.

    Args:
        encoder: the model.
        evalset: the eval set.
        need_text: also embed the captions (retrieval).
        need_classes: also embed the class prompts (zero-shot).
        cache: feature cache; ``None`` computes everything.
        batch_size: images / texts per forward pass.
        progress: show tqdm bars.
    """
    cache = cache or FeatureCache(None)
    parts = cache.load(encoder, evalset)
    before = set(parts)
    if "image" not in parts:
        parts["image"] = _encode_images(encoder, evalset, batch_size, progress)
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
    return SetFeatures(parts["image"], parts.get("text"), parts.get("classes"), float(parts["logit_scale"]))
