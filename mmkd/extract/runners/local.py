"""The local runner: the block worker in this process, one block after another."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mmkd.extract.runners.block import BlockWorker, WorkerConfig

log = logging.getLogger(__name__)


class LocalRunner:
    """Runs blocks in-process with the same :class:`BlockWorker` the Ray actors use."""

    name = "local"

    def run_teacher(self, spec: Any, blocks: list[int], config: WorkerConfig,
                    on_block: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Extract ``blocks`` of one teacher; return the teacher's store attrs.

        Args:
            spec: the teacher spec.
            blocks: block numbers to (re)do.
            config: worker settings.
            on_block: called with each block's manifest as it finishes.
        """
        worker = BlockWorker(spec, config)
        try:
            for i, block in enumerate(blocks):
                on_block(worker.run_block(block, blocks[i + 1] if i + 1 < len(blocks) else None))
            return worker.attrs
        finally:
            worker.close()

    def close(self) -> None:
        """Nothing to release."""
