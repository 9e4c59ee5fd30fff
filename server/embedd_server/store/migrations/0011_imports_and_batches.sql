-- Bring your own vectors, and fills through a provider's batch API (docs/import.md,
-- docs/batch.md).
--
-- A task may choose its own embedding strategy (NULL: the vector table's). What a fill
-- imported and what it sent through the batch API are counted on the task and on the table.

ALTER TABLE tasks
    ADD COLUMN embedding_strategy text CHECK (embedding_strategy IN ('standard', 'batch')),
    ADD COLUMN rows_imported      bigint NOT NULL DEFAULT 0,
    ADD COLUMN batch_tokens       bigint NOT NULL DEFAULT 0;

ALTER TABLE vector_tables
    ADD COLUMN rows_imported bigint NOT NULL DEFAULT 0,
    ADD COLUMN batch_tokens  bigint NOT NULL DEFAULT 0;

-- One provider batch of a batch-strategy fill: the rows it embeds (keys, and the md5 of each
-- row's text as uploaded), then the provider's ids as they come. Every change is written in
-- the transaction that checks the task's lease (store/embedding_batches.py), so a restart or
-- a takeover finds each batch exactly where it was and submits nothing twice.
CREATE TABLE embedding_batches (
    task_id          text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq              integer NOT NULL,
    -- prepared: rows chosen, nothing sent; uploaded: the input file exists; submitted: the
    -- provider's batch exists; written: its vectors are stored (the end).
    state            text NOT NULL CHECK (state IN ('prepared', 'uploaded', 'submitted', 'written')),
    keys             text[] NOT NULL,
    text_hashes      text[],
    requests         integer NOT NULL DEFAULT 0,
    input_file_id    text,
    batch_id         text,
    -- The provider's status (validating, in_progress, finalizing, completed, failed,
    -- expired, cancelling, cancelled) and its request counts, as last polled.
    provider_status  text,
    completed_requests integer NOT NULL DEFAULT 0,
    failed_requests  integer NOT NULL DEFAULT 0,
    -- Submissions of this batch: a batch the provider refused for its queue limit is
    -- submitted again (with the same input file) once others have finished.
    submissions      integer NOT NULL DEFAULT 0,
    tokens           bigint NOT NULL DEFAULT 0,
    rows_written     integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (task_id, seq)
);
