"""`embedd connections|providers|tables|keys ...`: create, list, show, test and delete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from embedd.v1 import (
    api_key_pb2,
    connection_pb2,
    embedding_provider_pb2,
    values_pb2,
    vector_table_pb2,
)
from google.protobuf import json_format

from embedd_client.cli.context import CursorOption, JsonOption, LimitOption, choice, choices, session

connections = typer.Typer(help="Connections to your PostgreSQL databases.", no_args_is_help=True)
providers = typer.Typer(help="Embedding providers (OpenAI, Gemini, Voyage, local).", no_args_is_help=True)
tables = typer.Typer(help="Vector tables: a source table mapped to embeddings.", no_args_is_help=True)
keys = typer.Typer(help="API keys of your organisation.", no_args_is_help=True)

CONNECTION_COLUMNS = ["id", "name", "mode", "status", "created_at", "last_tested_at"]
PROVIDER_COLUMNS = ["id", "name", "provider", "default_model", "created_at"]
TABLE_COLUMNS = ["id", "name", "sync_status", "source_table", "embedding_model", "platform_vector_ref"]
KEY_COLUMNS = ["id", "name", "key_prefix", "permission", "created_at", "revoked_at"]


# ---------------------------------------------------------------- connections


@connections.command("list")
def list_connections(
    ctx: typer.Context, limit: LimitOption = 20, cursor: CursorOption = "", as_json: JsonOption = False
) -> None:
    """List connections, newest first."""
    with session(ctx, as_json) as (client, out):
        page = client.connections.ListConnections(
            connection_pb2.ListConnectionsRequest(limit=limit, cursor=cursor)
        )
        out.listing(page, "connections", CONNECTION_COLUMNS)


@connections.command("get")
def get_connection(ctx: typer.Context, connection_id: str, as_json: JsonOption = False) -> None:
    """Show one connection."""
    with session(ctx, as_json) as (client, out):
        out.message(
            client.connections.GetConnection(connection_pb2.GetConnectionRequest(connection_id=connection_id))
        )


@connections.command("create")
def create_connection(
    ctx: typer.Context,
    name: str,
    host: Annotated[str, typer.Option(help="Database host.")],
    database: Annotated[str, typer.Option(help="Database name.")],
    user: Annotated[str, typer.Option(help="Role to connect as.")],
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, envvar="PGPASSWORD", help="Asked for when not given.")
    ],
    port: Annotated[int, typer.Option(help="Database port.")] = 5432,
    mode: Annotated[str, typer.Option(help="platform or managed.")] = "platform",
    ssl_mode: Annotated[str, typer.Option(help="disable, prefer, require, verify-ca, verify-full.")] = "",
    schema: Annotated[str, typer.Option(help="Schema for the vector tables (default public).")] = "",
    as_json: JsonOption = False,
) -> None:
    """Create a PostgreSQL connection (step 1). Credentials are stored encrypted, never shown."""
    request = connection_pb2.CreateConnectionRequest(
        provider=values_pb2.ConnectionProvider.postgresql,
        name=name,
        mode=choice(values_pb2.Mode.Value, mode, "--mode"),
        credentials=connection_pb2.PostgresCredentials(
            host=host,
            port=port,
            database=database,
            user=user,
            password=password,
            ssl_mode=ssl_mode,
            schema=schema,
        ),
    )
    with session(ctx, as_json) as (client, out):
        out.message(client.connections.CreateConnection(request))


@connections.command("test")
def test_connection(ctx: typer.Context, connection_id: str, as_json: JsonOption = False) -> None:
    """Connect and run the checks (step 2); exit 1 when the test fails."""
    with session(ctx, as_json) as (client, out):
        result = client.connections.TestConnection(
            connection_pb2.TestConnectionRequest(connection_id=connection_id)
        )
        out.message(result)
    if result.status != values_pb2.TestStatus.ok:
        raise typer.Exit(1)


@connections.command("delete")
def delete_connection(ctx: typer.Context, connection_id: str, as_json: JsonOption = False) -> None:
    """Delete a connection no vector table uses."""
    with session(ctx, as_json) as (client, out):
        request = connection_pb2.DeleteConnectionRequest(connection_id=connection_id)
        out.message(client.connections.DeleteConnection(request))


# ---------------------------------------------------------------- embedding providers


@providers.command("list")
def list_providers(
    ctx: typer.Context, limit: LimitOption = 20, cursor: CursorOption = "", as_json: JsonOption = False
) -> None:
    """List embedding providers, newest first."""
    with session(ctx, as_json) as (client, out):
        request = embedding_provider_pb2.ListEmbeddingProvidersRequest(limit=limit, cursor=cursor)
        out.listing(
            client.embedding_providers.ListEmbeddingProviders(request),
            "embedding_providers",
            PROVIDER_COLUMNS,
        )


@providers.command("get")
def get_provider(ctx: typer.Context, embedding_provider_id: str, as_json: JsonOption = False) -> None:
    """Show one embedding provider (never its key)."""
    with session(ctx, as_json) as (client, out):
        request = embedding_provider_pb2.GetEmbeddingProviderRequest(
            embedding_provider_id=embedding_provider_id
        )
        out.message(client.embedding_providers.GetEmbeddingProvider(request))


@providers.command("create")
def create_provider(
    ctx: typer.Context,
    name: str,
    provider: Annotated[str, typer.Option(help=", ".join(choices(values_pb2.EmbeddingProviderType.Value)))],
    model: Annotated[str, typer.Option(help="Default model, e.g. text-embedding-3-small.")],
    api_key: Annotated[
        str, typer.Option(envvar="EMBEDD_PROVIDER_API_KEY", help="The provider's key (none for local).")
    ] = "",
    base_url: Annotated[str | None, typer.Option(help="An OpenAI-compatible endpoint.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Configure an embedding provider (step 3)."""
    request = embedding_provider_pb2.CreateEmbeddingProviderRequest(
        name=name,
        provider=choice(values_pb2.EmbeddingProviderType.Value, provider, "--provider"),
        api_key=api_key,
        default_model=model,
        base_url=base_url,
    )
    with session(ctx, as_json) as (client, out):
        out.message(client.embedding_providers.CreateEmbeddingProvider(request))


