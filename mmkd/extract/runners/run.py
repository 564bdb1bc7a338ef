"""``run_extract``: one extract job, all its teachers in one pass over the images, on the local or the Ray runner."""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import TYPE_CHECKING

from mmkd.config import is_remote, load_pipelines
from mmkd.extract.runners.base import BlockCallback, Runner, TeacherRun, blocks_to_do
from mmkd.extract.runners.block import WorkerConfig
from mmkd.extract.runners.job import (ExtractError, ExtractJob, resolve_dataset, resolve_teachers, view_recipe,
                                     views_mismatch)
from mmkd.extract.runners.local import LocalRunner
from mmkd.extract.runners.placement import device_capacity, plan_passes
from mmkd.extract.runners.prepare import absolute, open_or_create_store, store_exists, utc_stamp, write_job_record
from mmkd.extract.runners.summary import BlockResult, ExtractSummary, TeacherSummary
from mmkd.teachers import TeacherSpec, weights_status
from mmkd.teachers.weights import hub_download_impossible, missing_weights_error
from mmkd.store import FeatureStore, StoreError
from mmkd.store.format import disk_full, disk_full_error
from mmkd.store.images import CACHE_QUALITY, cache_path, finish_image_cache
from mmkd.store.locks import TeacherLocked, teacher_lock_holders, teacher_locks
from mmkd.jsontypes import JSONDict

if TYPE_CHECKING:
    from tqdm import tqdm

    from mmkd.data import Dataset
    from mmkd.extract.runners.placement import Pass

log = logging.getLogger(__name__)


def run_extract(job: ExtractJob, *, progress: bool = False, on_block: BlockCallback | None = None) -> ExtractSummary:
    """Run an extract job: every requested teacher over every missing block of the store.

    The teachers run in one pass: each block's images are read and decoded once and
    fed to every teacher that still needs the block (a block done for A but not for B
    runs only B). Teachers that do not fit one GPU together are split into passes
    (:mod:`mmkd.extract.runners.placement`), stated in the summary; a teacher no GPU
    can hold is refused before anything starts. A teacher that fails to load is in
    the summary and the others go on, unless ``job.fail_fast``.

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
    capacity = device_capacity(job.gpu_memory, job.device)
    passes = plan_passes(specs, job.batch_size, capacity)  # before anything is created or started
    if not store_exists(job.store):
        _precheck_weights(job, specs)  # before creating a store nothing could fill
    try:
        store, created = open_or_create_store(job, ds)
        with teacher_locks(store.path, [s.name for s in specs]):
            try:
                return _run_locked(job, specs, ds, store, created, progress, on_block, t0, passes, capacity)
            except BaseException:
                if created:
                    _drop_if_empty(store)
                raise
    except TeacherLocked as e:
        raise ExtractError(str(e)) from None
    except Exception as e:  # a full disk surfaces from zarr, pyarrow or json writes, often wrapped: one line
        full = None if is_remote(job.store) else disk_full(e)
        if full is None:
            raise
        raise disk_full_error(full, job.store, "store", "the blocks already marked done are kept and only the "
                              "others are extracted") from e


def _drop_if_empty(store: FeatureStore) -> None:
    """Remove a store this run created when it failed before any block was done (the first teacher could not
    start: a hub that cannot be reached, a wrong ``dim``), unless another extract is using it meanwhile. On
    object storage too: every object under the store's prefix is deleted."""
    try:
        now = FeatureStore.open(store.path)
        if any(now.done_blocks(t) for t in now.teachers):
            return
        if teacher_lock_holders(store.path):  # another extract holds a teacher of this store
            return
    except (StoreError, OSError):
        return
    if is_remote(store.path):
        try:
            store.path.fs.rm(store.path.path, recursive=True)
        except OSError as e:
            log.warning("store %s was created by this run and holds no finished block, but removing it failed "
                        "(%s); delete it before reusing the URL", store.path, e)
            return
    else:
        shutil.rmtree(store.path, ignore_errors=True)
    log.info("removed store %s: it was created by this run and holds no finished block", store.path)


