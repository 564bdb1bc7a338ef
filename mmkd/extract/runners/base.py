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

from mmkd.extract.runners.block import WorkerConfig, failed_teacher
from mmkd.extract.runners.job import ExtractError, ExtractJob
from mmkd.extract.runners.prepare import write_job_record
from mmkd.extract.runners.summary import BlockResult, TeacherSummary
from mmkd.jsontypes import JSONDict
from mmkd.store.format import disk_full

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


@dataclass
class PassResult:
    """What a runner's :meth:`BaseRunner.run_pass` returns.

    Attributes:
        attrs: store attributes of every teacher that loaded, by name.
        load_errors: teachers that failed to load (name -> error); the others ran.
        memory: what the workers held (:meth:`BlockWorker.memory` per worker).
    """

    attrs: dict[str, JSONDict]
    load_errors: dict[str, str]
    memory: list[JSONDict]


class Runner(Protocol):
    """What :func:`~mmkd.extract.runners.run.run_extract` needs from an executor."""

    name: str

    def extract_pass(self, runs: list[TeacherRun], on_block: BlockCallback, fail_fast: bool = False) -> PassResult:
        """Extract the blocks the teachers of one pass have left (each image read and decoded once per block),
        then finish each teacher in the store."""

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
        """One teacher alone: a pass of one (:meth:`extract_pass`)."""
        self.extract_pass([run], on_block, fail_fast=True)

    def extract_pass(self, runs: list[TeacherRun], on_block: BlockCallback, fail_fast: bool = False) -> PassResult:
        """Run the remaining blocks of every teacher in ``runs`` in one pass, then write each teacher's
        attributes, stats and job record.

        A block is read and decoded once for all teachers that still need it; done blocks are
        never redone (unless the job overwrites); a block is marked done per teacher by the worker
        only after its rows are durable, so a failure at any point leaves a store the next run
        resumes. A teacher that fails to load is recorded (its summary's ``error``, its job record)
        and the others go on, unless ``fail_fast``.

        Raises:
            ExtractError: a worker failed, a teacher failed to load with ``fail_fast``, or blocks
                are still missing afterwards.
        """
        result = PassResult({}, {}, [])
        active = []
        for run in runs:
            if run.blocks:
                active.append(run)
            else:
                finish_complete_teacher(run.store, run.spec.name)
        if not active:
            return result
        by_name = {run.spec.name: run for run in active}
        records = {}
        for run in active:
            store, spec = run.store, run.spec
            dataset = {k: v for k, v in run.config.dataset.items() if k != "storage_options"}  # may hold credentials
            records[spec.name] = {"job": run.job.to_dict(), "teacher": spec.to_dict(), "dataset": dataset,
                                  "store": {"path": str(store.path), "num_samples": store.n,
                                            "block_size": store.block_size},
                                  "runner": self.name, "blocks": run.blocks, "status": "running",
                                  "pass": [r.spec.name for r in runs]}
            write_job_record(store.path, spec.name, records[spec.name], run.stamp)
            log.info("teacher %s: %d of %d blocks to do (%s runner)", spec.name, len(run.blocks), store.num_blocks,
                     self.name)

        def fold(result: BlockResult) -> None:
            by_name[result.teacher].summary.add(result)
            on_block(result)

        t0 = time.perf_counter()
        try:
            result = self.run_pass([r.spec for r in active], {r.spec.name: r.blocks for r in active}, active[0].config,
                                   fold, fail_fast)
        except BaseException as e:
            for run in active:
                try:
                    write_job_record(run.store.path, run.spec.name,
                                     {**records[run.spec.name], "status": "failed",
                                      "error": f"{type(e).__name__}: {e}", "summary": run.summary.to_dict()},
                                     run.stamp)
                except OSError as record_error:  # e.g. the disk that just filled up: the run's own error matters
                    (log.info if disk_full(record_error) else log.warning)(
                        "teacher %s: could not record the failure under %s/_jobs (%s)", run.spec.name,
                        run.store.path, record_error)
            raise
        wall = time.perf_counter() - t0
        for run in active:
            run.summary.wall_s = wall
            name, store = run.spec.name, run.store
            if name in result.load_errors:
                run.summary.error = f"failed to load: {result.load_errors[name]}"
                write_job_record(store.path, name, {**records[name], "status": "failed", "error": run.summary.error,
                                                    "summary": run.summary.to_dict()}, run.stamp)
                continue
            missing = store.missing_blocks(name)
            if missing:  # cannot happen unless another process removed markers meanwhile
                raise ExtractError(f"teacher {name!r}: blocks {missing[:10]} are still not done in {store.path}; "
                                   "rerun the same command to do them")
            store.update_attrs(name, **result.attrs[name])
            store.compute_stats(name)
            write_job_record(store.path, name, {**records[name], "status": "done", "summary": run.summary.to_dict()},
                             run.stamp)
        return result

    @abstractmethod
    def run_pass(self, specs: list[TeacherSpec], todo: dict[str, list[int]], config: WorkerConfig,
                 on_block: BlockCallback, fail_fast: bool) -> PassResult:
        """Extract every block some teacher of ``specs`` still needs (``todo``: name -> blocks), reading and
        decoding each block's images once for the teachers that need it; call ``on_block`` with each teacher's
        block manifest in the driver.

        Raises:
            ExtractError: a teacher failed to load and ``fail_fast`` (or every teacher failed), a block failed.
        """

    def close(self) -> None:
        """Release what the runner holds; nothing by default."""


class PassName:
    """Names a pass in errors: ``teacher 'a'`` for one teacher, ``teachers 'a', 'b' (one pass)`` for several
    (a step that fails for one teacher of the pass names that one: :func:`failed_teacher`)."""

    def __init__(self, specs: list[TeacherSpec]) -> None:
        self.name = "+".join(s.name for s in specs)  # logs
        self.label = f"teacher {specs[0].name!r}" if len(specs) == 1 else \
            "teachers " + ", ".join(repr(s.name) for s in specs) + " (one pass)"

    def of(self, e: BaseException) -> str:
        """``teacher 'x'`` when error ``e`` came from teacher x's step of a block, else :attr:`label`."""
        name = failed_teacher(e)
        return f"teacher {name!r}" if name is not None else self.label


def pass_queue(todo: dict[str, list[int]]) -> list[tuple[int, tuple[str, ...]]]:
    """The pass's blocks in order, each with the teachers that still need it."""
    blocks = sorted({b for blocks in todo.values() for b in blocks})
    need = {name: set(blocks) for name, blocks in todo.items()}
    return [(b, tuple(n for n in todo if b in need[n])) for b in blocks]


def check_loaded(todo: dict[str, list[int]], load_errors: dict[str, str], fail_fast: bool) -> dict[str, list[int]]:
    """``todo`` without the teachers that failed to load; raises when ``fail_fast`` or when none loaded."""
    if load_errors and (fail_fast or len(load_errors) == len(todo)):
        what = "; ".join(f"{n}: {e}" for n, e in load_errors.items())
        why = "--fail-fast" if fail_fast and len(load_errors) < len(todo) else "no teacher of the pass loaded"
        raise ExtractError(f"teacher(s) failed to load ({why}): {what}")
    return {n: b for n, b in todo.items() if n not in load_errors}
