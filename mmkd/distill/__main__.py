"""``python -m mmkd.distill ...`` = ``mmkd distill ...``; the entry point for torchrun.

Example: ``torchrun --nproc-per-node 8 -m mmkd.distill --store STORE --stage 2 --student NAME --out DIR``.
"""

import logging
import os

from mmkd.cli.distill import distill_cmd

if __name__ == "__main__":
    level = os.environ.get("MMKD_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    distill_cmd(prog_name="python -m mmkd.distill")
