"""Settings of one ``mmkd demo`` run: the full preset and the ``--quick`` one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mmkd.demo.corpus import MODALITIES
from mmkd.demo.experts import DEFAULT_EXPERTS, clip_config
from mmkd.errors import DemoError
from mmkd.jsontypes import JSON, JSONDict


def student_config() -> JSONDict:
    """The demo student: an open_clip ViT a little wider than each expert."""
    return clip_config(width=96, layers=2, embed_dim=64, text_width=64, text_layers=1, context_length=24)


@dataclass
class DemoConfig:
    """Everything a demo run does, seeded.

    Attributes:
        seed: seed of corpus, experts, distillation and eval.
        runner: extract runner, ``ray`` or ``local`` (the ``--quick`` preset's default: its tiny
            extract is mostly Ray's start-up).
        image_size: side of the generated images.
        modalities: modalities of the corpus.
        corpus_per_class: distillation-corpus samples per class and modality.
        vague: share of corpus captions that name the modality but not the finding.
        eval_per_class: held-out eval samples per class and modality.
        experts: expert name -> the modalities it is trained on.
        expert_per_class: each expert's private training samples per class and modality.
        expert_steps: optimizer steps per expert.
        expert_batch_size: batch size of expert training.
        student: the student's open_clip model config.
        stage1_steps: stage-1 steps (CLIP on the corpus).
        stage2_steps: stage-2 steps; the stage-1-only baseline continues stage 1 for as many.
        batch_size: stage-1 batch size (contrastive: larger batches, more negatives).
        stage2_batch_size: batch size of every run continuing from stage 1 (``None``:
            ``batch_size``). Smaller batches give more updates for the same compute, and
            feature distillation has a target per row, not per batch: on the quick preset
            32 x 320 steps reached 0.716 mean zero-shot where 128 x 80 reached 0.628.
        lr: peak learning rate of every distill run.
        warmup_steps: linear warmup of every distill run.
        fd_weight, icl_weight: stage-2 loss weights.
        num_workers: DataLoader workers of the distill runs. 0 (load in the training
            process): the distiller starts its workers anew each epoch, and the demo's
            epochs are ~11 batches of tiny images, so worker start-up made the quick
            demo 2.2x slower (data wait 78% of each step with 1 worker, vs 5.3 -> 2.4 min).
        eval_resamples: bootstrap resamples of the eval CIs.
        threads: torch CPU threads of each training (``None``: the cores shared among ``jobs``).
        jobs: trainings run side by side (experts; the students after stage 1), each in
            its own spawned process.
        ablation: also train the :data:`ABLATION_RUNS` students (teacher drop, trust
            weights, trusted mmkd-clip, ICL scale 14.3 and learned), each reported
            against the no-KD student.
        trusted_run: also score teacher trust on the store (``mmkd store trust``,
            pair-rank) and train a ``multi-trusted`` student (``--teacher-mask trusted``),
            reported against ``multi`` as ``claims.trusted_vs_valid``.
        trust_threshold: pair-rank threshold of that trust.
        views: extract K augmented views per row for every expert (``mmkd extract --views K``) and
            train a ``mmkd-clip-views`` student (``mmkd distill --views``: the student sees one of the
            views per row and epoch, the teachers' features of that view are its targets) beside the
            single-view ``mmkd-clip`` student, at the same budget; reported as
            ``claims.views_vs_single_view``. 0: neither (the ``--quick`` preset's default, for its time).
        view_scale: area fraction of a view's crop: stronger crops than the single-view student's
            open_clip ``RandomResizedCrop`` (0.9-1.0), as CLIP training uses.
    """

    seed: int = 0
    runner: str = "ray"
    image_size: int = 48
    modalities: tuple[str, ...] = tuple(MODALITIES)
    corpus_per_class: int = 200
    vague: float = 0.85
    eval_per_class: int = 100
    experts: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_EXPERTS))
    expert_per_class: int = 400
    expert_steps: int = 300
    expert_batch_size: int = 128
    student: dict[str, Any] = field(default_factory=student_config)
    stage1_steps: int = 250
    stage2_steps: int = 800
    batch_size: int = 128
    stage2_batch_size: int | None = 32
    lr: float = 2e-3
    warmup_steps: int = 20
    fd_weight: float = 50.0
    icl_weight: float = 1.0
    num_workers: int = 0
    eval_resamples: int = 200
    threads: int | None = None
    jobs: int = 2
    ablation: bool = False
    trusted_run: bool = True
    trust_threshold: float = 0.9
    views: int = 4
    view_scale: tuple[float, float] = (0.35, 1.0)

    @classmethod
    def preset(cls, quick: bool = False, **overrides: JSON) -> DemoConfig:
        """The full preset, or the ``--quick`` one (smaller corpus, fewer steps), with ``overrides``."""
        base: dict[str, Any] = {}
        if quick:
            # runner local: Ray's start-up (GCS, raylet, two actors importing torch and open_clip) cost 32 CPU
            # seconds for an extract of 1,440 rows that the local runner does in 9 (measured 2026-12-03)
            base = {"corpus_per_class": 120, "eval_per_class": 50, "expert_per_class": 200, "expert_steps": 150,
                    "stage1_steps": 60, "stage2_steps": 240, "eval_resamples": 100, "views": 0, "runner": "local"}
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise DemoError(f"unknown demo settings {unknown}; valid: {[f.name for f in dataclasses.fields(cls)]}")
        cfg = cls(**{**base, **overrides})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ``DemoError`` (a ValueError) naming the first bad setting."""
        if self.runner not in ("ray", "local"):
            raise DemoError(f"demo runner {self.runner!r} is unknown; use ray or local")
        bad = [m for m in self.modalities if m not in MODALITIES]
        bad += [m for mods in self.experts.values() for m in mods if m not in self.modalities]
        if bad:
            raise DemoError(f"demo modalities {sorted(set(bad))} are not in {list(self.modalities)}")
        if not 0.0 <= self.vague < 1.0:
            raise DemoError(f"vague must be in [0, 1), got {self.vague}")
        if isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 0:
            raise DemoError(f"demo setting views must be an integer >= 0 (views per row; 0: none), got {self.views!r}")
        for name in ("corpus_per_class", "eval_per_class", "expert_per_class", "expert_steps",
                     "expert_batch_size", "stage1_steps", "stage2_steps", "batch_size", "jobs"):
            if getattr(self, name) <= 0:
                raise DemoError(f"demo setting {name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> JSONDict:
        """JSON-able values (saved as ``<out>/demo_config.json``)."""
        return dataclasses.asdict(self)


def student_runs(cfg: DemoConfig) -> dict[str, JSONDict]:
    """The stage-2 students trained from the stage-1 checkpoint: run name -> ``kd`` and extra distill settings.

    Every run shares the stage-1 start, the data order, the step count, the batch
    size and the optimizer schedule; they differ only in the loss (``kd`` None:
    stage 1 continues, the no-KD baseline) and how teachers are used.
    """
    runs: dict[str, dict[str, Any]] = {"stage1-only": {"kd": None}, "multi": {"kd": "multi"},
                                       "mmkd-clip": {"kd": "mmkd-clip"}}
    if cfg.trusted_run:
        runs["multi-trusted"] = {"kd": "multi", "teacher_mask": "trusted"}
    if cfg.views:
        runs[VIEWS_RUN] = {"kd": "mmkd-clip", "views": True}
    if cfg.ablation:
        runs.update(ABLATION_RUNS)
    return runs


def needs_trust(cfg: DemoConfig) -> bool:
    """Whether a run of :func:`student_runs` masks or weighs teachers by trust (so the store must be scored)."""
    return any(r.get("teacher_mask") == "trusted" or r.get("teacher_weight") == "trust"
               for r in student_runs(cfg).values())


VIEWS_RUN = "mmkd-clip-views"  # mmkd-clip on view-matched targets (DemoConfig.views)

# the README's ablation: each changes one thing against ``multi`` or ``mmkd-clip``
ABLATION_RUNS: dict[str, dict[str, Any]] = {
    "multi-drop": {"kd": "multi", "teacher_drop": 0.5},
    "multi-trust-weight": {"kd": "multi", "teacher_weight": "trust"},
    "mmkd-clip-trusted": {"kd": "mmkd-clip", "teacher_mask": "trusted"},
    "mmkd-clip-icl14": {"kd": "mmkd-clip", "icl_scale": 1 / 0.07},
    "mmkd-clip-icl-learned": {"kd": "mmkd-clip", "icl_scale": "learned"},
}
