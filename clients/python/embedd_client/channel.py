"""What every call gets, for the async and the sync client alike.

- `authorization` (and `x-environment-id`) metadata;
- a default deadline on unary calls (streams are open-ended; `watch` handles them);
- the typed `EmbeddError` instead of the raw gRPC error;
- retries of idempotent methods on UNAVAILABLE, done by gRPC itself from the service config
  (so a retried call is one call to the caller, with its deadline spanning the attempts).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from embedd.v1 import (
    api_key_pb2,
    connection_pb2,
    embedding_provider_pb2,
    environment_pb2,
    query_pb2,
    sync_pb2,
    task_pb2,
    vector_table_pb2,
)

from embedd_client.errors import from_rpc_error

# Methods that change nothing (or converge: a connection test records its outcome) may run
# twice; a retried Create could make two resources, so only these are retried.
IDEMPOTENT_PREFIXES = ("Get", "List", "Test", "Query", "Watch")

_PROTO_FILES = (
    api_key_pb2,
    connection_pb2,
    embedding_provider_pb2,
    environment_pb2,
    query_pb2,
    sync_pb2,
    task_pb2,
    vector_table_pb2,
)

ChannelOptions = Sequence[tuple[str, Any]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """gRPC's retryPolicy for idempotent methods: attempts include the first one."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    backoff_multiplier: float = 2.0


def idempotent_methods() -> list[tuple[str, str]]:
    """(full service name, method) of every idempotent method in embedd.v1."""
    return [
        (service.full_name, method.name)
        for module in _PROTO_FILES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.name.startswith(IDEMPOTENT_PREFIXES)
    ]


def service_config(retry: RetryPolicy | None) -> str:
    """The channel's service config (JSON): the retry policy for idempotent methods."""
    if retry is None:
        return json.dumps({"methodConfig": []})
    names = [{"service": service, "method": method} for service, method in idempotent_methods()]
    policy = {
        "maxAttempts": retry.max_attempts,
        "initialBackoff": f"{retry.initial_backoff_s}s",
        "maxBackoff": f"{retry.max_backoff_s}s",
        "backoffMultiplier": retry.backoff_multiplier,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


def channel_options(retry: RetryPolicy | None, extra: ChannelOptions = ()) -> list[tuple[str, Any]]:
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(retry)),
        # A restarted server is found again within seconds, not after gRPC's default
        # reconnect backoff of up to two minutes (watches reconnect through this).
        ("grpc.max_reconnect_backoff_ms", 5000),
        *extra,
    ]


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """Metadata added to every call and the default deadline of unary calls."""

    metadata: tuple[tuple[str, str], ...]
    timeout_s: float | None

    @staticmethod
    def build(api_key: str, environment_id: str | None, timeout_s: float | None) -> CallPolicy:
        pairs: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),)
        if environment_id:
            pairs += (("x-environment-id", environment_id),)
        return CallPolicy(pairs, timeout_s)

    def details(self, details: Any, *, unary: bool) -> Any:
        metadata = [*(details.metadata or ()), *self.metadata]
        timeout = details.timeout
        if unary and timeout is None:
            timeout = self.timeout_s
        return details._replace(metadata=metadata, timeout=timeout)


# grpc.aio files an interceptor under the first interceptor type it is an instance of, so
# unary and streaming calls each need their own class.
class _AioUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, policy: CallPolicy) -> None:
        self._policy = policy

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        call = await continuation(self._policy.details(client_call_details, unary=True), request)
        try:
            await call
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        return call  # done: awaiting it again gives the response, and its metadata stays readable


class _AioStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, policy: CallPolicy) -> None:
        self._policy = policy

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        call = await continuation(self._policy.details(client_call_details, unary=False), request)
        return _typed_errors(call)


async def _typed_errors(call: Any) -> AsyncIterator[Any]:
    try:
        async for message in call:
            yield message
    except grpc.aio.AioRpcError as err:
        raise from_rpc_error(err) from None


def aio_interceptors(policy: CallPolicy) -> list[Any]:
    return [_AioUnary(policy), _AioStream(policy)]


class _SyncUnary(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, policy: CallPolicy) -> None:
        self._policy = policy

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        outcome = continuation(self._policy.details(client_call_details, unary=True), request)
        err = outcome.exception()
        if isinstance(err, grpc.RpcError):
            raise from_rpc_error(err) from None
        return outcome


class _SyncStream(grpc.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, policy: CallPolicy) -> None:
        self._policy = policy

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return _TypedStream(continuation(self._policy.details(client_call_details, unary=False), request))


class _TypedStream:
    """A sync response stream that raises typed errors; everything else is the call's."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


def sync_interceptors(policy: CallPolicy) -> list[Any]:
    return [_SyncUnary(policy), _SyncStream(policy)]
