"""Settings. This module alone reads the environment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the server, from `EMBEDD_*` variables (or a `.env` file)."""

    model_config = SettingsConfigDict(env_prefix="EMBEDD_", extra="ignore")

    # Control-plane PostgreSQL. `DATABASE_URL` is accepted as the conventional name.
    database_url: SecretStr = Field(
        validation_alias=AliasChoices("EMBEDD_DATABASE_URL", "DATABASE_URL"),
    )
    db_pool_min: int = 1
    db_pool_max: int = 10
    # A control-plane transaction idle this long (its process stalled inside it) is ended by
    # PostgreSQL, so its row locks cannot keep a task from being taken over (store/db.py).
    db_idle_in_transaction_timeout_s: float = 5.0

    grpc_host: str = "0.0.0.0"  # noqa: S104 - a server listens on all interfaces by default
    grpc_port: int = 50051
    # Seconds in-flight RPCs get to finish on SIGTERM before they are cancelled.
    shutdown_grace_s: float = 10.0
    # The gRPC server's own limits on one request. Envoy's are smaller (envoy/envoy.yaml:
    # 1 MiB of JSON body, 16 KiB of request headers), so a REST request over them gets
    # Envoy's 413/431 first; these bound gRPC clients and what a maximal REST request becomes
    # after transcoding (up to ~5.5x the JSON size, and the path twice). docs/limits.md.
    grpc_max_message_bytes: int = 8 * 1024 * 1024
    grpc_max_metadata_bytes: int = 64 * 1024

    # AES-256-GCM key for secrets at rest, base64 (32 bytes). Without it, `secret_key_file`
    # is read (the dev stack generates one under .embedd/).
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None

    # Request rate limits per organisation (its tier's, or its own override; docs/limits.md).
    rate_limits_enabled: bool = True

    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    # Connection tests and user-database calls.
    connect_timeout_s: float = 10.0
    # Where users' connections (their PostgreSQL) and embedding providers (`base_url`) may
    # point, checked on every resolved address and every redirect (network_policy.py).
    # `permissive` allows everything (self-hosted, and the dev stack's loopback databases);
    # `public_only` refuses private, loopback, link-local and other non-public addresses
    # (the cloud metadata service, the control plane, internal services) except those in
    # `network_allow`: comma-separated CIDRs, IP addresses and host names. A hosted,
    # multi-tenant deployment should run `public_only`.
    network_policy: Literal["permissive", "public_only"] = "permissive"
    network_allow: str = ""
    # Total time of one HTTP request to an embedding provider.
    provider_timeout_s: float = 60.0
    # Attempts per provider request for transient failures (5xx, timeouts, refused
    # connections), with exponential backoff between them (0.5 s doubling, up to 30 s):
    # the default 6 ride out ~15 s of an outage before the request fails as `unreachable`
    # (a task attempt then fails, and is retried: engine_retry_backoff_s).
    provider_max_attempts: int = 6

    # The sync engine. Rows read per chunk (one keyset query, one COPY, one checkpoint).
    engine_chunk_rows: int = 1000
    # Chunks being embedded at once per task (the embedder adds its own request concurrency).
    engine_inflight_chunks: int = 4
    # Tasks one process works on at once.
    engine_max_tasks: int = 4
    # A claimed task is another process's to take over when not renewed for this long.
    engine_lease_s: float = 30.0
    engine_poll_s: float = 0.5
    # A failed task attempt (a database or provider unreachable, an unexpected error) is
    # retried after this many seconds, 4x longer after each further failure, up to the
    # task's max_attempts (3): 5 s rides out 25 s of an outage before the task fails
    # (docs/facts.md, "Faults").
    engine_retry_backoff_s: float = 5.0
    # Run the engine in this process (a replica may serve the API only).
    engine_enabled: bool = True
    # A failing sync is retried with exponential backoff up to this many seconds.
    sync_max_backoff_s: float = 600.0
    # cdc mode: a full comparison (finds deletes and late commits) at least this often.
    cdc_sweep_s: float = 600.0
    # Fills with embedding_strategy "batch" (docs/batch.md): rows per provider batch (OpenAI
    # takes up to 50,000 inputs; the vectors of one batch are held in memory while written),
    # input file size (OpenAI: 200 MB), batches in flight per fill, inputs per request of a
    # file, and how often a waiting fill polls its batches.
    batch_rows_per_batch: int = Field(default=10_000, ge=1, le=50_000)
    batch_max_file_bytes: int = Field(default=150 * 1024 * 1024, ge=1024, le=200 * 1024 * 1024)
    batch_max_in_flight: int = Field(default=10, ge=1)
    batch_inputs_per_request: int = Field(default=512, ge=1, le=2048)
    batch_poll_s: float = Field(default=60.0, gt=0)
    # maintenance_work_mem for HNSW builds in the user's database ("" keeps the server's).
    index_maintenance_work_mem: str = "1GB"
    # A filtered query whose filter selects at most this many rows ranks them exactly;
    # above, it searches the HNSW index (docs/facts.md, "Query paths").
    query_exact_threshold: int = 5_000

    # Watch streams (docs/watch.md): an idle one gets a heartbeat (WatchTask: its latest state
    # again) this often, well inside Envoy's idle timeout of their routes (envoy/envoy.yaml).
    watch_heartbeat_s: float = 5.0

    # Managed mode's Qdrant: a folder for the embedded local mode (one server process per
    # folder; fine for a single replica and small collections), or the URL (and API key) of a
    # Qdrant server or cluster (several replicas, large collections). Neither: managed mode
    # answers 503 managed_mode_unavailable. docs/managed-mode.md says when to switch.
    qdrant_path: Path | None = None
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (tests, dev stack)."""
    return Settings(**overrides)  # type: ignore[arg-type]
