"""Teacher registry and loaders.

Specs come from the ``teachers:`` section of ``pipelines.yaml``
(:func:`teachers_from_config`, :func:`get_teacher_spec`); :func:`load_teacher`
builds a :class:`Teacher` whose ``encode_images`` / ``encode_texts`` return
L2-normalised float32 embeddings with the teacher's own preprocessing and tokenizer.
"""

import importlib
from typing import Any

from mmkd.config import Pipelines, load_pipelines
from mmkd.jsontypes import JSONDict
from mmkd.teachers.spec import (
    LOADERS, TeacherError, TeacherSpec, UnknownTeacherError, get_teacher_spec, teachers_from_config,
)
from mmkd.teachers.weights import WeightsNotFoundError, WeightsStatus, weights_status

# The torch-heavy parts load on first use, so reading specs (CLI, Ray driver) stays light.
_LAZY = {"Teacher": "mmkd.teachers.base", "Preprocessing": "mmkd.teachers.base", "to_mode": "mmkd.teachers.base",
         "load_teacher": "mmkd.teachers.loaders"}

__all__ = [
    "LOADERS", "Preprocessing", "Teacher", "TeacherError", "TeacherSpec", "UnknownTeacherError",
    "WeightsNotFoundError", "WeightsStatus", "get_teacher_spec", "list_teachers", "load_teacher",
    "teachers_from_config", "weights_status",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_teachers(pipelines: Pipelines | None = None) -> list[JSONDict]:
    """One row per declared teacher: name, loader, weights, dim, available, where, missing.

    Args:
        pipelines: a loaded pipelines file; ``None`` loads the default one.
    """
    specs = teachers_from_config(pipelines if pipelines is not None else load_pipelines(None))
    rows = []
    for name, spec in specs.items():
        status = weights_status(spec)
        rows.append({"name": name, "loader": spec.loader, "weights": spec.weights, "dim": spec.dim,
                     "available": status.available, "where": status.where, "missing": status.missing})
    return rows
