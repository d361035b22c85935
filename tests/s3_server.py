"""A real S3-compatible server on loopback for the artifact store's tests: moto's standalone server
(``python -m moto.server``) in its own process, with one bucket and throwaway credentials made at run time.

moto checks ``If-None-Match: *`` on PUT and on completing a multipart upload, but not atomically: two writers
racing for one key can both pass. Race tests therefore run against the database (issue 17), never here.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import EndpointConnectionError

from tests.conftest import free_port, stop_process
from tests.waiting import wait_until

BUCKET = "artifacts"


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    env: dict[str, str]  # credentials and region for the store (it reads them the usual AWS way)

    def client(self) -> Any:
        """A boto3 client to look at the server's state behind the store's back."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )


@contextlib.contextmanager
def run_s3_server(workdir: Path) -> Iterator[S3Server]:
    """Start moto's server on 127.0.0.1 (log in ``workdir``), create the bucket; stop the server on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (workdir / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = S3Server(
        endpoint=f"http://127.0.0.1:{port}",
        bucket=BUCKET,
        env={
            "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
            "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    )
    client = server.client()

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto's server exited with {proc.returncode}; see {workdir / 'moto.log'}")
        client.list_buckets()
        return True

    try:
        wait_until(listening, 60, "moto's S3 server", interval=0.1, ignore=(EndpointConnectionError,))
        client.create_bucket(Bucket=BUCKET)
        yield server
    finally:
        stop_process(proc)
        log.close()
