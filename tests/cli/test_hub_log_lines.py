"""huggingface_hub's log lines (its retries) are printed once, not once by its own handler and again by mmkd's."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

SNIPPET = """
import logging
from mmkd.cli import main
main(["teachers"], standalone_mode=False)  # the CLI's logging set up as for any command
{extra}
import huggingface_hub.utils.logging as hf_logging
hf_logging.get_logger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
"""


def _count(extra: str = "") -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", SNIPPET.format(extra=extra)], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return res.stderr.count("Retrying in 1s [Retry 1/5].")


def test_hub_retry_line_printed_once():
    assert _count() == 1
    assert _count("logging.getLogger('huggingface_hub').propagate = True") == 2  # what it was: the test can fail
