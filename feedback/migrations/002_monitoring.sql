-- Monitoring: reference profiles, window accumulators kept in step with the rows, river detector
-- state, and evaluation results. Needs PostgreSQL 18 (RETURNING old.*).

CREATE TABLE reference_profiles (
    model_name     text NOT NULL,
    model_version  text NOT NULL,
    source         text NOT NULL,
    n_rows         bigint NOT NULL,
    profile        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, model_version)
);
COMMENT ON TABLE reference_profiles IS
    'Per model version: the bins every monitored series is counted in and the reference counts; source says where the reference came from (an imported file or the first N predictions).';

-- The label whose contribution the window accumulators hold for this prediction (NULL: none
-- yet). Differs from label until the prediction is stored and the label counted.
ALTER TABLE current_labels ADD COLUMN counted_label jsonb;
CREATE INDEX current_labels_uncounted ON current_labels (prediction_id)
    WHERE counted_label IS DISTINCT FROM label;

-- Element-wise sum of two count arrays of one length.
CREATE FUNCTION add_counts(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i)
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;

-- Key-wise sum of two objects of exact integers; zero entries are dropped.
CREATE FUNCTION add_stats(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb)
    FROM (
        SELECT k, sum(v::numeric) AS v
        FROM (SELECT * FROM jsonb_each_text(a) UNION ALL SELECT * FROM jsonb_each_text(b)) AS e(k, v)
        GROUP BY k
    ) AS s
    WHERE v <> 0
$$;

-- Counts per bin of each series (feature, prediction, score, label, row count) per window of
-- predicted_at. segment is '*' for all traffic or 'attribute=value'.
CREATE TABLE window_counts (
    model_name     text NOT NULL,
    model_version  text NOT NULL,
    window_s       integer NOT NULL,
    segment        text NOT NULL,
    window_start   timestamptz NOT NULL,
    series         text NOT NULL,
    counts         bigint[] NOT NULL,
    PRIMARY KEY (model_name, model_version, window_s, segment, window_start, series)
);

-- Additive performance aggregates of the labelled predictions per window of predicted_at
-- (exact integers; non-counts are fixed point, see feedback/performance.py).
CREATE TABLE window_performance (
    model_name     text NOT NULL,
    model_version  text NOT NULL,
    window_s       integer NOT NULL,
    segment        text NOT NULL,
    window_start   timestamptz NOT NULL,
    stats          jsonb NOT NULL,
    PRIMARY KEY (model_name, model_version, window_s, segment, window_start)
);

-- river detectors on each version's per-event error stream, checkpointed with the batch.
CREATE TABLE detector_state (
    model_name     text NOT NULL,
    model_version  text NOT NULL,
    n_updates      bigint NOT NULL,
    state          bytea NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, model_version)
);

CREATE TABLE detector_events (
    model_name       text NOT NULL,
    model_version    text NOT NULL,
    detector         text NOT NULL,
    label_index      bigint NOT NULL,      -- the n-th error the detector saw (1-based)
    change_index     bigint,               -- where it places the change (ADWIN: start of the kept window)
    prediction_id    text NOT NULL,
    predicted_at     timestamptz NOT NULL,
    observed_at      timestamptz NOT NULL,
    error_mean_before double precision,
    error_mean_after  double precision,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, model_version, detector, label_index)
);
COMMENT ON TABLE detector_events IS
    'Early warnings: a river detector (ADWIN, Page-Hinkley) found a change in a version''s error stream, in label arrival order.';

CREATE TABLE monitor_results (
    model_name     text NOT NULL,
    model_version  text NOT NULL,
    segment        text NOT NULL,
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('drift', 'performance')),
    metric         text NOT NULL,
    feature        text NOT NULL,         -- '' for performance rows
    value          double precision,
    threshold      double precision,
    p_value        double precision,      -- drift: after Holm's correction
    ci_low         double precision,
    ci_high        double precision,
    status         text NOT NULL CHECK (status IN ('stable', 'watch', 'drift', 'ok', 'degraded', 'baseline', 'unjudged')),
    sample_size    bigint NOT NULL,
    label_coverage double precision,
    sentence       text NOT NULL,
    evaluated_at   timestamptz NOT NULL,  -- event time: the newest predicted_at of the version
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, model_version, segment, window_start, kind, metric, feature)
);
COMMENT ON TABLE monitor_results IS
    'The latest evaluation of each window: one row per metric and feature (drift) or metric (performance), with its threshold, status and a sentence that explains it.';

CREATE VIEW drift_latest AS
SELECT DISTINCT ON (model_name, model_version, segment, feature, metric)
    model_name, model_version, segment, feature, metric, window_start, window_end, value, threshold,
    p_value, status, sample_size, sentence, evaluated_at
FROM monitor_results
WHERE kind = 'drift'
ORDER BY model_name, model_version, segment, feature, metric, window_start DESC;
COMMENT ON VIEW drift_latest IS 'Per model version, segment, feature and metric: the newest window''s drift result.';

CREATE VIEW performance_by_window AS
SELECT model_name, model_version, segment, window_start, window_end, metric, value, ci_low, ci_high,
       threshold, status, sample_size, label_coverage, sentence, evaluated_at
FROM monitor_results
WHERE kind = 'performance'
ORDER BY model_name, model_version, segment, window_start, metric;
COMMENT ON VIEW performance_by_window IS
    'Performance per model version, segment and window of prediction time, with confidence interval, label coverage and status.';
