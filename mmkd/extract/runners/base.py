"""The runner interface, and the part of running one teacher that every runner shares.

As in datatrove's ``executor/base.py``, one base class owns what does not depend on
scheduling: which blocks are left (done blocks are skipped), the job record written
before and after, folding block manifests into the teacher's stats, checking that
every block is marked done, and the teacher's attributes and per-dimension stats.
:class:`~mmkd.extract.runners.local.LocalRunner` and
:class:`~mmkd.extract.runners.ray_runner.RayRunner` only implement
:meth:`BaseRunner.run_blocks`: where and in which order blocks run.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from mmkd.extract.runners.block import WorkerConfig
from mmkd.extract.runners.job import ExtractError, ExtractJob
from mmkd.extract.runners.prepare import write_job_record
from mmkd.extract.runners.summary import BlockResult, TeacherSummary
from mmkd.jsontypes import JSONDict

if TYPE_CHECKING:
    from mmkd.teachers import TeacherSpec
    from mmkd.store import FeatureStore

log = logging.getLogger(__name__)

BlockCallback = Callable[[BlockResult], None]


@dataclass
class TeacherRun:
    """One teacher's share of an extract job, as handed to a runner.

    Attributes:
        store: the open store.
        spec: the teacher spec (shipped to workers; they load the model themselves).
        blocks: the blocks left to do (:func:`blocks_to_do`).
        config: worker settings.
        summary: the teacher's summary, filled in while blocks finish.
        job: the job (saved in the job record).
        stamp: the run's timestamp (names the job record).
    """

    store: FeatureStore
    spec: TeacherSpec
    blocks: list[int]
    config: WorkerConfig
    summary: TeacherSummary
    job: ExtractJob
    stamp: str


class Runner(Protocol):
    """What :func:`~mmkd.extract.runners.run.run_extract` needs from an executor."""

    name: str

    def extract_teacher(self, run: TeacherRun, on_block: BlockCallback) -> None:
        """Extract the teacher's blocks left to do, then finish the teacher in the store."""

    def close(self) -> None:
        """Release workers (and a Ray instance the runner started)."""


def blocks_to_do(store: FeatureStore, teacher: str, overwrite: bool) -> list[int]:
    """The blocks of ``teacher`` still to extract: all of them with ``overwrite``, else those not marked done."""
    if overwrite or teacher not in store.teachers:
        return list(range(store.num_blocks))
    return store.missing_blocks(teacher)


def finish_complete_teacher(store: FeatureStore, teacher: str) -> None:
    """A teacher with every block done: write its stats if the run that did the blocks died before them."""
    if "image_mean" not in store.attrs(teacher):
        store.compute_stats(teacher)
    log.info("teacher %s: all %d blocks already done in %s", teacher, store.num_blocks, store.path)


class BaseRunner(ABC):
    """The shared part of a runner; subclasses implement :meth:`run_blocks` (scheduling only)."""

    name: ClassVar[str]

    def extract_teacher(self, run: TeacherRun, on_block: BlockCallback) -> None:
        """Run the teacher's remaining blocks, then write its attributes, stats and job record.

        Done blocks are never redone (unless the job overwrites); a block is marked
        done by the worker only after its rows are durable, so a failure at any point
        leaves a store the next run resumes.

        Raises:
            ExtractError: a worker failed, or blocks are still missing afterwards.
        """
        store, spec, blocks = run.store, run.spec, run.blocks
        if not blocks:
            finish_complete_teacher(store, spec.name)
            return
        dataset = {k: v for k, v in run.config.dataset.items() if k != "storage_options"}  # may hold credentials
        record = {"job": run.job.to_dict(), "teacher": spec.to_dict(), "dataset": dataset,
                  "store": {"path": str(store.path), "num_samples": store.n, "block_size": store.block_size},
                  "runner": self.name, "blocks": blocks, "status": "running"}
        write_job_record(store.path, spec.name, record, run.stamp)
        log.info("teacher %s: %d of %d blocks to do (%s runner)", spec.name, len(blocks), store.num_blocks, self.name)

        def fold(manifest: BlockResult) -> None:
            run.summary.add(manifest)
            on_block(manifest)

        t0 = time.perf_counter()
        try:
            attrs = self.run_blocks(spec, blocks, run.config, fold)
        except BaseException as e:
            write_job_record(store.path, spec.name, {**record, "status": "failed", "error": f"{type(e).__name__}: {e}",
                                                     "summary": run.summary.to_dict()}, run.stamp)
            raise
        run.summary.wall_s = time.perf_counter() - t0
        missing = store.missing_blocks(spec.name)
        if missing:  # cannot happen unless another process removed markers meanwhile
            raise ExtractError(f"teacher {spec.name!r}: blocks {missing[:10]} are still not done in {store.path}; "
                               "rerun the same command to do them")
        store.update_attrs(spec.name, **attrs)
        store.compute_stats(spec.name)
        write_job_record(store.path, spec.name, {**record, "status": "done", "summary": run.summary.to_dict()},
                         run.stamp)

    @abstractmethod
    def run_blocks(self, spec: TeacherSpec, blocks: list[int], config: WorkerConfig,
                   on_block: BlockCallback) -> JSONDict:
        """Extract ``blocks`` of one teacher, calling ``on_block`` with each manifest in the driver.

        Returns:
            The teacher's store attributes (:meth:`BlockWorker.attrs`).
        """

    def close(self) -> None:
        """Release what the runner holds; nothing by default."""
