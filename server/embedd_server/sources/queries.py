"""The SQL that reads a source table: text to embed, typed metadata and a change hash, all
computed inside the database (DESIGN.md section 3). Pure: builds SQL text and parameters.

Text to embed = embedding columns in ordinal order, each `name_prefix || value`, NULLs
skipped, joined by a newline. Metadata = every mapped column, typed per filter type.
`row_hash` = md5(text) || md5(metadata): the halves tell a text change (re-embed) from a
metadata-only change (no provider call).
"""

from __future__ import annotations

from dataclasses import dataclass

from embedd_server.domain.vector_tables import ColumnSpec, VectorTableSpec
from embedd_server.sources.sql import qualified, quote_ident

# jsonb_build_object takes at most 100 arguments: build in slices of 50 pairs.
_PAIRS_PER_CALL = 50

_CASTS = {
    "keyword": "{col}::text",
    "integer": "{col}::bigint",
    "float": "{col}::float8",
    "boolean": "{col}::boolean",
    "datetime": "to_jsonb({col})",  # sessions run with TimeZone=UTC: ISO 8601 with +00:00
}


@dataclass(frozen=True, slots=True)
class SourceQuery:
    sql: str
    params: tuple[object, ...]  # the bound values that come first ($1..$n)


def _metadata_value(col: ColumnSpec) -> str:
    ref = f"s.{quote_ident(col.name)}"
    if col.role == "embedding" or col.filter_type is None:
        return f"{ref}::text"
    return _CASTS[col.filter_type].format(col=ref)


def row_expressions(spec: VectorTableSpec, first_param: int) -> tuple[str, str, list[object]]:
    """(text expression, metadata expression, their bound values), parameters numbered from
    `first_param`. Prefixes and metadata keys are bound values, never SQL text."""
    params: list[object] = []

    def bind(value: object) -> str:
        params.append(value)
        return f"${first_param + len(params) - 1}::text"

    parts = []
    for col in spec.embedding_columns:
        ref = f"s.{quote_ident(col.name)}"
        prefix = bind(col.name_prefix or "")
        parts.append(f"CASE WHEN {ref} IS NULL THEN NULL ELSE {prefix} || {ref}::text END")
    text = f"concat_ws(E'\\n', {', '.join(parts)})"

    pairs = [f"{bind(col.name)}, {_metadata_value(col)}" for col in spec.columns]
    calls = [
        f"jsonb_build_object({', '.join(pairs[i : i + _PAIRS_PER_CALL])})"
        for i in range(0, len(pairs), _PAIRS_PER_CALL)
    ] or ["'{}'::jsonb"]
    return text, " || ".join(calls), params


def keyset_read(spec: VectorTableSpec) -> SourceQuery:
    """One chunk in primary-key order after a key: params ($1 last key as text or NULL,
    $2 limit, then the expressions' values). Columns: pk, text, metadata (jsonb as text),
    row_hash."""
    text, metadata, params = row_expressions(spec, first_param=3)
    pk = f"s.{quote_ident(spec.primary_key_column)}"
    sql = (
        f"SELECT pk, text, metadata::text AS metadata, md5(text) || md5(metadata::text) AS row_hash FROM ("
        f" SELECT {pk}::text AS pk, {text} AS text, {metadata} AS metadata"
        f" FROM {qualified(spec.source_schema, spec.source_table)} s"
        f" WHERE $1::text IS NULL OR {pk} > CAST($1::text AS {spec.pk_type})"
        f" ORDER BY {pk} LIMIT $2"
        f") q"
    )
    return SourceQuery(sql, tuple(params))


def count_rows(spec: VectorTableSpec) -> str:
    return f"SELECT count(*) FROM {qualified(spec.source_schema, spec.source_table)}"
