-- The retrain worker's intake: the trigger ids it has seen, and how often handling one raised (after the
-- worker's limit it is recorded as failed). Whether a trigger is done is its row in retrain_outcomes.
CREATE TABLE IF NOT EXISTS retrain_intake (
    trigger_id        text PRIMARY KEY,
    model_name        text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text
);
-- (a development database may hold an earlier form of the table)
ALTER TABLE retrain_intake ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
ALTER TABLE retrain_intake ADD COLUMN IF NOT EXISTS last_error text;
