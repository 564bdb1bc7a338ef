"""The local runner: the block worker in this process, one block after another."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mmkd.errors import MMKDError
from mmkd.extract.runners.base import BaseRunner, BlockCallback, PassName, PassResult, check_loaded, pass_queue
from mmkd.extract.runners.block import BlockWorker, WorkerConfig, failed_teacher
from mmkd.extract.runners.job import ExtractError

if TYPE_CHECKING:
    from mmkd.teachers import TeacherSpec

log = logging.getLogger(__name__)


class LocalRunner(BaseRunner):
    """Runs blocks in-process with the same :class:`BlockWorker` the Ray actors use."""

    name = "local"

    def run_pass(self, specs: list[TeacherSpec], todo: dict[str, list[int]], config: WorkerConfig,
                 on_block: BlockCallback, fail_fast: bool) -> PassResult:
        """One worker holds every teacher of the pass; blocks in order, each told the next one so its images
        are decoded early.

        Raises:
            ExtractError: as :meth:`BaseRunner.run_pass`; a library error of a block (a model's forward, a
                write) names the teacher whose step raised it and the block, as the Ray runner's do.
        """
        worker = BlockWorker(specs, config, fail_fast=fail_fast)
        who = PassName(specs)
        try:
            todo = check_loaded(todo, worker.load_errors, fail_fast)
            queue = pass_queue(todo)
            for i, (block, names) in enumerate(queue):
                try:
                    results = worker.run_pass_block(block, names, queue[i + 1] if i + 1 < len(queue) else None)
                except MMKDError:
                    raise  # says what and where already
                except Exception as e:
                    err = ExtractError(f"{who.of(e)}, block {block}: {type(e).__name__}: {e}")
                    err.failed_teacher = failed_teacher(e)  # kept when pickled (the cause is not)
                    raise err from e
                for result in results:
                    on_block(result)
            return PassResult(worker.teacher_attrs(), dict(worker.load_errors), [worker.memory()])
        finally:
            worker.close()
