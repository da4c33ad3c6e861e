"""moto's S3 server on loopback, for the object-storage tests and `benchmarks/storage.py`: a
real S3-compatible server (moto's server mode), not a mock of the client."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def s3_server(bucket: str, secret: str, cache: Path) -> Iterator[dict[str, str]]:
    """Start moto's server on a free loopback port with `bucket` made, and point pyarrow and
    boto3 at it (`AWS_*`) and raysoup's cache at `cache` in this process's environment; yields
    those variables, and restores the environment and kills the server on leaving."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAYSOUP_CACHE": str(cache),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
