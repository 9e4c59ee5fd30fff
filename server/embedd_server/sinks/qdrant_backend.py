"""The process's one Qdrant: embedded local mode (a folder), or a server / cluster by URL.

qdrant-client's local mode is a Python engine, not Qdrant itself (docs/managed-mode.md): its
"async" methods do not yield, a long call would block the event loop, and it holds an
exclusive lock on its folder (one process per folder). So local mode runs every call on one
worker thread of its own (calls are serialised, the loop stays free), and a second process on
the same folder is refused with a message that says what to do. A server URL uses the
asynchronous gRPC/HTTP client as is.

Local mode keeps each collection's points in SQLite and commits every point on its own; with
SQLite's defaults (rollback journal, synchronous=FULL) each commit waits for the disk, and a
load ran at ~580 points/s. Each collection's database is switched to WAL with
synchronous=NORMAL, which measured ~6,300 points/s (docs/managed-mode.md has the numbers and
what it means for durability: a crashed or killed process loses nothing; a power cut may lose
the last commits, which the next sync cycle's diff stores again).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qdrant_client import AsyncQdrantClient, QdrantClient


class QdrantUnavailable(RuntimeError):
    """Qdrant could not be opened; the message says what to do."""


class QdrantBackend:
    def __init__(
        self, *, path: str | None = None, url: str | None = None, api_key: str | None = None
    ) -> None:
        if (path is None) == (url is None):
            raise ValueError("give exactly one of path (embedded local mode) and url (a Qdrant server)")
        self.location = url or f"local:{path}"
        self._remote: AsyncQdrantClient | None = None
        self._local: QdrantClient | None = None
        self._executor: ThreadPoolExecutor | None = None
        if url is not None:
            self._remote = AsyncQdrantClient(url=url, api_key=api_key)
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._local = QdrantClient(path=path)
        except RuntimeError as exc:
            if "already accessed" not in str(exc):
                raise
            raise QdrantUnavailable(
                f"The embedded Qdrant folder {path} is in use by another process. Embedded local "
                "mode serves one process per folder: give each server its own EMBEDD_QDRANT_PATH, "
                "or run several replicas against a Qdrant server (EMBEDD_QDRANT_URL)."
            ) from exc
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-local")
        self._tune_local_storage()

    @property
    def is_local(self) -> bool:
        return self._local is not None

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """`client.<method>(*args, **kwargs)`: awaited on a server, on the worker thread locally."""
        if self._remote is not None:
            return await getattr(self._remote, method)(*args, **kwargs)
        assert self._local is not None and self._executor is not None
        bound = functools.partial(_quiet, getattr(self._local, method), *args, **kwargs)
        result = await asyncio.get_running_loop().run_in_executor(self._executor, bound)
        if method == "create_collection":
            await asyncio.get_running_loop().run_in_executor(self._executor, self._tune_local_storage)
        return result

    def _tune_local_storage(self) -> None:
        """WAL and synchronous=NORMAL for every collection's SQLite file (module doc). This
        reaches into qdrant-client's local engine (`QdrantLocal.collections[...].storage`);
        tests/unit/test_qdrant_backend.py fails if a new version moves it."""
        for db in self.local_databases():
            db.execute("PRAGMA journal_mode=WAL")  # a no-op when it already is
            db.execute("PRAGMA synchronous=NORMAL")

    def local_databases(self) -> list[sqlite3.Connection]:
        """The SQLite connection of each collection of the local engine."""
        engine = getattr(self._local, "_client", None)
        found = []
        for collection in getattr(engine, "collections", {}).values():
            db = getattr(getattr(collection, "storage", None), "storage", None)
            if isinstance(db, sqlite3.Connection):
                found.append(db)
        return found

    async def aclose(self) -> None:
        if self._remote is not None:
            await self._remote.close()
        if self._local is not None:
            assert self._executor is not None
            await asyncio.get_running_loop().run_in_executor(self._executor, self._local.close)
            self._executor.shutdown(wait=True)
            self._local = None


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    # Local mode warns that payload indexes have no effect and about collections over 20,000
    # points; both are documented (docs/managed-mode.md), neither is actionable per call.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)
