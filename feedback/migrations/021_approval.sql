-- A person's approval before a ramp (issue 18): with `promotion = "approval"`, a candidate that passed its shadow
-- ramps only once `pitstop approve` recorded it; `pitstop reject` records why it never will (the version becomes
-- `rejected`). One row a version: its latest verdict, who gave it and why; each command is also an event of the
-- version's trail (`approved`, `rejected`, and the controller's `waiting` when a passed shadow waits for a person).
CREATE TABLE approvals (
    model_name   text NOT NULL,
    version      text NOT NULL,
    verdict      text NOT NULL CHECK (verdict IN ('approved', 'rejected')),
    actor        text NOT NULL,
    reason       text,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
);
COMMENT ON TABLE approvals IS 'A person''s verdict on a candidate waiting to ramp (promotion = "approval").';

ALTER TABLE rollout_events DROP CONSTRAINT rollout_events_kind_check;
ALTER TABLE rollout_events ADD CONSTRAINT rollout_events_kind_check CHECK (kind IN ('shadow_started',
    'shadow_waiting', 'shadow_passed', 'shadow_failed', 'shadow_expired', 'shadow_escalated', 'abandoned', 'step',
    'paused', 'resumed', 'holding', 'promoted', 'rolled_back', 'kept_champion', 'latch_cleared', 'waiting',
    'superseded', 'approved', 'rejected'));
