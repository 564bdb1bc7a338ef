"""What an extract run did: per-teacher counts, failures by reason, stage timings, rates."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from mmkd.jsontypes import JSONDict

STAGES = ("read_decode_s", "wait_s", "forward_s", "write_s")


@dataclass(frozen=True)
class BlockResult:
    """What a worker returns for one block it extracted and wrote (no features: those are in the store).

    Attributes:
        teacher, block: which block of which teacher.
        rows, valid: rows in the block, and those with features.
        failures: bad samples by reason.
        read_decode_s, wait_s, forward_s, write_s: seconds per stage (:data:`STAGES`).
        wall_s, cpu_s: wall and CPU seconds of the block.
        device, pid, host: where it ran.
        actor: the Ray actor's name (``""`` in the local runner).
        storage_retries: object-storage requests the client libraries retried (throttled or dropped).
        pass_teachers: teachers of the pass that shared this block's decoded images.
        decoded, bytes_read: images decoded and image bytes read for the block; one pass reads a
            block once for all its teachers, so only the block's first result carries them
            (the others say 0), as with ``storage_retries``.
        dct_scales: ``--decode reduced``: the block's images by the DCT scale they were decoded at
            (``{"1/2": 120, "1/4": 8}``), on every teacher's result (each got those pixels).
    """

    teacher: str
    block: int
    rows: int
    valid: int
    failures: dict[str, int]
    read_decode_s: float
    wait_s: float
    forward_s: float
    write_s: float
    wall_s: float
    cpu_s: float
    device: str
    pid: int
    host: str
    actor: str = ""
    storage_retries: int = 0
    pass_teachers: int = 1
    decoded: int = 0
    bytes_read: int = 0
    dct_scales: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> JSONDict:
        return dataclasses.asdict(self)


@dataclass
class TeacherSummary:
    """One teacher's part of a run.

    Attributes:
        teacher: teacher name.
        blocks_total: blocks in the store.
        blocks_skipped: blocks already done before this run (and not overwritten).
        blocks_run: blocks extracted by this run.
        rows: rows extracted by this run.
        valid: rows of them with features (the rest are bad samples).
        failures: bad samples of this run by reason.
        wall_s: wall-clock seconds of this teacher's run (including worker start-up).
        cpu_s: CPU seconds the workers spent on blocks (all threads).
        stages: summed seconds per stage over blocks: ``read_decode_s`` (thread
            time reading+decoding+preprocessing), ``wait_s`` (forward loop waiting for
            decoded batches), ``forward_s`` (model), ``write_s`` (store write).
        devices: devices the blocks ran on.
        workers: distinct worker processes (pids) that ran blocks; more than the
            number of actors means some were restarted.
        storage_retries: object-storage requests of the workers' blocks that the client
            library retried (throttling: S3 503 SlowDown; dropped connections).
        error: why the teacher did not run in a multi-teacher pass (it failed to load;
            the other teachers went on, a rerun does what is missing), else ``None``.
        dct_scales: ``--decode reduced``: this run's images by the DCT scale they were decoded at for
            this teacher (with a pass, the scale covers the pass's largest input; the teacher's
            ``decode_covers`` attribute and each block's marker say which inputs were covered).
    """

    teacher: str
    blocks_total: int = 0
    blocks_skipped: int = 0
    blocks_run: int = 0
    rows: int = 0
    valid: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    devices: list[str] = field(default_factory=list)
    workers: int = 0
    storage_retries: int = 0
    error: str | None = None
    dct_scales: dict[str, int] = field(default_factory=dict)
    _pids: set = field(default_factory=set, repr=False)

    def add(self, block: BlockResult) -> None:
        """Fold one block's result in."""
        self.blocks_run += 1
        self.rows += block.rows
        self.valid += block.valid
        self.failures = dict(Counter(self.failures) + Counter(block.failures))
        self.cpu_s += block.cpu_s
        for s in STAGES:
            self.stages[s] += getattr(block, s)
        if block.device not in self.devices:
            self.devices.append(block.device)
        self.storage_retries += block.storage_retries
        if block.dct_scales:
            self.dct_scales = dict(sorted((Counter(self.dct_scales) + Counter(block.dct_scales)).items(),
                                          key=lambda kv: int(kv[0].split("/")[1])))
        self._pids.add((block.host, block.pid))
        self.workers = len(self._pids)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def decode_per_core_s(self) -> float:
        """Images read + decoded + preprocessed per second of one decode thread (per core)."""
        return self.rows / self.stages["read_decode_s"] if self.stages["read_decode_s"] > 0 else 0.0

    @property
    def forward_per_s(self) -> float:
        """Images (with their captions) through the teacher per second of forward time."""
        return self.rows / self.stages["forward_s"] if self.stages["forward_s"] > 0 else 0.0

    @property
    def wall_side(self) -> str:
        """Which side bounds the run: ``decode`` when the forward loop waited for decoded batches longer
        than it computed, else ``forward``."""
        return "decode" if self.stages["wait_s"] > self.stages["forward_s"] else "forward"

    def to_dict(self) -> JSONDict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        d.update(rows_per_s=self.rows_per_s, decode_per_core_s=self.decode_per_core_s,
                 forward_per_s=self.forward_per_s, wall_side=self.wall_side)
        return d


@dataclass
class ExtractSummary:
    """The result of :func:`mmkd.extract.run_extract`.

    Attributes:
        store: store path.
        dataset: dataset URI.
        runner: ``ray`` or ``local``.
        created_store: this run created the store.
        num_samples: rows in the store.
        teachers: per-teacher summaries, in run order.
        wall_s: wall-clock seconds of the whole run.
        bad_rows: dataset rows that never became samples (not UTF-8, not valid
            JSON/CSV), recorded in ``<store>/_failures/dataset.parquet``.
        decoded: images decoded by this run (counted in the workers' decode path; one
            pass decodes each image once for all its teachers).
        bytes_read: image bytes read by this run.
        placement: the passes, each ``{"pass", "teachers", "estimated_bytes",
            "capacity_bytes", "memory"}``: which teachers share a worker (a GPU), the
            memory they were estimated to need, and what the workers then held.
        image_cache: with ``--image-cache S``: ``{"path", "size", "blocks", "missing_blocks", "complete"}``.
    """

    store: str
    dataset: str
    runner: str
    created_store: bool = False
    num_samples: int = 0
    teachers: list[TeacherSummary] = field(default_factory=list)
    wall_s: float = 0.0
    bad_rows: int = 0
    decoded: int = 0
    bytes_read: int = 0
    placement: list[JSONDict] = field(default_factory=list)
    image_cache: JSONDict | None = None

    @property
    def noop(self) -> bool:
        """Nothing was left to do: every block of every teacher was already done."""
        return all(t.blocks_run == 0 and t.error is None for t in self.teachers)

    @property
    def failed_teachers(self) -> dict[str, str]:
        """Teachers that did not run (failed to load), with why."""
        return {t.teacher: t.error for t in self.teachers if t.error}

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.teachers)

    @property
    def failures(self) -> dict[str, int]:
        return dict(sum((Counter(t.failures) for t in self.teachers), Counter()))

    def to_dict(self) -> JSONDict:
        return {"store": self.store, "dataset": self.dataset, "runner": self.runner,
                "created_store": self.created_store, "num_samples": self.num_samples, "noop": self.noop,
                "rows": self.rows, "failures": self.failures, "bad_rows": self.bad_rows, "wall_s": self.wall_s,
                "decoded": self.decoded, "bytes_read": self.bytes_read, "placement": self.placement,
                "failed_teachers": self.failed_teachers, "teachers": [t.to_dict() for t in self.teachers],
                "image_cache": self.image_cache}

    def format(self) -> str:
        """A human-readable report (what the CLI prints)."""
        if self.noop:
            names = ", ".join(t.teacher for t in self.teachers)
            return (f"nothing to do: every block of {names} is already in {self.store} "
                    f"({self.num_samples} samples); pass --overwrite to redo them") + self._bad_rows_line("\n") + \
                self._cache_line("\n")
        lines = [f"store {self.store}: {self.num_samples} samples from {self.dataset}"
                 + (" (store created)" if self.created_store else "") + self._bad_rows_line("\n  ")]
        for p in self.placement:
            lines.append(_placement_line(p))
        for t in self.teachers:
            if t.error:
                lines.append(f"  {t.teacher}: FAILED, {t.error}; the other teachers went on, rerun the same "
                             "command to do what is missing")
                continue
            if t.blocks_run == 0:
                lines.append(f"  {t.teacher}: already complete ({t.blocks_total} blocks), skipped")
                continue
            st = t.stages
            fails = ", ".join(f"{k} {v}" for k, v in sorted(t.failures.items())) or "none"
            lines += [
                (f"  {t.teacher}: {t.rows} rows in {t.blocks_run} blocks ({t.blocks_skipped} already done), "
                 f"{t.valid} valid, {t.rows_per_s:.1f} rows/s on {'/'.join(t.devices)} ({t.workers} workers)"),
                f"    failures: {fails}",
                (f"    decode {t.decode_per_core_s:.1f} img/s per thread vs forward {t.forward_per_s:.1f} img/s: "
                 f"the {t.wall_side} is the wall" + (" (more --workers, or --decode reduced, would help)"
                                                     if t.wall_side == "decode" else "")),
                (f"    wall {t.wall_s:.2f}s, worker CPU {t.cpu_s:.2f}s; stages: read+decode "
                 f"{st['read_decode_s']:.2f}s (thread time), waiting for decode {st['wait_s']:.2f}s, "
                 f"forward {st['forward_s']:.2f}s, write {st['write_s']:.2f}s")]
            if t.dct_scales:
                lines.append("    --decode reduced: images decoded at DCT scale " +
                             ", ".join(f"{k}: {v}" for k, v in t.dct_scales.items()))
            if t.storage_retries:
                lines.append(f"    object storage: {t.storage_retries} request(s) throttled or dropped and retried "
                             "by the client")
        rows = sum(t.rows for t in self.teachers)
        if rows and self.decoded:
            lines.append(f"read: {self.decoded} images decoded for {rows} teacher-rows "
                         f"({self.decoded / rows:.2f} decodes per teacher-row), {self.bytes_read / 1e6:.1f} MB of "
                         "image bytes read")
        if self.image_cache:
            lines.append(self._cache_line(""))
        lines.append(self._total_line())
        return "\n".join(lines)

    def _cache_line(self, sep: str) -> str:
        c = self.image_cache
        if not c:
            return ""
        if c["complete"]:
            return f"{sep}image cache: {c['path']} complete ({c['blocks']} blocks, short side {c['size']})"
        return (f"{sep}image cache: {c['path']}: {c['missing_blocks']} of {c['blocks']} blocks missing (blocks no "
                f"teacher needed were not read); finish it with `mmkd store images {self.store} --size {c['size']}`")

    def _total_line(self) -> str:
        ran = [t for t in self.teachers if t.blocks_run]
        valid = sum(t.valid for t in ran)
        fails = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "none"
        counted = " (counted once per teacher)" if len(ran) > 1 and self.failures else ""
        return (f"total: {self.rows} rows over {len(ran)} teacher{'s' if len(ran) != 1 else ''}, {valid} valid; "
                f"failures{counted}: {fails}; {f'bad rows {self.bad_rows}; ' if self.bad_rows else ''}"
                f"wall {self.wall_s:.2f}s")

    def _bad_rows_line(self, sep: str) -> str:
        if not self.bad_rows:
            return ""
        return (f"{sep}dataset: {self.bad_rows} bad row(s) (not UTF-8 / not valid JSON or CSV) skipped, not in the "
                f"store; listed in {self.store}/_failures/dataset.parquet (`mmkd store info {self.store}`)")


def _placement_line(p: JSONDict) -> str:
    gib = 1 << 30
    cap = f" of {p['capacity_bytes'] / gib:.1f} GiB" if p.get("capacity_bytes") else ""
    held = [m.get("cuda_max_allocated_bytes") or sum(m.get("params_bytes", {}).values()) for m in p.get("memory", [])]
    used = (f"; held {max(held) / gib:.2f} GiB per worker ({'CUDA peak' if any('cuda_max_allocated_bytes' in m for m in p['memory']) else 'parameters'})"
            if held else "")
    return (f"  pass {p['pass']}: teachers {', '.join(p['teachers'])} share each worker; estimated "
            f"{p['estimated_bytes'] / gib:.2f} GiB{cap}{used}")
