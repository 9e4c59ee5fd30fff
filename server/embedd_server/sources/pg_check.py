"""Test a user's PostgreSQL connection for real and say precisely what is wrong.

`check_postgres` connects with the stored credentials and runs the documented checks in order:
reachable → answers in time → SSL agreement → credentials → database → (platform mode) the
`vector` extension → target schema → (platform mode) CREATE on the schema. Every failure maps to
one `TestFailure` with a message that says what to do. Messages never contain the password.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

import asyncpg

from embedd_server.domain.credentials import (
    SSL_MODES,
    ConnectionTestResult,
    PgCredentials,
    TestFailure,
)
from embedd_server.network_policy import PERMISSIVE, NetworkPolicy, NetworkPolicyDenied
from embedd_server.sources.sql import quote_ident

__all__ = ["check_postgres", "ssl_argument"]

_UNREACHABLE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EADDRNOTAVAIL,
    }
)


# Below this length a password is likely to occur by chance in our own wording ("user"): only
# the user-supplied values and server texts interpolated into a message are masked then.
_MIN_SCRUB_LEN = 8

_SslArg = ssl.SSLContext | Literal[False, "prefer"]


class _Failure(Exception):
    def __init__(self, failure: TestFailure, message: str) -> None:
        super().__init__(failure.value)
        self.failure = failure
        self.message = message


class _NamedContext(ssl.SSLContext):
    """Verifies the certificate against `server_name` (the connection's host name) while the
    socket goes to an address the network policy resolved and checked."""

    server_name: str | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name or server_hostname, session)


def ssl_argument(ssl_mode: str, *, root_cert: Path | None = None, server_name: str | None = None) -> _SslArg:
    """Map a connection's `ssl_mode` to asyncpg's `ssl=` argument.

    `prefer` keeps asyncpg's own logic (try SSL, fall back to plain without verifying).
    `require` encrypts without verifying the certificate. `verify-ca` / `verify-full` verify it
    against `root_cert` or, by default, the system's trusted CAs (the credentials carry no CA);
    `verify-full` also checks that the certificate matches the host name - `server_name` when
    asyncpg is given resolved addresses instead of the name (`NetworkPolicy.pg_hosts`).
    """
    if ssl_mode not in SSL_MODES:
        raise ValueError(f"ssl_mode must be one of {', '.join(SSL_MODES)}, not {ssl_mode!r}")
    if ssl_mode == "disable":
        return False
    if ssl_mode == "prefer":
        return "prefer"
    if ssl_mode == "require":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)  # what create_default_context builds
    if root_cert:
        context.load_verify_locations(cafile=str(root_cert))
    else:
        context.load_default_certs()
    context.server_name = server_name
    context.check_hostname = ssl_mode == "verify-full"
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def check_postgres(
    creds: PgCredentials,
    *,
    platform_mode: bool,
    timeout_s: float = 10.0,
    root_cert: Path | None = None,
    policy: NetworkPolicy = PERMISSIVE,
) -> ConnectionTestResult:
    """Connect with `creds` and run every documented check; never raises for a failed check.

    `latency_ms` is the wall time of the whole check. `root_cert` (optional) is the CA used by
    ssl_mode verify-ca / verify-full instead of the system's trusted CAs. `policy` is the
    server's network policy (the server passes its own; a refusal is `network_policy_denied`).
    """
    started = time.perf_counter()
    failure: TestFailure | None = None
    message: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            hosts = await _hosts(creds, policy)
            ssl_arg = ssl_argument(creds.ssl_mode, root_cert=root_cert, server_name=creds.host)
            await _run_checks(creds, hosts, ssl_arg, platform_mode=platform_mode, timeout_s=timeout_s)
    except _Failure as exc:
        failure, message = exc.failure, exc.message
    except TimeoutError:
        failure, message = TestFailure.TIMEOUT, _timeout_message(_shown(creds), timeout_s)
    latency_ms = max(0, round((time.perf_counter() - started) * 1000))
    if message is not None and len(creds.password) >= _MIN_SCRUB_LEN:
        message = message.replace(creds.password, "***")  # last safety net
    return ConnectionTestResult(latency_ms=latency_ms, failure=failure, message=message)


# --------------------------------------------------------------------------------------------
# The checks


async def _hosts(creds: PgCredentials, policy: NetworkPolicy) -> list[str]:
    """Where to connect, as the network policy allows."""
    try:
        return await policy.pg_hosts(creds.host, creds.port)
    except NetworkPolicyDenied as exc:
        raise _Failure(TestFailure.NETWORK_POLICY_DENIED, _mask(str(exc), creds.password)) from exc
    except OSError as exc:  # the name does not resolve
        raise _classify_connect_error(exc, _shown(creds)) from exc


async def _run_checks(
    creds: PgCredentials,
    hosts: list[str],
    ssl_arg: _SslArg,
    *,
    platform_mode: bool,
    timeout_s: float,
) -> None:
    try:
        conn = await asyncpg.connect(
            host=hosts,
            port=creds.port,
            user=creds.user,
            password=creds.password,
            database=creds.database,
            ssl=ssl_arg,
            timeout=timeout_s,
            command_timeout=timeout_s,
            statement_cache_size=0,
            server_settings={"application_name": "embedd-connection-test"},
        )
    except TimeoutError:
        raise
    except Exception as exc:
        raise _classify_connect_error(exc, _shown(creds)) from exc
    try:
        await _check_database(conn, creds, platform_mode=platform_mode)
    finally:
        await conn.close(timeout=2.0)


async def _check_database(conn: asyncpg.Connection, creds: PgCredentials, *, platform_mode: bool) -> None:
    row = await conn.fetchrow(
        """
        SELECT current_user::text AS username,
               EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') AS vector_created,
               EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')
                   AS vector_available,
               n.oid IS NOT NULL AS schema_exists,
               has_schema_privilege(n.oid, 'CREATE') AS can_create
        FROM (SELECT 1) AS one
        LEFT JOIN pg_namespace AS n ON n.nspname = $1
        """,
        creds.schema,
    )
    assert row is not None
    username = _mask(row["username"], creds.password)
    creds = _shown(creds)  # from here on only for messages
    where = f'database "{creds.database}" on {creds.host}:{creds.port}'
    # Only platform mode stores vectors in the user's database; managed mode only reads rows.
    if platform_mode and not row["vector_created"]:
        if row["vector_available"]:
            raise _Failure(
                TestFailure.VECTOR_EXTENSION_MISSING,
                f"The pgvector extension is installed on the server but not created in {where}. "  # noqa: S608 - a message
                "Connect to that database as its owner or a superuser and run: "
                "CREATE EXTENSION IF NOT EXISTS vector; "
                "then check with: SELECT * FROM pg_extension WHERE extname = 'vector';",
            )
        raise _Failure(
            TestFailure.VECTOR_EXTENSION_MISSING,
            f"The pgvector extension is not installed on the server of {where}. Install pgvector "
            "on the server (e.g. the postgresql-<version>-pgvector package, or enable it in your "
            "cloud provider's console), then run in that database: "
            "CREATE EXTENSION IF NOT EXISTS vector;",
        )
    if not row["schema_exists"]:
        schema = quote_ident(creds.schema)
        raise _Failure(
            TestFailure.SCHEMA_NOT_FOUND,
            f'Schema "{creds.schema}" does not exist in {where}. Create it '
            f"(CREATE SCHEMA {schema} AUTHORIZATION {quote_ident(username)};) or set the "
            "connection's schema to an existing one.",
        )
    if platform_mode and not row["can_create"]:
        user = quote_ident(username)
        schema = quote_ident(creds.schema)
        raise _Failure(
            TestFailure.CREATE_PRIVILEGE_MISSING,
            f'User "{username}" cannot create tables in schema "{creds.schema}" of '
            f"{where}. Platform mode creates the vector tables and indexes in your database; "
            f"as the schema owner or a superuser run: GRANT CREATE ON SCHEMA {schema} TO {user};",
        )


# --------------------------------------------------------------------------------------------
# Classifying connection errors


def _classify_connect_error(exc: BaseException, creds: PgCredentials) -> _Failure:
    target = f"{creds.host}:{creds.port}"
    user, database = creds.user, creds.database

    if isinstance(exc, asyncpg.InvalidPasswordError):  # 28P01; also for unknown roles (SCRAM)
        return _Failure(
            TestFailure.BAD_CREDENTIALS,
            f'{target} rejected the password for user "{user}" (or the user does not exist). '
            "Check the user name and password in the connection's credentials.",
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):  # 28000
        return _classify_28000(_mask(str(exc), creds.password), exc, creds)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):  # 3D000
        return _Failure(
            TestFailure.DATABASE_NOT_FOUND,
            f'Database "{database}" does not exist on {target}. Check the database name in the '
            "connection's credentials (names are case-sensitive), or create it: "
            f"CREATE DATABASE {quote_ident(database)};",
        )
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return _Failure(
            TestFailure.UNREACHABLE,
            f"{target} refused the connection: too many connections are open. Close idle "
            "connections or raise max_connections (or the user's connection limit), then retry.",
        )
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return _Failure(
            TestFailure.UNREACHABLE,
            f"The server at {target} is starting up, shutting down or in recovery and does not "
            "accept connections now. Retry once it is up.",
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = _mask(str(exc.verify_message), creds.password)
        return _Failure(
            TestFailure.SSL_UNAVAILABLE,
            f"The SSL certificate of {target} could not be verified ({why}). With "
            f"ssl_mode {creds.ssl_mode} the certificate must be signed by a trusted CA"
            + (" and match the host name" if creds.ssl_mode == "verify-full" else "")
            + ". Install such a certificate on the server, or use ssl_mode require to encrypt "
            "without verifying it.",
        )
    if isinstance(exc, ssl.SSLError):
        why = _mask(str(exc.reason or "unknown reason"), creds.password)
        return _Failure(
            TestFailure.SSL_UNAVAILABLE,
            f"The SSL handshake with {target} failed ({why}). Check "
            "the server's SSL configuration (ssl = on, certificate and key), or use ssl_mode "
            "disable if the server does not support SSL.",
        )
    if isinstance(exc, socket.gaierror):
        return _Failure(
            TestFailure.UNREACHABLE,
            f'The host name "{creds.host}" could not be resolved (DNS lookup failed). Check the '
            "host in the connection's credentials and that it resolves from the public internet.",
        )
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        return _Failure(
            TestFailure.SSL_UNAVAILABLE,
            f"ssl_mode is {creds.ssl_mode} but the server at {target} does not support SSL. "
            "Enable SSL on the server (ssl = on with a certificate), or set ssl_mode to prefer "
            "or disable.",
        )
    if isinstance(exc, ConnectionError) and "during SSL exchange" in str(exc):
        return _Failure(
            TestFailure.SSL_UNAVAILABLE,
            f"The server at {target} answered the SSL request with an error. Check that it is "
            "PostgreSQL and that SSL is enabled on it, or set ssl_mode to disable.",
        )
    if isinstance(exc, OSError) and (
        isinstance(exc, ConnectionRefusedError) or exc.errno in _UNREACHABLE_ERRNOS
    ):
        reason = _mask(_reason(exc), creds.password)
        return _Failure(
            TestFailure.UNREACHABLE,
            f"Could not reach {target} ({reason}). Check the host and port, that PostgreSQL "
            "listens on that address (listen_addresses, port), and that firewall rules and "
            f"security groups allow Embedd to reach {target}.",
        )
    if isinstance(exc, (ConnectionError, OSError, asyncpg.ConnectionDoesNotExistError)):
        why = _mask(_reason(exc), creds.password)
        return _Failure(
            TestFailure.UNREACHABLE,
            f"The connection to {target} was lost during the handshake ({why}). Check "
            "that the host and port point at a PostgreSQL server and that nothing between "
            "Embedd and it (proxy, firewall) closes the connection.",
        )
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        failure = TestFailure.BAD_CREDENTIALS if sqlstate.startswith("28") else (TestFailure.UNREACHABLE)
        why = _mask(str(exc), creds.password)
        return _Failure(
            failure,
            f"{target} refused the connection: {why} (SQLSTATE {sqlstate or 'unknown'}). "
            "Check the connection's credentials and the server's settings.",
        )
    return _Failure(
        TestFailure.UNREACHABLE,
        f"Could not connect to {target}: {type(exc).__name__}: {_mask(str(exc), creds.password)}. "
        "Check the host, port and credentials.",
    )


def _classify_28000(text: str, exc: BaseException, creds: PgCredentials) -> _Failure:
    target = f"{creds.host}:{creds.port}"
    user, database = creds.user, creds.database
    lowered = text.lower()
    if "pg_hba.conf" in lowered:
        unencrypted = "no encryption" in lowered or "ssl off" in lowered
        if (
            unencrypted
            and creds.ssl_mode in ("disable", "prefer", "allow")
            and not (_ssl_attempt_rejected(exc))
        ):
            return _Failure(
                TestFailure.SSL_REQUIRED,
                f'The server at {target} requires SSL for user "{user}" and database '
                f'"{database}" (its pg_hba.conf rejects unencrypted connections). Set ssl_mode '
                "to require in the connection's credentials (or verify-full with a trusted "
                "certificate).",
            )
        return _Failure(
            TestFailure.BAD_CREDENTIALS,
            f'The server at {target} does not allow user "{user}" to connect to database '
            f'"{database}" from Embedd\'s address (pg_hba.conf has no matching entry or rejects '
            "it). Add a pg_hba.conf entry for this user, database and Embedd's IP addresses "
            "(method scram-sha-256), reload PostgreSQL, and check the user name.",
        )
    if "does not exist" in lowered and "role" in lowered:
        return _Failure(
            TestFailure.BAD_CREDENTIALS,
            f'User "{user}" does not exist on {target}. Check the user name in the connection\'s '
            "credentials.",
        )
    if "not permitted to log in" in lowered:
        return _Failure(
            TestFailure.BAD_CREDENTIALS,
            f'User "{user}" exists on {target} but may not log in. Run: ALTER ROLE '
            f"{quote_ident(user)} LOGIN;",
        )
    return _Failure(
        TestFailure.BAD_CREDENTIALS,
        f'{target} rejected user "{user}": {text}. Check the user name and password.',
    )


def _ssl_attempt_rejected(exc: BaseException) -> bool:
    """With ssl_mode prefer, asyncpg retries without SSL; was the SSL attempt rejected too?"""
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if "SSL encryption" in str(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    text = str(exc)
    return text or type(exc).__name__


def _timeout_message(creds: PgCredentials, timeout_s: float) -> str:
    target = f"{creds.host}:{creds.port}"
    return (
        f"{target} did not answer within {timeout_s:g} s. Check that firewall rules and "
        f"security groups allow Embedd to reach {target} (a firewall that drops packets looks "
        "like this), and that the server is not overloaded."
    )


def _mask(value: str, password: str) -> str:
    """`value` (a user-supplied field or a server's text) with the password blanked out."""
    return value.replace(password, "***") if password else value


def _shown(creds: PgCredentials) -> PgCredentials:
    """The credentials as they may appear in a message: no field may carry the password."""
    pw = creds.password
    return replace(
        creds,
        host=_mask(creds.host, pw),
        user=_mask(creds.user, pw),
        database=_mask(creds.database, pw),
        schema=_mask(creds.schema, pw),
    )
