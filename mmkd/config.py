"""Loading ``pipelines.yaml``: the one config file for teachers, datasets and jobs.

The file has top-level sections, each owned and validated by one stage:
``teachers`` and ``datasets`` and ``extract`` (mmkd.extract), ``distill``
(mmkd.distill), ``eval`` (mmkd.eval). This module only finds, reads and checks the
top level; the stages turn their section into typed dataclasses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

KNOWN_SECTIONS = ("version", "teachers", "datasets", "extract", "students", "distill", "eval_sets", "eval")
DEFAULT_NAME = "pipelines.yaml"


class ConfigError(ValueError):
    """A pipelines file is missing, unreadable or malformed."""


def default_pipelines_path() -> Path:
    """``$MMKD_PIPELINES``, else ``./pipelines.yaml``, else the one shipped at the repo root."""
    env = os.environ.get("MMKD_PIPELINES")
    if env:
        return Path(env)
    cwd = Path.cwd() / DEFAULT_NAME
    if cwd.is_file():
        return cwd
    return Path(__file__).resolve().parents[1] / DEFAULT_NAME


def load_pipelines(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read a pipelines file and check its top level.

    Args:
        path: the file; ``None`` picks :func:`default_pipelines_path`.

    Returns:
        The parsed mapping, with ``_path`` set to the resolved file path (relative
        paths inside the file are resolved against its folder by the stages).

    Raises:
        ConfigError: the file is absent, not YAML, or has unknown top-level keys.
    """
    p = Path(path) if path is not None else default_pipelines_path()
    if not p.is_file():
        raise ConfigError(f"pipelines file {str(p)!r} not found; pass --pipeline FILE or create {DEFAULT_NAME}")
    data = read_yaml_mapping(p, "pipelines file")
    unknown = sorted(set(data) - set(KNOWN_SECTIONS))
    if unknown:
        raise ConfigError(
            f"pipelines file {str(p)!r} has unknown top-level keys {unknown}; valid keys: {list(KNOWN_SECTIONS)}"
        )
    for key, value in data.items():
        if key != "version" and value is not None and not isinstance(value, dict):
            raise ConfigError(f"section {key!r} in {str(p)!r} must be a mapping of name -> entry")
    data["_path"] = str(p.resolve())
    return data


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """Parse a YAML (or JSON) file that must hold a mapping; an empty file is ``{}``.

    Raises:
        ConfigError: not valid YAML, or not a mapping at top level (names ``what`` and the path).
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping at top level, got {type(data).__name__}")
    return data


def section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """One top-level section (empty mapping when absent)."""
    return dict(cfg.get(name) or {})


def resolve_path(cfg: dict[str, Any], value: str | os.PathLike) -> Path:
    """Resolve a path written in the pipelines file against that file's folder (``~`` and env vars expanded)."""
    p = Path(os.path.expandvars(os.path.expanduser(str(value))))
    if p.is_absolute() or "_path" not in cfg:
        return p
    return Path(cfg["_path"]).parent / p
