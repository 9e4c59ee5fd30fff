"""Control-plane records as the domain sees them (no transport, no driver types)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Generic, TypeVar

from embedd_server.domain.vector_tables import VectorTableSpec

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the API key's organisation, permission and the chosen environment."""

    org_id: str
    key_id: str
    permission: str  # "full" | "read_only"
    env_id: str
    # The organisation's request limit (its override, else its tier's); None: unlimited.
    requests_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class Environment:
    id: str
    org_id: str
    name: str
    is_default: bool
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    org_id: str
    name: str
    key_prefix: str
    permission: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Connection:
    id: str
    org_id: str
    env_id: str
    name: str
    provider: str
    mode: str
    status: str
    created_at: dt.datetime
    last_tested_at: dt.datetime | None
    # Encrypted credentials JSON; decrypt only where the database is actually reached.
    credentials_enc: bytes


@dataclass(frozen=True, slots=True)
class LearnedLimits:
    """What the embedder learned about a server whose limits are not set, remembered with its
    provider record so that the next process starts from it."""

    max_inputs: int | None = None  # a batch size a refusal taught (providers/batching.InputLimit)
    concurrency: int | None = None  # the window after the last congestion event (AIMD)


@dataclass(frozen=True, slots=True)
class EmbeddingProvider:
    id: str
    org_id: str
    env_id: str
    name: str
    provider: str
    default_model: str
    base_url: str | None
    created_at: dt.datetime
    api_key_enc: bytes | None
    # The vector size of `default_model` when the catalog does not know it (a model of an
    # OpenAI-compatible server); see domain/catalog.resolve_model.
    dimensions: int | None = None
    # The user's settings for the server; None = learned (see `learned`).
    max_inputs_per_request: int | None = None
    max_concurrency: int | None = None
    learned: LearnedLimits = LearnedLimits()

    def declared_dimensions(self, model: str) -> int | None:
        """The size the record declares for `model` (only its default model has one)."""
        return self.dimensions if model == self.default_model else None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str


@dataclass(frozen=True, slots=True)
class VectorTable:
    id: str
    org_id: str
    env_id: str
    name: str
    connection_id: str
    embedding_provider_id: str
    spec: VectorTableSpec
    sync_status: str
    platform_vector_ref: str
    created_at: dt.datetime
    synced_rows: int
    total_rows: int
    last_synced_at: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None
    # The spec a re-backfill is building; it replaces `spec` at the swap.
    pending_spec: VectorTableSpec | None = None
    # Seconds since last_synced_at by the control plane's clock (never negative), when read.
    staleness_s: float | None = None
    # Source rows not stored because the organisation's vector budget is used up (managed).
    rows_skipped: int = 0
    # The ANN index after a fill: "building" (queryable meanwhile), "ready", "none"; and while
    # building, the share done.
    index_status: str | None = None
    index_progress: float | None = None
    # Rows the last fill imported; tokens the fills sent through the provider's batch API.
    rows_imported: int = 0
    batch_tokens: int = 0


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """A batch-strategy fill's batches (docs/batch.md): submitted and completed, and their rows."""

    submitted: int = 0
    completed: int = 0
    rows_submitted: int = 0
    rows_completed: int = 0


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    org_id: str
    env_id: str
    task_type: str
    target_id: str
    status: str
    attempts: int
    max_attempts: int
    last_error: str | None
    last_processed_pk: str | None
    rows_processed: int
    rows_total: int
    rows_failed: int
    lease_owner: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    # Rows not stored because the organisation's vector budget was used up (managed mode).
    rows_skipped: int = 0
    # The strategy the request chose (None: the vector table's), and what the fill imported
    # and sent through the provider's batch API.
    embedding_strategy: str | None = None
    rows_imported: int = 0
    batch_tokens: int = 0
    batches: BatchProgress | None = None
    # What a running task is doing (reading, embedding, writing, indexing, swapping), and the
    # share of it done where that is measured (indexing).
    phase: str | None = None
    phase_progress: float | None = None

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")
