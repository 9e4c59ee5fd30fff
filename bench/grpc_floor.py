"""The floor under bench-query's gRPC numbers: a bare grpc.aio server that answers every
QueryVectorTable with the same bytes the service answered, with no code of ours between (no
interceptor, no database, no conversion).

    python -m bench.grpc_floor <response as hex>     # prints its port, serves until killed

What `grpc_floor_p50_ms` less `sql_p50_ms` leaves is what grpc.aio itself costs here (both
sides of the call in Python); what the service adds above it is ours (docs/query-path.md).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
from embedd.v1 import query_pb2, query_pb2_grpc


class _Canned(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, response: query_pb2.QueryVectorTableResponse) -> None:
        self._response = response

    async def QueryVectorTable(self, request: Any, context: Any) -> query_pb2.QueryVectorTableResponse:
        return self._response


async def serve(response: bytes) -> None:
    server = grpc.aio.server()
    query_pb2_grpc.add_QueryServiceServicer_to_server(
        _Canned(query_pb2.QueryVectorTableResponse.FromString(response)), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(bytes.fromhex(sys.argv[1])))
