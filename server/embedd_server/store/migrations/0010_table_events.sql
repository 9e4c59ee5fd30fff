-- Pushed subscriptions (docs/watch.md). Every change a watcher can see becomes an event row,
-- numbered per vector table and written by triggers in the transaction that makes the change
-- (so an event exists exactly when its change committed), announced at commit by NOTIFY on
-- `embedd_events` with "<vector table id> <sequence>". Replicas read the rows; the NOTIFY
-- carries no state.

-- What a running task is doing (engine/backfill.py, engine/rebackfill.py set it).
ALTER TABLE tasks ADD COLUMN phase text
    CHECK (phase IN ('reading', 'embedding', 'writing', 'indexing', 'swapping'));

ALTER TABLE vector_tables
    -- The sequence of the table's latest event.
    ADD COLUMN event_sequence bigint NOT NULL DEFAULT 0,
    -- The counts of the last finished sync cycle (SyncLease.finish); each new value is an event.
    ADD COLUMN last_cycle jsonb;

CREATE TABLE vector_table_events (
    vector_table_id text NOT NULL REFERENCES vector_tables (id) ON DELETE CASCADE,
    sequence        bigint NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('progress', 'sync_cycle', 'status_change')),
    -- An event replaces the one right before it when both carry the same key (a task's
    -- progress while its status and phase stay the same, cycles that changed nothing): the
    -- history keeps the latest of such a run.
    coalesce_key    text,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (vector_table_id, sequence)
);

-- The history bound: the events of a table's last 1,000 sequence numbers are kept.
CREATE FUNCTION embedd_event_history() RETURNS bigint
    LANGUAGE sql IMMUTABLE AS 'SELECT 1000::bigint';

CREATE FUNCTION embedd_record_event(p_vt text, p_seq bigint, p_kind text, p_key text, p_payload jsonb)
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_key IS NOT NULL THEN
        DELETE FROM vector_table_events
         WHERE vector_table_id = p_vt AND sequence = p_seq - 1 AND coalesce_key = p_key;
    END IF;
    DELETE FROM vector_table_events
     WHERE vector_table_id = p_vt AND sequence <= p_seq - embedd_event_history();
    INSERT INTO vector_table_events (vector_table_id, sequence, kind, coalesce_key, payload)
    VALUES (p_vt, p_seq, p_kind, p_key, p_payload);
    PERFORM pg_notify('embedd_events', p_vt || ' ' || p_seq);
END $$;

-- A task's progress: its row as it is now (lease fields left out), and on its last change the
-- first 100 failed rows. Taking the next sequence locks the table row, in the order every
-- task lease already locks (task row, then table row).
CREATE FUNCTION embedd_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    seq  bigint;
    body jsonb;
BEGIN
    UPDATE vector_tables SET event_sequence = event_sequence + 1 WHERE id = NEW.target_id
        RETURNING event_sequence INTO seq;
    IF seq IS NULL THEN
        RETURN NULL;
    END IF;
    body := to_jsonb(NEW) - 'lease_owner' - 'lease_expires_at' - 'lease_epoch' - 'priority';
    IF NEW.status IN ('completed', 'failed') AND NEW.rows_failed > 0 THEN
        body := body || jsonb_build_object('failures', (
            SELECT coalesce(jsonb_agg(jsonb_build_array(f.pk_value, f.error) ORDER BY f.pk_value), '[]')
              FROM (SELECT pk_value, error FROM task_failures WHERE task_id = NEW.id
                    ORDER BY pk_value LIMIT 100) f));
    END IF;
    PERFORM embedd_record_event(NEW.target_id, seq, 'progress',
        concat_ws(' ', 'progress', NEW.id, NEW.status, NEW.phase), body);
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_event_insert AFTER INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION embedd_task_event();
-- Not on lease renewals: only what a watcher sees.
CREATE TRIGGER tasks_event_update AFTER UPDATE ON tasks
    FOR EACH ROW
    WHEN ((OLD.status, OLD.phase, OLD.rows_processed, OLD.rows_total, OLD.rows_failed, OLD.attempts,
           OLD.last_error, OLD.rows_skipped)
          IS DISTINCT FROM
          (NEW.status, NEW.phase, NEW.rows_processed, NEW.rows_total, NEW.rows_failed, NEW.attempts,
           NEW.last_error, NEW.rows_skipped))
    EXECUTE FUNCTION embedd_task_event();

-- A finished sync cycle and a change of status (or a swap, which may keep the status), in
-- that order. BEFORE: the row's own sequence moves with the change.
CREATE FUNCTION embedd_vector_table_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    seq     bigint := NEW.event_sequence;
    swapped boolean := OLD.pending_spec IS NOT NULL AND NEW.pending_spec IS NULL;
BEGIN
    IF NEW.last_cycle IS NOT NULL AND NEW.last_cycle IS DISTINCT FROM OLD.last_cycle THEN
        seq := seq + 1;
        PERFORM embedd_record_event(NEW.id, seq, 'sync_cycle',
            CASE WHEN (NEW.last_cycle->>'changed')::boolean THEN NULL ELSE 'idle cycle' END,
            NEW.last_cycle || jsonb_build_object('synced_rows', NEW.synced_rows, 'total_rows', NEW.total_rows));
    END IF;
    IF NEW.sync_status IS DISTINCT FROM OLD.sync_status OR swapped THEN
        seq := seq + 1;
        PERFORM embedd_record_event(NEW.id, seq, 'status_change', NULL, jsonb_build_object(
            'previous', OLD.sync_status, 'status', NEW.sync_status, 'swapped', swapped,
            'error', CASE WHEN NEW.sync_status = 'error' THEN NEW.last_error END));
    END IF;
    NEW.event_sequence := seq;
    RETURN NEW;
END $$;

CREATE TRIGGER vector_tables_event BEFORE UPDATE ON vector_tables
    FOR EACH ROW
    WHEN (OLD.sync_status IS DISTINCT FROM NEW.sync_status
          OR OLD.last_cycle IS DISTINCT FROM NEW.last_cycle
          OR (OLD.pending_spec IS NOT NULL AND NEW.pending_spec IS NULL))
    EXECUTE FUNCTION embedd_vector_table_event();

-- A deleted table: its watchers end (the hub finds the row gone).
CREATE FUNCTION embedd_vector_table_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('embedd_events', OLD.id || ' 0');
    RETURN NULL;
END $$;

CREATE TRIGGER vector_tables_deleted AFTER DELETE ON vector_tables
    FOR EACH ROW EXECUTE FUNCTION embedd_vector_table_deleted();
