"""`EmbeddClient`: the async client. One channel, every service's stub, typed errors.

    async with EmbeddClient(os.environ["EMBEDD_GRPC"], os.environ["EMBEDD_API_KEY"]) as client:
        conn = await client.connections.CreateConnection(request)
        async for event in client.watch_task(task_id):
            ...

Each stub method takes the request message and returns the response message (or, for
`Watch*`, a stream of them); `timeout=` overrides the default deadline of one call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType

import grpc
from embedd.v1 import (
    api_key_pb2_grpc,
    connection_pb2_grpc,
    embedding_provider_pb2_grpc,
    environment_pb2_grpc,
    query_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
    task_pb2,
    task_pb2_grpc,
    vector_table_pb2_grpc,
)

from embedd_client.channel import CallPolicy, ChannelOptions, RetryPolicy, aio_interceptors, channel_options
from embedd_client.watch import OnRetry, Reconnect, TaskResume, VectorTableResume, watch_async

DEFAULT_TIMEOUT_S = 30.0


class EmbeddClient:
    """The async client: stubs for every service over one channel, authenticated with an API
    key. `timeout_s` is the default deadline of unary calls (None: none); `retry` the retry
    policy of idempotent calls (None: no retries); `options` extra gRPC channel arguments."""

    def __init__(
        self,
        target: str,
        api_key: str,
        *,
        environment_id: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = RetryPolicy(),  # noqa: B008 - frozen, never mutated
        reconnect: Reconnect = Reconnect(),  # noqa: B008 - frozen, never mutated
        options: ChannelOptions = (),
    ) -> None:
        policy = CallPolicy.build(api_key, environment_id, timeout_s)
        args = channel_options(retry, options)
        interceptors = aio_interceptors(policy)
        self.channel = (
            grpc.aio.secure_channel(target, credentials, options=args, interceptors=interceptors)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=args, interceptors=interceptors)
        )
        self.reconnect = reconnect
        self.connections = connection_pb2_grpc.ConnectionServiceStub(self.channel)
        self.embedding_providers = embedding_provider_pb2_grpc.EmbeddingProviderServiceStub(self.channel)
        self.vector_tables = vector_table_pb2_grpc.VectorTableServiceStub(self.channel)
        self.sync = sync_pb2_grpc.SyncServiceStub(self.channel)
        self.query = query_pb2_grpc.QueryServiceStub(self.channel)
        self.tasks = task_pb2_grpc.TaskServiceStub(self.channel)
        self.api_keys = api_key_pb2_grpc.ApiKeyServiceStub(self.channel)
        self.environments = environment_pb2_grpc.EnvironmentServiceStub(self.channel)

    def watch_task(
        self, task_id: str, *, on_retry: OnRetry | None = None
    ) -> AsyncIterator[task_pb2.WatchTaskResponse]:
        """The task's progress events until it completes or fails (the last has `done`),
        across reconnects: after a transport error it subscribes again and skips what it
        already delivered."""
        return watch_async(self.tasks.WatchTask, TaskResume(task_id), self.reconnect, on_retry)

    def watch_vector_table(
        self, vector_table_id: str, *, after_sequence: int | None = None, on_retry: OnRetry | None = None
    ) -> AsyncIterator[sync_pb2.VectorTableEvent]:
        """The table's events for as long as the caller iterates: a snapshot first (or, with
        `after_sequence`, what came after it), then progress, sync cycles, status changes and
        heartbeats. After a transport error it reconnects and resumes after the last sequence
        it delivered; ends with NotFoundError when the table is deleted."""
        resume = VectorTableResume(vector_table_id, after_sequence)
        return watch_async(self.sync.WatchVectorTable, resume, self.reconnect, on_retry)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> EmbeddClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
