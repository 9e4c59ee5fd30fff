"""`SyncEmbeddClient`: the blocking client, the same stubs and behaviour as `EmbeddClient`.

with SyncEmbeddClient(os.environ["EMBEDD_GRPC"], os.environ["EMBEDD_API_KEY"]) as client:
    conn = client.connections.CreateConnection(request)
    for event in client.watch_task(task_id):
        ...
"""

from __future__ import annotations

from collections.abc import Iterator
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

from embedd_client.aio import DEFAULT_TIMEOUT_S
from embedd_client.channel import CallPolicy, ChannelOptions, RetryPolicy, channel_options, sync_interceptors
from embedd_client.watch import OnRetry, Reconnect, TaskResume, VectorTableResume, watch_sync


class SyncEmbeddClient:
    """The blocking client; see `EmbeddClient` for the arguments."""

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
        raw = (
            grpc.secure_channel(target, credentials, options=args)
            if credentials is not None
            else grpc.insecure_channel(target, options=args)
        )
        self._raw = raw
        self.channel = grpc.intercept_channel(raw, *sync_interceptors(policy))
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
    ) -> Iterator[task_pb2.WatchTaskResponse]:
        """See `EmbeddClient.watch_task`."""
        return watch_sync(self.tasks.WatchTask, TaskResume(task_id), self.reconnect, on_retry)

    def watch_vector_table(
        self, vector_table_id: str, *, after_sequence: int | None = None, on_retry: OnRetry | None = None
    ) -> Iterator[sync_pb2.VectorTableEvent]:
        """See `EmbeddClient.watch_vector_table`."""
        resume = VectorTableResume(vector_table_id, after_sequence)
        return watch_sync(self.sync.WatchVectorTable, resume, self.reconnect, on_retry)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> SyncEmbeddClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
