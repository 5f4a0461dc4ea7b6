-- The feedback store: predictions and outcomes as facts, the current label per prediction,
-- dead letters, and the analyst views. Applied inside the configured schema (search_path).

CREATE TABLE predictions (
    prediction_id    text PRIMARY KEY,
    model_name       text NOT NULL,
    model_version    text NOT NULL,
    predicted_at     timestamptz NOT NULL,
    features         jsonb NOT NULL,
    prediction       jsonb NOT NULL,
    probabilities    jsonb,
    score            double precision,
    routing_key      text,
    segment          jsonb,
    latency_ms       double precision,
    error            text,
    ingested_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX predictions_model_time ON predictions (model_name, model_version, predicted_at);
COMMENT ON TABLE predictions IS
    'One row per prediction_id, first arrival wins; redelivered or duplicated predictions change nothing.';

-- Every outcome ever received, as history: a correction is a new row with a later observed_at.
CREATE TABLE outcomes (
    prediction_id    text NOT NULL,
    observed_at      timestamptz NOT NULL,
    label            jsonb NOT NULL,
    source           text,
    ingested_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (prediction_id, observed_at, label)
);
COMMENT ON TABLE outcomes IS
    'Outcome history. Identical outcomes (same prediction_id, observed_at, label) are stored once.';

-- The label that counts for each prediction: the outcome with the latest observed_at, ties
-- broken by the larger label in jsonb order, so every arrival order ends in the same row.
-- Kept apart from predictions because an outcome may arrive before its prediction.
CREATE TABLE current_labels (
    prediction_id    text PRIMARY KEY,
    label            jsonb NOT NULL,
    observed_at      timestamptz NOT NULL,
    source           text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dead_letters (
    source_topic     text NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint NOT NULL,
    element_index    integer NOT NULL,
    key              bytea,
    raw              bytea NOT NULL,
    reason           text NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_topic, source_partition, source_offset, element_index)
);
COMMENT ON TABLE dead_letters IS
    'Inputs that broke the contract. element_index is the position in a batch message, -1 for the whole message.';

CREATE VIEW feedback AS
SELECT
    p.prediction_id,
    p.model_name,
    p.model_version,
    p.predicted_at,
    p.features,
    p.prediction,
    l.label,
    l.observed_at                    AS labeled_at,
    l.observed_at - p.predicted_at   AS label_delay,
    p.probabilities,
    p.score,
    p.routing_key,
    p.segment,
    p.latency_ms,
    p.error,
    CASE WHEN jsonb_typeof(p.prediction) = 'number' THEN (p.prediction)::float8 END AS prediction_value,
    CASE WHEN jsonb_typeof(l.label) = 'number' THEN (l.label)::float8 END          AS label_value
FROM predictions p
LEFT JOIN current_labels l USING (prediction_id);
COMMENT ON VIEW feedback IS
    'One row per prediction with its current label (NULL until an outcome arrives).';

CREATE VIEW label_coverage AS
SELECT
    model_name,
    model_version,
    count(*)                                   AS predictions,
    count(label)                               AS labeled,
    count(label)::float8 / count(*)            AS coverage,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY label_delay) AS median_label_delay
FROM feedback
GROUP BY model_name, model_version;
COMMENT ON VIEW label_coverage IS 'Share of each model version''s predictions that have a label.';

-- Outcomes whose prediction has not (yet) arrived.
CREATE VIEW unmatched_outcomes AS
SELECT l.* FROM current_labels l
WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.prediction_id = l.prediction_id);
