"""``pipelines.yaml``: the one config file for teachers, datasets, students, jobs and eval sets.

mmkd ships a pipelines file (``mmkd/pipelines.yaml``: the nine teachers, the
students, the eval sets and example jobs). A user's file **extends** its
registries (:data:`INHERITED`): its entries are added to the shipped ones, and an
entry of the same name replaces the shipped one; jobs (``extract``, ``distill``,
``eval``) come from the user's file alone. The user's file is ``--pipeline FILE``, else
``$MMKD_PIPELINES``, else ``./pipelines.yaml``.

Each section is owned and validated by one stage: ``teachers`` (mmkd.extract),
``datasets`` (mmkd.data), ``extract``, ``students`` and ``distill``
(mmkd.distill), ``eval_sets`` and ``eval`` (mmkd.eval). This module finds, reads
and merges the files, resolves paths (:func:`resolve_path`) and merges a named
entry with command-line flags (:func:`merge_entry`), the same way for every stage.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import yaml

from mmkd.errors import MMKDError
from mmkd.jsontypes import JSON, JSONDict


if TYPE_CHECKING:
    from upath import UPath

# what :func:`as_path` answers: a local ``Path``, or a ``UPath`` over fsspec for a URL
AnyPath: TypeAlias = "Path | UPath"
# fsspec ``storage_options`` (endpoint, credentials, client settings), as a dataset spec holds them
StorageOptions: TypeAlias = "Mapping[str, object]"

@dataclass(frozen=True)
class Pipelines(Mapping[str, JSON]):
    """A parsed pipelines file: its sections of named entries, and where each entry came from.

    Reads as the mapping the YAML holds (``cfg["teachers"]``, ``cfg.get("datasets")``);
    what the merge of the shipped file and the user's knows besides sits in fields,
    not in keys of that mapping.

    Attributes:
        sections: top-level key -> value (``version``, and each section's name -> entry).
        path: the user's file (the shipped one when there is none); ``None`` for a
            mapping built in code.
        bases: ``(section, entry)`` -> the folder that entry's relative paths resolve
            against (its file's folder; the working directory for shipped entries, whose
            relative paths are outputs such as ``stores/...``).
        own: section -> the entry names the user's own file declares.
    """

    sections: dict[str, JSON] = field(default_factory=dict)
    path: Path | None = None
    bases: dict[tuple[str, str], Path] = field(default_factory=dict, repr=False)
    own: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __getitem__(self, key: str) -> JSON:
        return self.sections[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.sections)

    def __len__(self) -> int:
        return len(self.sections)

    @classmethod
    def of(cls, value: Mapping[str, JSON] | None) -> Pipelines:
        """``value`` as a :class:`Pipelines`: kept when it is one, else a mapping built in code (no file)."""
        if isinstance(value, Pipelines):
            return value
        return cls(dict(value or {}))

    @property
    def where(self) -> str:
        """The file, for messages."""
        return str(self.path) if self.path is not None else "the pipelines given"


KNOWN_SECTIONS = ("version", "teachers", "datasets", "extract", "students", "distill", "eval_sets", "eval")
# what a user's file inherits from the shipped one: the registries, not the example jobs
INHERITED = ("teachers", "datasets", "students", "eval_sets")
DEFAULT_NAME = "pipelines.yaml"
SHIPPED = Path(__file__).resolve().parent / DEFAULT_NAME
FIXTURES_PREFIX = "fixtures:"
_ENV_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# schemes that are not fsspec filesystems: synthetic stores, web pages named in docs
NOT_FSSPEC = ("synthetic", "http", "https")


class ConfigError(MMKDError, ValueError):
    """A pipelines file is missing, unreadable or malformed, or a value in it is invalid."""


def default_pipelines_path() -> Path | None:
    """The user's pipelines file: ``$MMKD_PIPELINES``, else ``./pipelines.yaml``, else ``None`` (shipped only)."""
    env = os.environ.get("MMKD_PIPELINES")
    if env:
        return Path(env)
    cwd = Path.cwd() / DEFAULT_NAME
    return cwd if cwd.is_file() else None


def load_pipelines(path: str | os.PathLike | None = None) -> Pipelines:
    """Read the shipped pipelines file and the user's, the user's extending the shipped one.

    Args:
        path: the user's file; ``None`` picks :func:`default_pipelines_path`.

    Returns:
        The merged file: each entry from the file that declares it last, with that file's
        folder as its base for relative paths (:class:`Pipelines`).

    Raises:
        ConfigError: the file is absent, not YAML, or has unknown top-level keys.
    """
    user = Path(path) if path is not None else default_pipelines_path()
    if user is not None and not user.is_file():
        raise ConfigError(f"pipelines file {str(user)!r} not found; pass --pipeline FILE or create {DEFAULT_NAME}")
    merged: dict[str, JSON] = {}
    bases: dict[tuple[str, str], Path] = {}
    own: dict[str, list[str]] = {}
    files = [SHIPPED] if SHIPPED.is_file() else []
    if user is not None and (not files or user.resolve() != SHIPPED):
        files.append(user)
    if not files:
        raise ConfigError(f"no pipelines file: the shipped {SHIPPED} is missing and none was given (--pipeline FILE)")
    for p in files:
        data = _read_pipelines(p)
        shipped_only = p == SHIPPED and len(files) > 1
        base = Path.cwd() if p == SHIPPED else p.resolve().parent
        for key, value in data.items():
            if key == "version":
                merged.setdefault(key, value)
                continue
            if shipped_only and key not in INHERITED:
                continue
            if p == files[-1]:
                own[key] = [str(n) for n in (value or {})]
            into = merged.setdefault(key, {})
            for name, entry in (value or {}).items():
                into[name] = entry
                bases[(key, str(name))] = base
    return Pipelines(merged, path=files[-1].resolve(), bases=bases, own=own)


def _read_pipelines(p: Path) -> Pipelines:
    data = read_yaml_mapping(p, "pipelines file")
    unknown = sorted(set(data) - set(KNOWN_SECTIONS))
    if unknown:
        raise ConfigError(
            f"pipelines file {str(p)!r} has unknown top-level keys {unknown}; valid keys: {list(KNOWN_SECTIONS)}"
        )
    for key, value in data.items():
        if key != "version" and value is not None and not isinstance(value, dict):
            raise ConfigError(f"section {key!r} in {str(p)!r} must be a mapping of name -> entry")
    return data


def read_yaml_mapping(path: Path, what: str) -> JSONDict:
    """Parse a YAML (or JSON) file that must hold a mapping; an empty file is ``{}``.

    Raises:
        ConfigError: not valid YAML, or not a mapping at top level (names ``what`` and the path).
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping at top level, got {type(data).__name__}")
    return data


def section(pipelines: Pipelines, name: str) -> JSONDict:
    """One top-level section (empty mapping when absent)."""
    return dict(pipelines.get(name) or {})


def expand(value: str) -> str:
    """Expand ``${VAR:-default}``, ``$VAR`` / ``${VAR}`` and ``~`` in a string."""
    value = _ENV_DEFAULT.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), str(value))
    return os.path.expanduser(os.path.expandvars(value))


def fixtures_root() -> Path:
    """Where ``fixtures:`` paths point: ``$MMKD_FIXTURES`` (``--fixtures DIR`` sets it), else ``../shared/fixtures``
    beside a source checkout of mmkd."""
    env = os.environ.get("MMKD_FIXTURES")
    return Path(expand(env)) if env else SHIPPED.parents[2] / "shared" / "fixtures"


def is_url(value: object) -> bool:
    """True for an fsspec URL (``s3://``, ``gs://``, ``memory://``...); ``file://`` and plain paths are local."""
    m = _URL.match(str(value)) if isinstance(value, (str, os.PathLike)) else None
    return bool(m) and m.group(1).lower() not in ("file", "local", *NOT_FSSPEC)


def as_path(value: str | os.PathLike, storage_options: StorageOptions | None = None) -> AnyPath:
    """A local ``Path``, or a ``upath.UPath`` over fsspec for a URL (``s3://bucket/key``).

    A ``UPath`` has the ``pathlib`` API (``/``, ``read_bytes``, ``exists``, ``glob``...)
    and its ``.fs`` is the fsspec filesystem; credentials and endpoint come from
    ``storage_options``, else the provider's own chain (for S3: ``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``..., ``AWS_PROFILE``). Paths already of either kind are kept.
    """
    if not isinstance(value, (str, Path)) and hasattr(value, "protocol"):
        return value  # already a UPath
    text = str(value)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if not is_url(text):
        return Path(text)
    from upath import UPath  # fsspec's pathlib: imported only when a URL is used

    return UPath(text, **dict(storage_options or {}))


def is_remote(path: object) -> bool:
    """True when ``path`` (from :func:`as_path`) lives on an fsspec filesystem other than local disk."""
    return not isinstance(path, Path) and hasattr(path, "protocol")


def resolve_path(pipelines: Pipelines | None, value: str | os.PathLike, *, section: str | None = None,
                 entry: str | None = None, base: Path | None = None) -> Path:
    """Resolve a path written in a pipelines file (or a spec file), the one way every stage does it.

    ``${VAR:-default}``, ``$VAR`` and ``~`` are expanded; ``fixtures:REL`` is
    ``REL`` under :func:`fixtures_root`; a relative path is relative to ``base``,
    else to the folder of the file that declared ``section.entry``, else to the
    user's pipelines file's folder, else to the working directory.
    """
    text = expand(str(value))
    if is_url(text):
        return as_path(text)
    if text.startswith(FIXTURES_PREFIX):
        return fixtures_root() / text[len(FIXTURES_PREFIX):]
    p = Path(text)
    if p.is_absolute():
        return p
    if base is None and pipelines is not None:
        pipelines = Pipelines.of(pipelines)
        if section is not None and entry is not None and (section, entry) in pipelines.bases:
            base = pipelines.bases[(section, entry)]
        elif pipelines.path is not None:
            base = pipelines.path.parent
    return (base or Path.cwd()) / p


def named_entry(pipelines: Pipelines, section_name: str, name: str, *, what: str | None = None) -> JSONDict:
    """The entry ``name`` of a section, as a new dict.

    Raises:
        ConfigError: no such entry (the message lists the declared ones and where).
    """
    entries = section(pipelines, section_name)
    if name not in entries:
        raise ConfigError(f"unknown {what or section_name} {name!r}; entries under `{section_name}:` "
                          f"in {Pipelines.of(pipelines).where}: {sorted(entries)}")
    entry = entries[name]
    if entry is not None and not isinstance(entry, dict):
        raise ConfigError(f"`{section_name}: {name}` must be a mapping, got {entry!r}")
    return dict(entry or {})


def merge_entry(pipelines: Pipelines | None, section_name: str, name: str | None, flags: Mapping[str, JSON], *,
                allowed: Iterable[str], path_keys: Iterable[str] = (), what: str | None = None) -> JSONDict:
    """A named entry merged with command-line flags: the one merge every stage uses.

    Later wins: the entry's values, then each flag that was given (not ``None``).
    Paths in the entry (``path_keys``) resolve against the file that declared it;
    paths given as flags resolve against the working directory.

    Raises:
        ConfigError: unknown entry, or unknown keys in it or among the flags.
    """
    allowed = set(allowed)
    values: dict[str, Any] = {}
    label = what or section_name
    if name is not None:
        values = named_entry(pipelines or {}, section_name, name, what=what)
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ConfigError(f"{label} {name!r}: unknown keys {unknown}; valid keys: {sorted(allowed)}")
        for key in path_keys:
            if isinstance(values.get(key), str) and values[key]:
                values[key] = str(resolve_path(pipelines, values[key], section=section_name, entry=name))
    given = {k: v for k, v in flags.items() if v is not None}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(f"{label}: unknown option(s) {unknown}; valid: {sorted(allowed)}")
    values.update(given)
    return values


def resolve_device(device: str | None) -> str:
    """``auto``/``None`` -> ``cuda`` when available else ``cpu``; ``cuda``/``cuda:N``/``cpu`` checked.

    Raises:
        ConfigError: an unknown device, or ``cuda`` asked for on a machine without one.
    """
    value = (device or "auto").strip().lower()
    if value not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", value):
        raise ConfigError(f"device {device!r} is unknown; use auto, cpu, cuda or cuda:N")
    if value == "cpu":
        return value
    import torch

    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device here; use --device cpu or auto")
    return value
