"""Zero-shot classification: class embeddings from prompt templates, as CLIP does it."""

from __future__ import annotations

from typing import Callable

import numpy as np

from mmkd.eval.metrics import classification_report, softmax, with_top5

DEFAULT_TEMPLATES = (
    "a photo of {}.",
    "an image of {}.",
    "a medical image of {}.",
    "this is an image of {}.",
)


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Unit-norm rows (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)


def fill_prompts(class_names: list[str], templates: list[str]) -> list[str]:
    """All prompts, class-major: class 0 x every template, then class 1, ...

    Raises:
        ValueError: a template has no ``{}`` slot, or the lists are empty.
    """
    if not class_names or not templates:
        raise ValueError(f"zero-shot needs class names and templates; got {len(class_names)} and {len(templates)}")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"prompt templates {bad} have no '{{}}' slot for the class name; "
                         "write e.g. 'an image of {}.'")
    return [t.format(c) for c in class_names for t in templates]


def class_embeddings(encode_texts: Callable[[list[str]], np.ndarray], class_names: list[str],
                     templates: list[str]) -> np.ndarray:
    """(classes, D) class embeddings: mean of the normalised template embeddings, renormalised.

    Args:
        encode_texts: maps prompts to (len, D) embeddings.
        class_names: the names written into the templates.
        templates: format strings with one ``{}``.
    """
    prompts = fill_prompts(class_names, templates)
    emb = l2_normalize(encode_texts(prompts)).reshape(len(class_names), len(templates), -1)
    return l2_normalize(emb.mean(axis=1))


def zeroshot_scores(image_features: np.ndarray, class_features: np.ndarray, logit_scale: float = 100.0) -> np.ndarray:
    """Class probabilities: softmax of the scaled cosine similarities."""
    logits = logit_scale * (l2_normalize(image_features) @ l2_normalize(class_features).T)
    return softmax(logits.astype(np.float64))


def evaluate_zeroshot(image_features: np.ndarray, labels: np.ndarray, class_features: np.ndarray, *,
                      logit_scale: float = 100.0, resamples: int = 1000, seed: int = 0) -> dict:
    """Zero-shot metrics with bootstrap CIs.

    Args:
        image_features: (n, D) image embeddings.
        labels: (n,) integer labels indexing ``class_features``.
        class_features: (classes, D) from :func:`class_embeddings`.
        logit_scale: the model's temperature; it changes AUC only through the softmax.
        resamples: bootstrap resamples (0 disables the CIs).
        seed: bootstrap seed.
    """
    if image_features.shape[1] != class_features.shape[1]:
        raise ValueError(f"image features are {image_features.shape[1]}-d but class embeddings "
                         f"{class_features.shape[1]}-d; they must come from the same model")
    scores = zeroshot_scores(image_features, class_features, logit_scale)
    return with_top5(classification_report(labels, scores, resamples=resamples, seed=seed), labels, scores)
