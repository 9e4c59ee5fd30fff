-- The ANN index as its own phase after a fill: the table is synced (queryable, exactly) once
-- every row is written, and `index_status` says when the index is ready; the build's share
-- done while it runs (pg_stat_progress_create_index) is the fill task's `phase_progress`.

ALTER TABLE vector_tables
    ADD COLUMN index_status text CHECK (index_status IN ('building', 'ready', 'none'));

-- The share of a task's phase done, where it can be measured (the index build): a change of
-- it is a progress event, coalesced with the one before like the row counts.
ALTER TABLE tasks ADD COLUMN phase_progress double precision;

DROP TRIGGER tasks_event_update ON tasks;
CREATE TRIGGER tasks_event_update AFTER UPDATE ON tasks
    FOR EACH ROW
    WHEN ((OLD.status, OLD.phase, OLD.rows_processed, OLD.rows_total, OLD.rows_failed, OLD.attempts,
           OLD.last_error, OLD.rows_skipped, OLD.phase_progress)
          IS DISTINCT FROM
          (NEW.status, NEW.phase, NEW.rows_processed, NEW.rows_total, NEW.rows_failed, NEW.attempts,
           NEW.last_error, NEW.rows_skipped, NEW.phase_progress))
    EXECUTE FUNCTION embedd_task_event();

-- Tables filled before this migration built their index inside the fill: HNSW (vector up to
-- 2,000 dimensions, halfvec up to 4,000), or none above (domain/vector_tables.py).
UPDATE vector_tables SET index_status =
    CASE WHEN (spec->>'embedding_dimensions')::int <= 4000 THEN 'ready' ELSE 'none' END
 WHERE last_synced_at IS NOT NULL;
