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

    grpc_host: str = "0.0.0.0"  # noqa: S104 - a server listens on all interfaces by default
    grpc_port: int = 50051
    # Seconds in-flight RPCs get to finish on SIGTERM before they are cancelled.
    shutdown_grace_s: float = 10.0

    # AES-256-GCM key for secrets at rest, base64 (32 bytes). Without it, `secret_key_file`
    # is read (the dev stack generates one under .embedd/).
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None

    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    # Connection tests and user-database calls.
    connect_timeout_s: float = 10.0
    # Total time of one HTTP request to an embedding provider.
    provider_timeout_s: float = 60.0


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (tests, dev stack)."""
    return Settings(**overrides)  # type: ignore[arg-type]
