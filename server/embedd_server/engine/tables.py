"""Vector tables in the user's database: validate a mapping against the live catalog,
create the physical table, drop it. Errors are ApiErrors that name the offending field."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from embedd_server.domain.credentials import PgCredentials
from embedd_server.domain.errors import ApiError, FieldViolation, Kind, validation_error
from embedd_server.domain.vector_tables import (
    ColumnSpec,
    VectorTableSpec,
    allowed_filter_types,
    default_filter_type,
)
from embedd_server.engine.imports import check_import
from embedd_server.engine.stores import StoreFactory
from embedd_server.network_policy import REASON, NetworkPolicy, NetworkPolicyDenied
from embedd_server.sinks.fence import evict_all
from embedd_server.sinks.pgvector import PgVectorTable
from embedd_server.sources.postgres import SourceTable, connect, inspect_table
from embedd_server.sources.sql import qualified, quote_ident

_CURSOR_TYPES = ("timestamp with time zone", "timestamp without time zone", "date", "bigint", "integer")


def _not_ready(message: str) -> ApiError:
    return ApiError(Kind.NOT_READY, "connection_not_ready", message)


@asynccontextmanager
async def user_database(
    creds: PgCredentials, timeout_s: float, policy: NetworkPolicy
) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to the user's database, or `connection_not_ready` saying to test it."""
    try:
        conn = await connect(creds, policy=policy, timeout_s=timeout_s)
    except NetworkPolicyDenied as exc:
        raise ApiError(Kind.PERMISSION_DENIED, REASON, str(exc)) from exc
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise _not_ready(
            f"Cannot connect to the source database ({exc.__class__.__name__}). Run "
            "POST /v1/connections/{id}/test to see what is wrong, fix it, then retry."
        ) from exc
    try:
        yield conn
    finally:
        await conn.close()


def _source_denied(message: str) -> ApiError:
    return ApiError(Kind.PERMISSION_DENIED, "source_table_access_denied", message)


def check_against_catalog(spec: VectorTableSpec, table: SourceTable | None, user: str) -> VectorTableSpec:
    """The spec completed from the catalog (pk type, default filter types), or an error.

    Every row must be able to reach the vectors: the key is unique and NOT NULL (a row with a
    NULL key could never be read in key order, nor stored), and the user may read every column
    the mapping needs - through SELECT on the table or column-level grants - in a schema it may
    use."""
    where = f"{spec.source_schema}.{spec.source_table}"
    table_sql = qualified(spec.source_schema, spec.source_table)
    grant = f"GRANT SELECT ON TABLE {table_sql} TO {quote_ident(user)};"
    usage = f"GRANT USAGE ON SCHEMA {quote_ident(spec.source_schema)} TO {quote_ident(user)};"
    if table is None:
        raise _source_denied(
            f"Table {where} does not exist or is not visible to user {user!r}. Check source_table, "
            f"and that the user may use the schema; then: {usage} {grant}"
        )
    if not table.schema_usage:
        raise _source_denied(
            f"User {user!r} may not use schema {spec.source_schema!r}, so it cannot read {where}. "
            f"Run: {usage}"
        )
    v: list[FieldViolation] = []
    pk = table.columns.get(spec.primary_key_column)
    if pk is None:
        v.append(FieldViolation("primary_key_column", f"{where} has no column {spec.primary_key_column!r}"))
    elif spec.primary_key_column not in table.unique_columns:
        v.append(
            FieldViolation(
                "primary_key_column",
                f"{spec.primary_key_column!r} must be unique: the primary key, or a column with a "
                "unique index of its own",
            )
        )
    elif not pk.not_null:
        v.append(
            FieldViolation(
                "primary_key_column",
                f"{spec.primary_key_column!r} allows NULL, and a row whose key is NULL cannot be "
                "synced. Use the primary key, or make the column NOT NULL: ALTER TABLE "
                f"{table_sql} ALTER COLUMN {quote_ident(spec.primary_key_column)} SET NOT NULL;",
            )
        )
    columns: list[ColumnSpec] = []
    needed = [spec.primary_key_column, *(c.name for c in spec.columns)]
    if spec.cursor_column is not None:
        needed.append(spec.cursor_column)
    unreadable = [n for n in dict.fromkeys(needed) if n in table.columns and not table.columns[n].readable]
    for i, col in enumerate(spec.columns):
        source = table.columns.get(col.name)
        if source is None:
            v.append(FieldViolation(f"columns[{i}].name", f"{where} has no column {col.name!r}"))
            columns.append(col)
            continue
        if col.role == "metadata":
            allowed = allowed_filter_types(source.sql_type, source.is_enum)
            chosen = col.filter_type or default_filter_type(source.sql_type, source.is_enum)
            if chosen is None or chosen not in allowed:
                fits = ", ".join(allowed) if allowed else "none (it cannot be a filterable metadata column)"
                v.append(
                    FieldViolation(
                        f"columns[{i}].filter_type",
                        f"column {col.name!r} is {source.sql_type}; filter types that fit: {fits}",
                    )
                )
            col = ColumnSpec(col.name, col.role, None, None, chosen)  # noqa: PLW2901 - completed copy
        columns.append(col)
    if spec.cursor_column is not None:
        cursor = table.columns.get(spec.cursor_column)
        if cursor is None:
            v.append(FieldViolation("cursor_column", f"{where} has no column {spec.cursor_column!r}"))
        elif cursor.sql_type not in _CURSOR_TYPES:
            v.append(
                FieldViolation(
                    "cursor_column", f"must be a timestamp, date or integer column, not {cursor.sql_type}"
                )
            )
    if v:
        raise validation_error(v)
    if unreadable:
        cols = ", ".join(quote_ident(c) for c in unreadable)
        raise _source_denied(
            f"User {user!r} may not read column(s) {cols} of {where}. Run: {grant} "
            f"(or grant just the mapped columns: GRANT SELECT ({cols}) ON TABLE {table_sql} TO "
            f"{quote_ident(user)};)"
        )
    assert pk is not None
    extra = dict(spec.extra)
    if spec.cursor_column is not None:
        extra["cursor_type"] = table.columns[spec.cursor_column].sql_type
    return dataclasses.replace(spec, columns=tuple(columns), pk_type=pk.sql_type, extra=extra)


