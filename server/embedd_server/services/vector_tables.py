"""VectorTableService and SyncService: map sources to vector tables, fill them, report."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator, Callable

from embedd.v1 import sync_pb2, sync_pb2_grpc, values_pb2, vector_table_pb2, vector_table_pb2_grpc

from embedd_server.auth import current_principal
from embedd_server.domain import catalog, models, tiers
from embedd_server.domain.errors import ApiError, Kind, not_found
from embedd_server.domain.events import Snapshot, TableEvent
from embedd_server.domain.ids import new_id
from embedd_server.domain.validation import (
    Violations,
    add_id_violation,
    check_id,
    check_identifier,
    check_name,
    page_request,
)
from embedd_server.domain.vector_tables import (
    DEFAULT_SYNC_INTERVAL_S,
    FILTER_TYPES,
    ColumnSpec,
    VectorTableSpec,
    order_embedding_columns,
    split_table_name,
    vector_ref,
)
from embedd_server.engine.tables import TableManager
from embedd_server.engine.watch import Watches
from embedd_server.engine.worker import Worker
from embedd_server.secretbox import SecretBox, open_credentials
from embedd_server.services.base import Context
from embedd_server.services.convert import render_all, set_counters, timestamp
from embedd_server.services.embedding_options import (
    check_strategy,
    import_from_request,
    import_to_proto,
    strategy_name,
)
from embedd_server.services.events import RenderCache, event_to_proto, snapshot_to_proto
from embedd_server.store.connections import ConnectionStore, EmbeddingProviderStore
from embedd_server.store.tasks import TaskStore
from embedd_server.store.vector_tables import VectorTableStore

_ROLE = values_pb2.ColumnRole
_FILTER = values_pb2.FilterType
_MODE = values_pb2.Mode
_SYNC_MODE = values_pb2.SyncMode
_STRATEGY = values_pb2.EmbeddingStrategy
_MAX_INTERVAL_S = 86_400
_MAX_COLUMNS = 100


def column_to_proto(c: ColumnSpec) -> vector_table_pb2.Column:
    msg = vector_table_pb2.Column(name=c.name, role=_ROLE.Value.Value(c.role))
    if c.role == "embedding":
        set_counters(msg, ordinal=c.ordinal or 0)
        msg.name_prefix = c.name_prefix or ""
    elif c.filter_type:
        msg.filter_type = _FILTER.Value.Value(c.filter_type)
    return msg


def to_proto(vt: models.VectorTable) -> vector_table_pb2.VectorTable:
    # During a re-backfill the resource shows the configuration being built (the desired
    # state); the live table keeps serving the previous one until the swap.
    s = vt.pending_spec or vt.spec
    msg = vector_table_pb2.VectorTable(
        id=vt.id,
        name=vt.name,
        connection_id=vt.connection_id,
        embedding_provider_id=vt.embedding_provider_id,
        source_table=f"{s.source_schema}.{s.source_table}",
        mode=_MODE.Value.Value(s.mode),
        sync_status=values_pb2.SyncStatus.Value.Value(vt.sync_status),
        embedding_model=s.embedding_model,
        columns=[column_to_proto(c) for c in s.columns],
        created_at=timestamp(vt.created_at),
        primary_key_column=s.primary_key_column,
        sync_mode=_SYNC_MODE.Value.Value(s.sync_mode),
    )
    set_counters(
        msg, embedding_dimensions=s.embedding_dimensions, sync_interval_seconds=s.sync_interval_seconds
    )
    if s.mode == "managed":
        msg.managed_collection = vt.platform_vector_ref  # the alias queries use
    else:
        msg.platform_vector_ref = vt.platform_vector_ref
    if s.cursor_column:
        msg.cursor_column = s.cursor_column
    if s.embedding_import is not None:
        msg.embedding_import.CopyFrom(import_to_proto(s.embedding_import))
    msg.embedding_strategy = _STRATEGY.Value.Value(s.embedding_strategy)
    return msg


def columns_from_request(v: Violations, columns: list[vector_table_pb2.Column]) -> list[ColumnSpec]:
    """Shape rules that need no catalog: roles, names, ordinals, filter types."""
    out: list[ColumnSpec] = []
    seen: set[str] = set()
    if len(columns) > _MAX_COLUMNS:
        v.add("columns", f"has {len(columns)} columns; at most {_MAX_COLUMNS}")
        return []
    for i, col in enumerate(columns):
        field = f"columns[{i}]"
        check_identifier(v, col.name, f"{field}.name")
        if col.name and col.name in seen:
            v.add(f"{field}.name", f"column {col.name!r} is mapped twice")
        seen.add(col.name)
        if col.role == _ROLE.unspecified:
            v.add(f"{field}.role", "is required: 'embedding' or 'metadata'")
            continue
        role = _ROLE.Value.Name(col.role)
        filter_type = _FILTER.Value.Name(col.filter_type) if col.HasField("filter_type") else None
        if filter_type == "unspecified":
            filter_type = None
        ordinal = col.ordinal if col.HasField("ordinal") else None
        if role == "embedding":
            if filter_type is not None:
                v.add(f"{field}.filter_type", "applies to metadata columns only")
            out.append(
                ColumnSpec(col.name, role, ordinal, col.name_prefix if col.HasField("name_prefix") else None)
            )
        else:
            if ordinal is not None or col.HasField("name_prefix"):
                v.add(f"{field}.ordinal", "ordinal and name_prefix apply to embedding columns only")
            out.append(ColumnSpec(col.name, role, None, None, filter_type))
    if columns and not any(c.role == "embedding" for c in out):
        v.add("columns", "needs at least one column with role 'embedding'")
    if not columns:
        v.add(
            "columns",
            f"is required: at least one 'embedding' column (filter types: {', '.join(FILTER_TYPES)})",
        )
    ordered, problems = order_embedding_columns(out)
    for problem in problems:
        v.add(problem.field, problem.description)
    return ordered


_MUTABLE = (
    "name",
    "embedding_provider_id",
    "embedding_model",
    "embedding_dimensions",
    "columns",
    "sync_mode",
    "sync_interval_seconds",
    "cursor_column",
    "embedding_strategy",
)
_IMMUTABLE = (
    "id",
    "connection_id",
    "source_table",
    "mode",
    "primary_key_column",
    "platform_vector_ref",
    "embedding_import",
)


async def get_table(store: VectorTableStore, vt_id: str) -> models.VectorTable:
    """The caller's vector table, or 404 (other organisations' and environments' too)."""
    p = current_principal()
    check_id(vt_id, "vt_", "vector_table_id")
    row = await store.get(p.org_id, p.env_id, vt_id)
    if row is None:
        raise not_found("vector_table_not_found", "Vector table", vt_id)
    return row


