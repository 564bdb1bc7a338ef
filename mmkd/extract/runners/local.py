"""The local runner: the block worker in this process, one block after another."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mmkd.extract.runners.base import BaseRunner, BlockCallback
from mmkd.extract.runners.block import BlockWorker, WorkerConfig
from mmkd.jsontypes import JSONDict

if TYPE_CHECKING:
    from mmkd.teachers import TeacherSpec

log = logging.getLogger(__name__)


class LocalRunner(BaseRunner):
    """Runs blocks in-process with the same :class:`BlockWorker` the Ray actors use."""

    name = "local"

    def run_blocks(self, spec: TeacherSpec, blocks: list[int], config: WorkerConfig,
                   on_block: BlockCallback) -> JSONDict:
        """Extract ``blocks`` in order, each told the next one so its images are decoded early."""
        worker = BlockWorker(spec, config)
        try:
            for i, block in enumerate(blocks):
                on_block(worker.run_block(block, blocks[i + 1] if i + 1 < len(blocks) else None))
            return worker.attrs
        finally:
            worker.close()
