"""ConnectionService: validate, call the store and the checker, map back."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from embedd.v1 import connection_pb2, connection_pb2_grpc, values_pb2

from embedd_server.auth import current_principal
from embedd_server.domain import models
from embedd_server.domain.credentials import (
    ConnectionTestResult,
    PgCredentials,
)
from embedd_server.domain.errors import not_found, unimplemented
from embedd_server.domain.ids import new_id
from embedd_server.domain.validation import (
    Violations,
    check_host,
    check_id,
    check_identifier,
    check_name,
    check_port,
    check_ssl_mode,
    page_request,
)
from embedd_server.secretbox import SecretBox, open_credentials, seal_credentials
from embedd_server.services.base import Context
from embedd_server.services.convert import render_all, timestamp
from embedd_server.store.connections import ConnectionStore

Checker = Callable[[PgCredentials, bool], Awaitable[ConnectionTestResult]]

_PROVIDER = values_pb2.ConnectionProvider
_MODE = values_pb2.Mode
_SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def to_proto(c: models.Connection) -> connection_pb2.Connection:
    return connection_pb2.Connection(
        id=c.id,
        name=c.name,
        provider=_PROVIDER.Value.Value(c.provider),
        mode=_MODE.Value.Value(c.mode),
        status=values_pb2.ConnectionStatus.Value.Value(c.status),
        created_at=timestamp(c.created_at),
        last_tested_at=timestamp(c.last_tested_at),
    )


def credentials_from_request(creds: connection_pb2.PostgresCredentials, has: bool) -> PgCredentials:
    """Validated credentials; every problem is reported at once, by field path."""
    v = Violations()
    if not has:
        v.add("credentials", "is required: host, port, database, user, password")
        v.raise_if_any()
    for field in ("host", "password"):
        if not getattr(creds, field):
            v.add(f"credentials.{field}", "is required")
    check_host(v, creds.host, "credentials.host")
    check_identifier(v, creds.database, "credentials.database")
    check_identifier(v, creds.user, "credentials.user")
    port = check_port(v, creds.port if creds.HasField("port") else None, "credentials.port")
    ssl_mode = check_ssl_mode(v, creds.ssl_mode, "credentials.ssl_mode")
    schema = creds.schema or "public"
    if not _SCHEMA.match(schema):
        v.add("credentials.schema", "must be a plain schema name (letters, digits, '_')")
    v.raise_if_any()
    return PgCredentials(
        host=creds.host,
        port=port,
        database=creds.database,
        user=creds.user,
        password=creds.password,
        ssl_mode=ssl_mode,
        schema=schema,
    )


class ConnectionServicer(connection_pb2_grpc.ConnectionServiceServicer):
    def __init__(self, store: ConnectionStore, secrets: SecretBox, checker: Checker) -> None:
        self._store = store
        self._secrets = secrets
        self._checker = checker

    async def CreateConnection(
        self, request: connection_pb2.CreateConnectionRequest, context: Context
    ) -> connection_pb2.Connection:
        p = current_principal()
        if request.provider == _PROVIDER.snowflake:
            raise unimplemented("Snowflake connections", "only provider 'postgresql' is supported")
        v = Violations()
        if request.provider != _PROVIDER.postgresql:
            v.add("provider", "must be 'postgresql' (in the path /v1/providers/postgresql/connections)")
        check_name(v, request.name)
        if request.mode == _MODE.unspecified:
            v.add("mode", "is required: 'platform' or 'managed'")
        v.raise_if_any()
        creds = credentials_from_request(request.credentials, request.HasField("credentials"))
        conn_id = new_id("connection")
        row = await self._store.create(
            id=conn_id,
            org_id=p.org_id,
            env_id=p.env_id,
            name=request.name.strip(),
            provider="postgresql",
            mode=_MODE.Value.Name(request.mode),
            credentials_enc=seal_credentials(self._secrets, conn_id, creds),
        )
        return to_proto(row)

    async def _get(self, conn_id: str) -> models.Connection:
        p = current_principal()
        check_id(conn_id, "conn_", "connection_id")
        row = await self._store.get(p.org_id, p.env_id, conn_id)
        if row is None:
            raise not_found("connection_not_found", "Connection", conn_id)
        return row

    async def GetConnection(
        self, request: connection_pb2.GetConnectionRequest, context: Context
    ) -> connection_pb2.Connection:
        return to_proto(await self._get(request.connection_id))

    async def ListConnections(
        self, request: connection_pb2.ListConnectionsRequest, context: Context
    ) -> connection_pb2.ListConnectionsResponse:
        p = current_principal()
        page = await self._store.list(p.org_id, p.env_id, page_request(request.limit, request.cursor))
        return connection_pb2.ListConnectionsResponse(
            connections=render_all(page.items, to_proto), next_cursor=page.next_cursor
        )

    async def DeleteConnection(
        self, request: connection_pb2.DeleteConnectionRequest, context: Context
    ) -> connection_pb2.DeleteConnectionResponse:
        p = current_principal()
        row = await self._get(request.connection_id)
        if not await self._store.delete(p.org_id, p.env_id, row.id):
            raise not_found("connection_not_found", "Connection", row.id)
        return connection_pb2.DeleteConnectionResponse(id=row.id, deleted=True)

    async def TestConnection(
        self, request: connection_pb2.TestConnectionRequest, context: Context
    ) -> connection_pb2.TestConnectionResponse:
        row = await self._get(request.connection_id)
        creds = open_credentials(self._secrets, row)
        result = await self._checker(creds, row.mode == "platform")
        await self._store.record_test(
            row.id, ok=result.ok, failure=result.failure.value if result.failure else None
        )
        response = connection_pb2.TestConnectionResponse(
            status=values_pb2.TestStatus.ok if result.ok else values_pb2.TestStatus.failed,
            latency_ms=result.latency_ms,
        )
        if result.failure is not None:
            response.reason = values_pb2.ConnectionTestFailure.Value.Value(result.failure.value)
            response.message = result.message or ""
        return response
