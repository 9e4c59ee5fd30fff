"""A user's PostgreSQL database: connecting, and reading its catalog to validate a mapping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector

from embedd_server.domain.credentials import PgCredentials
from embedd_server.sources.pg_check import ssl_argument

_SERVER_SETTINGS = {"application_name": "embedd-sync", "TimeZone": "UTC"}


async def connect(
    creds: PgCredentials, *, timeout_s: float = 10.0, vector: bool = False
) -> asyncpg.Connection[Any]:
    """A connection as the connection's user. Statement caching is off: vector tables are
    renamed under live queries (re-backfill swap) and cached plans would point at the old
    relation."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        host=creds.host,
        port=creds.port,
        user=creds.user,
        password=creds.password,
        database=creds.database,
        ssl=ssl_argument(creds.ssl_mode),
        timeout=timeout_s,
        statement_cache_size=0,
        server_settings=_SERVER_SETTINGS,
    )
    if vector:
        await register_vector(conn)
    return conn


@dataclass(frozen=True, slots=True)
class SourceColumn:
    name: str
    sql_type: str  # format_type() spelling, e.g. "numeric(10,2)"
    is_enum: bool
    readable: bool


@dataclass(frozen=True, slots=True)
class SourceTable:
    schema: str
    name: str
    oid: int
    readable: bool
    columns: dict[str, SourceColumn]
    # Columns that alone carry a unique index (or the primary key).
    unique_columns: frozenset[str]


async def inspect_table(conn: asyncpg.Connection[Any], schema: str, name: str) -> SourceTable | None:
    """The table as the connected user sees it, or None when it does not exist for them."""
    row = await conn.fetchrow(
        "SELECT c.oid, has_table_privilege(c.oid, 'SELECT') AS readable"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        schema,
        name,
    )
    if row is None:
        return None
    oid = row["oid"]
    cols = await conn.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS sql_type,"
        " t.typtype = 'e' AS is_enum, has_column_privilege(a.attrelid, a.attnum, 'SELECT') AS readable"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        oid,
    )
    unique = await conn.fetch(
        "SELECT a.attname FROM pg_index i"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = $1 AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL"
        " AND i.indexprs IS NULL",
        oid,
    )
    return SourceTable(
        schema=schema,
        name=name,
        oid=oid,
        readable=row["readable"],
        columns={
            c["attname"]: SourceColumn(c["attname"], c["sql_type"], c["is_enum"], c["readable"]) for c in cols
        },
        unique_columns=frozenset(u["attname"] for u in unique),
    )
