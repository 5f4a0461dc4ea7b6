-- A ramp started while its champion was confirmed degraded (a fired drift or performance decision of the episode
-- the challenger answers) and its shadow showed the challenger significantly better: the sentence that says so.
-- Such a ramp advances on evidence alone (each step's statistical minimum, no rollback rule broken), without the
-- configured dwells: waiting costs the degraded champion's error on most of the traffic. NULL: the cautious path.

ALTER TABLE rollouts ADD COLUMN urgency text;
COMMENT ON COLUMN rollouts.urgency IS 'why the ramp is urgent (champion degraded, shadow gain significant); NULL: dwells apply';

-- One episode, one ramp: a ramp whose challenger answers an earlier change than a candidate that has since passed
-- its shadow ends 'superseded' (the challenger archived, not rejected: nothing showed it harmful).
ALTER TABLE rollouts DROP CONSTRAINT rollouts_state_check;
ALTER TABLE rollouts ADD CONSTRAINT rollouts_state_check CHECK (state IN ('ramping', 'paused', 'holding', 'promoted',
    'rolled_back', 'kept_champion', 'abandoned', 'superseded'));
ALTER TABLE rollout_events DROP CONSTRAINT rollout_events_kind_check;
ALTER TABLE rollout_events ADD CONSTRAINT rollout_events_kind_check CHECK (kind IN ('shadow_started',
    'shadow_waiting', 'shadow_passed', 'shadow_failed', 'shadow_expired', 'shadow_escalated', 'abandoned', 'step',
    'paused', 'resumed', 'holding', 'promoted', 'rolled_back', 'kept_champion', 'latch_cleared', 'waiting',
    'superseded'));
