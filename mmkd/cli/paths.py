"""Click parameter types for places: a local path (checked as click does) or an object-storage URL."""

from __future__ import annotations

from typing import Any

import click

from mmkd.config import is_url


class PathOrURL(click.ParamType):
    """A local path, checked like ``click.Path(**kwargs)``, or an fsspec URL (``s3://bucket/key``) passed as is.

    A URL is not checked here: reaching it needs the provider's client, and its
    error (bucket missing, no access, endpoint down) is reported by the stage that opens it.
    """

    name = "path_or_url"

    def __init__(self, **kwargs: Any) -> None:
        self._local = click.Path(**kwargs)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and is_url(value):
            return value
        return self._local.convert(value, param, ctx)
