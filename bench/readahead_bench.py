"""Distill's feature reads from object storage: read-ahead vs none, beside the step alone, in one run.

    python bench/readahead_bench.py [--rows 16384] [--teachers 3] [--dim 512] [--latency-ms 20] [--step-ms 40]

A store on S3 answers each GET after a round trip (tens of ms in a region), so a reader
that fetches a feature block only when a batch needs it stalls the training step on every
block boundary. The distiller's store stream (``StoreBatches.__iter__``) asks the store to
fetch the blocks of the batches ahead in the background (``FeatureStore.read_ahead``) while
it builds and trains on the current one. This bench measures what that buys:

  step only   the simulated training step alone (``--step-ms`` of sleep per batch, as a GPU
              step that releases the GIL): the limit.
  no ahead    per batch: read its features (image, text, valid of every teacher), then step.
  1 ahead     the same, with the next batch's blocks fetched in the background first.
  16 ahead    the blocks of the batch 16 ahead fetched (``fetched_ahead``, what distill does).

The store is a synthetic one copied to a moto S3 server on 127.0.0.1 (its own process), reached
through a proxy (another process) that holds every request ``--latency-ms`` before passing it on (moto itself answers in
about a millisecond, which would hide the round trip). Batches are the distiller's own
chunk-shuffled ones (``chunk_shuffled_batches``), one epoch, ``--batch-size`` rows.
Prints seconds and ratios; nothing here is a test (no timed assertions anywhere).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import numpy as np

from mmkd.distill.data import READ_AHEAD_BATCHES
from mmkd.store import FeatureStore, chunk_shuffled_batches
from mmkd.store.sampler import fetched_ahead
from mmkd.store.synthetic import make_synthetic_store

KINDS = ("image", "text", "valid")


def serve_latency_proxy(upstream: str, latency_s: float, ports: "multiprocessing.Queue[int]") -> None:
    """An HTTP proxy on 127.0.0.1 that waits ``latency_s`` before forwarding each request to ``upstream``
    (run in its own process, so its Python does not compete with the reader's for a GIL)."""
    target = urlparse(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(latency_s)
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection") and (
                        k.lower() != "content-length" or self.command == "HEAD"):
                    self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ports.put(server.server_address[1])
    server.serve_forever()


def start_servers(latency_s: float) -> tuple[list, str, str]:
    """moto's S3 server and the latency proxy, each in its own process: (processes, moto URL, proxy URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                moto.kill()
                raise RuntimeError("moto's server did not start within 30 s")
            time.sleep(0.2)
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    proxy = multiprocessing.Process(target=serve_latency_proxy, args=(f"http://127.0.0.1:{port}", latency_s, ports),
                                    daemon=True)
    proxy.start()
    return [moto, proxy], f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ports.get(timeout=30)}"


def one_epoch(store: FeatureStore, teachers: list[str], batches: list[np.ndarray], step_s: float,
              horizon: int) -> tuple[float, float]:
    """Wall seconds of one pass over ``batches`` (read ``horizon`` batches ahead; 0: none), and the read waits."""
    def fetch(rows: np.ndarray) -> None:
        for t in teachers:
            store.read_ahead(t, rows, KINDS)

    wait = 0.0
    t0 = time.perf_counter()
    for rows in (fetched_ahead(batches, fetch, horizon) if horizon else batches):
        t = time.perf_counter()
        for teacher in teachers:
            for kind in KINDS:
                store.read(teacher, rows, kind)
        wait += time.perf_counter() - t
        time.sleep(step_s)
    return time.perf_counter() - t0, wait


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--teachers", type=int, default=3)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="round trip added to every S3 request")
    ap.add_argument("--step-ms", type=float, default=40.0, help="simulated training step per batch")
    a = ap.parse_args()

    import s3fs

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    procs, moto_url, proxy_url = start_servers(a.latency_ms / 1000)
    try:
        direct = s3fs.S3FileSystem(endpoint_url=moto_url)
        direct.mkdir("bench")
        teachers = [f"t{i}" for i in range(a.teachers)]
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "store")
            make_synthetic_store(local, a.rows, dict.fromkeys(teachers, a.dim), block_size=a.block_size)
            direct.put(local, "bench/store", recursive=True)
        os.environ["AWS_ENDPOINT_URL"] = proxy_url
        batches = [np.asarray(b, dtype=np.int64) for b in chunk_shuffled_batches(
            a.rows, a.block_size, a.batch_size, seed=0, epoch=0)]
        step_s = a.step_ms / 1000
        t = time.perf_counter()
        for _ in batches:
            time.sleep(step_s)
        limit = time.perf_counter() - t
        results = {}
        for name, horizon in (("no ahead", 0), ("1 ahead", 1), (f"{READ_AHEAD_BATCHES} ahead", READ_AHEAD_BATCHES)):
            store = FeatureStore.open("s3://bench/store")  # a fresh store each: an empty block cache
            results[name] = one_epoch(store, teachers, batches, step_s, horizon)
    finally:
        for p in procs:
            p.kill()

    mib = a.rows * a.teachers * a.dim * 2 * 2 / (1 << 20)
    print(f"{a.rows} rows x {a.teachers} teachers x {a.dim}-d float16 ({mib:.0f} MiB of image+text features) on S3 "
          f"(moto behind a {a.latency_ms:g} ms proxy), {len(batches)} batches of {a.batch_size}, "
          f"block {a.block_size}, step {a.step_ms:g} ms")
    print(f"{'':12s} {'wall s':>8s} {'read wait s':>12s} {'vs step only':>13s}")
    print(f"{'step only':12s} {limit:8.2f} {0.0:12.2f} {1.0:12.2f}x")
    for name, (wall, wait) in results.items():
        print(f"{name:12s} {wall:8.2f} {wait:12.2f} {wall / limit:12.2f}x")
    ours = results[f"{READ_AHEAD_BATCHES} ahead"]
    print(f"distill's read-ahead ({READ_AHEAD_BATCHES} batches) vs none: {results['no ahead'][0] / ours[0]:.2f}x faster; "
          f"the step waits {ours[1]:.2f} s on reads instead of {results['no ahead'][1]:.2f} s")


if __name__ == "__main__":
    main()
