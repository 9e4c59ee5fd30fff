"""The embedded Qdrant's storage tuning (sinks/qdrant_backend.py): every collection's SQLite
file in WAL mode with synchronous=NORMAL, including collections made later and those found
when the folder is opened again."""

from __future__ import annotations

from pathlib import Path

from embedd_server.sinks.qdrant_backend import QdrantBackend
from qdrant_client.http import models


def _modes(backend: QdrantBackend) -> list[tuple[str, int]]:
    return [
        (db.execute("PRAGMA journal_mode").fetchone()[0], db.execute("PRAGMA synchronous").fetchone()[0])
        for db in backend.local_databases()
    ]


async def test_every_collection_is_in_wal_mode(tmp_path: Path) -> None:
    backend = QdrantBackend(path=str(tmp_path))
    try:
        for name in ("a", "b"):
            await backend.call(
                "create_collection",
                name,
                vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE),
            )
        # NORMAL is 1 (FULL, SQLite's default, is 2); a qdrant-client that moved its storage
        # would show no databases here.
        assert _modes(backend) == [("wal", 1), ("wal", 1)]
    finally:
        await backend.aclose()
    reopened = QdrantBackend(path=str(tmp_path))
    try:
        assert _modes(reopened) == [("wal", 1), ("wal", 1)]
    finally:
        await reopened.aclose()
