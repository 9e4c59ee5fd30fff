"""Bring your own vectors: an import checked against the live catalog (docs/import.md).

The vectors are a pgvector column, of the source table or of a separate table keyed by the
source's primary key. Everything the backfill will read is checked when the vector table is
created, so a misfit is a 400 naming the field and what to do, never a failed backfill:
the column is `vector(n)` or `halfvec(n)` with n the table's dimensions, the vectors were
made with the table's model, the key column is unique, the optional text column is text,
and the connection's user may read all of it.
"""

from __future__ import annotations

import dataclasses
import re

from embedd_server.domain.errors import ApiError, FieldViolation, Kind, validation_error
from embedd_server.domain.vector_tables import ImportSpec, VectorTableSpec, base_type
from embedd_server.sources.postgres import SourceTable
from embedd_server.sources.sql import qualified, quote_ident

# format_type() of a pgvector column: `vector(384)`, `halfvec(3072)`, schema-qualified when
# the extension's schema is not on the search path.
_VECTOR_TYPE = re.compile(r'^(?:[^.]+\.)?"?(vector|halfvec)"?\((\d+)\)$')
_TEXT_TYPES = ("text", "character varying", "character", "citext", "bpchar", "varchar")
_FIELD = "embedding_import"


def vector_size(sql_type: str) -> int | None:
    """n of a `vector(n)` / `halfvec(n)` column; None for any other type."""
    match = _VECTOR_TYPE.match(sql_type)
    return int(match.group(2)) if match else None


def _coded(code: str, path: str, message: str) -> ApiError:
    return ApiError(Kind.INVALID, code, message, violations=(FieldViolation(f"{_FIELD}.{path}", message),))


def check_import(spec: VectorTableSpec, imp: ImportSpec, holder: SourceTable | None, user: str) -> ImportSpec:
    """The import completed from the catalog (model, dimensions, key type), or an error.
    `holder` is the table holding the vectors as the user sees it (the source table itself
    when the import names no table)."""
    where = f"{imp.table_schema}.{imp.table}" if imp.separate else f"{spec.source_schema}.{spec.source_table}"
    schema, name = (
        (imp.table_schema or "", imp.table or "") if imp.separate else (spec.source_schema, spec.source_table)
    )
    role = quote_ident(user)
    grant = f"GRANT SELECT ON TABLE {qualified(schema, name)} TO {role};"
    if holder is None or not holder.schema_usage:
        raise ApiError(
            Kind.PERMISSION_DENIED,
            "source_table_access_denied",
            f"Table {where} (embedding_import.table) does not exist or user {user!r} may not read it. "
            f"Check the name; then: GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {role}; {grant}",
        )
    key = imp.key_column or spec.primary_key_column
    v: list[FieldViolation] = []
    if imp.separate:
        if key not in holder.columns:
            v.append(FieldViolation(f"{_FIELD}.key_column", f"{where} has no column {key!r}"))
        elif key not in holder.unique_columns:
            v.append(
                FieldViolation(
                    f"{_FIELD}.key_column",
                    f"{key!r} must be unique in {where} (its primary key, or a column with a unique index "
                    "of its own): each source row takes at most one vector",
                )
            )
    vector = holder.columns.get(imp.column)
    if vector is None:
        v.append(FieldViolation(f"{_FIELD}.column", f"{where} has no column {imp.column!r}"))
    text = holder.columns.get(imp.text_column) if imp.text_column else None
    if imp.text_column and text is None:
        v.append(FieldViolation(f"{_FIELD}.text_column", f"{where} has no column {imp.text_column!r}"))
    elif text is not None and base_type(text.sql_type) not in _TEXT_TYPES:
        v.append(
            FieldViolation(
                f"{_FIELD}.text_column",
                f"column {text.name!r} is {text.sql_type}; it must hold text: the text each vector was "
                "made from, or its md5 in hex",
            )
        )
    if v:
        raise validation_error(v)
    assert vector is not None
    size = vector_size(vector.sql_type)
    if size is None:
        raise _coded(
            "import_column_not_vector",
            "column",
            f"Column {imp.column!r} of {where} is {vector.sql_type}, not a pgvector column. Name a "
            f"vector(n) or halfvec(n) column (n = embedding_dimensions, {spec.embedding_dimensions}); "
            f"a vector without a size can be given one: ALTER TABLE {qualified(schema, name)} ALTER "
            f"COLUMN {quote_ident(imp.column)} TYPE vector({spec.embedding_dimensions});",
        )
    declared = imp.embedding_dimensions or size
    if size != spec.embedding_dimensions or declared != size:
        raise _coded(
            "import_dimensions_mismatch",
            "embedding_dimensions" if declared != size else "column",
            f"Column {imp.column!r} of {where} holds {size}-dimension vectors"
            + (f" (embedding_import.embedding_dimensions says {declared})" if declared != size else "")
            + f", but the vector table has embedding_dimensions {spec.embedding_dimensions}. Imported "
            f"vectors must have the table's size: create the vector table with the model and "
            f"embedding_dimensions {size} they were made with, or import a column of that size.",
        )
    model = imp.embedding_model or spec.embedding_model
    if model != spec.embedding_model:
        raise _coded(
            "import_model_mismatch",
            "embedding_model",
            f"The vectors were made with {model!r} but the vector table embeds with "
            f"{spec.embedding_model!r}: queries would be compared with vectors of another model. Set "
            f"the vector table's embedding_model to {model!r}, or leave the import out.",
        )
    needed = dict.fromkeys([key, imp.column, *([imp.text_column] if imp.text_column else [])])
    unreadable = [c for c in needed if c in holder.columns and not holder.columns[c].readable]
    if unreadable:
        cols = ", ".join(quote_ident(c) for c in unreadable)
        raise ApiError(
            Kind.PERMISSION_DENIED,
            "source_table_access_denied",
            f"User {user!r} may not read column(s) {cols} of {where}. Run: {grant} (or grant just "
            f"those columns: GRANT SELECT ({cols}) ON TABLE {qualified(schema, name)} TO {role};)",
        )
    key_type = holder.columns[key].sql_type if imp.separate else spec.pk_type
    return dataclasses.replace(
        imp,
        key_column=key if imp.separate else None,
        embedding_model=model,
        embedding_dimensions=size,
        key_type=key_type,
    )
