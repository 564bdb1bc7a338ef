"""``run_extract``: one extract job, teacher after teacher, on the local or the Ray runner."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from mmkd.config import load_pipelines
from mmkd.extract.runners.base import BlockCallback, Runner, TeacherRun, blocks_to_do
from mmkd.extract.runners.block import WorkerConfig
from mmkd.extract.runners.job import ExtractJob, resolve_dataset, resolve_teachers
from mmkd.extract.runners.local import LocalRunner
from mmkd.extract.runners.prepare import absolute, open_or_create_store, store_exists, utc_stamp, write_job_record
from mmkd.extract.runners.summary import BlockResult, ExtractSummary, TeacherSummary
from mmkd.teachers import TeacherSpec, weights_status
from mmkd.teachers.weights import hub_offline, missing_weights_error

log = logging.getLogger(__name__)


def run_extract(job: ExtractJob, *, progress: bool = False, on_block: BlockCallback | None = None) -> ExtractSummary:
    """Run an extract job: every requested teacher over every missing block of the store.

    The first extract into a new store creates it from the dataset; later ones
    check that the dataset is the same (:mod:`mmkd.extract.runners.prepare`). Done
    blocks are skipped unless ``job.overwrite``; once all blocks of a teacher are
    done its per-dimension stats and attributes are written. A record of the
    resolved job and its summary is saved under ``<store>/_jobs/``.

    Args:
        job: what to run.
        progress: show a tqdm bar over blocks (rows/s) on stderr.
        on_block: called in the driver with each finished block's manifest.

    Returns:
        The run's summary (``summary.noop`` is True when nothing was left to do).

    Raises:
        ExtractError: dataset/store mismatch, a worker failure, a bad job.
        UnknownTeacherError, WeightsNotFoundError, DatasetError: as their names say.
    """
    t0 = time.perf_counter()
    cfg = load_pipelines(job.pipeline)
    specs = resolve_teachers(job, cfg)
    ds = resolve_dataset(job, cfg)
    if not store_exists(job.store):
        _precheck_weights(job, specs)  # before creating a store nothing could fill
    store, created = open_or_create_store(job, ds)
    stamp = utc_stamp()
    todo = {s.name: blocks_to_do(store, s.name, job.overwrite) for s in specs}
    summary = ExtractSummary(store=str(store.path), dataset=ds.uri, runner=job.runner, created_store=created,
                             num_samples=store.n, bad_rows=store.dataset_failures().num_rows)
    if created:
        write_job_record(store.path, "_create", {"job": job.to_dict(), "dataset": ds.spec().to_dict()}, stamp)
    else:
        _precheck_weights(job, [s for s in specs if todo[s.name]])
    config = WorkerConfig(dataset=ds.spec().to_dict(with_storage_options=True), store=absolute(store.path), batch_size=job.batch_size,
                          precision=job.precision, workers=job.workers, device=job.device, overwrite=job.overwrite,
                          decode=job.decode)
    bar = _progress_bar(sum(map(len, todo.values()))) if progress else None
    # Nothing to schedule: the local runner finishes complete teachers without starting Ray.
    runner = _make_runner(job, stamp) if any(todo.values()) else LocalRunner()
    try:
        for spec in specs:
            ts = TeacherSummary(spec.name, blocks_total=store.num_blocks,
                                blocks_skipped=store.num_blocks - len(todo[spec.name]))
            summary.teachers.append(ts)
            run = TeacherRun(store, spec, todo[spec.name], config, ts, job, stamp)
            runner.extract_teacher(run, _fan_out(ts, bar, on_block))
    finally:
        runner.close()
        if bar is not None:
            bar.close()
    summary.wall_s = time.perf_counter() - t0
    if summary.noop:
        log.info("nothing to do: every block of %s is already in %s", [s.name for s in specs], store.path)
    return summary


def _fan_out(ts: TeacherSummary, bar: Any, on_block: BlockCallback | None) -> BlockCallback:
    start = time.perf_counter()

    def callback(manifest: BlockResult) -> None:  # the runner has folded it into ``ts`` already
        if bar is not None:
            bar.update(1)
            rate = ts.rows / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{ts.teacher} {rate:.1f} rows/s, {ts.rows - ts.valid} bad")
        if on_block is not None:
            on_block(manifest)
    return callback


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="block", desc="extract", dynamic_ncols=True)


def _make_runner(job: ExtractJob, stamp: str) -> Runner:
    if job.runner == "local":
        return LocalRunner()
    from mmkd.extract.runners.ray_runner import RayRunner  # the only place ray gets imported

    return RayRunner(address=job.address, actors=job.actors, device=job.device, max_restarts=job.max_restarts,
                     run_id=f"{stamp[:15]}-{os.getpid()}", liveness_timeout=job.liveness_timeout)


def _precheck_weights(job: ExtractJob, specs: list[TeacherSpec]) -> None:
    """Fail on the driver, before any worker starts, when weights are absent here.

    Skipped when joining a remote Ray cluster, whose nodes may hold weights this
    machine lacks.
    """
    if job.runner == "ray" and (job.address or os.environ.get("RAY_ADDRESS")):
        return
    for spec in specs:
        status = weights_status(spec)
        if not status.available and (hub_offline() or spec.weights_kind not in ("hf-hub", "hub-id")):
            raise missing_weights_error(spec)
