"""A local S3 server for the object-storage tests: moto's server mode on 127.0.0.1 only.

``s3_env`` starts one server for the session (a free port), points the AWS
environment at it (``AWS_ENDPOINT_URL`` and dummy keys, seen by this process and by
every ``mmkd`` subprocess and Ray worker it starts) and stops it at the end.
``bucket`` makes a fresh bucket per test and returns its ``s3://`` URL.
"""

from __future__ import annotations

import os
import uuid

import pytest

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_env():
    """``{"AWS_ENDPOINT_URL": ..., ...}`` of a moto S3 server on 127.0.0.1, set in ``os.environ`` for the session."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    pytest.importorskip("s3fs")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**AWS_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in (*env, "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update(env)
    yield env
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_client(s3_env):
    import boto3

    return boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])


@pytest.fixture
def bucket(s3_client) -> str:
    """A new empty bucket: ``s3://mmkd-test-<random>``."""
    name = f"mmkd-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return f"s3://{name}"