# What a mask path needs in the request: a path whose value is absent would store an empty
# or `unspecified` value (cursor_column is the exception: absent clears it).
_GIVEN: dict[str, tuple[Callable[[vector_table_pb2.VectorTable], bool], str]] = {
    "name": (lambda t: bool(t.name.strip()), "the new name"),
    "embedding_provider_id": (lambda t: bool(t.embedding_provider_id), "an embedding provider id"),
    "embedding_model": (lambda t: bool(t.embedding_model), "a model (GET /v1/embedding-models)"),
    "embedding_dimensions": (
        lambda t: t.embedding_dimensions != 0,
        "the dimensions (to take a new model's native size, leave them out of the mask)",
    ),
    "columns": (lambda t: len(t.columns) > 0, "the complete list of mapped columns"),
    "sync_mode": (lambda t: t.sync_mode != _SYNC_MODE.unspecified, "'batch' or 'cdc'"),
    "sync_interval_seconds": (lambda t: t.sync_interval_seconds != 0, f"1 to {_MAX_INTERVAL_S} seconds"),
    "embedding_strategy": (lambda t: t.embedding_strategy != _STRATEGY.unspecified, "'standard' or 'batch'"),
}


def update_fields(request: vector_table_pb2.UpdateVectorTableRequest) -> set[str]:
    """The fields to change: the mask's (PATCH), or every mutable field given (PUT). A mask
    path must be a mutable field and come with a value."""
    paths = list(request.update_mask.paths)
    if paths:
        v = Violations()
        for path in paths:
            if path in _IMMUTABLE:
                v.add(f"update_mask.{path}", "cannot be changed; create a new vector table instead")
            elif path not in _MUTABLE:
                v.add(f"update_mask.{path}", f"is not a field; changeable: {', '.join(_MUTABLE)}")
            elif path in _GIVEN and not _GIVEN[path][0](request.vector_table):
                v.add(path, f"is in update_mask but has no value; give {_GIVEN[path][1]}")
        v.raise_if_any()
        return set(paths)
    new = request.vector_table
    given = {f.name for f, _ in new.ListFields()} & set(_MUTABLE)
    return given


