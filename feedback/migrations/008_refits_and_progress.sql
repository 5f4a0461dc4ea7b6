-- The refit ladder and the recovery check make decisions of a new kind, "refit" (a planned step of an
-- episode of change, trained from its change point), and a change seen early asks the model pool first
-- ("pool": score former champions on the rows since the change, no training; its outcome "unchanged"
-- when none beats the champion); a training's progress is kept where `pitstop models show` can read
-- it; and the frozen held-out sets (retrain_worker/holdout.py).

ALTER TABLE retrain_decisions DROP CONSTRAINT retrain_decisions_kind_check;
ALTER TABLE retrain_decisions ADD CONSTRAINT retrain_decisions_kind_check
    CHECK (kind IN ('calendar', 'drift', 'performance', 'volume', 'manual', 'detector', 'refit', 'pool'));
ALTER TABLE retrain_outcomes DROP CONSTRAINT retrain_outcomes_outcome_check;
ALTER TABLE retrain_outcomes ADD CONSTRAINT retrain_outcomes_outcome_check
    CHECK (outcome IN ('candidate', 'rejected', 'failed', 'unchanged'));

CREATE TABLE retrain_progress (
    trigger_id   text PRIMARY KEY,
    model_name   text NOT NULL,
    worker       text,                  -- host:pid of the worker training it
    step         text NOT NULL,         -- the latest step: loading, training, evaluating, registering, done
    detail       text NOT NULL,         -- its sentence ("120,000 rows loaded")
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX retrain_progress_model ON retrain_progress (model_name, updated_at);
COMMENT ON TABLE retrain_progress IS
    'The latest step of each training (wall clock), written as it goes; `pitstop models show M` prints the running ones.';

CREATE TABLE holdout_sets (
    holdout_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_name      text NOT NULL,
    created_at      timestamptz NOT NULL,      -- event time: the cutoff of the retrain that froze it
    trigger_id      text,
    window_start    timestamptz NOT NULL,      -- prediction time of its first and last rows
    window_end      timestamptz NOT NULL,
    prediction_ids  text[] NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX holdout_sets_model ON holdout_sets (model_name, holdout_id);
COMMENT ON TABLE holdout_sets IS
    'Frozen held-out sets: the predictions no model trains on after the set is frozen; the newest per model is gated on (its age is created_at to the retrain''s cutoff).';