def _run_locked(job: ExtractJob, specs: list[TeacherSpec], ds: Dataset, store: FeatureStore, created: bool,
                progress: bool, on_block: BlockCallback | None, t0: float, passes: list[Pass],
                capacity: int | None) -> ExtractSummary:
    stamp = utc_stamp()
    _check_views(job, specs, store)
    todo = {s.name: blocks_to_do(store, s.name, job.overwrite) for s in specs}
    summary = ExtractSummary(store=str(store.path), dataset=ds.uri, runner=job.runner, created_store=created,
                             num_samples=store.n, bad_rows=store.dataset_failures().num_rows)
    if created:
        write_job_record(store.path, "_create", {"job": job.to_dict(), "dataset": ds.spec().to_dict()}, stamp)
    else:
        _precheck_weights(job, [s for s in specs if todo[s.name]])
    config = WorkerConfig(dataset=ds.spec().to_dict(with_storage_options=True), store=absolute(store.path),
                          batch_size=job.batch_size, precision=job.precision, workers=job.workers, device=job.device, overwrite=job.overwrite,
                          decode=job.decode, resize=job.resize,
                          views=_views_attrs(job),
                          image_cache=(job.image_cache, CACHE_QUALITY) if job.image_cache else None)
    bar = _progress_bar(sum(map(len, todo.values()))) if progress else None
    # Nothing to schedule: the local runner finishes complete teachers without starting Ray.
    runner = _make_runner(job, stamp) if any(todo.values()) else LocalRunner()
    runs = {}
    for spec in specs:
        ts = TeacherSummary(spec.name, blocks_total=store.num_blocks,
                            blocks_skipped=store.num_blocks - len(todo[spec.name]))
        summary.teachers.append(ts)
        runs[spec.name] = TeacherRun(store, spec, todo[spec.name], config, ts, job, stamp)
    callback = _fan_out(summary, bar, on_block)
    try:
        for i, p in enumerate(passes):
            result = runner.extract_pass([runs[s.name] for s in p.teachers], callback, fail_fast=job.fail_fast)
            if result.memory:
                summary.placement.append({"pass": i, "teachers": [s.name for s in p.teachers],
                                          "estimated_bytes": p.estimated_bytes, "capacity_bytes": capacity,
                                          "memory": result.memory})
    finally:
        runner.close()
        if bar is not None:
            bar.close()
    if job.image_cache:
        missing = finish_image_cache(store, job.image_cache, CACHE_QUALITY)
        summary.image_cache = {"path": str(cache_path(store.path, job.image_cache)), "size": job.image_cache,
                               "blocks": store.num_blocks, "missing_blocks": len(missing), "complete": not missing}
    summary.wall_s = time.perf_counter() - t0
    if summary.noop:
        log.info("nothing to do: every block of %s is already in %s", [s.name for s in specs], store.path)
    return summary


def _fan_out(summary: ExtractSummary, bar: tqdm | None, on_block: BlockCallback | None) -> BlockCallback:
    start = time.perf_counter()

    def callback(result: BlockResult) -> None:  # the runner has folded it into its teacher's summary already
        summary.decoded += result.decoded
        summary.bytes_read += result.bytes_read
        if bar is not None:
            bar.update(1)
            rows = sum(t.rows for t in summary.teachers)
            rate = rows / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{result.teacher} {rate:.1f} teacher-rows/s")
        if on_block is not None:
            on_block(result)
    return callback


def _progress_bar(total: int) -> tqdm:
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
        if not status.available and hub_download_impossible(spec):
            raise missing_weights_error(spec)


def _views_attrs(job: ExtractJob) -> JSONDict | None:
    recipe = view_recipe(job)
    return recipe.to_attrs() if recipe is not None else None


def _check_views(job: ExtractJob, specs: list[TeacherSpec], store: FeatureStore) -> None:
    """Refuse, before any worker starts, a run whose views differ from those of a teacher's done blocks
    (a complete teacher would otherwise be skipped, and look extracted with the views asked for)."""
    if job.overwrite:
        return
    want = view_recipe(job)
    for spec in specs:
        why = views_mismatch(store, spec.name, want)
        if why is not None:
            raise ExtractError(why)
