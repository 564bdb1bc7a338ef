"""S3 throttling (503 SlowDown) during extract: retried by the client library, counted in the summary.

A small proxy on 127.0.0.1 stands between mmkd and the moto server and answers the first
few writes of feature chunks with ``503 SlowDown``, as S3 does under load; everything
else is passed through unchanged.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

from tests.journey.conftest import run_mmkd
from tests.s3.test_s3_journey import TEACHERS, s3_home  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow  # ~60 s: two mmkd subprocesses and the tiny teachers

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")


def _throttling_proxy(upstream: str, throttle: int):
    target = urlparse(upstream)
    state = {"left": throttle, "throttled": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _any(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                slow = self.command == "PUT" and "/features.zarr/" in self.path and "/c/" in self.path \
                    and state["left"] > 0
                if slow:
                    state["left"] -= 1
                    state["throttled"] += 1
            if slow:
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOWDOWN)))
                self.end_headers()
                self.wfile.write(SLOWDOWN)
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():  # a HEAD keeps the object's Content-Length
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
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


@pytest.fixture
def throttled(s3_env):
    server, state = _throttling_proxy(s3_env["AWS_ENDPOINT_URL"], throttle=3)
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


def test_slowdown_is_retried_and_counted_in_the_summary(s3_home, bucket, throttled):  # noqa: F811
    proxy, state = throttled
    store = f"{bucket}/stores/throttled"
    out = run_mmkd(s3_home, "extract", "--teacher", TEACHERS[0], "--data", "scans", "--store", store,
                   "--runner", "local", "--device", "cpu", "--block-size", "8", "--json", "--no-progress",
                   env={"AWS_ENDPOINT_URL": proxy})
    summary = json.loads(out.stdout)
    assert state["throttled"] == 3  # the proxy did answer SlowDown three times
    assert summary["teachers"][0]["storage_retries"] == 3 and summary["teachers"][0]["valid"] == 24
    assert "OK" in run_mmkd(s3_home, "store", "validate", store).stdout  # every retried chunk is whole
