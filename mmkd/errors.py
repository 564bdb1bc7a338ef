"""One base for every error mmkd reports to a user.

Each package keeps its own error type (``ConfigError``, ``StoreError``, ``TeacherError``...)
with its old built-in base too (``ValueError``, ``RuntimeError``...), so callers that catch
those still do; every one also derives from :class:`MMKDError`, so a CLI command catches one
type and prints its message as one line.
"""

from __future__ import annotations


class MMKDError(Exception):
    """An error whose message names the thing, the value and what to do; the CLI prints it as one line."""


class DistillError(MMKDError, ValueError):
    """A distill run cannot start or go on: the store, the targets or the run folder do not fit the config."""


class DemoError(MMKDError, ValueError):
    """The demo's settings or its output folder are invalid, or its data does not allow a claim."""
