"""``--out`` of an existing run: never overwritten by accident.

``mmkd distill --out DIR`` where DIR already holds a run (its ``config.yaml``):

* the same settings: the run is resumed from its last checkpoint, or, when it has
  finished (its export is there), left as it is;
* other settings: refused with one line naming them; ``--overwrite`` replaces the run.

Settings that do not change what is trained (how often to log or checkpoint, where
the data now is, the device, workers) may differ.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from mmkd.distill.config import PATH_FIELDS, DistillConfig
from mmkd.distill.rundir import CONFIG, EXPORT_WEIGHTS, RunDir
from mmkd.errors import DistillError

logger = logging.getLogger(__name__)

# settings that do not change the weights a run trains, so a rerun may change them
FREE = frozenset({"resume", "stop_at_step", "progress", "num_workers", "checkpoint_every", "log_every",
                  "keep_checkpoints", "device", "data", "on_nonfinite", "overwrite"})


class RunExistsError(DistillError):
    """``--out`` holds another run (or other files); nothing was written."""


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("teacher_weights",):
            out.update(_flat(v, f"{key}."))
        elif k in PATH_FIELDS and isinstance(v, str) and v:
            out[key] = os.path.abspath(v)
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"lr 0.001 -> 0.002"`` for each setting (nested ones dotted) that differs, the free ones aside."""
    a, b = _flat(before), _flat(now)
    keys = sorted(k for k in set(a) | set(b) if k.split(".")[0] not in FREE and a.get(k) != b.get(k))
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def is_finished(out: Path) -> bool:
    """The run exported its student (done only at its last step)."""
    return (RunDir(out).export / EXPORT_WEIGHTS).is_file()


def prepare_out(cfg: DistillConfig) -> str:
    """Decide what to do with ``cfg.out`` before anything is written.

    Returns:
        ``"new"`` (start; with ``overwrite`` the old run is removed when the new one starts
        writing: :func:`clear_run`), ``"resume"`` (``cfg.resume`` is set) or ``"finished"``
        (the same run already finished: nothing to do).

    Raises:
        RunExistsError: ``out`` holds a run with other settings, or files that are no run.
    """
    out = Path(cfg.out)
    run = RunDir(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        if cfg.resume:
            return "resume"  # load_checkpoint names the missing checkpoint
        return "new"
    if not run.config.is_file():
        raise RunExistsError(f"distill: --out {out} is not empty and holds no distill run (no {CONFIG}); "
                             "choose a new or empty folder (nothing was written)")
    if cfg.overwrite:
        return "new"
    try:
        before = (yaml.safe_load(run.config.read_text()) or {}).get("distill") or {}
    except (OSError, yaml.YAMLError) as e:
        raise RunExistsError(f"distill: cannot read {run.config} ({e}); pass --overwrite to replace the run "
                             "in --out, or choose another --out") from e
    diff = differences(before, cfg.to_dict())
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise RunExistsError(f"distill: --out {out} holds a run with other settings ({shown}); rerun with its "
                             "settings to resume it, pass --overwrite to replace it, or choose another --out "
                             "(nothing was written)")
    if is_finished(out) and not cfg.resume:
        return "finished"
    if run.last_checkpoint.is_file():
        cfg.resume = True
        return "resume"
    return "new"  # killed before its first checkpoint: start again


def clear_run(out: Path) -> None:
    """Remove the run in ``out`` (``--overwrite``), keeping the folder."""
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    logger.warning("--overwrite: the earlier run in %s was removed", out)
