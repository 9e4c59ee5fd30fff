"""Services whose behaviour lands in later issues. Each RPC answers UNIMPLEMENTED with a
message naming what is missing and the issue that delivers it - nothing pretends to work."""

from __future__ import annotations

from typing import Any, NoReturn

from embedd.v1 import query_pb2_grpc

from embedd_server.domain.errors import unimplemented
from embedd_server.services.base import Context

_QUERY = "issue #5 (semantic query with metadata filters)"


def _missing(what: str, issue: str) -> NoReturn:
    raise unimplemented(what, issue)


class PendingQueryServicer(query_pb2_grpc.QueryServiceServicer):
    async def QueryVectorTable(self, request: Any, context: Context) -> Any:
        _missing("Semantic query", _QUERY)
