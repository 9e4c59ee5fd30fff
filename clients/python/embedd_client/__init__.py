"""Python client for the Embedd-compatible gRPC API (`embedd.v1`).

`EmbeddClient` (async) and `SyncEmbeddClient` (blocking) expose every service's generated
stub over one authenticated channel, raise one `EmbeddError` subclass per Embedd error code
(`embedd_client.errors`), retry idempotent calls on UNAVAILABLE, put a default deadline on
unary calls, and offer `watch_task` streams that reconnect and resume.
"""

from embedd_client import errors
from embedd_client.aio import DEFAULT_TIMEOUT_S, EmbeddClient
from embedd_client.channel import RetryPolicy
from embedd_client.errors import EmbeddError, FieldViolation, error_reason
from embedd_client.sync import SyncEmbeddClient
from embedd_client.watch import Reconnect

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "EmbeddClient",
    "EmbeddError",
    "FieldViolation",
    "Reconnect",
    "RetryPolicy",
    "SyncEmbeddClient",
    "error_reason",
    "errors",
]
