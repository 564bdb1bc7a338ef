"""The local runner: the block worker in this process, one block after another."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mmkd.extract.runners.base import BaseRunner, BlockCallback, PassResult, check_loaded, pass_queue
from mmkd.extract.runners.block import BlockWorker, WorkerConfig

if TYPE_CHECKING:
    from mmkd.teachers import TeacherSpec

log = logging.getLogger(__name__)


class LocalRunner(BaseRunner):
    """Runs blocks in-process with the same :class:`BlockWorker` the Ray actors use."""

    name = "local"

    def run_pass(self, specs: list[TeacherSpec], todo: dict[str, list[int]], config: WorkerConfig,
                 on_block: BlockCallback, fail_fast: bool) -> PassResult:
        """One worker holds every teacher of the pass; blocks in order, each told the next one so its images
        are decoded early."""
        worker = BlockWorker(specs, config, fail_fast=fail_fast)
        try:
            todo = check_loaded(todo, worker.load_errors, fail_fast)
            queue = pass_queue(todo)
            for i, (block, names) in enumerate(queue):
                for result in worker.run_pass_block(block, names, queue[i + 1] if i + 1 < len(queue) else None):
                    on_block(result)
            return PassResult(worker.teacher_attrs(), dict(worker.load_errors), [worker.memory()])
        finally:
            worker.close()
