"""Opens a vector table's store: platform mode's pgvector table on a connection to the user's
database, or managed mode's Qdrant collection on the process's one Qdrant (sinks/base.py is
the interface both implement)."""

from __future__ import annotations

from dataclasses import dataclass

from embedd_server.domain.errors import ApiError, Kind
from embedd_server.domain.vector_tables import VectorTableSpec
from embedd_server.sinks.base import Confirm, VectorStore
from embedd_server.sinks.pgvector_search import Conn
from embedd_server.sinks.pgvector_store import EXACT_THRESHOLD, PgVectorStore
from embedd_server.sinks.qdrant import QdrantStore
from embedd_server.sinks.qdrant_backend import QdrantBackend


def managed_unavailable() -> ApiError:
    return ApiError(
        Kind.UNAVAILABLE,
        "managed_mode_unavailable",
        "Managed mode is not configured on this server: its operator sets EMBEDD_QDRANT_PATH "
        "(embedded Qdrant in a folder) or EMBEDD_QDRANT_URL (a Qdrant server). Use mode "
        "'platform' meanwhile.",
    )


@dataclass(frozen=True)
class StoreFactory:
    qdrant: QdrantBackend | None = None
    exact_threshold: int = EXACT_THRESHOLD

    def open(
        self,
        spec: VectorTableSpec,
        ref: str,
        conn: Conn | None,
        *,
        reader: Conn | None = None,
        confirm: Confirm | None = None,
    ) -> VectorStore:
        """The store of `spec`'s vectors named `ref`. `conn` writes (platform mode; for a
        query, the pooled connection it searches on), `reader` reads the source in the
        same database (a diff); `confirm` checks the job's lease before a managed write."""
        if spec.mode == "managed":
            if self.qdrant is None:
                raise managed_unavailable()
            return QdrantStore(
                self.qdrant, ref, spec.embedding_dimensions, spec.store_version, confirm=confirm
            )
        assert conn is not None, "platform mode writes and searches on a connection to the user's database"
        return PgVectorStore(spec, ref, conn, reader=reader, exact_threshold=self.exact_threshold)
