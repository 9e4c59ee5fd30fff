"""Connection credentials and the outcome of testing them (no I/O here)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

SSL_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")


@dataclass(frozen=True, slots=True)
class PgCredentials:
    """How to reach a user's PostgreSQL database. `password` is a secret: never log it."""

    host: str
    port: int
    database: str
    user: str
    password: str
    ssl_mode: str = "prefer"
    schema: str = "public"

    def __repr__(self) -> str:  # keeps the password out of tracebacks and logs
        return (
            f"PgCredentials(host={self.host!r}, port={self.port}, database={self.database!r}, "
            f"user={self.user!r}, ssl_mode={self.ssl_mode!r}, schema={self.schema!r})"
        )


class TestFailure(enum.Enum):
    """Which documented check failed. Values match `ConnectionTestFailure` in the protos."""

    __test__ = False  # not a pytest class

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    BAD_CREDENTIALS = "bad_credentials"
    DATABASE_NOT_FOUND = "database_not_found"
    SSL_REQUIRED = "ssl_required"
    SSL_UNAVAILABLE = "ssl_unavailable"
    VECTOR_EXTENSION_MISSING = "vector_extension_missing"
    CREATE_PRIVILEGE_MISSING = "create_privilege_missing"
    SCHEMA_NOT_FOUND = "schema_not_found"
    NETWORK_POLICY_DENIED = "network_policy_denied"


@dataclass(frozen=True, slots=True)
class ConnectionTestResult:
    """Outcome of a connection test: `failure is None` means every check passed."""

    __test__ = False

    latency_ms: int
    failure: TestFailure | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def encode_credentials(c: PgCredentials) -> str:
    """The JSON that is sealed at rest (the whole object: host names are not public either)."""
    return json.dumps(
        {
            "host": c.host,
            "port": c.port,
            "database": c.database,
            "user": c.user,
            "password": c.password,
            "ssl_mode": c.ssl_mode,
            "schema": c.schema,
        }
    )


def decode_credentials(text: str) -> PgCredentials:
    return PgCredentials(**json.loads(text))
