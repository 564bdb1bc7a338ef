"""Typed config of a distill run: pipelines.yaml ``distill:`` entry + command-line overrides.

Resolution order (later wins): dataclass defaults, stage defaults (lr), the named
``distill:`` entry, explicit overrides (merged by :func:`mmkd.config.merge_entry`,
as every stage does). Optimizer and loss settings nest (``optim:``, ``loss:``);
their flat names (``lr``, ``warmup_steps``, ``fd_weight``...) are accepted too, as
the command-line flags are. The resolved config is saved next to the run as
``<out>/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmkd.config import ConfigError, Pipelines, merge_entry, resolve_path, section
from mmkd.data import resolve_data
from mmkd.errors import DistillError
from mmkd.jsontypes import JSON, JSONDict

if TYPE_CHECKING:
    import torch

# The nested parts of a run's config (``optim:``, ``loss:``, ``init:``, ``targets:``) are plain
# values, defined here so that parsing a config imports no torch; the modules that use them
# (optim, losses, init, heads) import them from here.

TARGET_SOURCES = ("raw", "projected")
PROJECTIONS = ("random", "pca", "ae")


@dataclass
class TargetConfig:
    """``--kd mmkd-clip`` targets: which features, mapped how, normalised or not.

    Attributes:
        source: ``raw`` (the store's own features, mapped by ``projection``) or
            ``projected`` (the imported official ``<teacher>_proj512`` copies, used as
            they are, as the official code reads ``clips_project_output.pt``).
        projection: ``raw`` targets' map: ``random`` (fixed semi-orthogonal, no fitting
            step; default), ``pca`` or ``ae`` (fitted by ``mmkd store project``).
        normalize: L2-normalise targets (default; the loss compares them with unit
            student features). The official code does not: ``--no-normalize-targets``.
    """

    source: str = "raw"
    projection: str = "random"
    normalize: bool = True


@dataclass
class InitConfig:
    """Where the student's weights come from (``init:`` in a distill entry, ``--init*`` flags).

    Attributes:
        source: source of both towers (run, export, checkpoint, ``ARCH:TAG``, ``hf-hub:ID``).
        image: source of the image tower (overrides ``source`` for it).
        text: source of the text tower (overrides ``source``); ``hf`` / ``hf:NAME``
            loads the Hugging Face text model's own pretrained weights.
        partial: accept a tower of which less than ``min_share`` loads.
        min_share: least share of a tower's parameter elements that must load.
        cache_dir: download cache for open_clip pretrained tags (default: open_clip's).
    """

    source: str | None = None
    image: str | None = None
    text: str | None = None
    partial: bool = False
    min_share: float = 0.9
    cache_dir: str | None = None

    def sources(self) -> dict[str, str]:
        """Tower -> source, for the towers that have one."""
        out = {"image": self.image or self.source, "text": self.text or self.source}
        return {k: v for k, v in out.items() if v}

    def __bool__(self) -> bool:
        return bool(self.sources())


def is_reference(value: str) -> bool:
    """True for a pretrained reference (``ARCH:TAG``, ``hf-hub:ID``, ``hf``, ``hf:NAME``), not a path."""
    v = str(value)
    if v == "hf" or v.startswith(("hf-hub:", "hf:")):
        return True
    return ":" in v and not v.startswith(("fixtures:", "/", "~", ".", "$")) and "/" not in v.split(":")[0]


@dataclass
class LossWeights:
    """Loss weights and constants (defaults: the official MMKD-CLIP values).

    Attributes:
        clip: weight of the student's own CLIP (InfoNCE) term.
        fd: weight of feature distillation, applied to ``MSE_img + MSE_txt``.
        icl: weight of interactive contrastive learning.
        icl_scale: the multiplier ``c`` of ICL logits: a number (the official fixed
            ``ln(1/0.07)`` ~ 2.66, not trained), or ``"learned"``: the student's own
            CLIP multiplier ``logit_scale.exp()`` (14.3 at open_clip's init, then
            trained), as CLIP-KD's ICL uses it.
    """

    clip: float = 1.0
    fd: float = 50.0
    icl: float = 1.0
    icl_scale: float | str = math.log(1 / 0.07)

    def icl_multiplier(self, logit_scale: torch.Tensor) -> torch.Tensor | float:
        """The ICL logit multiplier for a student of log-temperature ``logit_scale``."""
        return logit_scale.exp() if self.icl_scale == "learned" else float(self.icl_scale)


def parse_icl_scale(value: float | str) -> float | str:
    """``"learned"`` or a positive number (from a flag or a YAML entry).

    Raises:
        DistillError: anything else (the message names the value and the valid forms).
    """
    if isinstance(value, str) and value.strip().lower() == "learned":
        return "learned"
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise DistillError(f"icl_scale {value!r} is not valid: give a positive number (the official 2.659 = ln(1/0.07), "
                         "or 14.29 = 1/0.07) or 'learned' (the student's own logit scale)")
    return number


@dataclass
class OptimConfig:
    """AdamW + cosine settings (defaults: MMKD-CLIP / open_clip stage 1).

    Attributes:
        lr: peak learning rate.
        weight_decay: decoupled weight decay of the decayed group.
        beta1, beta2, eps: AdamW constants.
        warmup_steps: linear warmup length, in optimizer steps.
        min_lr: floor of the cosine decay.
    """

    lr: float | None = 5e-5
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 2000
    min_lr: float = 0.0


KD_MODES = ("mmkd-clip", "multi")
TEACHER_MASKS = ("valid", "trusted")
ON_NONFINITE = ("stop", "skip")
TEACHER_WEIGHTINGS = ("none", "trust")


@dataclass
class TeacherUse:
    """Which teachers count for which rows in stage 2 (flat names ``teacher_mask``, ``teacher_weight``,
    ``teacher_drop``).

    Attributes:
        mask: ``valid`` (every teacher with features) or ``trusted`` (also trusted by
            ``mmkd store trust``: the official ``available_clips`` derived from the store).
        weight: ``none`` or ``trust``: ``multi`` weighs each row's teacher terms by its
            trust; ``mmkd-clip`` draws a row's teacher with probability proportional to trust.
        drop: ``multi``: UNIC-style teacher dropping, each teacher's terms dropped from a
            step with this probability, the teacher with the highest loss always kept.
    """

    mask: str = "valid"
    weight: str = "none"
    drop: float = 0.0
STAGE_LR = {1: 5e-5, 2: 1e-6}


@dataclass
class DistillConfig:
    """Everything a distill run needs.

    Attributes:
        store: feature store path.
        stage: 1 (CLIP pretraining on the store's image-caption pairs) or 2 (KD).
        student: students entry, open_clip JSON config path or open_clip architecture.
        out: run folder (checkpoints, metrics, export, config).
        kd: stage-2 recipe, ``mmkd-clip`` (official) or ``multi`` (all teachers, heads).
        steps: optimizer steps to run (exclusive with ``epochs``).
        epochs: epochs to run, may be fractional (exclusive with ``steps``).
        batch_size: rows per rank per micro-batch.
        grad_accum: micro-batches per optimizer step.
        optim: AdamW + cosine settings (``lr`` ``None``: the stage's default).
        loss: loss weights and the ICL multiplier.
        grad_clip: max grad norm (``None``/0: off).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or ``fp32``.
        init: where the towers' weights come from (``InitConfig``: ``source`` for both,
            ``image`` / ``text`` per tower, ``partial``, ``min_share``); an entry's
            ``init:`` may be a string (the source of both towers) or that mapping.
        resume: continue from ``<out>/checkpoints/last.pt``.
        stop_at_step: end this invocation after this step (checkpointed), e.g. to fit
            a preemptible time slot; ``--resume`` continues.
        checkpoint_every: steps between checkpoints (also one at the end).
        keep_checkpoints: also keep a ``step-XXXXXXXX.pt`` copy of each checkpoint.
        log_every: steps between metric records.
        seed: seed of data order, augmentation, teacher draws and init.
        num_workers: DataLoader workers per rank.
        buffer_blocks: store blocks shuffled together (bounds reader memory).
        augment: open_clip train-time augmentation (else eval preprocessing).
        decode: student images: ``reduced`` (DCT-reduced JPEG decode + one-call crop/resize,
            :mod:`mmkd.distill.images`) or ``full`` (open_clip's transform on each full decode).
        image_cache: ``auto``: read the store's student image cache (``mmkd store images``) when one
            fits the student's size; ``off``: always the originals.
        views: stage 2: view-matched targets: per (row, epoch) one of the K views the store holds
            (``mmkd extract --views K``); the student sees that view's crop, the KD losses use
            that view's teacher image features (docs/views.md).
        teachers: teachers to use (default: every teacher in the store).
        teacher_weights: ``multi``: teacher -> weight.
        standardize: ``multi``: standardise targets with the store's mean/std attrs.
        head: ``multi``: head kind, ``linear`` or ``mlp``.
        targets: ``mmkd-clip``: target features (``TargetConfig``: ``source`` raw|projected,
            ``projection`` random|pca|ae for raw ones, ``normalize``); flat names
            ``targets``, ``projection``, ``normalize_targets``.
        projection_file: ``mmkd-clip``: file with ``<teacher>.weight`` maps (overrides ``targets.projection``;
            ``projections``, its old name, is still read in entries).
        train_projections: ``mmkd-clip``: learn the maps jointly instead of freezing them.
        max_logit_scale: clamp of the learnable logit scale's exp.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data: where the store's dataset is now, when it moved from where the store
            records it: a path (format and field map are kept, the root found beside it or
            where it was), or a ``datasets:`` name / spec mapping (used whole, so it can give a
            new ``root``); the fingerprint is checked either way.
        progress: show a tqdm bar (rank 0).
        on_nonfinite: what a NaN/Inf does. Rows whose teacher targets are not finite are
            always left out of that teacher's terms (counted, warned once). ``stop`` (default):
            a non-finite loss or gradient ends the run with an error naming the step and the
            batch rows, before the update and without exporting. ``skip``: that step makes no
            update (counted, warned once); the run goes on.
        overwrite: replace the run already in ``out`` when its settings differ (without it
            such a rerun is refused; with the same settings it resumes: :mod:`mmkd.distill.rundir`).
    """

    store: str = ""
    stage: int = 1
    student: str = ""
    out: str = ""
    kd: str = "mmkd-clip"
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 64
    grad_accum: int = 1
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=None))  # type: ignore[arg-type]
    loss: LossWeights = field(default_factory=LossWeights)
    grad_clip: float | None = 1.0
    precision: str = "auto"
    init: InitConfig = field(default_factory=InitConfig)
    resume: bool = False
    stop_at_step: int | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: bool = False
    log_every: int = 10
    seed: int = 0
    num_workers: int = 2
    buffer_blocks: int = 8
    augment: bool = True
    decode: str = "reduced"
    image_cache: str = "auto"
    views: bool = False
    teachers: list[str] | None = None
    teacher_weights: dict[str, float] | None = None
    standardize: bool = False
    head: str = "linear"
    targets: TargetConfig = field(default_factory=TargetConfig)
    projection_file: str | None = None
    train_projections: bool = False
    teachers_cfg: TeacherUse = field(default_factory=TeacherUse)
    max_logit_scale: float = 100.0
    device: str = "auto"
    data: str | dict[str, Any] | None = None
    progress: bool = True
    on_nonfinite: str = "stop"
    overwrite: bool = False
    students_section: dict[str, Any] = field(default_factory=dict, repr=False)
    students_base_dir: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.init, InitConfig):  # a plain source string (or mapping) given directly
            self.init = InitConfig(**self.init) if isinstance(self.init, dict) else InitConfig(source=self.init)

    def validate(self) -> DistillConfig:
        """Check values; fill the stage's default lr.

        Raises:
            ConfigError: a value is missing or out of range (the message names it).
        """
        for name in ("store", "student", "out"):
            if not getattr(self, name):
                raise ConfigError(f"distill: '{name}' is required (pass --{name} or set it in the distill entry)")
        if self.stage not in (1, 2):
            raise ConfigError(f"distill: stage must be 1 or 2, got {self.stage!r}")
        if self.kd not in KD_MODES:
            raise ConfigError(f"distill: kd {self.kd!r} is unknown; valid: {list(KD_MODES)}")
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("distill: give exactly one of steps or epochs "
                              f"(got steps={self.steps}, epochs={self.epochs})")
        if (self.steps is not None and self.steps <= 0) or (self.epochs is not None and self.epochs <= 0):
            raise ConfigError(f"distill: steps/epochs must be positive, got {self.steps}/{self.epochs}")
        for name in ("batch_size", "grad_accum", "checkpoint_every", "log_every", "buffer_blocks"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"distill: {name} must be positive, got {getattr(self, name)}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"distill: precision {self.precision!r} is unknown; use auto, bf16 or fp32")
        if self.on_nonfinite not in ON_NONFINITE:
            raise ConfigError(f"distill: on_nonfinite {self.on_nonfinite!r} is unknown; use one of "
                              f"{list(ON_NONFINITE)}")
        if self.decode not in ("reduced", "full"):
            raise ConfigError(f"distill: decode {self.decode!r} is unknown; use reduced or full")
        if self.image_cache not in ("auto", "off"):
            raise ConfigError(f"distill: image_cache {self.image_cache!r} is unknown; use auto or off")
        if self.views and self.stage != 2:
            raise ConfigError("distill: views gives the student the crops of the teachers' view targets: it applies "
                              f"to stage 2 (--stage 2), not stage {self.stage}; drop --views")
        if self.head not in ("linear", "mlp"):
            raise ConfigError(f"distill: head {self.head!r} is unknown; use linear or mlp")
        if not isinstance(self.targets, TargetConfig):
            self.targets = TargetConfig(**self.targets) if isinstance(self.targets, dict) else TargetConfig(
                source=self.targets)
        if self.targets.source not in TARGET_SOURCES:
            raise ConfigError(f"distill: targets {self.targets.source!r} is unknown; use one of {list(TARGET_SOURCES)}")
        if self.targets.projection not in PROJECTIONS:
            raise ConfigError(f"distill: projection {self.targets.projection!r} is unknown; use one of "
                              f"{list(PROJECTIONS)}")
        if not isinstance(self.teachers_cfg, TeacherUse):
            self.teachers_cfg = TeacherUse(**(self.teachers_cfg or {}))
        tu = self.teachers_cfg
        if tu.mask not in TEACHER_MASKS:
            raise ConfigError(f"distill: teacher_mask {tu.mask!r} is unknown; use one of {list(TEACHER_MASKS)}")
        if tu.weight not in TEACHER_WEIGHTINGS:
            raise ConfigError(f"distill: teacher_weight {tu.weight!r} is unknown; use one of "
                              f"{list(TEACHER_WEIGHTINGS)}")
        if not 0.0 <= float(tu.drop) < 1.0:
            raise ConfigError(f"distill: teacher_drop must be within [0, 1), got {tu.drop}")
        if tu.drop and self.kd != "multi":
            raise ConfigError(f"distill: teacher_drop {tu.drop} applies to --kd multi only (kd is {self.kd!r}); "
                              "drop it or use --kd multi")
        try:
            self.loss.icl_scale = parse_icl_scale(self.loss.icl_scale)
        except ValueError as e:
            raise ConfigError(f"distill: {e}") from None
        if self.optim.lr is None:
            self.optim.lr = STAGE_LR[self.stage]
        return self

    def to_dict(self) -> JSONDict:
        """Plain values, nested as the fields are (for ``config.yaml`` and checkpoints)."""
        d = dataclasses.asdict(self)
        d.pop("students_section")
        d.pop("students_base_dir")
        return d


# flat names (command-line flags, and accepted in entries) of the nested settings
OPTIM_KEYS = {f.name: f.name for f in dataclasses.fields(OptimConfig)}
LOSS_KEYS = {"clip_weight": "clip", "fd_weight": "fd", "icl_weight": "icl", "icl_scale": "icl_scale"}
FIELDS = ({f.name for f in dataclasses.fields(DistillConfig)} - {"students_section", "students_base_dir"}
          | set(OPTIM_KEYS) | set(LOSS_KEYS))
INIT_KEYS = {"init_image": "image", "init_text": "text", "init_partial": "partial", "init_min_share": "min_share",
             "init_cache_dir": "cache_dir"}
TARGET_KEYS = {"projection": "projection", "normalize_targets": "normalize"}
TEACHER_USE_KEYS = {"teacher_mask": "mask", "teacher_weight": "weight", "teacher_drop": "drop"}
FIELDS |= set(INIT_KEYS) | set(TARGET_KEYS) | set(TEACHER_USE_KEYS)
PATH_FIELDS = ("store", "out", "projection_file", "projections", "data")
DEPRECATED_KEYS = {"projections": "projection_file"}  # old name -> name


def _init_path(pipelines: Pipelines, value: JSON, run: str | None, from_entry: bool) -> JSON:
    """Resolve an init source written as a path in an entry (references like ``ARCH:TAG`` stay as they are)."""
    if not isinstance(value, str) or not value or is_reference(value) or not from_entry:
        return value
    return str(resolve_path(pipelines, value, section="distill", entry=run))


def _nest_init(values: dict[str, Any], pipelines: Pipelines, run: str | None, flags: set[str]) -> None:
    """Fold ``init`` (string or mapping) and the flat ``init_*`` keys into one :class:`InitConfig`."""
    raw = values.pop("init", None)
    init = dict(raw) if isinstance(raw, dict) else {"source": raw}
    init["source"] = _init_path(pipelines, init.get("source"), run, "init" not in flags)
    for flat, name in INIT_KEYS.items():
        if flat in values:
            init[name] = values.pop(flat)
    for name in ("image", "text"):
        init[name] = _init_path(pipelines, init.get(name), run, f"init_{name}" not in flags)
    valid = {f.name for f in dataclasses.fields(InitConfig)}
    unknown = sorted(set(init) - valid)
    if unknown:
        raise ConfigError(f"distill: unknown init key(s) {unknown}; valid: {sorted(valid)}")
    if not 0.0 <= float(init.get("min_share", 0.9)) <= 1.0:
        raise ConfigError(f"distill: init min_share must be within [0, 1], got {init['min_share']}")
    values["init"] = InitConfig(**init)


def _fold(values: dict[str, Any], key: str, flat_keys: dict[str, str], cls: type,
          scalar: str | None = None) -> dict[str, Any]:
    """``values[key]`` (a mapping; a plain value is ``{scalar: value}`` where ``scalar`` is given) with the
    flat keys of ``flat_keys`` popped from ``values`` into it (flat keys win), checked against ``cls``'s fields.

    Raises:
        ConfigError: a key ``cls`` does not have (the message lists the valid ones).
    """
    raw = values.pop(key, None)
    nested = {scalar: raw} if scalar and raw is not None and not isinstance(raw, dict) else dict(raw or {})
    for flat, name in flat_keys.items():
        if flat in values:
            nested[name] = values.pop(flat)
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(nested) - valid)
    if unknown:
        raise ConfigError(f"distill: unknown {key} key(s) {unknown}; valid: {sorted(valid)}")
    return nested


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    """Fold the flat optimizer / loss / target / teacher-use keys into their nested configs (flat keys win)."""
    optim = _fold(values, "optim", OPTIM_KEYS, OptimConfig)
    loss = _fold(values, "loss", LOSS_KEYS, LossWeights)
    values["targets"] = TargetConfig(**_fold(values, "targets", TARGET_KEYS, TargetConfig, scalar="source"))
    values["teachers_cfg"] = TeacherUse(**_fold(values, "teachers_cfg", TEACHER_USE_KEYS, TeacherUse))
    values["optim"] = OptimConfig(**{"lr": None, **optim})
    values["loss"] = LossWeights(**loss)
    return values


def load_distill_config(pipelines: Pipelines | None, run: str | None,
                        overrides: JSONDict) -> DistillConfig:
    """Resolve a run's config from a parsed pipelines file, a ``distill:`` entry name and overrides.

    Args:
        pipelines: the mapping from :func:`mmkd.config.load_pipelines` (or ``None``).
        run: name of the ``distill:`` entry, or ``None`` for overrides only.
        overrides: field -> value (flat or nested names); ``None`` values are ignored (flag not given).

    Raises:
        ConfigError: unknown entry or key, or invalid values.
    """
    pipelines = Pipelines.of(pipelines)
    values = merge_entry(pipelines, "distill", run, overrides, allowed=FIELDS | {"optim", "loss"} | set(DEPRECATED_KEYS),
                         path_keys=PATH_FIELDS, what="distill")
    for old, new in DEPRECATED_KEYS.items():
        if old in values:
            values.setdefault(new, values.pop(old))
    student = values.get("student")
    if run is not None and student and student not in section(pipelines, "students") and str(student).endswith(
            ".json") and "student" not in {k for k, v in overrides.items() if v is not None}:
        values["student"] = str(resolve_path(pipelines, student, section="distill", entry=run))
    # a --steps flag replaces an entry's epochs bound, and --epochs its steps
    if overrides.get("steps") is not None:
        values["epochs"] = None
    if overrides.get("epochs") is not None:
        values["steps"] = None
    _nest_init(values, pipelines, run, {k for k, v in overrides.items() if v is not None})
    if isinstance(values.get("data"), str) and values["data"] in section(pipelines, "datasets"):
        values["data"] = resolve_data(values["data"], pipelines).to_dict()
    cfg = DistillConfig(**_nest(values))
    cfg.students_section = section(pipelines, "students")
    if pipelines.path is not None:
        cfg.students_base_dir = str(pipelines.path.parent)
    return cfg.validate()
