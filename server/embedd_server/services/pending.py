"""Services whose behaviour lands in later issues. Each RPC answers UNIMPLEMENTED with a
message naming what is missing and the issue that delivers it - nothing pretends to work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

from embedd.v1 import query_pb2_grpc, sync_pb2_grpc, task_pb2_grpc, vector_table_pb2_grpc

from embedd_server.domain.errors import unimplemented
from embedd_server.services.base import Context

_VECTOR_TABLES = "issue #4 (vector tables and backfill)"
_QUERY = "issue #5 (semantic query with metadata filters)"
_SYNC = "issue #6 (continuous sync, pause/resume, re-backfill)"


def _missing(what: str, issue: str) -> NoReturn:
    raise unimplemented(what, issue)


class PendingVectorTableServicer(vector_table_pb2_grpc.VectorTableServiceServicer):
    async def CreateVectorTable(self, request: Any, context: Context) -> Any:
        _missing("Creating vector tables", _VECTOR_TABLES)

    async def GetVectorTable(self, request: Any, context: Context) -> Any:
        _missing("Reading vector tables", _VECTOR_TABLES)

    async def ListVectorTables(self, request: Any, context: Context) -> Any:
        _missing("Listing vector tables", _VECTOR_TABLES)

    async def UpdateVectorTable(self, request: Any, context: Context) -> Any:
        _missing("Updating vector tables (re-backfill)", _SYNC)

    async def DeleteVectorTable(self, request: Any, context: Context) -> Any:
        _missing("Deleting vector tables", _VECTOR_TABLES)


class PendingSyncServicer(sync_pb2_grpc.SyncServiceServicer):
    async def BackfillVectorTable(self, request: Any, context: Context) -> Any:
        _missing("Backfill", _VECTOR_TABLES)

    async def GetSyncStatus(self, request: Any, context: Context) -> Any:
        _missing("Sync status", _VECTOR_TABLES)

    async def PauseSync(self, request: Any, context: Context) -> Any:
        _missing("Pausing sync", _SYNC)

    async def ResumeSync(self, request: Any, context: Context) -> Any:
        _missing("Resuming sync", _SYNC)


class PendingQueryServicer(query_pb2_grpc.QueryServiceServicer):
    async def QueryVectorTable(self, request: Any, context: Context) -> Any:
        _missing("Semantic query", _QUERY)


class PendingTaskServicer(task_pb2_grpc.TaskServiceServicer):
    async def GetTask(self, request: Any, context: Context) -> Any:
        _missing("Tasks", _VECTOR_TABLES)

    async def ListTasks(self, request: Any, context: Context) -> Any:
        _missing("Tasks", _VECTOR_TABLES)

    async def WatchTask(self, request: Any, context: Context) -> AsyncIterator[Any]:
        _missing("Watching task progress", _VECTOR_TABLES)
        yield  # pragma: no cover - makes this an async generator, as the stub expects
