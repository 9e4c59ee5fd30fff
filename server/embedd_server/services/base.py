"""What every servicer shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

# Servicers never touch the context (the interceptor owns metadata and errors); the alias
# keeps their signatures short. The stubs make these classes generic; the runtime does not.
if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Context = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler
