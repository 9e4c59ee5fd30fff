"""One behavioural suite over both stores (as qdrant-client runs its tests against the local
and the remote engine): a vector table is made the same way in either mode, and what a store
holds is read back the same way - platform mode's pgvector table in the user's database,
managed mode's Qdrant collection through the session server's own Qdrant."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
from embedd_server import app

from tests.conftest import UserDb
from tests.harness import MODES, Org

__all__ = ["MODES", "StoreView", "Stored", "connection"]


async def connection(org: Org, user_db: UserDb, mode: str = "platform") -> tuple[str, str]:
    """A connection to the user's database in `mode`, and a local embedding provider."""
    conn = await org.http(
        "POST",
        "/v1/providers/postgresql/connections",
        {"name": "product-db", "mode": mode, "credentials": user_db.credentials()},
    )
    emb = await org.http(
        "POST",
        "/v1/embedding-providers",
        {"name": "local", "provider": "local", "default_model": "local-lexical-384"},
    )
    assert conn.status_code == 200 and emb.status_code == 200, (conn.text, emb.text)
    return conn.json()["id"], emb.json()["id"]


@dataclass(frozen=True)
class Stored:
    """One stored vector, whichever store holds it."""

    text: str
    metadata: dict[str, Any]
    vector: np.ndarray[Any, np.dtype[np.float64]]


class StoreView:
    """Reads what a vector table's store holds, bypassing the service's query path."""

    def __init__(self, service: app.Service, user_db: UserDb, vt: dict[str, Any]) -> None:
        self.mode = vt["mode"]
        self._service = service
        self._dsn = user_db.owner_dsn
        self.ref = vt["platform_vector_ref"] or vt["managed_collection"]

    async def rows(self) -> dict[str, Stored]:
        return await (self._managed() if self.mode == "managed" else self._platform())

    async def text(self, pk: str) -> str | None:
        row = (await self.rows()).get(pk)
        return row.text if row else None

    async def has_text(self, pk: str, prefix: str) -> bool:
        text = await self.text(pk)
        return bool(text and text.startswith(prefix))

    async def _platform(self) -> dict[str, Stored]:
        conn = await asyncpg.connect(self._dsn)
        try:
            rows = await conn.fetch(
                f'SELECT pk_value, embedding::text AS e, metadata::text AS m, embedded_text FROM "{self.ref}"'
            )
        finally:
            await conn.close()
        return {
            r["pk_value"]: Stored(r["embedded_text"], json.loads(r["m"]), _vector(json.loads(r["e"])))
            for r in rows
        }

    async def _managed(self) -> dict[str, Stored]:
        qdrant = self._service.qdrant
        assert qdrant is not None, "the session server runs an embedded Qdrant"
        found: dict[str, Stored] = {}
        offset: Any = None
        while True:
            points, offset = await qdrant.call(
                "scroll", self.ref, limit=1000, offset=offset, with_payload=True, with_vectors=True
            )
            for p in points:
                payload = p.payload or {}
                found[payload["pk"]] = Stored(payload["text"], payload["metadata"], _vector(p.vector))
            if offset is None:
                return found

    async def collections(self) -> list[str]:
        """Managed mode: the table's collections (the alias's target and any leftover)."""
        qdrant = self._service.qdrant
        assert qdrant is not None
        listed = await qdrant.call("get_collections")
        return sorted(c.name for c in listed.collections if c.name.startswith(f"{self.ref}_v"))

    async def alias_target(self) -> str | None:
        qdrant = self._service.qdrant
        assert qdrant is not None
        aliases = await qdrant.call("get_aliases")
        return next((a.collection_name for a in aliases.aliases if a.alias_name == self.ref), None)


def _vector(values: Sequence[float] | Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.asarray(values, dtype=np.float64)
