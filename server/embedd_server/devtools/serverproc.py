"""The server as a subprocess (`python -m embedd_server serve`), for crash tests, the fault
suite, the dev stack's extra replicas and benchmarks: it can be killed (SIGKILL), paused
(SIGSTOP) and continued (SIGCONT) like any real process."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m embedd_server serve` with its own environment; RSS sampled while it runs.
    With `log_path` its log (JSON lines) is appended there; `port` fixes its gRPC port (else
    a free one, kept across `start()`s)."""

    def __init__(
        self,
        control_dsn: str,
        secret_key: str,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        **settings: str,
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
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

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        log = self.log_path.open("ab") if self.log_path is not None else None
        try:
            self.proc = subprocess.Popen(  # our own interpreter and module
                [sys.executable, "-m", "embedd_server", "serve"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        finally:
            if log is not None:
                log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with status {self.proc.returncode} at start")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sample_rss(self) -> int:
        if self.proc is None:
            return 0
        rss = psutil.Process(self.proc.pid).memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def kill(self) -> None:
        """SIGKILL: no goodbye; its leases just lapse."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections and leases but runs no code."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (a graceful stop), SIGKILL after 15 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
