"""The error every reader, spec and decoder of :mod:`mmkd.data` raises (a leaf: imports nothing of mmkd)."""


class DatasetError(ValueError):
    """A dataset cannot be opened or read (bad path, layout, column, duplicate id...)."""
