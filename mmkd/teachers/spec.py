"""Teacher specs: the ``teachers:`` section of ``pipelines.yaml`` as typed dataclasses.

A spec is small, picklable and JSON-able: it is what travels to a Ray actor, which
then loads the model itself (:func:`mmkd.teachers.load_teacher`).

The smallest valid entry is ``{NAME: {loader: open_clip, weights: WEIGHTS}}``;
every other field overrides what would otherwise be read from the model.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmkd.errors import MMKDError
from mmkd.jsontypes import JSON, JSONDict
from mmkd.config import Pipelines, expand as _expand, load_pipelines, resolve_path, section

LOADERS = ("open_clip", "transformers", "custom")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
RESIZE_MODES = ("shortest", "longest", "squash", "pad_square")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class TeacherError(MMKDError, ValueError):
    """A teacher spec is invalid, or a teacher cannot be built from it."""


class UnknownTeacherError(TeacherError, KeyError):
    """A teacher name is not declared; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class TeacherSpec:
    """Everything needed to build one teacher, and nothing live.

    Attributes:
        name: registry key (``biomedclip``, ...).
        loader: ``open_clip``, ``transformers`` or ``custom``.
        weights: ``hf-hub:org/repo``, ``local-dir:/path``, a checkpoint file, or (for
            ``transformers``) a hub id ``org/repo`` or a ``save_pretrained`` folder.
            Env vars (``${VAR:-default}`` too), ``~`` and paths relative to the
            pipelines file are resolved when the spec is parsed.
        arch: open_clip architecture name for checkpoint files (``ViT-B-16``), or the
            custom architecture (``unimed_clip``, ``pmc_clip``, ``medclip``).
        model_config: architecture config for ``custom`` (see
            :mod:`mmkd.teachers.custom_models`), or extra kwargs for open_clip.
        dim: embedding dim; checked against the model when given.
        image_size, mean, std, interpolation, resize_mode: image preprocessing
            overrides (default: read from the model / its processor).
        grayscale: the model takes 1-channel input (images converted to ``L``).
        tokenizer: tokenizer id or folder (default: the model's own).
        context_length: max tokens; longer captions are truncated.
        trust_remote_code: allow hub code for ``transformers`` (never by default).
        revision: hub revision (branch, tag or commit) for ``transformers`` ids.
        license: licence of the weights.
        source: where the weights come from and how to get them.
        upstream: the code this teacher reproduces: ``{repo, file, function}`` (the
            authors' repository, the file and the function that computes the embedding),
            and optionally ``commit``.
        memory: GiB of device memory the teacher needs while extracting (weights and
            activations); default: estimated from its weights' size (parameter count)
            and input size. Decides which teachers share a GPU in one extract pass.
    """

    name: str
    loader: str
    weights: str
    arch: str | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    dim: int | None = None
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    resize_mode: str | None = None
    grayscale: bool = False
    tokenizer: str | None = None
    context_length: int | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    license: str = ""
    source: str = ""
    upstream: dict[str, str] = field(default_factory=dict)
    memory: float | None = None

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def weights_kind(self) -> str:
        """``hf-hub``, ``local-dir``, ``file``, ``hub-id`` (transformers) or ``dir`` (transformers)."""
        return weights_kind(self.loader, self.weights)

    def to_dict(self) -> JSONDict:
        """A JSON-able dict that :meth:`from_dict` turns back into an equal spec."""
        d = dataclasses.asdict(self)
        for key in ("mean", "std"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, data: JSONDict) -> "TeacherSpec":
        """Build a spec from :meth:`to_dict` output (or a pipelines entry plus ``name``)."""
        return _from_entry(str(data.get("name", "")), {k: v for k, v in data.items() if k != "name"}, None)


FIELDS = tuple(f.name for f in dataclasses.fields(TeacherSpec) if f.name != "name")


