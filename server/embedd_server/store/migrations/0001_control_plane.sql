-- Control plane: organisations, environments, API keys, connections, embedding providers,
-- and the vector tables that reference them (filled in by the vector-table issue).
-- Timestamps keep full precision (ordering, cursors); the API prints whole seconds.

CREATE TABLE orgs (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    tier        text NOT NULL DEFAULT 'free',
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE environments (
    id          text PRIMARY KEY,
    org_id      text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name        text NOT NULL,
    is_default  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (org_id, name)
);
CREATE UNIQUE INDEX environments_one_default ON environments (org_id) WHERE is_default;

CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    org_id       text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name         text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE,          -- SHA-256 of the secret; the secret is never stored
    key_prefix   text NOT NULL,
    permission   text NOT NULL CHECK (permission IN ('full', 'read_only')),
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE INDEX api_keys_org ON api_keys (org_id, created_at DESC, id DESC);

CREATE TABLE connections (
    id               text PRIMARY KEY,
    org_id           text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    env_id           text NOT NULL REFERENCES environments (id),
    name             text NOT NULL,
    provider         text NOT NULL,
    mode             text NOT NULL CHECK (mode IN ('platform', 'managed')),
    credentials_enc  bytea NOT NULL,              -- AES-256-GCM, bound to the row id
    status           text NOT NULL DEFAULT 'created' CHECK (status IN ('created', 'connected', 'error')),
    last_tested_at   timestamptz,
    last_test_failure text,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX connections_env ON connections (env_id, created_at DESC, id DESC);

CREATE TABLE embedding_providers (
    id             text PRIMARY KEY,
    org_id         text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    env_id         text NOT NULL REFERENCES environments (id),
    name           text NOT NULL,
    provider       text NOT NULL CHECK (provider IN ('openai', 'gemini', 'voyage', 'local')),
    default_model  text NOT NULL,
    base_url       text,
    api_key_enc    bytea,                          -- AES-256-GCM, bound to the row id
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX embedding_providers_env ON embedding_providers (env_id, created_at DESC, id DESC);

CREATE TABLE vector_tables (
    id                     text PRIMARY KEY,
    org_id                 text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    env_id                 text NOT NULL REFERENCES environments (id),
    name                   text NOT NULL,
    connection_id          text NOT NULL REFERENCES connections (id),
    embedding_provider_id  text NOT NULL REFERENCES embedding_providers (id),
    spec                   jsonb NOT NULL,
    sync_status            text NOT NULL DEFAULT 'pending',
    platform_vector_ref    text,
    created_at             timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX vector_tables_env ON vector_tables (env_id, created_at DESC, id DESC);
CREATE INDEX vector_tables_connection ON vector_tables (connection_id);
CREATE INDEX vector_tables_provider ON vector_tables (embedding_provider_id);
