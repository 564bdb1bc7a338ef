"""A bucket the credentials may not read or write (S3 403 AccessDenied): one line naming the URL and
the provider's error, in seconds, nothing written, no secret printed.

moto does not enforce permissions, so a proxy on 127.0.0.1 answers every request with
S3's own ``403 AccessDenied`` reply, as a bucket policy or wrong keys would.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading

import pytest

from tests.journey.conftest import run_mmkd
from tests.s3.test_s3_journey import TEACHERS, s3_home  # noqa: F401  (the fixture)

DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
          b"<Message>Access Denied</Message><RequestId>TEST</RequestId></Error>")


@pytest.fixture
def denied_endpoint():
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _deny(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(DENIED)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(DENIED)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _deny

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _one_error_line(out, url: str) -> str:
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [x for x in out.stderr.splitlines() if x.startswith("Error:")]
    assert len(lines) == 1 and url in lines[0], out.stderr[-3000:]
    return lines[0]


def test_access_denied_bucket_is_one_line_and_nothing_is_written(s3_home, s3_env, bucket, s3_client, denied_endpoint):
    env = {"AWS_ENDPOINT_URL": denied_endpoint}
    store = f"{bucket}/denied-store"
    for args in (("store", "info", store), ("store", "validate", store)):
        line = _one_error_line(run_mmkd(s3_home, *args, ok=False, env=env, timeout=120), store)
        assert "AccessDenied" in line or "Forbidden" in line or "403" in line, line
    out = run_mmkd(s3_home, "extract", "--teacher", TEACHERS[0], "--data", "scans", "--store", store,
                   "--runner", "local", "--device", "cpu", "--no-progress", ok=False, env=env, timeout=120)
    line = _one_error_line(out, "s3://")
    assert "AccessDenied" in line or "Forbidden" in line or "403" in line, line
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in out.stdout + out.stderr
    # nothing was written: the real bucket (behind moto, not the denying proxy) holds no store
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket[len("s3://"):]).get("Contents", [])]
    assert not [k for k in keys if k.startswith("denied-store")], keys
