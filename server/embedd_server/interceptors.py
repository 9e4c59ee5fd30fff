"""One interceptor for every RPC: request id, auth, rate limit, error mapping, access log.

Handlers are wrapped rather than intercepted so that the principal lives in a contextvar of
the task that runs the servicer, and so that every exception - domain or not - is mapped
here, in one place. Health checking and reflection are left unauthenticated and unlimited.

Every authenticated call counts once against its organisation's request limit (a stream too,
however long it lasts), and its response carries the X-RateLimit-* headers as initial
metadata (Envoy passes them on as HTTP headers); a refused call answers RESOURCE_EXHAUSTED /
429 with RetryInfo and Retry-After.

A stream sends its initial metadata with its first message, not before: Envoy's transcoder
passes a stream's headers on at once, as a 200, so a stream refused before its first message
(WatchTask of an unknown task) must end trailers-only to reach REST with its error status.
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
from embedd_server.ratelimit import RateLimiter, exceeded
from embedd_server.services.base import Context, Handler

log = structlog.get_logger("embedd.access")

_PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

Unary = Callable[[Any, Context], Awaitable[Any]]
Streaming = Callable[[Any, Context], AsyncIterator[Any]]
Metadata = tuple[tuple[str, str], ...]


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates, scopes and maps errors for every `embedd.v1` RPC."""

    def __init__(self, authenticator: Authenticator, limiter: RateLimiter | None = None) -> None:
        self._auth = authenticator
        self._limiter = limiter

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

    async def _enter(self, context: Context, method: str) -> tuple[str, Metadata]:
        """The request id and the X-RateLimit-* headers for the response."""
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        request_id = metadata.get("x-request-id") or uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
        principal = await self._auth.authenticate(metadata, method)
        set_principal(principal)
        structlog.contextvars.bind_contextvars(org_id=principal.org_id, env_id=principal.env_id)
        if self._limiter is not None and principal.requests_per_minute is not None:
            decision = await self._limiter.admit(principal.org_id, principal.requests_per_minute)
            if not decision.allowed:
                raise exceeded(decision)
            return request_id, decision.headers()
        return request_id, ()

    def _wrap_unary(self, behavior: Unary, method: str) -> Unary:
        async def wrapper(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            request_id = ""
            try:
                request_id, headers = await self._enter(context, method)
                if headers:
                    await context.send_initial_metadata(headers)
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
            unsent: Metadata = ()  # initial metadata not sent yet
            try:
                request_id, unsent = await self._enter(context, method)
                async for message in behavior(request, context):
                    if unsent:
                        await context.send_initial_metadata(unsent)
                        unsent = ()
                    yield message
                if unsent:
                    await context.send_initial_metadata(unsent)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, request_id, started, unsent)
                raise
            _access(started, "OK")

        return wrapper


async def _abort(
    context: Context, exc: Exception, request_id: str, started: float, headers: Metadata = ()
) -> None:
    """Ends the call with the error; `headers` not sent as initial metadata go with it."""
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
        err.message,
        trailing_metadata=(*errors.trailing_metadata(err, request_id), *headers),
    )


def _access(started: float, outcome: str) -> None:
    log.info("rpc", outcome=outcome, duration_ms=round((time.perf_counter() - started) * 1000, 2))
