-- A task attempt that failed and will be retried waits before the next claim: `not_before`.
-- Without it a database restarting for a few seconds used up every attempt at once (each
-- retry was claimed the moment the previous one failed).

ALTER TABLE tasks ADD COLUMN not_before timestamptz;
