"""Wall and CPU seconds of each phase of one ``mmkd demo`` run, CPU summed over its whole process tree.

    python bench/demo_bench.py --out /tmp/demo-x [--json FILE] -- --quick [any other mmkd demo flag]

Runs ``mmkd demo --out OUT ...`` as a subprocess, samples the CPU time (user + system)
of every process in its tree (the demo, its training pools, Ray's GCS, raylet and
workers) every ``--interval`` seconds with psutil, and cuts it at the demo's own phase
lines (``[   Ns] extract ...`` / ``[   Ns] extract done in 12.3s``). A process keeps
the CPU of its last sample after it exits, so a process that lives less than one
interval is missed, and the last interval of each one is lost (under 1% at 0.2 s).
On a shared machine the wall times stretch with the load; the CPU seconds much less
(they still grow with cache and hyper-thread contention), so the report gives both,
and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time

import psutil

PHASE = re.compile(r"^\[\s*\d+s\] (\w+) (\.\.\.|done in ([\d.]+)s)$")


class TreeCPU:
    """Cumulative CPU seconds of a process and every descendant ever sampled."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.last: dict[tuple[int, float], float] = {}  # (pid, create time) -> user + system at its last sample

    def sample(self) -> float:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    self.last[(p.pid, p.create_time())] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return sum(self.last.values())


def _lines(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def run(out: str, demo_args: list[str], interval: float) -> dict:
    """One demo run; returns per-phase wall/CPU seconds, the total, and the load average before and after."""
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(["mmkd", "demo", "--out", out, *demo_args], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    tree, q = TreeCPU(proc.pid), queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, q), daemon=True).start()
    stdout: list[str] = []
    threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True).start()
    starts: dict[str, float] = {}
    phases: dict[str, dict[str, float]] = {}
    done = False
    while not done:
        cpu = tree.sample()
        deadline = time.perf_counter() + interval
        while (left := deadline - time.perf_counter()) > 0:
            try:
                line = q.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                done = True
                break
            sys.stderr.write(line)
            m = PHASE.match(line.strip())
            if m:
                cpu = tree.sample()
                if m.group(2) == "...":
                    starts[m.group(1)] = cpu
                else:
                    phases[m.group(1)] = {"wall_s": float(m.group(3)), "cpu_s": round(cpu - starts[m.group(1)], 1)}
    total_cpu = tree.sample()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"mmkd demo exited with {rc}; its output is above")
    return {"args": demo_args, "out": out, "phases": phases, "total": {"wall_s": round(wall, 1),
            "cpu_s": round(total_cpu, 1)}, "loadavg_before": load0, "loadavg_after": os.getloadavg(),
            "cores": os.cpu_count(), "stdout_tail": "".join(stdout[-8:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the demo's --out folder (fresh)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between CPU samples")
    p.add_argument("demo_args", nargs=argparse.REMAINDER, help="after --: mmkd demo flags, e.g. --quick")
    a = p.parse_args()
    args = [x for x in a.demo_args if x != "--"]
    r = run(a.out, args, a.interval)
    print(f"mmkd demo {' '.join(args)}: wall {r['total']['wall_s']} s, CPU {r['total']['cpu_s']} s over its "
          f"process tree; load average before {r['loadavg_before'][0]:.2f}, after {r['loadavg_after'][0]:.2f} "
          f"({r['cores']} cores)")
    print("| phase | wall s | CPU s |\n|---|---|---|")
    for name, v in r["phases"].items():
        print(f"| {name} | {v['wall_s']} | {v['cpu_s']} |")
    print(f"| total (process start to exit) | {r['total']['wall_s']} | {r['total']['cpu_s']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
