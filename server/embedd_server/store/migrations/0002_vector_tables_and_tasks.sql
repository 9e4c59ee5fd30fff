-- Vector tables get their sync bookkeeping; tasks are durable, leased, resumable work.

ALTER TABLE vector_tables
    ADD COLUMN synced_rows    bigint NOT NULL DEFAULT 0,
    ADD COLUMN total_rows     bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_synced_at timestamptz,
    ADD COLUMN last_error     text,
    ADD COLUMN last_error_at  timestamptz,
    ADD COLUMN updated_at     timestamptz NOT NULL DEFAULT clock_timestamp();

CREATE TABLE tasks (
    id                text PRIMARY KEY,
    org_id            text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    task_type         text NOT NULL CHECK (task_type IN ('backfill', 'rebackfill', 'sync')),
    target_id         text NOT NULL REFERENCES vector_tables (id) ON DELETE CASCADE,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    priority          integer NOT NULL DEFAULT 0,
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 3,
    last_error        text,
    -- The resume point: last primary key committed to the vectors, and the counters with it.
    last_processed_pk text,
    rows_processed    bigint NOT NULL DEFAULT 0,
    rows_total        bigint NOT NULL DEFAULT 0,
    rows_failed       bigint NOT NULL DEFAULT 0,
    -- Leases: the process working on the task, and until when its claim holds.
    lease_owner       text,
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX tasks_org ON tasks (org_id, created_at DESC, id DESC);
CREATE INDEX tasks_claimable ON tasks (priority DESC, created_at) WHERE status IN ('pending', 'running');
-- At most one backfill or re-backfill queued or running per vector table.
CREATE UNIQUE INDEX tasks_one_fill ON tasks (target_id)
    WHERE status IN ('pending', 'running') AND task_type IN ('backfill', 'rebackfill');

-- Rows that failed for good (e.g. the provider rejected the input), reported with the task.
CREATE TABLE task_failures (
    task_id   text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    pk_value  text NOT NULL,
    error     text NOT NULL,
    PRIMARY KEY (task_id, pk_value)
);
