-- A batch-API task's progress events carry its batch counts, as a read of the task does
-- (0010 made the events before embedding_batches existed in 0011).

CREATE OR REPLACE FUNCTION embedd_task_event() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF NEW.embedding_strategy = 'batch' THEN  -- the batch counts a task read shows (store/tasks.py)
        body := body || (
            SELECT jsonb_build_object(
                'batches_submitted', count(*) FILTER (WHERE e.state IN ('submitted', 'written')),
                'batches_completed', count(*) FILTER (WHERE e.state = 'written'),
                'batch_rows_submitted',
                    coalesce(sum(cardinality(e.keys)) FILTER (WHERE e.state IN ('submitted', 'written')), 0),
                'batch_rows_completed', coalesce(sum(cardinality(e.keys)) FILTER (WHERE e.state = 'written'), 0))
              FROM embedding_batches e WHERE e.task_id = NEW.id);
    END IF;
    PERFORM embedd_record_event(NEW.target_id, seq, 'progress',
        concat_ws(' ', 'progress', NEW.id, NEW.status, NEW.phase), body);
    RETURN NULL;
END $$;
