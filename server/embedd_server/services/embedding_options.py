"""How a vector table gets its vectors, as the API spells it: an `embedding_import` (vectors
made before: docs/import.md) and an `embedding_strategy` (`standard`, or `batch` through the
provider's batch API: docs/batch.md). Shape rules here; the catalog check is engine/imports.py."""

from __future__ import annotations

from embedd.v1 import values_pb2, vector_table_pb2

from embedd_server.domain.errors import ApiError, FieldViolation, Kind
from embedd_server.domain.validation import Violations, check_identifier
from embedd_server.domain.vector_tables import ImportSpec, split_table_name
from embedd_server.providers.registry import has_batch_api

_STRATEGY = values_pb2.EmbeddingStrategy


def import_from_request(v: Violations, msg: vector_table_pb2.EmbeddingImport) -> ImportSpec:
    """The import as requested (model and dimensions 0/empty: the vector table's)."""
    check_identifier(v, msg.column, "embedding_import.column")
    schema = table = None
    if msg.HasField("table"):
        parts = split_table_name(msg.table)
        if parts is None:
            v.add("embedding_import.table", "must be 'schema.table' or 'table' (schema public)")
        else:
            schema, table = parts
            for part in parts:
                check_identifier(v, part, "embedding_import.table")
    key = msg.key_column if msg.HasField("key_column") else None
    if key is not None:
        check_identifier(v, key, "embedding_import.key_column")
        if table is None:
            v.add("embedding_import.key_column", "applies with embedding_import.table only")
    text = msg.text_column if msg.HasField("text_column") else None
    if text is not None:
        check_identifier(v, text, "embedding_import.text_column")
    if msg.embedding_dimensions < 0:
        v.add("embedding_import.embedding_dimensions", "must be positive: the size of the imported vectors")
    return ImportSpec(
        column=msg.column,
        embedding_model=msg.embedding_model,
        embedding_dimensions=max(msg.embedding_dimensions, 0),
        table_schema=schema,
        table=table,
        key_column=key,
        text_column=text,
    )


def import_to_proto(imp: ImportSpec) -> vector_table_pb2.EmbeddingImport:
    msg = vector_table_pb2.EmbeddingImport(
        column=imp.column, embedding_model=imp.embedding_model, embedding_dimensions=imp.embedding_dimensions
    )
    if imp.table is not None:
        msg.table = f"{imp.table_schema}.{imp.table}"
        msg.key_column = imp.key_column or ""
    if imp.text_column is not None:
        msg.text_column = imp.text_column
    return msg


def strategy_name(value: int) -> str | None:
    """`standard` / `batch`, or None when not set."""
    return None if value == _STRATEGY.unspecified else _STRATEGY.Value.Name(value)  # type: ignore[arg-type]


def check_strategy(strategy: str, provider: str, field: str) -> None:
    """`batch` needs a provider with a batch API this service speaks (docs/batch.md)."""
    if strategy == "batch" and not has_batch_api(provider):
        message = (
            f"embedding_strategy 'batch' needs a provider with a batch API; this vector table's "
            f"provider is {provider!r}. The service uses OpenAI's Batch API (provider 'openai'); "
            "Gemini's batch mode, Voyage and local models are not supported (docs/batch.md). "
            "Use 'standard'."
        )
        raise ApiError(
            Kind.INVALID, "batch_strategy_unsupported", message, violations=(FieldViolation(field, message),)
        )
