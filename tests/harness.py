"""Shared test plumbing: a real PostgreSQL, the server in-process on port 0, a real Envoy,
and helpers that run the same call over gRPC and over REST."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from embedd_client import EmbeddClient, error_reason
from embedd_server import app
from embedd_server.domain.models import EmbeddingProvider
from embedd_server.providers.base import Embedder, EmbedResult, InputType

ROOT = Path(__file__).resolve().parent.parent
# The request limit of test organisations: tests measure the service, not a free tier's 25 rpm.
UNTHROTTLED = 10_000_000


@dataclass
class Org:
    """A fresh organisation with a full and a read_only key."""

    org_id: str
    key: str
    read_key: str
    grpc_target: str
    rest: httpx.AsyncClient

    def client(self, key: str | None = None, environment_id: str | None = None) -> EmbeddClient:
        return EmbeddClient(self.grpc_target, key or self.key, environment_id=environment_id)

    def headers(self, key: str | None = None, environment_id: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {key or self.key}"}
        if environment_id:
            h["X-Environment-Id"] = environment_id
        return h

    async def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        environment_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = {**self.headers(key, environment_id), **(headers or {})}
        return await self.rest.request(method, path, json=body, headers=all_headers)


async def grpc_error(call: Any) -> tuple[grpc.StatusCode, str, list[tuple[str, str]], str]:
    """Runs a call that must fail: (status, Embedd code, field violations, message)."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        reason, violations = error_reason(err)
        return err.code(), reason, violations, err.details() or ""
    raise AssertionError("the call succeeded but was expected to fail")


def rest_error(response: httpx.Response) -> tuple[int, str, dict[str, Any]]:
    """(HTTP status, Embedd code, error object) of a REST error response."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"}, body
    return response.status_code, body["error"]["code"], body["error"]


# A test that makes the server fail on purpose puts this in the exception's text; the session's
# log check (tests/conftest.py) accepts those tracebacks, and no other.
INJECTED = "failure injected by a test"


def unexpected_tracebacks(log_text: str) -> list[str]:
    """Tracebacks in a server log that no test asked for: each is a request (or a task) that
    made the server fail on its own side - hostile input must never get that far."""
    found = []
    for line in log_text.splitlines():
        if not line.startswith("{"):
            if "Traceback (most recent call last)" in line:  # a stdlib logger's traceback
                found.append(line)
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        text = record.get("exception") if isinstance(record, dict) else None
        if text and INJECTED not in text:
            last = text.strip().splitlines()[-1]
            found.append(f"{record.get('event')} [{record.get('method') or record.get('task_id')}]: {last}")
    return found


def random_secret_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def database_url_from_env() -> str | None:
    return os.environ.get("DATABASE_URL") or os.environ.get("EMBEDD_TEST_DATABASE_URL")


class _CountedEmbedder:
    def __init__(self, inner: Embedder, owner: Counting) -> None:
        self._inner = inner
        self._owner = owner

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def dimensions(self) -> int:
        return self._inner.dimensions

    async def embed(self, texts: Sequence[str], input_type: InputType) -> EmbedResult:
        self._owner.texts += len(texts)
        if self._owner.delay_s:
            await asyncio.sleep(self._owner.delay_s)
        return await self._inner.embed(texts, input_type)

    async def aclose(self) -> None:
        await self._inner.aclose()


class Counting:
    """Counts the texts a server embeds while installed on its embedder registry (provider
    calls, as the fakes count them); `delay_s` slows each call to interleave processes."""

    def __init__(self, service: app.Service, delay_s: float = 0.0) -> None:
        self.texts = 0
        self.delay_s = delay_s
        self._service = service
        self._original = service.embedders.get

    def __enter__(self) -> Counting:
        original = self._original

        def get(record: EmbeddingProvider, model: str, dims: int) -> Embedder:
            return _CountedEmbedder(original(record, model, dims), self)

        self._service.embedders.get = get  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self._service.embedders.get = self._original  # type: ignore[method-assign]