async def _with_import(
    conn: asyncpg.Connection[Any], spec: VectorTableSpec, source: SourceTable | None, user: str
) -> VectorTableSpec:
    """The spec with its import checked and completed from the catalog (engine/imports.py)."""
    imp = spec.embedding_import
    if imp is None:
        return spec
    holder = source
    if imp.table_schema is not None and imp.table is not None:
        holder = await inspect_table(conn, imp.table_schema, imp.table)
    return dataclasses.replace(spec, embedding_import=check_import(spec, imp, holder, user))


class TableManager:
    """Where a vector table's vectors live: the pgvector table in the user's database
    (platform mode) or the Qdrant collection (managed mode), made and dropped here."""

    def __init__(
        self, connect_timeout_s: float, policy: NetworkPolicy, stores: StoreFactory | None = None
    ) -> None:
        self._timeout = connect_timeout_s
        self._policy = policy
        self._stores = stores or StoreFactory()

    async def prepare(self, creds: PgCredentials, spec: VectorTableSpec, ref: str) -> VectorTableSpec:
        """Validates the mapping and creates `ref`: the pgvector table with its HNSW index, or
        the Qdrant collection (managed mode only reads the source: SELECT is all it needs).
        Returns the completed spec."""
        async with user_database(creds, self._timeout, self._policy) as conn:
            table = await inspect_table(conn, spec.source_schema, spec.source_table)
            completed = await _with_import(
                conn, check_against_catalog(spec, table, creds.user), table, creds.user
            )
            if completed.mode == "managed":
                await self._stores.open(completed, ref, None).create()
                return completed
            target = PgVectorTable(
                completed.target_schema, ref, completed.embedding_dimensions, halfvec=completed.hnsw_halfvec
            )
            try:
                async with conn.transaction():  # the table and its index, or nothing
                    await target.create(conn, with_index=True)
            except asyncpg.InsufficientPrivilegeError as exc:
                schema = quote_ident(completed.target_schema)
                raise ApiError(
                    Kind.PERMISSION_DENIED,
                    "permission_denied",
                    f"User {creds.user!r} may not create the vector table in schema "
                    f"{completed.target_schema!r}. Run: "
                    f"GRANT CREATE ON SCHEMA {schema} TO {quote_ident(creds.user)};",
                ) from exc
            except asyncpg.InvalidSchemaNameError as exc:
                schema = quote_ident(completed.target_schema)
                raise _not_ready(
                    f"Schema {completed.target_schema!r} (the connection's credentials.schema, where "
                    "vector tables go) does not exist in this database. Create it (CREATE SCHEMA "
                    f"{schema} AUTHORIZATION {quote_ident(creds.user)};) or use a connection whose "
                    "schema exists; POST /v1/connections/{id}/test checks it."
                ) from exc
            except asyncpg.UndefinedObjectError as exc:
                raise _not_ready(
                    "The vector extension is not created in this database. "
                    "Run: CREATE EXTENSION IF NOT EXISTS vector;"
                ) from exc
        return completed

    async def validate(self, creds: PgCredentials, spec: VectorTableSpec) -> VectorTableSpec:
        """The mapping checked against the live catalog (for an update), completed."""
        async with user_database(creds, self._timeout, self._policy) as conn:
            table = await inspect_table(conn, spec.source_schema, spec.source_table)
            return check_against_catalog(spec, table, creds.user)

    async def drop(self, creds: PgCredentials, spec: VectorTableSpec, ref: str) -> None:
        """Drops what `prepare` made (for a creation that failed after it)."""
        async with self.dropping(creds, spec, ref):
            pass

    @asynccontextmanager
    async def dropping(self, creds: PgCredentials, spec: VectorTableSpec, ref: str) -> AsyncIterator[None]:
        """Drops the vectors (the live table or collection and any leftovers of a re-backfill)
        once the block (deleting the row) succeeds. Connected first, so an unreachable
        database fails before the block runs; then the sessions of whoever still works on the
        table are ended (the row is gone, every holder is stale: sinks/fence.py), so nothing
        re-creates it behind the drop."""
        schema = spec.target_schema
        names = (ref, f"{ref}_swap", f"{ref}_old")
        async with user_database(creds, self._timeout, self._policy) as conn:
            yield
            if spec.mode == "managed":
                await evict_all(conn, ref)
                await self._stores.open(spec, ref, None).drop()
                return
            try:
                await evict_all(conn, ref)
                for name in names:
                    await PgVectorTable(schema, name, 1).drop(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                statements = " ".join(f"DROP TABLE IF EXISTS {qualified(schema, n)};" for n in names)
                raise ApiError(
                    Kind.UNAVAILABLE,
                    "vectors_not_dropped",
                    f"The vector table was deleted, but dropping its vectors failed "
                    f"({exc.__class__.__name__}). Drop them yourself: {statements}",
                ) from exc