@providers.command("test")
def test_provider(ctx: typer.Context, embedding_provider_id: str, as_json: JsonOption = False) -> None:
    """Embed a probe text with the provider; exit 1 when it fails."""
    with session(ctx, as_json) as (client, out):
        request = embedding_provider_pb2.TestEmbeddingProviderRequest(
            embedding_provider_id=embedding_provider_id
        )
        result = client.embedding_providers.TestEmbeddingProvider(request)
        out.message(result)
    if result.status != values_pb2.TestStatus.ok:
        raise typer.Exit(1)


@providers.command("delete")
def delete_provider(ctx: typer.Context, embedding_provider_id: str, as_json: JsonOption = False) -> None:
    """Delete an embedding provider no vector table uses."""
    with session(ctx, as_json) as (client, out):
        request = embedding_provider_pb2.DeleteEmbeddingProviderRequest(
            embedding_provider_id=embedding_provider_id
        )
        out.message(client.embedding_providers.DeleteEmbeddingProvider(request))


@providers.command("models")
def list_models(
    ctx: typer.Context,
    provider: Annotated[str | None, typer.Option(help="Only this provider's models.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the embedding models and their dimensions."""
    request = embedding_provider_pb2.ListEmbeddingModelsRequest()
    if provider:
        request.provider = choice(values_pb2.EmbeddingProviderType.Value, provider, "--provider")
    with session(ctx, as_json) as (client, out):
        out.listing(
            client.embedding_providers.ListEmbeddingModels(request),
            "models",
            ["provider", "model", "dimensions"],
        )


# ---------------------------------------------------------------- vector tables


@tables.command("list")
def list_tables(
    ctx: typer.Context, limit: LimitOption = 20, cursor: CursorOption = "", as_json: JsonOption = False
) -> None:
    """List vector tables, newest first."""
    with session(ctx, as_json) as (client, out):
        request = vector_table_pb2.ListVectorTablesRequest(limit=limit, cursor=cursor)
        out.listing(client.vector_tables.ListVectorTables(request), "vector_tables", TABLE_COLUMNS)


@tables.command("get")
def get_table(ctx: typer.Context, vector_table_id: str, as_json: JsonOption = False) -> None:
    """Show one vector table and its column mapping."""
    with session(ctx, as_json) as (client, out):
        request = vector_table_pb2.GetVectorTableRequest(vector_table_id=vector_table_id)
        out.message(client.vector_tables.GetVectorTable(request))


def _columns(embed: list[str], metadata: list[str]) -> list[vector_table_pb2.Column]:
    """`--embed COLUMN[=PREFIX]` (in order) and `--metadata COLUMN=FILTER_TYPE`."""
    columns = []
    for ordinal, spec in enumerate(embed, start=1):
        name, has_prefix, prefix = spec.partition("=")
        columns.append(
            vector_table_pb2.Column(
                name=name,
                role=values_pb2.ColumnRole.embedding,
                ordinal=ordinal,
                name_prefix=prefix if has_prefix else None,
            )
        )
    for spec in metadata:
        name, _, filter_type = spec.partition("=")
        kind = choice(values_pb2.FilterType.Value, filter_type, "--metadata") if filter_type else None
        columns.append(
            vector_table_pb2.Column(name=name, role=values_pb2.ColumnRole.metadata, filter_type=kind)
        )
    return columns


@tables.command("create")
def create_table(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="The table's name (or in --file).")] = None,
    file: Annotated[
        Path | None, typer.Option(help="The whole table as JSON, the REST body of POST /v1/vector-tables.")
    ] = None,
    connection: Annotated[str, typer.Option(help="conn_ id.")] = "",
    provider: Annotated[str, typer.Option(help="emb_ id.")] = "",
    source: Annotated[str, typer.Option(help="schema.table to embed.")] = "",
    pk: Annotated[str, typer.Option(help="Its unique key column.")] = "",
    model: Annotated[str, typer.Option(help="Embedding model (the provider's default if empty).")] = "",
    dims: Annotated[int, typer.Option(help="Embedding dimensions (the model's if 0).")] = 0,
    embed: Annotated[
        list[str] | None, typer.Option(help="COLUMN[=PREFIX] to embed, in order; repeat.")
    ] = None,
    metadata: Annotated[
        list[str] | None, typer.Option(help="COLUMN=FILTER_TYPE to filter on; repeat.")
    ] = None,
    mode: Annotated[str, typer.Option(help="platform or managed.")] = "platform",
    sync_mode: Annotated[str, typer.Option(help="batch or cdc.")] = "batch",
    interval: Annotated[int, typer.Option(help="Seconds between sync cycles (0: default 60).")] = 0,
    cursor_column: Annotated[str | None, typer.Option(help="For cdc: e.g. updated_at.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a vector table (step 4): from flags, or from --file."""
    if file is not None:
        table = json_format.Parse(file.read_text(), vector_table_pb2.VectorTable())
    else:
        table = vector_table_pb2.VectorTable(
            connection_id=connection,
            embedding_provider_id=provider,
            source_table=source,
            primary_key_column=pk,
            embedding_model=model,
            embedding_dimensions=dims,
            mode=choice(values_pb2.Mode.Value, mode, "--mode"),
            sync_mode=choice(values_pb2.SyncMode.Value, sync_mode, "--sync-mode"),
            sync_interval_seconds=interval,
            cursor_column=cursor_column,
            columns=_columns(embed or [], metadata or []),
        )
    if name:
        table.name = name
    with session(ctx, as_json) as (client, out):
        request = vector_table_pb2.CreateVectorTableRequest(vector_table=table)
        out.message(client.vector_tables.CreateVectorTable(request))


@tables.command("delete")
def delete_table(
    ctx: typer.Context,
    vector_table_id: str,
    drop_vectors: Annotated[bool, typer.Option(help="Also drop the vectors in your database.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete a vector table (its vectors stay unless --drop-vectors)."""
    with session(ctx, as_json) as (client, out):
        request = vector_table_pb2.DeleteVectorTableRequest(
            vector_table_id=vector_table_id, drop_vectors=drop_vectors
        )
        out.message(client.vector_tables.DeleteVectorTable(request))


# ---------------------------------------------------------------- API keys


@keys.command("list")
def list_keys(
    ctx: typer.Context, limit: LimitOption = 20, cursor: CursorOption = "", as_json: JsonOption = False
) -> None:
    """List API keys (their prefixes; secrets are never shown again)."""
    with session(ctx, as_json) as (client, out):
        page = client.api_keys.ListApiKeys(api_key_pb2.ListApiKeysRequest(limit=limit, cursor=cursor))
        out.listing(page, "api_keys", KEY_COLUMNS)


@keys.command("create")
def create_key(
    ctx: typer.Context,
    name: str,
    read_only: Annotated[bool, typer.Option(help="May read and query only.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Issue an API key; its secret is printed this once."""
    permission = values_pb2.Permission.read_only if read_only else values_pb2.Permission.full
    with session(ctx, as_json) as (client, out):
        made = client.api_keys.CreateApiKey(api_key_pb2.CreateApiKeyRequest(name=name, permission=permission))
        out.message(made)
        out.hint("store the key now: it is not shown again")


@keys.command("revoke")
def revoke_key(ctx: typer.Context, api_key_id: str, as_json: JsonOption = False) -> None:
    """Revoke an API key, at once on every replica."""
    with session(ctx, as_json) as (client, out):
        out.message(client.api_keys.DeleteApiKey(api_key_pb2.DeleteApiKeyRequest(api_key_id=api_key_id)))
