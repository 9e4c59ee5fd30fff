"""One interceptor for every RPC: request id, auth, rate limit, generic request checks,
cursors, error mapping and an access log.

Handlers are wrapped rather than intercepted so that the principal lives in a contextvar of
the task that runs the servicer, and so that every exception - domain or not - is mapped
here, in one place. Health checking and reflection are left unauthenticated.

Before a servicer runs, in this order: the request id is fixed (so every answer, a 401
included, carries the one in `x-request-id`), the caller is authenticated, a body the
protobuf decoder refused becomes a 400 (the request deserializer is wrapped: grpc would
otherwise answer UNKNOWN with the decoder's text), `request_checks` run, and a list's
`cursor` is unsealed (`cursors`); a list's `next_cursor` is sealed on the way out.

Every authenticated call counts once against its organisation's request limit (a stream too,
however long it lasts), and its response carries the X-RateLimit-* headers as initial
metadata (Envoy passes them on as HTTP headers); a refused call answers RESOURCE_EXHAUSTED /
429 with RetryInfo and Retry-After. Health checking and reflection are not limited.

The headers go out with the response, or with a stream's first message, never before: Envoy's
transcoder passes a stream's headers on at once, as a 200, so a call refused before its first
message (WatchTask of an unknown task) must end trailers-only to reach REST with its status.

The wrapped handler of each method is built once and reused.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from embedd_server import errors
from embedd_server.auth import Authenticator, set_principal
from embedd_server.cursors import CursorSealer
from embedd_server.domain.errors import ApiError
from embedd_server.domain.models import Principal
from embedd_server.ratelimit import RateLimiter, exceeded
from embedd_server.request_checks import body_field, check_request, decode_error
from embedd_server.services.base import Context, Handler

log = structlog.get_logger("embedd.access")

_PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# A caller's own x-request-id (gRPC clients; Envoy always sets its own) is kept when it is a
# plain token, else replaced: it is echoed in logs and error bodies.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

Unary = Callable[[Any, Context], Awaitable[Any]]
Streaming = Callable[[Any, Context], AsyncIterator[Any]]
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Undecodable:
    """What the wrapped deserializer hands the handler for bytes protobuf refused."""

    error: DecodeError


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as exc:
            return _Undecodable(exc)

    return decode


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates, scopes, checks and maps errors for every `embedd.v1` RPC."""

    def __init__(
        self, authenticator: Authenticator, cursors: CursorSealer, limiter: RateLimiter | None = None
    ) -> None:
        self._auth = authenticator
        self._cursors = cursors
        self._limiter = limiter
        # Method -> its wrapped handler. The servicers' handlers are fixed at start-up, and
        # a method name only gets here once the server knows it (bounded by the API).
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(_PUBLIC_PREFIXES):
            return handler
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, handler: Handler, method: str) -> Handler:
        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(cast(Unary, handler.unary_unary), method),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(cast(Streaming, handler.unary_stream), method),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # the API has no client-streaming RPCs

    async def _enter(self, call: _Call, metadata: dict[str, str], method: str, request: Any) -> Principal:
        """Authenticates the caller, counts the call and checks the request; raises an
        ApiError to answer."""
        principal = await self._auth.authenticate(metadata, method)
        set_principal(principal)
        structlog.contextvars.bind_contextvars(org_id=principal.org_id, env_id=principal.env_id)
        if self._limiter is not None and principal.requests_per_minute is not None:
            decision = await self._limiter.admit(principal.org_id, principal.requests_per_minute)
            if not decision.allowed:
                raise exceeded(decision)
            call.headers = decision.headers()
        if isinstance(request, _Undecodable):
            raise decode_error(request.error)
        check_request(request, body_field=_body_field(method))
        if "cursor" in request.DESCRIPTOR.fields_by_name:
            request.cursor = self._cursors.open(request.cursor, _scope(method, principal))
        return principal

    def _leave(self, response: Any, method: str, principal: Principal) -> Any:
        if isinstance(response, Message) and "next_cursor" in response.DESCRIPTOR.fields_by_name:
            sealed = self._cursors.seal(getattr(response, "next_cursor"), _scope(method, principal))  # noqa: B009
            setattr(response, "next_cursor", sealed)  # noqa: B010
        return response

    def _wrap_unary(self, behavior: Unary, method: str) -> Unary:
        async def wrapper(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            metadata = _metadata(context)
            request_id = _begin(metadata, method)
            call = _Call()
            try:
                principal = await self._enter(call, metadata, method, request)
                response = self._leave(await behavior(request, context), method, principal)
                await call.send_headers(context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, request_id, started, call.unsent())
                raise  # unreachable: abort raises
            _access(started, "OK")
            return response

        return wrapper

    def _wrap_stream(self, behavior: Streaming, method: str) -> Streaming:
        async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            metadata = _metadata(context)
            request_id = _begin(metadata, method)
            call = _Call()
            try:
                await self._enter(call, metadata, method, request)
                async for message in behavior(request, context):
                    await call.send_headers(context)
                    yield message
                await call.send_headers(context)  # a stream that ended without a message
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await _abort(context, exc, request_id, started, call.unsent())
                raise
            _access(started, "OK")

        return wrapper


class _Call:
    """Response headers of one call (the X-RateLimit-* ones). They go out with the response
    (before the first message of a stream), or with the error in its trailing metadata, so
    an error keeps gRPC's trailers-only form, which Envoy turns into the REST error."""

    def __init__(self) -> None:
        self.headers: tuple[tuple[str, str], ...] = ()
        self._sent = False

    def unsent(self) -> tuple[tuple[str, str], ...]:
        return () if self._sent else self.headers

    async def send_headers(self, context: Context) -> None:
        if self.headers and not self._sent:
            self._sent = True
            await context.send_initial_metadata(self.headers)


def _metadata(context: Context) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def _begin(metadata: dict[str, str], method: str) -> str:
    """The call's request id, bound to every log line of the call: Envoy's x-request-id (or a
    gRPC client's own), else a new one. Fixed first, so that any answer carries it."""
    given = metadata.get("x-request-id", "")
    request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
    return request_id


@functools.cache
def _body_field(method: str) -> str:
    return body_field(method)


def _scope(method: str, principal: Principal) -> str:
    """What a cursor is bound to: one list of one organisation."""
    return f"{method}|{principal.org_id}"


async def _abort(
    context: Context,
    exc: Exception,
    request_id: str,
    started: float,
    headers: tuple[tuple[str, str], ...] = (),
) -> None:
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
        trailing_metadata=(*errors.trailing_metadata(err, request_id), *headers),
    )


def _access(started: float, outcome: str) -> None:
    log.info("rpc", outcome=outcome, duration_ms=round((time.perf_counter() - started) * 1000, 2))
