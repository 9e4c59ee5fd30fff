"""The server as a subprocess (`python -m embedd_server`), for crash tests and benchmarks."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m embedd_server serve` with its own environment; RSS sampled while it runs."""

    def __init__(self, control_dsn: str, secret_key: str, **settings: str) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": control_dsn,
            "EMBEDD_SECRET_KEY": secret_key,
            "EMBEDD_GRPC_HOST": "127.0.0.1",
            "EMBEDD_GRPC_PORT": str(self.port),
            "EMBEDD_LOG_LEVEL": "WARNING",
            **{f"EMBEDD_{k.upper()}": v for k, v in settings.items()},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss = 0

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "embedd_server", "serve"], env=self.env, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def sample_rss(self) -> int:
        if self.proc is None:
            return 0
        rss = psutil.Process(self.proc.pid).memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def create_org(control_dsn: str, secret_key: str, *, requests_per_minute: int = 10_000_000) -> str:
    """A new organisation's first API key, through `embedd-server create-org`. Benchmarks and
    tests measure the service, not a free tier's rate limit: the default limit is out of reach."""
    out = subprocess.run(  # noqa: S603 - our own interpreter and module, fixed arguments
        [
            sys.executable,
            "-m",
            "embedd_server",
            "create-org",
            "--name",
            "bench",
            "--requests-per-minute",
            str(requests_per_minute),
        ],
        env={**os.environ, "DATABASE_URL": control_dsn, "EMBEDD_SECRET_KEY": secret_key},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return str(json.loads(out.strip().splitlines()[-1])["api_key"])


def new_secret_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()