def weights_kind(loader: str, weights: str) -> str:
    """Classify a weights string (see :attr:`TeacherSpec.weights_kind`)."""
    if weights.startswith("hf-hub:"):
        return "hf-hub"
    if weights.startswith("local-dir:"):
        return "local-dir"
    if loader == "transformers":
        if Path(weights).is_dir() or not _HUB_ID.match(weights):
            return "dir"
        return "hub-id"
    return "file"


def expand(value: str) -> str:
    """Expand ``${VAR:-default}``, ``$VAR``/``${VAR}`` and ``~`` (:func:`mmkd.config.expand`, one expander)."""
    return _expand(value)


def _resolve_weights(loader: str, weights: str, base: Path | None) -> str:
    weights = expand(weights)
    kind = weights_kind(loader, weights)
    if kind == "hub-id" or kind == "hf-hub":
        return weights
    prefix = "local-dir:" if kind == "local-dir" else ""
    path = Path(weights[len(prefix):])
    if not path.is_absolute() and base is not None:
        path = base / path
    return prefix + str(path)


def _from_entry(name: str, entry: JSON, base: Path | None) -> TeacherSpec:
    if not isinstance(entry, dict):
        raise TeacherError(f"teacher {name!r}: entry must be a mapping with at least loader and weights, got {entry!r}")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise TeacherError(f"teacher {name!r}: unknown keys {unknown}; valid keys: {list(FIELDS)}")
    for key in ("loader", "weights"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise TeacherError(f"teacher {name!r}: {key!r} is required (a non-empty string), got {entry.get(key)!r}")
    kwargs = dict(entry)
    kwargs["weights"] = _resolve_weights(entry["loader"], entry["weights"], base)
    if isinstance(kwargs.get("tokenizer"), str):
        tok = expand(kwargs["tokenizer"])
        if base is not None and tok.startswith("."):
            tok = str(base / tok)
        kwargs["tokenizer"] = tok
    for key in ("mean", "std"):
        if isinstance(kwargs.get(key), (list, tuple)):
            kwargs[key] = tuple(float(v) for v in kwargs[key])
    for key in ("model_config", "upstream"):
        if kwargs.get(key) is None:
            kwargs[key] = {}
    return TeacherSpec(name=name, **kwargs)


def _validate(s: TeacherSpec) -> None:
    where = f"teacher {s.name!r}"
    if not s.name or not isinstance(s.name, str):
        raise TeacherError(f"teacher name must be a non-empty string, got {s.name!r}")
    if s.loader not in LOADERS:
        raise TeacherError(f"{where}: unknown loader {s.loader!r}; valid loaders: {list(LOADERS)}")
    kind = s.weights_kind
    if s.loader == "custom" and kind != "file":
        raise TeacherError(f"{where}: loader 'custom' needs a local checkpoint file as weights, got {s.weights!r}")
    if s.loader in ("open_clip", "custom") and kind == "file" and not s.arch:
        raise TeacherError(f"{where}: weights {s.weights!r} is a checkpoint file, so 'arch' is required "
                           "(an open_clip model name, or a custom architecture)")
    if s.loader == "transformers" and kind in ("hf-hub", "local-dir"):
        raise TeacherError(f"{where}: loader 'transformers' takes a hub id 'org/repo' or a save_pretrained folder, "
                           f"not {s.weights!r}")
    for key in ("dim", "image_size", "context_length"):
        v = getattr(s, key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise TeacherError(f"{where}: {key} must be a positive integer, got {v!r}")
    _validate_norm(s, where)
    if s.memory is not None and (isinstance(s.memory, bool) or not isinstance(s.memory, int | float) or s.memory <= 0):
        raise TeacherError(f"{where}: memory must be a number of GiB > 0, got {s.memory!r}")
    if s.interpolation is not None and s.interpolation not in INTERPOLATIONS:
        raise TeacherError(f"{where}: interpolation {s.interpolation!r} not in {list(INTERPOLATIONS)}")
    if s.resize_mode is not None and s.resize_mode not in RESIZE_MODES:
        raise TeacherError(f"{where}: resize_mode {s.resize_mode!r} not in {list(RESIZE_MODES)}")
    for key in ("grayscale", "trust_remote_code"):
        if not isinstance(getattr(s, key), bool):
            raise TeacherError(f"{where}: {key} must be true or false, got {getattr(s, key)!r}")
    if not isinstance(s.model_config, dict):
        raise TeacherError(f"{where}: model_config must be a mapping, got {s.model_config!r}")
    _validate_upstream(s, where)


UPSTREAM_KEYS = ("repo", "file", "function")


def _validate_upstream(s: TeacherSpec, where: str) -> None:
    if not isinstance(s.upstream, dict):
        raise TeacherError(f"{where}: upstream must be a mapping {{repo, file, function}}, got {s.upstream!r}")
    if not s.upstream:
        return
    unknown = sorted(set(s.upstream) - set(UPSTREAM_KEYS) - {"commit"})
    absent = [k for k in UPSTREAM_KEYS if not isinstance(s.upstream.get(k), str) or not s.upstream[k]]
    if unknown or absent:
        raise TeacherError(f"{where}: upstream needs non-empty strings {list(UPSTREAM_KEYS)} (and optionally "
                           f"commit); missing {absent}, unknown keys {unknown}")


def _validate_norm(s: TeacherSpec, where: str) -> None:
    channels = 1 if s.grayscale else 3
    for key in ("mean", "std"):
        v = getattr(s, key)
        if v is None:
            continue
        if len(v) not in (1, channels):
            raise TeacherError(f"{where}: {key} needs 1 or {channels} values, got {list(v)}")
        if key == "std" and min(v) <= 0:
            raise TeacherError(f"{where}: std values must be > 0, got {list(v)}")
    if (s.mean is None) != (s.std is None):
        raise TeacherError(f"{where}: give both mean and std, or neither")


def teachers_from_config(pipelines: Pipelines) -> dict[str, TeacherSpec]:
    """Parse and validate the ``teachers:`` section of a loaded pipelines file.

    Args:
        pipelines: output of :func:`mmkd.config.load_pipelines` (relative weights paths
            resolve against that file's folder).

    Returns:
        name -> spec, in file order.

    Raises:
        TeacherError: an entry is malformed; the message names the teacher and key.
    """
    # each entry's relative paths resolve against the file that declared it (mmkd.config.resolve_path)
    pipelines = Pipelines.of(pipelines)
    return {str(name): _from_entry(str(name), entry, resolve_path(pipelines, ".", section="teachers", entry=str(name))
                                   if pipelines.path is not None else None)
            for name, entry in section(pipelines, "teachers").items()}


def teachers_in_scope(pipelines: Pipelines, names: list[str] | tuple[str, ...] = ()) -> dict[str, TeacherSpec]:
    """The teachers a command covers: ``names`` when given; else the ones the user's own pipelines
    file declares; else every declared (shipped) one. What ``--all-teachers`` and ``mmkd teachers --check``
    cover.

    Raises:
        UnknownTeacherError: a name is not declared.
    """
    specs = teachers_from_config(pipelines)
    if names:
        return {n: get_teacher_spec(n, pipelines) for n in dict.fromkeys(names)}
    own = Pipelines.of(pipelines).own.get("teachers")
    return {n: s for n, s in specs.items() if not own or n in own}


def get_teacher_spec(name: str, pipelines: Pipelines | None = None) -> TeacherSpec:
    """One teacher spec by name.

    Args:
        name: the teacher's key in ``teachers:``.
        pipelines: a loaded pipelines file; ``None`` loads the default one.

    Raises:
        UnknownTeacherError: ``name`` is not declared; the message lists valid names.
    """
    specs = teachers_from_config(pipelines if pipelines is not None else load_pipelines(None))
    if name not in specs:
        where = Pipelines.of(pipelines).where
        raise UnknownTeacherError(
            f"unknown teacher {name!r}; teachers declared in {where}: {sorted(specs)}. "
            "Add an entry under 'teachers:' or pick one of these.")
    return specs[name]
