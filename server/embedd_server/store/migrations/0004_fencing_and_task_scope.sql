-- Fencing tokens for leases, and tasks scoped by environment like every other resource.
--
-- A lease is (owner, epoch): the epoch grows on every claim, so a process whose lease lapsed
-- and was claimed again - even under the same owner string - no longer matches, and every
-- write made on behalf of a task or a sync cycle checks both in the transaction it fences.

ALTER TABLE tasks ADD COLUMN lease_epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE vector_tables ADD COLUMN sync_lease_epoch bigint NOT NULL DEFAULT 0;

ALTER TABLE tasks ADD COLUMN env_id text REFERENCES environments (id);
UPDATE tasks t SET env_id = v.env_id FROM vector_tables v WHERE v.id = t.target_id;
ALTER TABLE tasks ALTER COLUMN env_id SET NOT NULL;
CREATE INDEX tasks_env ON tasks (env_id, created_at DESC, id DESC);
