"""The error every reader, spec and decoder of :mod:`mmkd.data` raises (a leaf: imports only :mod:`mmkd.errors`)."""

from mmkd.errors import MMKDError


class DatasetError(MMKDError, ValueError):
    """A dataset cannot be opened or read (bad path, layout, column, duplicate id...)."""
