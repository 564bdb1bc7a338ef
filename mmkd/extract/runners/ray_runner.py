"""The Ray runner: block tasks on a pool of Ray actors, one per GPU (or per CPU slot).

Each actor gets the *specs* of every teacher of the pass (those that fit one GPU
together: :mod:`mmkd.extract.runners.placement`), the dataset spec and the store
path, loads the models itself once, and per task gets only a block id and the names
of the teachers that still need it: it reads the block's images once, runs every
such teacher on the same decoded batch (:meth:`BlockWorker.run_pass_block`), writes
the rows itself and returns small block results. The driver hands out block ids and
collects those; no features travel through the object store.

Faults are left to Ray where Ray handles them: a dead actor is restarted by Ray
(``max_restarts``) and the block it was running is retried on it
(``max_task_retries``); block writes are idempotent, so a retried block ends up
exactly as if it had run once. What Ray cannot know is handled here:

* an actor gone for good (restarts used up) is replaced and its block re-queued,
  at most ``max_restarts`` times per block;
* **liveness**: every actor answers a ``ping`` on its own thread (a concurrency
  group), also while it runs a block. When no block finishes and no actor answers
  for ``liveness_timeout`` seconds (the local raylet died, the node is gone, a
  replacement can never be scheduled), the job fails with an error naming what died,
  instead of waiting forever. Finished blocks stay marked; a rerun resumes;
* **shutdown**: a Ray instance this runner started is shut down on close, waiting for
  its processes to exit, also when the driver gets SIGINT or SIGTERM (the previous
  signal handlers are restored afterwards). A cluster joined with ``address`` is
  only disconnected from; a Ray the caller had initialised is left alone.

``import ray`` happens only in this module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import ray

from mmkd.extract.runners.base import BaseRunner, BlockCallback, PassName, PassResult, check_loaded, pass_queue
from mmkd.extract.runners.block import BlockWorker, WorkerConfig
from mmkd.extract.runners.job import ExtractError
from mmkd.extract.runners.summary import BlockResult
from mmkd.jsontypes import JSONDict

if TYPE_CHECKING:
    from ray import ObjectRef
    from ray.actor import ActorHandle

    from mmkd.teachers import TeacherSpec

log = logging.getLogger(__name__)

# Passed on to actors so they see the same weights caches and offline settings as the driver.
PROPAGATED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_HOME", "MMKD_WEIGHTS",
                  "OPEN_CLIP_CACHE_DIR", "TORCH_HOME")
TICK_S = 0.5  # longest the driver blocks in ray.wait, so signals and the liveness clock are seen
NODE_QUERY_S = 5.0  # longest the error path waits for the GCS to list nodes
# ray.init(address=H:P) with nothing at H:P retries for minutes; one TCP connect first says so in seconds
ADDRESS_PROBE_S = 5.0


@ray.remote(concurrency_groups={"health": 1})
class BlockActor:
    """Ray actor body: holds one :class:`BlockWorker` (every teacher of a pass) at a time.

    The actor outlives passes (its process imports torch once); the teachers named in
    a task are loaded on first use, so an actor Ray restarts after a crash reloads the
    pass of the task it retries. :meth:`ping` runs on its own thread.
    """

    def __init__(self, config: WorkerConfig, name: str) -> None:
        self.config, self.name = config, name
        self.worker: BlockWorker | None = None
        self._specs: list[JSONDict] | None = None

    def load(self, specs: list[JSONDict], fail_fast: bool = True) -> JSONDict:
        if self.worker is None or self._specs != specs:
            if self.worker is not None:
                self.worker.close()
            self.worker = None  # free the old models before loading the next
            self.worker = BlockWorker(specs, self.config, fail_fast=fail_fast)
            self._specs = specs
        return {"actor": self.name, "pid": os.getpid(), "device": self.worker.device,
                "load_errors": dict(self.worker.load_errors), "memory": self.worker.memory()}

    def run_block(self, specs: list[JSONDict], block: int, teachers: list[str],
                  next_block: tuple[int, list[str]] | None = None, fail_fast: bool = True) -> list[BlockResult]:
        self.load(specs, fail_fast)
        return [dataclasses.replace(r, actor=self.name) for r in self.worker.run_pass_block(block, teachers, next_block)]

    def store_attrs(self, specs: list[JSONDict], fail_fast: bool = True) -> dict[str, JSONDict]:
        self.load(specs, fail_fast)
        return self.worker.teacher_attrs()

    @ray.method(concurrency_group="health", max_task_retries=0)
    def ping(self) -> int:
        return os.getpid()


class RayRunner(BaseRunner):
    """Runs blocks on a Ray actor pool (local Ray, or a cluster at ``address``/``$RAY_ADDRESS``).

    Ray is started (or joined) on the first teacher with blocks to do, not here.

    Args:
        address: cluster address; ``None`` uses ``$RAY_ADDRESS``, else starts local Ray.
        actors: actors per teacher (default: one per GPU; on CPU-only clusters one
            per CPU, each holding a fraction of a CPU when there are more actors than CPUs).
        device: ``auto``, ``cpu`` or ``cuda``.
        max_restarts: Ray restarts of a dead actor; also the driver's replacements per block.
        run_id: distinguishes actor names of concurrent jobs.
        liveness_timeout: seconds without a finished block and without an answer from
            any actor before the job fails.
    """

    name = "ray"

    def __init__(self, address: str | None = None, actors: int | None = None, device: str = "auto",
                 max_restarts: int = 3, run_id: str = "", liveness_timeout: float = 300.0) -> None:
        self.address, self.actors, self.device, self.max_restarts = address, actors, device, max_restarts
        self.liveness_timeout = float(liveness_timeout)
        self.run_id = run_id or f"{os.getpid()}-{int(time.time())}"
        self._initialised = False  # this runner called ray.init (so it shuts Ray down)
        self._handlers: dict[int, Any] = {}  # signal -> the handler before this runner's
        self._actors: list[ActorHandle] = []
        self._names: list[str] = []
        self._config: WorkerConfig | None = None
        self._opts: dict[str, Any] = {}
        self._generation = 0
        self._pings: dict[ObjectRef, int] = {}  # outstanding ping -> actor slot
        self._next_ping = 0.0
        self._last_alive = time.monotonic()
        self._deaths: dict[str, str] = {}  # actor name -> why it died
        self._done_blocks = 0

    # ------------------------------------------------------------------ Ray instance
    def _connect(self) -> None:
        if ray.is_initialized():
            if self.address and not self._initialised:
                log.warning("ray is already initialised in this process; ignoring address %r", self.address)
            return
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address:
            _probe_address(address)
        self._save_handlers()  # before ray.init, which installs its own SIGTERM handler
        self._initialised = True
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except Exception as e:  # Ray could not start (a raylet that died while starting, a bad address): one line
            self.close()
            where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
            raise ExtractError(f"could not {where}: {_short(e)}; rerun the same command (finished blocks are kept), "
                               f"check `ray status` or the Ray logs under {_ray_logs()}, or use --runner local") from e
        except BaseException:  # a signal while starting: stop whatever started
            self.close()
            raise
        self._install_handlers()
        log.info("ray: %s (%s)", "started a local instance" if address is None else f"joined {address}",
                 ray.cluster_resources())

    def _save_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def _install_handlers(self) -> None:
        for sig in self._handlers:
            signal.signal(sig, self._on_signal)

    def _restore_handlers(self) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._handlers = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        log.warning("%s: stopping the Ray actors and the Ray instance mmkd started; finished blocks stay in the "
                    "store, rerun the same command to resume", name)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt(name)
        raise SystemExit(128 + signum)

    def close(self) -> None:
        """Stop the actors; shut Ray down (waiting for its processes) if this runner started it."""
        for sig in self._handlers:  # a second signal must not cut the shutdown short
            signal.signal(sig, lambda s, f: log.warning("%s: still shutting Ray down", signal.Signals(s).name))
        try:
            for actor in self._actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception as e:  # noqa: BLE001 - best effort; the instance may be gone already
                    log.debug("could not kill an actor: %s", e)
            self._actors, self._names, self._pings = [], [], {}
            if self._initialised:
                self._initialised = False
                ray.shutdown(wait_for_processes=True)
        finally:
            self._restore_handlers()

    # ------------------------------------------------------------------ actors
    def _actor_options(self, n_blocks: int, workers: int = 1) -> tuple[int, dict[str, Any]]:
        res = ray.cluster_resources()
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
        env = {k: os.environ[k] for k in PROPAGATED_ENV if k in os.environ}
        opts: dict[str, Any] = {"max_restarts": self.max_restarts, "max_task_retries": self.max_restarts,
                                "runtime_env": {"env_vars": env} if env else None}
        if self.device != "cpu" and gpus >= 1:
            n = min(n_blocks, self.actors or int(gpus))
            # each GPU actor reserves the cores its decode threads use (at most its share of the node),
            # so Ray does not pack more decoding onto a node than it has cores
            opts.update(num_gpus=1, num_cpus=max(0, min(workers, int(cpus // n) - (1 if cpus > n else 0))))
        elif self.device == "cuda":
            raise ExtractError(f"--device cuda: the Ray cluster has no GPUs ({res}); use --device cpu or auto")
        else:
            n = min(n_blocks, self.actors or max(1, int(cpus)))
            opts["num_cpus"] = min(1.0, round(cpus / n, 3))
        return n, {k: v for k, v in opts.items() if v is not None}

    def _ensure_actors(self, n_blocks: int, config: WorkerConfig) -> None:
        n, opts = self._actor_options(n_blocks, config.workers)
        if self._config is not None and self._config != config:
            raise ExtractError("RayRunner: one runner serves one dataset/store/settings; make a new runner")
        self._config, self._opts = config, opts
        while len(self._actors) < n:
            self._actors.append(None)
            self._names.append("")
            self._start(len(self._actors) - 1)

    def _start(self, i: int) -> None:
        self._generation += 1
        name = f"mmkd-extract-{self.run_id}-{i}-g{self._generation}"
        self._actors[i] = BlockActor.options(name=name, **self._opts).remote(self._config, name)
        self._names[i] = name

    def _replace(self, i: int, error: BaseException) -> None:
        self._deaths[self._names[i]] = _short(error)
        try:
            ray.kill(self._actors[i], no_restart=True)
        except Exception as e:  # noqa: BLE001 - it is dead already
            log.debug("could not kill dead actor %s: %s", self._names[i], e)
        self._pings = {ref: j for ref, j in self._pings.items() if j != i}
        self._start(i)

    # ------------------------------------------------------------------ liveness
    def _wait_one(self, refs: list[ObjectRef], who: PassName, doing: str) -> ObjectRef:
        """The first of ``refs`` to finish; meanwhile ping the actors, and fail when nothing moves.

        Raises:
            ExtractError: no ref finished and no actor answered for ``liveness_timeout`` seconds.
        """
        while True:
            now = time.monotonic()
            if now >= self._next_ping:
                busy = set(self._pings.values())
                for i, actor in enumerate(self._actors):
                    if i not in busy:
                        self._pings[actor.ping.remote()] = i
                self._next_ping = now + min(5.0, self.liveness_timeout / 4)
            ready, _ = ray.wait([*refs, *self._pings], num_returns=1, timeout=TICK_S)
            if ready and ready[0] in self._pings:
                i = self._pings.pop(ready[0])
                try:
                    ray.get(ready[0])
                    self._last_alive = time.monotonic()
                except ray.exceptions.RayError as e:
                    self._deaths[self._names[i]] = _short(e)
                continue
            if ready:
                self._last_alive = time.monotonic()
                return ready[0]
            if time.monotonic() - self._last_alive > self.liveness_timeout:
                raise ExtractError(self._stalled_message(who, doing))

    def _stalled_message(self, who: PassName, doing: str) -> str:
        actors = "; ".join(f"{n}: {self._deaths.get(n, 'not answering')}" for n in self._names)
        dead_before = {n: why for n, why in self._deaths.items() if n not in self._names}
        if dead_before:
            actors += "; replaced earlier: " + "; ".join(f"{n}: {why}" for n, why in dead_before.items())
        return (f"{who.label}: no progress for {self.liveness_timeout:g} s while {doing} "
                f"(--liveness-timeout {self.liveness_timeout:g}): no block finished and no Ray actor answered. "
                f"Actors: {actors}. Ray nodes: {_describe_nodes()}. Blocks finished by this run "
                f"({self._done_blocks}) stay marked done in the store: rerun the same command to resume (a new "
                "local Ray instance is started; with --address, check the cluster with `ray status` first)")

    def _gather(self, refs: list[ObjectRef], who: PassName, doing: str) -> list[Any]:
        pending = list(refs)
        while pending:
            pending.remove(self._wait_one(pending, who, doing))
        return ray.get(refs)

    # ------------------------------------------------------------------ scheduling
    def run_pass(self, specs: list[TeacherSpec], todo: dict[str, list[int]], config: WorkerConfig,
                 on_block: BlockCallback, fail_fast: bool) -> PassResult:
        """Extract the pass's blocks on the pool (every actor holds every teacher of the pass).

        Raises:
            ExtractError: an actor failed to start, a teacher failed to load with ``fail_fast`` (or
                all did), a block raised an error, a block lost its actor more than ``max_restarts``
                times, or nothing moved for ``liveness_timeout`` seconds.
        """
        self._connect()
        queue = pass_queue(todo)
        self._ensure_actors(len(queue), config)
        payload = [s.to_dict() for s in specs]
        who = PassName(specs)
        self._last_alive, self._next_ping = time.monotonic(), 0.0
        try:
            info = self._gather([a.load.remote(payload, fail_fast) for a in self._actors], who, "loading the teachers")
        except ray.exceptions.RayError as e:
            raise ExtractError(f"{who.of(e)}: a Ray worker failed to load it (teacher, dataset or "
                               f"store): {_root_cause(e)}") from e
        errors: dict[str, str] = {}
        for i in info:
            errors.update(i["load_errors"])
        todo = check_loaded(todo, errors, fail_fast)
        log.info("pass %s: %d actors ready on %s", [s.name for s in specs], len(info), sorted({i["device"] for i in info}))
        self._schedule(who, payload, pass_queue(todo), on_block, fail_fast)
        try:
            attrs = self._gather([self._actors[0].store_attrs.remote(payload, fail_fast)], who,
                                 "reading its attributes")[0]
        except ray.exceptions.RayError as e:
            raise ExtractError(f"{who.label}: every block is done, but reading the teachers' attributes "
                               f"from a Ray worker failed: {_root_cause(e)}; rerun the same command to finish") from e
        return PassResult(attrs, errors, [{**i["memory"], "actor": i["actor"]} for i in info])

    def _schedule(self, who: PassName, payload: list[JSONDict], blocks: list[tuple[int, tuple[str, ...]]],
                  on_block: BlockCallback, fail_fast: bool) -> None:
        queue, idle = deque(blocks), deque(range(len(self._actors)))
        inflight: dict[ObjectRef, tuple[int, tuple]] = {}
        reserved: dict[int, tuple] = {}  # actor -> the block it gets next (told in advance, so it can prefetch)
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
                inflight[self._actors[i].run_block.remote(payload, b[0], list(b[1]), nb, fail_fast)] = (i, b)
            ref = self._wait_one(list(inflight), who, f"running {len(queue) + len(inflight) + len(reserved)} blocks")
            i, b = inflight.pop(ref)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the block itself raised: a real error, not a lost worker
                raise ExtractError(f"{who.of(e)}, block {b[0]}: {_root_cause(e)}") from e
            except ray.exceptions.RayError as e:  # the actor is gone for good (Ray's restarts used up)
                lost[b[0]] = lost.get(b[0], 0) + 1
                if lost[b[0]] > self.max_restarts:
                    raise ExtractError(f"{who.label}, block {b[0]}: lost its Ray worker {lost[b[0]]} times "
                                       f"(max_restarts {self.max_restarts}); last: {self._names[i]}: {_short(e)}. "
                                       "Finished blocks stay in the store: rerun to resume") from e
                log.warning("pass %s: actor %s died for good (%s); replacing it, block %d re-queued",
                            who.name, self._names[i], type(e).__name__, b[0])
                self._replace(i, e)
                if i in reserved:
                    queue.appendleft(reserved.pop(i))
                queue.appendleft(b)
                idle.append(i)
                continue
            idle.append(i)
            self._done_blocks += 1
            for result in out:
                on_block(result)


def _probe_address(address: str) -> None:
    """Fail in seconds, naming the address, when nothing accepts a connection at a ``host:port`` Ray address
    (``auto``, ``local`` and other forms go to ``ray.init`` as they are)."""
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_PROBE_S).close()
    except OSError as e:
        raise ExtractError(f"could not join the Ray cluster at {address}: nothing accepts connections at "
                           f"{host}:{port} ({e.strerror or type(e).__name__}); check the address (`ray status` on the "
                           "head node prints it) or use --runner local") from e


def _ray_logs() -> str:
    """Where Ray writes the logs of its latest session (``RAY_TMPDIR`` honoured)."""
    return os.path.join(os.environ.get("RAY_TMPDIR") or "/tmp", "ray", "session_latest", "logs")


def _describe_nodes() -> str:
    """The cluster's nodes as the GCS lists them, asked with a time limit.

    The GCS lists a node whose raylet just died as alive until its health checks time out, so a node is
    called "listed alive", never "alive", and the note says so.
    """
    out: list[str] = []

    def ask() -> None:
        for n in ray.nodes():
            state = "listed alive" if n.get("Alive") else f"DEAD ({n.get('DeathReasonMessage') or 'no reason given'})"
            out.append(f"{n.get('NodeManagerAddress', '?')} (node {str(n.get('NodeID', '?'))[:8]}) {state}")

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(NODE_QUERY_S)
    if not out:
        return f"unknown (the GCS did not list them within {NODE_QUERY_S:g} s)"
    listed = "; ".join(out)
    if "listed alive" in listed:
        listed += (" (the GCS lists a node whose raylet just died as alive until its health checks time out: "
                   "actors not answering on a node listed alive may still mean a dead raylet)")
    return listed


def _short(e: BaseException) -> str:
    """One line of a Ray error: its type and why (Ray's "The actor is dead because ..." when it says so)."""
    text = " ".join(str(e).split())
    why = text.find("The actor is dead because")
    text = text[why:] if why >= 0 else text
    return f"{type(e).__name__}: {text[:240]}{'...' if len(text) > 240 else ''}"


def _root_cause(e: BaseException) -> str:
    """The innermost error message of a Ray exception (the worker's own exception)."""
    cause = getattr(e, "cause", None) or e.__cause__
    while cause is not None and (getattr(cause, "cause", None) or cause.__cause__) is not None:
        cause = getattr(cause, "cause", None) or cause.__cause__
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
