"""The Ray runner: an actor pool over store blocks, one actor per GPU (or per CPU slot).

Each actor gets the teacher *spec*, the dataset spec and the store path, loads the
model itself once, and per task runs :meth:`BlockWorker.run_block`, which writes
the block into the store and returns a small manifest: no features travel through
the object store. Actors are restarted by Ray when they die (``max_restarts``) and
the task they were running is retried (``max_task_retries``); block writes are
idempotent, so a retried block ends up exactly as if it had run once. An actor
that is gone for good is replaced by the driver and its block re-queued.

``import ray`` happens only in this module.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from mmkd.extract.runners.block import BlockWorker, WorkerConfig
from mmkd.extract.runners.job import ExtractError

log = logging.getLogger(__name__)

# Passed on to actors so they see the same weights caches and offline settings as the driver.
PROPAGATED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "MMKD_WEIGHTS",
                  "OPEN_CLIP_CACHE_DIR", "TORCH_HOME")


class BlockActor:
    """Ray actor body: holds one :class:`BlockWorker` at a time.

    The actor outlives teachers (its process imports torch once); the teacher named
    in a task is loaded on first use, so an actor Ray restarts after a crash
    reloads the teacher of the task it retries.
    """

    def __init__(self, config: WorkerConfig, name: str) -> None:
        self.config, self.name = config, name
        self.worker: BlockWorker | None = None

    def load(self, spec: dict[str, Any]) -> dict[str, Any]:
        if self.worker is None or self.worker.spec.to_dict() != spec:
            if self.worker is not None:
                self.worker.close()
            self.worker = None  # free the old model before loading the next
            self.worker = BlockWorker(spec, self.config)
        return {"actor": self.name, "pid": os.getpid(), "device": self.worker.device}

    def run_block(self, spec: dict[str, Any], block: int, next_block: int | None = None) -> dict[str, Any]:
        self.load(spec)
        return {**self.worker.run_block(block, next_block), "actor": self.name}

    def store_attrs(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.load(spec)
        return self.worker.attrs


class RayRunner:
    """Runs blocks on a Ray actor pool (local Ray, or a cluster at ``address``/``$RAY_ADDRESS``).

    Args:
        address: cluster address; ``None`` uses ``$RAY_ADDRESS``, else starts local Ray.
        actors: actors per teacher (default: one per GPU; on CPU-only clusters one
            per CPU, each holding a fraction of a CPU when there are more actors than CPUs).
        device: ``auto``, ``cpu`` or ``cuda``.
        max_restarts: Ray restarts of a dead actor; also the driver's replacements.
        run_id: distinguishes actor names of concurrent jobs.
    """

    name = "ray"

    def __init__(self, address: str | None = None, actors: int | None = None, device: str = "auto",
                 max_restarts: int = 3, run_id: str = "") -> None:
        import ray

        self.ray = ray
        self.actors, self.device, self.max_restarts = actors, device, max_restarts
        self.run_id = run_id or f"{os.getpid()}-{int(time.time())}"
        self._started = False
        self._actors: list[Any] = []
        self._config: WorkerConfig | None = None
        self._opts: dict[str, Any] = {}
        self._generation = 0
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
            self._started = True
            log.info("ray: %s (%s)", "started a local instance" if address is None else f"joined {address}",
                     ray.cluster_resources())
        elif address:
            log.warning("ray is already initialised in this process; ignoring address %r", address)

    def close(self) -> None:
        """Stop the actors, and shut Ray down if this runner started it."""
        for a in self._actors:
            self.ray.kill(a, no_restart=True)
        self._actors = []
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()

    # ------------------------------------------------------------------ actors
    def _actor_options(self, n_blocks: int) -> tuple[int, dict[str, Any]]:
        res = self.ray.cluster_resources()
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
        env = {k: os.environ[k] for k in PROPAGATED_ENV if k in os.environ}
        opts: dict[str, Any] = {"max_restarts": self.max_restarts, "max_task_retries": self.max_restarts,
                                "runtime_env": {"env_vars": env} if env else None}
        if self.device != "cpu" and gpus >= 1:
            n = min(n_blocks, self.actors or int(gpus))
            opts.update(num_gpus=1, num_cpus=1 if cpus >= 2 * n else 0)
        elif self.device == "cuda":
            raise ExtractError(f"--device cuda: the Ray cluster has no GPUs ({res}); use --device cpu or auto")
        else:
            n = min(n_blocks, self.actors or max(1, int(cpus)))
            opts["num_cpus"] = min(1.0, round(cpus / n, 3))
        return n, {k: v for k, v in opts.items() if v is not None}

    def _ensure_actors(self, n_blocks: int, config: WorkerConfig) -> None:
        n, opts = self._actor_options(n_blocks)
        if self._config is not None and self._config != config:
            raise ExtractError("RayRunner: one runner serves one dataset/store/settings; make a new runner")
        self._config, self._opts = config, opts
        while len(self._actors) < n:
            self._actors.append(self._start(len(self._actors)))

    def _start(self, i: int) -> Any:
        self._generation += 1
        name = f"mmkd-extract-{self.run_id}-{i}-g{self._generation}"
        return self.ray.remote(BlockActor).options(name=name, **self._opts).remote(self._config, name)

    def _load(self, spec: Any) -> None:
        try:
            info = self.ray.get([a.load.remote(spec.to_dict()) for a in self._actors])
        except self.ray.exceptions.RayError as e:
            raise ExtractError(f"teacher {spec.name!r}: a Ray worker failed to load it (teacher, dataset or "
                               f"store): {_root_cause(e)}") from e
        log.info("teacher %s: %d actors ready on %s", spec.name, len(info), sorted({i["device"] for i in info}))

    # ------------------------------------------------------------------ scheduling
    def run_teacher(self, spec: Any, blocks: list[int], config: WorkerConfig,
                    on_block: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Extract ``blocks`` of one teacher on the pool; return the teacher's store attrs.

        Raises:
            ExtractError: an actor failed to load the teacher, a block raised an
                error, or a block lost its actor more than ``max_restarts`` times.
        """
        self._ensure_actors(len(blocks), config)
        self._load(spec)
        self._schedule(spec, blocks, on_block)
        return self.ray.get(self._actors[0].store_attrs.remote(spec.to_dict()))

    def _schedule(self, spec: Any, blocks: list[int], on_block: Callable[[dict[str, Any]], None]) -> None:
        ray, actors, payload = self.ray, self._actors, spec.to_dict()
        queue, idle = deque(blocks), deque(range(len(actors)))
        inflight: dict[Any, tuple[int, int]] = {}
        reserved: dict[int, int] = {}  # actor -> the block it gets next (told in advance, so it can prefetch)
        lost: dict[int, int] = {}
        while queue or inflight or reserved:
            for i in list(idle):
                if i not in reserved and not queue:
                    continue
                idle.remove(i)
                b = reserved.pop(i) if i in reserved else queue.popleft()
                nb = queue.popleft() if queue else None
                if nb is not None:
                    reserved[i] = nb
                inflight[actors[i].run_block.remote(payload, b, nb)] = (i, b)
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            i, b = inflight.pop(ref)
            try:
                manifest = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the block itself raised: a real error, not a lost worker
                raise ExtractError(f"teacher {spec.name!r}, block {b}: {_root_cause(e)}") from e
            except ray.exceptions.RayActorError as e:  # gone for good (restarts used up): replace it
                lost[b] = lost.get(b, 0) + 1
                if lost[b] > self.max_restarts:
                    raise ExtractError(f"teacher {spec.name!r}, block {b}: lost its Ray worker {lost[b]} times; "
                                       f"last error: {e}") from e
                log.warning("teacher %s: actor %d died for good (%s); replacing it, block %d re-queued",
                            spec.name, i, type(e).__name__, b)
                actors[i] = self._start(i)
                if i in reserved:
                    queue.appendleft(reserved.pop(i))
                queue.appendleft(b)
                idle.append(i)
                continue
            idle.append(i)
            on_block(manifest)


def _root_cause(e: BaseException) -> str:
    """The innermost error message of a Ray exception (the worker's own exception)."""
    cause = getattr(e, "cause", None) or e.__cause__
    while cause is not None and (getattr(cause, "cause", None) or cause.__cause__) is not None:
        cause = getattr(cause, "cause", None) or cause.__cause__
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
