"""The ``mmkd`` command line: a thin click group.

Each sub-command parses its options, loads config and calls ONE library function.
Nothing heavy (torch, ray, zarr) is imported here, so ``mmkd --help`` is fast.
"""

from __future__ import annotations

import logging

import click

from mmkd import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mmkd")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("--fixtures", type=click.Path(file_okay=False), default=None, envvar="MMKD_FIXTURES",
              help="Folder that `fixtures:` paths (shipped datasets and eval sets) point into; sets $MMKD_FIXTURES.")
def main(verbose: int, fixtures: str | None) -> None:
    """mmkd: multi-teacher knowledge distillation of biomedical CLIP models.

    \b
    teachers  the declared teachers, and whether their weights are here
    extract   teachers -> feature store
    store     inspect, validate, import, project a store
    distill   store -> student (stage 1, stage 2)
    eval      students and teachers -> one table
    demo      the whole method in miniature, on CPU
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # huggingface_hub gives its logger a handler of its own: propagating too would print each of its lines twice
    logging.getLogger("huggingface_hub").propagate = False
    set_fixtures(fixtures)


def set_fixtures(folder: str | None) -> None:
    """Point ``fixtures:`` paths at ``folder`` (via ``$MMKD_FIXTURES``, so Ray workers and child processes see it)."""
    import os

    if folder:
        os.environ["MMKD_FIXTURES"] = os.path.abspath(os.path.expanduser(folder))


def _register() -> None:
    # Sub-command modules import only click at module level (heavy imports live
    # inside the command bodies), so registering them costs milliseconds.
    import importlib

    for name in ("store", "extract", "distill", "eval", "demo"):
        try:
            mod = importlib.import_module(f"mmkd.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"mmkd.cli.{name}":
                continue  # that stage's CLI is not built yet
            raise
        mod.register(main)


_register()