def needs_rebackfill(live: VectorTableSpec, new: VectorTableSpec) -> bool:
    """A new table is built when what is embedded or stored per row changes."""
    return (
        live.embedding_model != new.embedding_model
        or live.embedding_dimensions != new.embedding_dimensions
        or live.columns != new.columns
    )


class VectorTableServicer(vector_table_pb2_grpc.VectorTableServiceServicer):
    def __init__(
        self,
        *,
        store: VectorTableStore,
        connections: ConnectionStore,
        providers: EmbeddingProviderStore,
        tables: TableManager,
        secrets: SecretBox,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._wake = wake
        self._store = store
        self._connections = connections
        self._providers = providers
        self._tables = tables
        self._secrets = secrets

    async def CreateVectorTable(
        self, request: vector_table_pb2.CreateVectorTableRequest, context: Context
    ) -> vector_table_pb2.VectorTable:
        p = current_principal()
        new = request.vector_table  # output-only fields (id, status, ref, created_at) are ignored
        v = Violations()
        check_name(v, new.name)
        add_id_violation(v, new.connection_id, "conn_", "connection_id")
        add_id_violation(v, new.embedding_provider_id, "emb_", "embedding_provider_id")
        source = split_table_name(new.source_table)
        if source is None:
            v.add("source_table", "must be 'schema.table' or 'table' (schema public)")
        else:
            for part in source:
                check_identifier(v, part, "source_table")
        check_identifier(v, new.primary_key_column, "primary_key_column")
        columns = columns_from_request(v, list(new.columns))
        interval = new.sync_interval_seconds or DEFAULT_SYNC_INTERVAL_S
        if not 1 <= interval <= _MAX_INTERVAL_S:
            v.add("sync_interval_seconds", f"must be between 1 and {_MAX_INTERVAL_S}")
        sync_mode = "cdc" if new.sync_mode == _SYNC_MODE.cdc else "batch"
        cursor = new.cursor_column if new.HasField("cursor_column") and new.cursor_column else None
        if sync_mode == "cdc" and cursor is None:
            v.add("cursor_column", "is required with sync_mode 'cdc' (e.g. an updated_at column)")
        elif cursor is not None:
            check_identifier(v, cursor, "cursor_column")
        imported = import_from_request(v, new.embedding_import) if new.HasField("embedding_import") else None
        strategy = strategy_name(new.embedding_strategy) or "standard"
        v.raise_if_any()
        assert source is not None

        connection = await self._connections.get(p.org_id, p.env_id, new.connection_id)
        if connection is None:
            raise not_found("connection_not_found", "Connection", new.connection_id)
        provider = await self._providers.get(p.org_id, p.env_id, new.embedding_provider_id)
        if provider is None:
            raise not_found("embedding_provider_not_found", "Embedding provider", new.embedding_provider_id)
        mode = connection.mode if new.mode == _MODE.unspecified else _MODE.Value.Name(new.mode)
        if mode != connection.mode:
            v.add("mode", f"must match the connection's mode ({connection.mode!r})")
            v.raise_if_any()
        model = new.embedding_model or provider.default_model
        _, dims = catalog.resolve_model(
            provider.provider,
            model,
            new.embedding_dimensions,
            base_url=provider.base_url,
            declared=provider.declared_dimensions(model),
            model_field="embedding_model",
            dimensions_field="embedding_dimensions",
        )
        check_strategy(strategy, provider.provider, "embedding_strategy")

        creds = open_credentials(self._secrets, connection)
        spec = VectorTableSpec(
            source_schema=source[0],
            source_table=source[1],
            primary_key_column=new.primary_key_column,
            embedding_model=model,
            embedding_dimensions=dims,
            columns=tuple(columns),
            sync_mode=sync_mode,
            sync_interval_seconds=interval,
            cursor_column=cursor,
            target_schema=creds.schema,
            mode=mode,
            embedding_import=imported,
            embedding_strategy=strategy,
        )
        vt_id = new_id("vector_table")
        ref = vector_ref(vt_id, new.name)
        spec = await self._tables.prepare(creds, spec, ref)
        try:
            row = await self._store.create(
                id=vt_id,
                org_id=p.org_id,
                env_id=p.env_id,
                name=new.name.strip(),
                connection_id=connection.id,
                embedding_provider_id=provider.id,
                spec=spec,
                platform_vector_ref=ref,
            )
        except BaseException:
            await self._tables.drop(creds, spec, ref)  # nothing half-made stays behind
            raise
        return to_proto(row)

    async def _get(self, vt_id: str) -> models.VectorTable:
        return await get_table(self._store, vt_id)

    async def GetVectorTable(
        self, request: vector_table_pb2.GetVectorTableRequest, context: Context
    ) -> vector_table_pb2.VectorTable:
        return to_proto(await self._get(request.vector_table_id))

    async def ListVectorTables(
        self, request: vector_table_pb2.ListVectorTablesRequest, context: Context
    ) -> vector_table_pb2.ListVectorTablesResponse:
        p = current_principal()
        page = await self._store.list_page(p.org_id, p.env_id, page_request(request.limit, request.cursor))
        return vector_table_pb2.ListVectorTablesResponse(
            vector_tables=render_all(page.items, to_proto), next_cursor=page.next_cursor
        )

    async def UpdateVectorTable(
        self, request: vector_table_pb2.UpdateVectorTableRequest, context: Context
    ) -> vector_table_pb2.VectorTable:
        p = current_principal()
        vt = await self._get(request.vector_table.id)
        fields = update_fields(request)
        new = request.vector_table
        v = Violations()
        name = new.name.strip() if "name" in fields else vt.name
        check_name(v, name)
        current = vt.pending_spec or vt.spec
        columns = columns_from_request(v, list(new.columns)) if "columns" in fields else list(current.columns)
        interval = (
            new.sync_interval_seconds if "sync_interval_seconds" in fields else current.sync_interval_seconds
        )
        if not 1 <= interval <= _MAX_INTERVAL_S:
            v.add("sync_interval_seconds", f"must be between 1 and {_MAX_INTERVAL_S}")
        sync_mode = _SYNC_MODE.Value.Name(new.sync_mode) if "sync_mode" in fields else current.sync_mode
        cursor = (new.cursor_column or None) if "cursor_column" in fields else current.cursor_column
        if sync_mode == "cdc" and cursor is None:
            v.add("cursor_column", "is required with sync_mode 'cdc' (e.g. an updated_at column)")
        elif cursor is not None:
            check_identifier(v, cursor, "cursor_column")
        if "sync_mode" in fields and new.sync_mode == _SYNC_MODE.unspecified:
            v.add("sync_mode", "is required: 'batch' or 'cdc'")
        strategy = current.embedding_strategy
        if "embedding_strategy" in fields:
            strategy = strategy_name(new.embedding_strategy) or ""
            if not strategy:
                v.add("embedding_strategy", "is required: 'standard' or 'batch'")
        v.raise_if_any()

        provider_id = (
            new.embedding_provider_id if "embedding_provider_id" in fields else vt.embedding_provider_id
        )
        provider = await self._providers.get(p.org_id, p.env_id, provider_id)
        if provider is None:
            raise not_found("embedding_provider_not_found", "Embedding provider", provider_id)
        model = new.embedding_model if "embedding_model" in fields else current.embedding_model
        dims_asked = (
            new.embedding_dimensions if "embedding_dimensions" in fields else current.embedding_dimensions
        )
        if "embedding_model" in fields and "embedding_dimensions" not in fields:
            dims_asked = 0  # a new model at its native size unless dimensions are given too
        _, dims = catalog.resolve_model(
            provider.provider,
            model,
            dims_asked,
            base_url=provider.base_url,
            declared=provider.declared_dimensions(model),
            model_field="embedding_model",
            dimensions_field="embedding_dimensions",
        )
        check_strategy(strategy, provider.provider, "embedding_strategy")
        spec = dataclasses.replace(
            current,
            embedding_strategy=strategy,
            embedding_model=model,
            embedding_dimensions=dims,
            columns=tuple(columns),
            sync_mode=sync_mode,
            sync_interval_seconds=interval,
            cursor_column=cursor,
        )
        connection = await self._connections.get_by_id(vt.connection_id)
        assert connection is not None  # the foreign key keeps it while the table exists
        creds = open_credentials(self._secrets, connection)
        spec = await self._tables.validate(creds, spec)
        if needs_rebackfill(vt.spec, spec):
            # The rebackfill task is the next backfill (as the seed says); one at a time. It
            # fills the next version of the store (a managed table's next collection) while
            # the live one keeps serving.
            spec = dataclasses.replace(spec, store_version=vt.spec.store_version + 1)
            await self._store.begin_rebackfill(
                vt, name=name, provider_id=provider.id, pending=spec, task_id=new_id("task")
            )
            if self._wake is not None:
                self._wake()
        else:
            await self._store.update_in_place(vt.id, name, spec, provider.id)
        updated = await self._store.get(p.org_id, p.env_id, vt.id)
        assert updated is not None
        return to_proto(updated)

    async def DeleteVectorTable(
        self, request: vector_table_pb2.DeleteVectorTableRequest, context: Context
    ) -> vector_table_pb2.DeleteVectorTableResponse:
        p = current_principal()
        vt = await self._get(request.vector_table_id)
        # The row and its tasks go first, in one transaction: no task can be claimed after
        # it, and a running one's next fenced write fails. Only then are the vectors dropped
        # (ending the sessions of any holder still writing them: sinks/fence.py), so nothing
        # re-creates them behind the drop.
        dropping: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
        # Managed vectors are ours (the user's database holds none of them): they always go.
        drop_vectors = request.drop_vectors or vt.spec.mode == "managed"
        if drop_vectors:
            connection = await self._connections.get_by_id(vt.connection_id)
            assert connection is not None  # the foreign key keeps it while the table exists
            creds = open_credentials(self._secrets, connection)
            dropping = self._tables.dropping(creds, vt.spec, vt.platform_vector_ref)
        async with dropping:
            if not await self._store.delete(p.org_id, p.env_id, vt.id):
                raise not_found("vector_table_not_found", "Vector table", vt.id)
        return vector_table_pb2.DeleteVectorTableResponse(
            id=vt.id, deleted=True, vectors_dropped=drop_vectors
        )


def sync_status_to_proto(
    vt: models.VectorTable, warning: str | None = None
) -> sync_pb2.GetSyncStatusResponse:
    """The sync status; every number clamped into its field (a count past the field's range,
    or a staleness that clock skew made negative, must not fail the call)."""
    numbers = {
        "synced_rows": vt.synced_rows,
        "total_rows": vt.total_rows,
        # rows over the vector budget are not pending: nothing will store them as things stand
        "rows_pending": max(vt.total_rows - vt.synced_rows - vt.rows_skipped, 0),
        "rows_skipped": vt.rows_skipped,
        "rows_imported": vt.rows_imported,
        "batch_tokens": vt.batch_tokens,
        "estimated_saving_tokens": catalog.batch_saving(vt.batch_tokens),
    }
    if vt.staleness_s is not None:  # computed by the control plane, from its own clock
        numbers["staleness_secs"] = int(vt.staleness_s)
    msg = sync_pb2.GetSyncStatusResponse(
        vector_table_id=vt.id,
        sync_status=values_pb2.SyncStatus.Value.Value(vt.sync_status),
        last_synced_at=timestamp(vt.last_synced_at),
        last_error_at=timestamp(vt.last_error_at),
    )
    set_counters(msg, **numbers)
    if vt.last_error:
        msg.last_error = vt.last_error
    if warning:
        msg.warning = warning
    if vt.index_status is not None:
        msg.index_status = values_pb2.IndexStatus.Value.Value(vt.index_status)
        if vt.index_status == "building" and vt.index_progress is not None:
            msg.index_progress = vt.index_progress
    return msg


class SyncServicer(sync_pb2_grpc.SyncServiceServicer):
    def __init__(
        self,
        store: VectorTableStore,
        tasks: TaskStore,
        worker: Worker | None,
        providers: EmbeddingProviderStore,
        watches: Watches,
    ) -> None:
        self._store = store
        self._tasks = tasks
        self._worker = worker
        self._providers = providers
        self._watches = watches
        self._rendered: RenderCache[sync_pb2.VectorTableEvent] = RenderCache()

    async def _get(self, vt_id: str) -> models.VectorTable:
        return await get_table(self._store, vt_id)

    async def BackfillVectorTable(
        self, request: sync_pb2.BackfillVectorTableRequest, context: Context
    ) -> sync_pb2.BackfillVectorTableResponse:
        vt = await self._get(request.vector_table_id)
        task_type = "rebackfill" if vt.pending_spec is not None else "backfill"
        chosen = strategy_name(request.embedding_strategy)
        if chosen is not None:
            provider = await self._providers.get_by_id(vt.embedding_provider_id)
            assert provider is not None  # the foreign key keeps it while the table exists
            check_strategy(chosen, provider.provider, "embedding_strategy")
        strategy = chosen or (vt.pending_spec or vt.spec).embedding_strategy
        task = await self._tasks.enqueue(
            id=new_id("task"),
            org_id=vt.org_id,
            env_id=vt.env_id,
            task_type=task_type,
            target_id=vt.id,
            embedding_strategy=strategy,
        )
        if self._worker is not None:
            self._worker.wake()
        return sync_pb2.BackfillVectorTableResponse(
            task_id=task.id,
            task_type=values_pb2.TaskType.Value.Value(task_type),
            target_id=vt.id,
            status=values_pb2.TaskStatus.pending,
            created_at=timestamp(task.created_at),
        )

    async def GetSyncStatus(
        self, request: sync_pb2.GetSyncStatusRequest, context: Context
    ) -> sync_pb2.GetSyncStatusResponse:
        vt = await self._get(request.vector_table_id)
        warning = None
        if vt.rows_skipped:
            warning = tiers.skipped_warning(await self._store.org_tier(vt.org_id), vt.rows_skipped)
        return sync_status_to_proto(vt, warning)

    async def PauseSync(
        self, request: sync_pb2.PauseSyncRequest, context: Context
    ) -> sync_pb2.PauseSyncResponse:
        p = current_principal()
        vt = await self._get(request.vector_table_id)
        if not await self._store.pause(p.org_id, p.env_id, vt.id):
            raise ApiError(
                Kind.CONFLICT,
                "sync_already_paused",
                "Sync of this vector table is already paused. Resume it with POST .../sync/resume.",
            )
        return sync_pb2.PauseSyncResponse(
            vector_table_id=vt.id,
            sync_status=values_pb2.SyncStatus.paused,
            message="Sync paused. Queries keep working; source changes are applied after resume.",
        )

    async def ResumeSync(
        self, request: sync_pb2.ResumeSyncRequest, context: Context
    ) -> sync_pb2.ResumeSyncResponse:
        p = current_principal()
        vt = await self._get(request.vector_table_id)
        state = await self._store.resume(p.org_id, p.env_id, vt.id)
        if state is None:
            raise ApiError(
                Kind.CONFLICT,
                "sync_not_paused",
                "Sync of this vector table is not paused; there is nothing to resume.",
            )
        return sync_pb2.ResumeSyncResponse(
            vector_table_id=vt.id,
            sync_status=values_pb2.SyncStatus.Value.Value(state),
            message="Sync resumed; changes made while paused are being applied now.",
        )

    async def WatchVectorTable(
        self, request: sync_pb2.WatchVectorTableRequest, context: Context
    ) -> AsyncIterator[sync_pb2.VectorTableEvent]:
        vt = await self._get(request.vector_table_id)
        p = current_principal()
        after = request.after_sequence if request.HasField("after_sequence") else None
        async for item in self._watches.table(p.org_id, p.env_id, vt.id, after):
            if isinstance(item, Snapshot):
                yield snapshot_to_proto(item, sync_status_to_proto(item.table))
            elif isinstance(item, TableEvent):
                yield self._rendered.get(item, functools.partial(event_to_proto, item))
            else:
                yield event_to_proto(item)  # a heartbeat: its own time
