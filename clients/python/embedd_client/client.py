"""`EmbeddClient`: one channel, the API key and environment on every call, every service stub.

async with EmbeddClient("localhost:50051", api_key="sk_...") as client:
    conn = await client.connections.CreateConnection(request)
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import grpc
from embedd.v1 import (
    api_key_pb2_grpc,
    connection_pb2_grpc,
    embedding_provider_pb2_grpc,
    environment_pb2_grpc,
    query_pb2_grpc,
    sync_pb2_grpc,
    task_pb2_grpc,
    vector_table_pb2_grpc,
)
from google.rpc import error_details_pb2, status_pb2


class _Metadata:
    """Adds `authorization` (and `x-environment-id`) to a call's metadata."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self._pairs = pairs

    def details(self, details: Any) -> Any:
        metadata = list(details.metadata or ()) + list(self._pairs)
        return details._replace(metadata=metadata)


# grpc.aio files an interceptor under the first interceptor type it is an instance of, so
# unary and streaming calls each need their own class.
class _UnaryMetadata(_Metadata, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self.details(client_call_details), request)


class _StreamMetadata(_Metadata, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self.details(client_call_details), request)


class EmbeddClient:
    """Stubs for every service over one channel, authenticated with an API key."""

    def __init__(
        self,
        target: str,
        api_key: str,
        *,
        environment_id: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        pairs: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),)
        if environment_id:
            pairs += (("x-environment-id", environment_id),)
        interceptors: Any = [_UnaryMetadata(pairs), _StreamMetadata(pairs)]
        self.channel = (
            grpc.aio.secure_channel(target, credentials, interceptors=interceptors)
            if credentials is not None
            else grpc.aio.insecure_channel(target, interceptors=interceptors)
        )
        self.connections = connection_pb2_grpc.ConnectionServiceStub(self.channel)
        self.embedding_providers = embedding_provider_pb2_grpc.EmbeddingProviderServiceStub(self.channel)
        self.vector_tables = vector_table_pb2_grpc.VectorTableServiceStub(self.channel)
        self.sync = sync_pb2_grpc.SyncServiceStub(self.channel)
        self.query = query_pb2_grpc.QueryServiceStub(self.channel)
        self.tasks = task_pb2_grpc.TaskServiceStub(self.channel)
        self.api_keys = api_key_pb2_grpc.ApiKeyServiceStub(self.channel)
        self.environments = environment_pb2_grpc.EnvironmentServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> EmbeddClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def error_reason(err: grpc.aio.AioRpcError) -> tuple[str, list[tuple[str, str]]]:
    """The Embedd error code (`ErrorInfo.reason`) and field violations of a failed call."""
    reason, violations = "", []
    metadata: Any = err.trailing_metadata() or ()
    for key, value in metadata:
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                reason = info.reason
            elif detail.Unpack(bad):
                violations = [(v.field, v.description) for v in bad.field_violations]
    return reason, violations
