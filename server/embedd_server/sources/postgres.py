"""A user's PostgreSQL database: connecting, and reading its catalog to validate a mapping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector

from embedd_server.domain.credentials import PgCredentials
from embedd_server.network_policy import NetworkPolicy
from embedd_server.sources.pg_check import ssl_argument

_SERVER_SETTINGS = {"application_name": "embedd-sync", "TimeZone": "UTC"}


async def connect(
    creds: PgCredentials,
    *,
    policy: NetworkPolicy,
    timeout_s: float = 10.0,
    vector: bool = False,
    statement_cache_size: int = 0,
) -> asyncpg.Connection[Any]:
    """A connection as the connection's user, to an address the network `policy` allows
    (`NetworkPolicyDenied` otherwise). Statement caching (named prepared statements) is off
    unless asked for: a pooler in transaction mode (PgBouncer before 1.21, and after it unless
    `max_prepared_statements` is set) cannot keep them. Only query pools ask for it, and fall
    back without it (engine/query.py, docs/query-path.md)."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        host=await asyncio.wait_for(policy.pg_hosts(creds.host, creds.port), timeout_s),
        port=creds.port,
        user=creds.user,
        password=creds.password,
        database=creds.database,
        ssl=ssl_argument(creds.ssl_mode, server_name=creds.host),
        timeout=timeout_s,
        statement_cache_size=statement_cache_size,
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
    readable: bool  # SELECT on the table, or on this column (a column-level grant)
    not_null: bool  # NULL cannot be stored: NOT NULL (validated) or the primary key


@dataclass(frozen=True, slots=True)
class SourceTable:
    schema: str
    name: str
    oid: int
    schema_usage: bool  # USAGE on the schema: without it nothing in it can be read
    columns: dict[str, SourceColumn]
    # Columns that alone carry a unique index (or the primary key).
    unique_columns: frozenset[str]


async def inspect_table(conn: asyncpg.Connection[Any], schema: str, name: str) -> SourceTable | None:
    """The table as the connected user sees it, or None when it does not exist for them."""
    row = await conn.fetchrow(
        "SELECT c.oid, has_schema_privilege(n.oid, 'USAGE') AS schema_usage"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        schema,
        name,
    )
    if row is None:
        return None
    oid = row["oid"]
    # A NOT NULL constraint added NOT VALID (PostgreSQL 18) sets attnotnull while older rows
    # may still hold NULLs: only a validated one counts.
    cols = await conn.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS sql_type,"
        " t.typtype = 'e' AS is_enum, has_column_privilege(a.attrelid, a.attnum, 'SELECT') AS readable,"
        " a.attnotnull AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = a.attrelid"
        "   AND k.contype = 'n' AND k.conkey = ARRAY[a.attnum] AND NOT k.convalidated) AS not_null"
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
        schema_usage=row["schema_usage"],
        columns={
            c["attname"]: SourceColumn(
                c["attname"], c["sql_type"], c["is_enum"], c["readable"], c["not_null"]
            )
            for c in cols
        },
        unique_columns=frozenset(u["attname"] for u in unique),
    )
