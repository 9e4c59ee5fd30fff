"""The SQL that reads a source table: text to embed, typed metadata and a change hash, all
computed inside the database (docs/architecture.md, "The path of a row"). Pure: builds SQL
text and parameters.

Text to embed = embedding columns in ordinal order, each `name_prefix || value`, NULLs
skipped, joined by a newline. Metadata = every mapped column, typed per filter type.
`row_hash` = md5(text) || md5(the mapped columns' raw values): the halves tell a text change
(re-embed) from a metadata-only change (no provider call). Hashing the raw values rather than
the built JSON keeps a no-change poll cheap: the JSON is only built for rows that differ
(PostgreSQL evaluates the output expressions after the join filter).
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


def _expression_params(spec: VectorTableSpec) -> int:
    """How many values `row_expressions` binds: a prefix per embedding column, a key per
    mapped column."""
    return len(spec.embedding_columns) + len(spec.columns)


def _row_hash(spec: VectorTableSpec, text: str) -> str:
    columns = ", ".join(f"s.{quote_ident(c.name)}" for c in spec.columns)
    return f"md5({text}) || md5(ROW({columns})::text)"


def keyset_read(spec: VectorTableSpec, *, imported: bool = False) -> SourceQuery:
    """One chunk in primary-key order after a key: params ($1 last key as text or NULL,
    $2 limit, then the expressions' values). Columns: pk, text, metadata (jsonb as text),
    row_hash; with `imported`, also the row's imported vector (`imported_vector`)."""
    text, metadata, params = row_expressions(spec, first_param=3)
    pk = f"s.{quote_ident(spec.primary_key_column)}"
    vector, join = _imported_vector(spec, text) if imported else ("", "")
    sql = (
        f"SELECT {pk}::text AS pk, {text} AS text, ({metadata})::text AS metadata,"
        f" {_row_hash(spec, text)} AS row_hash{vector}"
        f" FROM {qualified(spec.source_schema, spec.source_table)} s{join}"
        f" WHERE $1::text IS NULL OR {pk} > CAST($1::text AS {spec.pk_type})"
        f" ORDER BY {pk} LIMIT $2"
    )
    return SourceQuery(sql, tuple(params))


def _imported_vector(spec: VectorTableSpec, text: str) -> tuple[str, str]:
    """(`, <the row's imported vector as real[]> AS imported_vector`, the join that brings it)
    for a spec with an import (docs/import.md). A vector is taken only when present and, with
    a text column, made from the text this table embeds (the text itself or its md5)."""
    imp = spec.embedding_import
    assert imp is not None, "only a spec with an import reads imported vectors"
    holder, join = "s", ""
    if imp.table_schema is not None and imp.table is not None:
        holder = "i"
        key, pk = (
            f"i.{quote_ident(imp.key_column or spec.primary_key_column)}",
            f"s.{quote_ident(spec.primary_key_column)}",
        )
        # Same key type: the key's own index serves the join; otherwise compare as text.
        on = f"{key} = {pk}" if imp.key_type == spec.pk_type else f"{key}::text = {pk}::text"
        join = f" LEFT JOIN {qualified(imp.table_schema, imp.table)} i ON {on}"
    vector = f"{holder}.{quote_ident(imp.column)}"
    match = f"{vector} IS NOT NULL"
    if imp.text_column is not None:
        made_from = f"{holder}.{quote_ident(imp.text_column)}"
        match += f" AND ({made_from} = {text} OR {made_from} = md5({text}))"
    # vector and halfvec both cast to real[], which needs no codec on the reading connection.
    return f", CASE WHEN {match} THEN {vector}::real[] END AS imported_vector", join


def count_rows(spec: VectorTableSpec) -> str:
    return f"SELECT count(*) FROM {qualified(spec.source_schema, spec.source_table)}"


def source_rows(spec: VectorTableSpec, where: str = "") -> tuple[str, list[object]]:
    """`SELECT pk, text, metadata, row_hash` over the source, parameters numbered from $1."""
    text, metadata, params = row_expressions(spec, first_param=1)
    pk = f"s.{quote_ident(spec.primary_key_column)}"
    source = qualified(spec.source_schema, spec.source_table)
    sql = (
        f"SELECT {pk}::text AS pk, {text} AS text, {metadata} AS metadata,"
        f" {_row_hash(spec, text)} AS row_hash FROM {source} s {where}"
    )
    return sql, params


def diff_all(spec: VectorTableSpec, target: str) -> SourceQuery:
    """Batch sync: one query, inside the user's database, comparing every source row's hash
    with the target's. Returns only what differs: new and changed rows (with their text and
    metadata) and deleted keys (`deleted` true). Nothing changed: nothing shipped."""
    rows, params = source_rows(spec)
    sql = (
        f"WITH src AS ({rows})"
        " SELECT coalesce(src.pk, t.pk_value) AS pk, src.text, src.metadata::text AS metadata,"
        " src.row_hash, t.row_hash AS old_hash, src.pk IS NULL AS deleted"
        f" FROM src FULL OUTER JOIN {target} t ON t.pk_value = src.pk"
        " WHERE src.pk IS NULL OR t.pk_value IS NULL OR t.row_hash IS DISTINCT FROM src.row_hash"
    )
    return SourceQuery(sql, tuple(params))


def diff_since(spec: VectorTableSpec, target: str) -> SourceQuery:
    """cdc sync: rows whose cursor column is at or past the last parameter (text; NULL for
    all), compared with the target. Deletes are found by `vanished` sweeps instead."""
    assert spec.cursor_column is not None
    n = _expression_params(spec) + 1  # after the expressions' values
    cursor_type = spec.extra.get("cursor_type", "timestamptz")
    cursor = f"s.{quote_ident(spec.cursor_column)}"
    rows, params = source_rows(
        spec, f"WHERE ${n}::text IS NULL OR {cursor} >= CAST(${n}::text AS {cursor_type})"
    )
    assert len(params) == n - 1
    sql = (
        f"WITH src AS ({rows})"
        " SELECT src.pk, src.text, src.metadata::text AS metadata, src.row_hash,"
        " t.row_hash AS old_hash, false AS deleted"
        f" FROM src LEFT JOIN {target} t ON t.pk_value = src.pk"
        " WHERE t.row_hash IS DISTINCT FROM src.row_hash"
    )
    return SourceQuery(sql, tuple(params))


def max_cursor(spec: VectorTableSpec) -> str:
    assert spec.cursor_column is not None
    return (
        f"SELECT max({quote_ident(spec.cursor_column)})::text"
        f" FROM {qualified(spec.source_schema, spec.source_table)}"
    )


def vanished(spec: VectorTableSpec, target: str) -> str:
    """Keys in the target whose source row is gone."""
    pk = quote_ident(spec.primary_key_column)
    source = qualified(spec.source_schema, spec.source_table)
    return (
        f"SELECT t.pk_value FROM {target} t"
        f" WHERE NOT EXISTS (SELECT 1 FROM {source} s WHERE s.{pk}::text = t.pk_value)"
    )


def _after_key(spec: VectorTableSpec, n: int) -> str:
    """`pk > $n` (the last key of the previous page, as text; NULL for the first page)."""
    pk = f"s.{quote_ident(spec.primary_key_column)}"
    return f"(${n}::text IS NULL OR {pk} > CAST(${n}::text AS {spec.pk_type}))"


def _keys_in(spec: VectorTableSpec, n: int) -> str:
    """`pk = ANY($n)`, the keys cast to the key's own type so that its index serves."""
    pk = f"s.{quote_ident(spec.primary_key_column)}"
    return f"{pk} = ANY(CAST(${n}::text[] AS {spec.pk_type}[]))"


def hashes_read(spec: VectorTableSpec, *, since: bool) -> SourceQuery:
    """(pk, row_hash) a page at a time in key order, for a diff against a store that is not in
    this database (managed mode). Params: the expressions' values, then $n the last key or
    NULL, $n+1 the page size, and with `since` $n+2 the cdc cursor (rows at or past it)."""
    text, _, params = row_expressions(spec, first_param=1)
    # Only the text's values (the prefixes, bound first): PostgreSQL refuses a parameter the
    # statement does not use, as it cannot type it.
    params = params[: len(spec.embedding_columns)]
    n = len(params) + 1
    pk = f"s.{quote_ident(spec.primary_key_column)}"
    where = _after_key(spec, n)
    if since:
        assert spec.cursor_column is not None
        cursor_type = spec.extra.get("cursor_type", "timestamptz")
        cursor = f"s.{quote_ident(spec.cursor_column)}"
        where += f" AND {cursor} >= CAST(${n + 2}::text AS {cursor_type})"
    sql = (
        f"SELECT {pk}::text AS pk, {_row_hash(spec, text)} AS row_hash"
        f" FROM {qualified(spec.source_schema, spec.source_table)} s"
        f" WHERE {where} ORDER BY {pk} LIMIT ${n + 1}"
    )
    return SourceQuery(sql, tuple(params))


def rows_by_keys(spec: VectorTableSpec) -> SourceQuery:
    """`source_rows` of the given keys (the last parameter, text[])."""
    n = _expression_params(spec) + 1
    rows, params = source_rows(spec, f"WHERE {_keys_in(spec, n)}")
    assert len(params) == n - 1
    return SourceQuery(rows, tuple(params))


def existing_keys(spec: VectorTableSpec) -> str:
    """Which of the keys ($1, text[]) still exist in the source."""
    pk = f"s.{quote_ident(spec.primary_key_column)}"
    return (
        f"SELECT {pk}::text AS pk FROM {qualified(spec.source_schema, spec.source_table)} s"
        f" WHERE {_keys_in(spec, 1)}"
    )
