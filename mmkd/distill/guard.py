"""The distiller never loads a teacher: an import guard that enforces it at runtime.

Teachers run once, offline, in ``mmkd extract``; the distiller reads their features
from the store. While a distill run is active, importing the teacher registry
(:data:`BLOCKED`) raises ``ImportError``, so no code path can build a teacher by
accident (and a test checks that a whole run leaves it unimported).
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

BLOCKED = "mmkd.extract.teachers"


class TeacherImportError(ImportError):
    """Something tried to import the teacher registry during a distill run."""


class _TeacherBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise TeacherImportError(
                f"import of {name!r} blocked: mmkd.distill reads teacher features from the store and must "
                f"never load a teacher; extract features first with `mmkd extract --teacher NAME`")


def teachers_loaded() -> bool:
    """Whether the teacher registry is imported in this process."""
    return BLOCKED in sys.modules


@contextmanager
def no_teachers() -> Iterator[None]:
    """Block teacher imports for the duration of the block."""
    if teachers_loaded():
        # possible only when the caller's process loaded teachers itself (e.g. it also extracted)
        logger.warning("%s was imported before this distill run; the distiller itself will not use it", BLOCKED)
    blocker = _TeacherBlocker()
    sys.meta_path.insert(0, blocker)
    try:
        yield
    finally:
        sys.meta_path.remove(blocker)
