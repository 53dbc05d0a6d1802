"""A real S3-compatible server on 127.0.0.1 (moto's server mode) for tests of remote MDS datasets."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Iterator

import pytest


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[SimpleNamespace]:
    """Start moto's S3 server with ``bucket``; within the block, S3_ENDPOINT_URL and test credentials
    are set (and AWS profile variables removed). Yields ``client`` (boto3) and ``endpoint``."""
    import boto3  # pinned in env/cpu.lock: a missing one is an error, not a skip
    from moto import server as moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        with pytest.MonkeyPatch.context() as mp:
            for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "MOSAICML_STREAMING_AWS_REQUESTER_PAYS"):
                mp.delenv(var, raising=False)
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("S3_ENDPOINT_URL", endpoint)
            client = boto3.client("s3", endpoint_url=endpoint)
            client.create_bucket(Bucket=bucket)
            yield SimpleNamespace(client=client, endpoint=endpoint, bucket=bucket)
    finally:
        server.stop()
