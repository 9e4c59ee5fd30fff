-- Continuous sync: a per-table schedule and lease, backoff, a cdc cursor, and the spec a
-- re-backfill is building (it becomes `spec` at the atomic swap).

ALTER TABLE vector_tables
    ADD COLUMN next_sync_at           timestamptz,
    ADD COLUMN sync_lease_owner       text,
    ADD COLUMN sync_lease_expires_at  timestamptz,
    ADD COLUMN sync_failures          integer NOT NULL DEFAULT 0,
    ADD COLUMN sync_cursor            text,
    ADD COLUMN last_delete_sweep_at   timestamptz,
    ADD COLUMN pending_spec           jsonb;

CREATE INDEX vector_tables_due ON vector_tables (next_sync_at)
    WHERE sync_status IN ('synced', 'error');
