-- What a monitor round last wrote for each window of each segment of a version: a fingerprint of its result rows
-- (feedback/monitoring/round.py). A round writes a window's rows again only when they differ, so a round where
-- little changed writes little, and any process (a restarted worker, another monitor worker) knows what is stored.
CREATE TABLE monitor_windows (
    model_name     text NOT NULL,
    model_version  text NOT NULL,
    segment        text NOT NULL,
    window_start   timestamptz NOT NULL,
    fingerprint    bigint NOT NULL,
    evaluated_at   timestamptz NOT NULL,
    PRIMARY KEY (model_name, model_version, segment, window_start)
);
COMMENT ON TABLE monitor_windows IS
    'A fingerprint of the monitor_results rows of each window and segment, as the round that last changed them wrote them.';
COMMENT ON COLUMN monitor_results.evaluated_at IS
    'event time of the evaluation that last changed this window''s rows: the newest predicted_at of the version then';
