-- A rollback latch knows the episode of the version it holds back (the change point of the trigger it answered)
-- and whether the controller set it (a rule broken) or a person did (`pitstop rollback`). An automatic latch holds
-- that episode's candidates (its refits, its refreshes) and lets a candidate of a later episode shadow and ramp
-- (rollout.latch = "model": every candidate, as before); a person's latch holds every candidate.

ALTER TABLE rollback_latches ADD COLUMN change_point timestamptz;
ALTER TABLE rollback_latches ADD COLUMN automatic boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN rollback_latches.change_point IS 'the change point of the latched version''s trigger (its episode)';
COMMENT ON COLUMN rollback_latches.automatic IS 'set by a broken rollback rule (true) or by a person (false)';
