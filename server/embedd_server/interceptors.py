"""One interceptor for every RPC: request id, auth, error mapping and an access log.

Handlers are wrapped rather than intercepted so that the principal lives in a contextvar of
the task that runs the servicer, and so that every exception - domain or not - is mapped
here, in one place. Health checking and reflection are left unauthenticated.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
import structlog

from embedd_server import errors
from embedd_server.auth import Authenticator, set_principal
from embedd_server.domain.errors import ApiError
from embedd_server.services.base import Context, Handler

log = structlog.get_logger("embedd.access")

_PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

Unary = Callable[[Any, Context], Awaitable[Any]]
Streaming = Callable[[Any, Context], AsyncIterator[Any]]


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates, scopes and maps errors for every `embedd.v1` RPC."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_PUBLIC_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(cast(Unary, handler.unary_unary), method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(cast(Streaming, handler.unary_stream), method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # the API has no client-streaming RPCs

    async def _enter(self, context: Context, method: str) -> str:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        request_id = metadata.get("x-request-id") or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
        principal = await self._auth.authenticate(metadata, method)
        set_principal(principal)
        structlog.contextvars.bind_contextvars(org_id=principal.org_id, env_id=principal.env_id)
        return request_id

    def _wrap_unary(self, behavior: Unary, method: str) -> Unary:
        async def wrapper(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            request_id = ""
            try:
                request_id = await self._enter(context, method)
                response = await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, request_id, started)
                raise  # unreachable: abort raises
            _access(started, "OK")
            return response

        return wrapper

    def _wrap_stream(self, behavior: Streaming, method: str) -> Streaming:
        async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            request_id = ""
            try:
                request_id = await self._enter(context, method)
                async for message in behavior(request, context):
                    yield message
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, request_id, started)
                raise
            _access(started, "OK")

        return wrapper


async def _abort(context: Context, exc: Exception, request_id: str, started: float) -> None:
    request_id = request_id or uuid.uuid4().hex
    if isinstance(exc, ApiError):
        err = exc
    else:
        # The exception text may hold anything (SQL, secrets in a DSN): log it, never send it.
        log.exception("unhandled error", request_id=request_id)
        err = errors.internal_error(request_id)
    _access(started, err.code)
    await context.abort(
        errors.grpc_code(err.kind),
        errors.bounded(err).message,
        trailing_metadata=tuple(errors.trailing_metadata(err, request_id)),
    )


def _access(started: float, outcome: str) -> None:
    log.info("rpc", outcome=outcome, duration_ms=round((time.perf_counter() - started) * 1000, 2))
