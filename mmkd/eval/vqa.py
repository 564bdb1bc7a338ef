"""Closed-set VQA on frozen features: image + question embeddings -> a small fusion head over the training answers.

A VQA set is an eval-set spec with ``task: vqa``::

    task: vqa
    questions: vqa.jsonl       # one row per question (.jsonl / .csv / .tsv / .parquet)
    root: images               # folder the image paths are relative to (default: the table's folder)
    fields: {id: id, image: image, question: question, answer: answer, split: split, answer_type: answer_type}
    closed_answers: [yes, no]  # without an answer_type column: questions with these answers are "closed"
    folds: 5                   # without a split column: k-fold CV, all questions of an image in one fold
    head: {hidden: 256, epochs: 60, lr: 1.0e-3}

Answers are compared lower-cased and stripped. The head classifies over the answers
seen in training; a test question whose answer never occurs in training cannot be
answered right: it counts as wrong and ``unseen_answers`` reports how many there were
(with examples). Results: ``accuracy`` (with a bootstrap CI over questions;
``accuracy_chance``: always giving the most frequent training answer),
``accuracy_closed`` and ``accuracy_open``, counts, and per-fold accuracies.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mmkd.config import ConfigError, resolve_path
from mmkd.eval.cv import group_folds
from mmkd.eval.encoders import Encoder
from mmkd.eval.features import _encode_texts, set_features
from mmkd.eval.rows import Metrics
from mmkd.eval.tables import read_rows
from mmkd.eval.types import EvalItem, EvalSet, RunOptions
from mmkd.jsontypes import JSONDict

log = logging.getLogger(__name__)

VQA_KEYS = {"task", "description", "questions", "root", "fields", "closed_answers", "folds", "head"}
DEFAULT_FIELDS = {"id": "id", "image": "image", "question": "question", "answer": "answer", "split": "split",
                  "answer_type": "answer_type"}


@dataclass
class VqaHeadConfig:
    """Fusion head settings: MLP over ``[image, question, image * question]``."""

    hidden: int = 256
    epochs: int = 60
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256


@dataclass(frozen=True)
class VqaRow:
    """One question: ``closed`` marks yes/no-style questions."""

    qid: str
    image: str
    question: str
    answer: str
    closed: bool
    split: str | None = None


@dataclass
class VqaSet:
    """A loaded VQA set (build with :func:`build_vqa_set`)."""

    name: str
    rows: list[VqaRow]
    root: Path
    source: str
    folds: int = 5
    head: VqaHeadConfig = field(default_factory=VqaHeadConfig)
    task = "vqa"
    store = None
    labelled = False
    captioned = False

    @property
    def items(self) -> list[VqaRow]:
        return self.rows

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([[r.qid, r.image, r.question, r.answer, r.closed, r.split]
                                          for r in self.rows]).encode()).hexdigest()[:16]

    def image_set(self) -> EvalSet:
        """The questions as an :class:`~mmkd.eval.sets.EvalSet` (image + question as caption) for the feature cache."""
        items = [EvalItem(r.qid, r.image, r.question) for r in self.rows]
        return EvalSet(name=f"{self.name}-vqa", items=items, root=self.root, source=self.source)


def build_vqa_set(name: str, spec: JSONDict, base: Path) -> VqaSet:
    """A :class:`VqaSet` from a spec mapping.

    Raises:
        ConfigError: unknown keys, a row without image / question / answer, a bad split.
    """
    unknown = sorted(set(spec) - VQA_KEYS)
    if unknown or not spec.get("questions"):
        raise ConfigError(f"eval set {name!r}: a VQA set needs `questions:`; unknown keys {unknown}; "
                          f"valid: {sorted(VQA_KEYS)}")
    table = resolve_path(None, str(spec["questions"]), base=base)
    root = resolve_path(None, str(spec["root"]), base=base) if spec.get("root") else table.parent
    f = {**DEFAULT_FIELDS, **(spec.get("fields") or {})}
    closed_answers = {str(a).strip().lower() for a in spec.get("closed_answers", ("yes", "no"))}
    rows = []
    for i, r in enumerate(read_rows(table, f"eval set {name!r}")):
        missing = [k for k in ("image", "question", "answer") if r.get(f[k]) in (None, "")]
        if missing:
            raise ConfigError(f"eval set {name!r}: row {i + 1} of {str(table)!r} has no {missing} "
                              f"(columns: {sorted(r)}); map them with `fields:`")
        answer = str(r[f["answer"]]).strip().lower()
        kind = r.get(f["answer_type"])
        closed = str(kind).strip().lower() in ("closed", "yes/no", "yes_no") if kind else answer in closed_answers
        split = r.get(f["split"]) or None
        if split is not None and split not in ("train", "val", "test"):
            raise ConfigError(f"eval set {name!r}: row {i + 1} has split {split!r}; valid: train, val, test")
        qid = str(r.get(f["id"]) if r.get(f["id"]) not in (None, "") else i)
        rows.append(VqaRow(qid, str(r[f["image"]]), str(r[f["question"]]), answer, closed, split))
    with_split = sum(r.split is not None for r in rows)
    if 0 < with_split < len(rows):
        raise ConfigError(f"eval set {name!r}: {with_split} of {len(rows)} questions have a split; give all or none")
    folds = int(spec.get("folds", 5))
    if not with_split and (folds < 2 or len({r.image for r in rows}) < folds):
        raise ConfigError(f"eval set {name!r}: {folds}-fold cross-validation by image needs folds >= 2 and at least "
                          f"{folds} images; the table has {len({r.image for r in rows})}. Lower `folds:` or give "
                          "every question a split")
    head = spec.get("head") or {}
    valid = {x.name for x in fields(VqaHeadConfig)}
    if not isinstance(head, dict) or set(head) - valid:
        raise ConfigError(f"eval set {name!r}: `head:` keys must be among {sorted(valid)}; got {head!r}")
    return VqaSet(name=name, rows=rows, root=root, source=str(table), folds=folds,
                  head=VqaHeadConfig(**head))


def _train_head(x: np.ndarray, y: np.ndarray, k: int, cfg: VqaHeadConfig, seed: int, device: str):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], cfg.hidden), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(cfg.hidden, k)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(cfg.batch_size):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def fuse(image: np.ndarray, question: np.ndarray) -> np.ndarray:
    """``[image, question, image * question]`` as float32 (the head's input)."""
    return np.concatenate([image, question, image * question], axis=1).astype(np.float32)


def evaluate_vqa_features(image: np.ndarray, question: np.ndarray, answers: list[str], closed: np.ndarray,
                          fold: np.ndarray, cfg: VqaHeadConfig, *, seed: int = 0, resamples: int = 1000,
                          device: str | None = None) -> Metrics:
    """Train the fusion head on every fold but one, answer the held-out fold; pooled accuracies.

    Args:
        image: (n, D) image features per question.
        question: (n, D) question text features.
        answers: normalised answer per question.
        closed: (n,) bool, closed (yes/no) questions.
        fold: (n,) fold id per question; ``-1`` marks training-only rows (split: train).
        cfg: head settings.
        seed: training and bootstrap seed.
        resamples: bootstrap resamples for the accuracy CI (0: none).
        device: torch device.
    """
    import torch

    x = fuse(image, question)
    correct = np.zeros(len(answers), dtype=bool)
    tested = np.zeros(len(answers), dtype=bool)
    unseen: dict[str, int] = {}
    per_fold = []
    majority = np.zeros(len(answers), dtype=bool)  # always the most frequent training answer: the chance line
    for f in sorted(set(fold.tolist()) - {-1}):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        vocab = sorted({answers[i] for i in tr})
        index = {a: j for j, a in enumerate(vocab)}
        model = _train_head(x[tr], np.array([index[answers[i]] for i in tr]), len(vocab), cfg, seed + f,
                            device or "cpu")
        with torch.no_grad():
            pred = model(torch.from_numpy(x[te]).to(device or "cpu")).argmax(1).cpu().numpy()
        for i, p in zip(te, pred):
            if answers[i] not in index:
                unseen[answers[i]] = unseen.get(answers[i], 0) + 1
            correct[i] = vocab[p] == answers[i]
        tested[te] = True
        top = max(vocab, key=lambda a: sum(answers[i] == a for i in tr))
        majority[te] = [answers[i] == top for i in te]
        per_fold.append(float(correct[te].mean()))
    c, cl = correct[tested], closed[tested]
    out: dict[str, Any] = {
        "accuracy": float(c.mean()),
        "accuracy_closed": float(c[cl].mean()) if cl.any() else float("nan"),
        "accuracy_open": float(c[~cl].mean()) if (~cl).any() else float("nan"),
        "n_questions": int(tested.sum()), "n_closed": int(cl.sum()), "n_open": int((~cl).sum()),
        "unseen_answers": int(sum(unseen.values())),
        "unseen_answer_examples": sorted(unseen, key=lambda a: -unseen[a])[:10],
        "accuracy_folds": per_fold, "accuracy_chance": float(majority[tested].mean())}
    if unseen:
        log.warning("VQA: %d test questions have answers never seen in training (e.g. %s); counted as wrong",
                    out["unseen_answers"], out["unseen_answer_examples"][:3])
    if resamples > 0:
        rng = np.random.default_rng(seed)
        boots = [c[rng.integers(0, len(c), len(c))].mean() for _ in range(resamples)]
        out["accuracy_ci95"] = [float(v) for v in np.percentile(boots, [2.5, 97.5])]
    return out


def vqa_folds(vset: VqaSet, seed: int = 0) -> np.ndarray:
    """Fold per question: ``test`` rows 0 and train/val rows -1 with split labels, else k folds by image."""
    if vset.rows[0].split is not None:
        fold = np.array([0 if r.split == "test" else -1 for r in vset.rows])
        if not (fold == 0).any() or not (fold == -1).any():
            raise ConfigError(f"eval set {vset.name!r}: split labels need both train and test questions")
        return fold
    return group_folds([r.image for r in vset.rows], vset.folds, seed=seed)


def run_vqa(encoder: Encoder, vset: VqaSet, opts: RunOptions = RunOptions()) -> dict[str, Metrics]:
    """``{"vqa": {...}}`` for ``encoder`` on ``vset`` (features from the eval feature cache when there)."""
    iset = vset.image_set()
    from_store = hasattr(encoder, "lookup_images")  # a store holds images, not these questions
    feats = set_features(encoder, iset, need_text=not from_store, cache=opts.cache, batch_size=opts.batch_size)
    text = _encode_texts(encoder, [r.question for r in vset.rows], opts.batch_size) if from_store else feats.text
    res = evaluate_vqa_features(feats.image, text, [r.answer for r in vset.rows],
                                np.array([r.closed for r in vset.rows]), vqa_folds(vset, opts.seed), vset.head,
                                seed=opts.seed, resamples=opts.resamples, device=opts.device)
    return {"vqa": res}
