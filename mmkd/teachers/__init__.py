"""Teacher registry and loaders.

Specs come from the ``teachers:`` section of ``pipelines.yaml``
(:func:`teachers_from_config`, :func:`get_teacher_spec`); :func:`load_teacher`
builds a :class:`Teacher` whose ``encode_images`` / ``encode_texts`` return
L2-normalised float32 embeddings with the teacher's own preprocessing and tokenizer.
"""

from mmkd.teachers.spec import (
    LOADERS, TeacherError, TeacherSpec, UnknownTeacherError, get_teacher_spec, teachers_from_config,
)
from mmkd.teachers.weights import WeightsNotFoundError, WeightsStatus, weights_status

__all__ = [
    "LOADERS", "Preprocessing", "Teacher", "TeacherError", "TeacherSpec", "UnknownTeacherError",
    "WeightsNotFoundError", "WeightsStatus", "get_teacher_spec", "list_teachers", "load_teacher",
    "teachers_from_config", "weights_status",
]


def __getattr__(name: str):
    # torch-heavy parts load on first use, so reading specs (CLI, Ray driver) stays light.
    if name in ("Teacher", "Preprocessing", "to_mode"):
        from mmkd.teachers import base

        return getattr(base, name)
    if name == "load_teacher":
        from mmkd.teachers.loaders import load_teacher

        return load_teacher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_teachers(cfg: dict | None = None) -> list[dict]:
    """One row per declared teacher: name, loader, weights, dim, available, where, missing.

    Args:
        cfg: a loaded pipelines file; ``None`` loads the default one.
    """
    from mmkd.config import load_pipelines

    specs = teachers_from_config(cfg if cfg is not None else load_pipelines(None))
    rows = []
    for name, spec in specs.items():
        status = weights_status(spec)
        rows.append({"name": name, "loader": spec.loader, "weights": spec.weights, "dim": spec.dim,
                     "available": status.available, "where": status.where, "missing": status.missing})
    return rows
