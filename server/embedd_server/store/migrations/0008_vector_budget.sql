-- Managed mode's vector budget (the organisation's tier): rows a fill or a sync cycle did not
-- store because the budget was used up, on the task that skipped them and on the vector table
-- (shown in sync status with a warning).

ALTER TABLE tasks ADD COLUMN rows_skipped bigint NOT NULL DEFAULT 0;
ALTER TABLE vector_tables ADD COLUMN rows_skipped bigint NOT NULL DEFAULT 0;
