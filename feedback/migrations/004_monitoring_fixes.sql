-- Detector state keeps its configuration beside the pickled state (not inside it), so a changed
-- pitstop.toml is noticed and the state rebuilt from the store under the new parameters.
ALTER TABLE detector_state ADD COLUMN config jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Monitor rounds judged windows before a version's first data (rows of nothing, unjudged); they no
-- longer do, and the ones they left go.
DELETE FROM monitor_results r
WHERE r.status = 'unjudged' AND r.sample_size = 0
  AND r.window_start < (SELECT min(w.window_start) FROM window_counts w
                        WHERE w.model_name = r.model_name AND w.model_version = r.model_version);

-- "By window": each window's latest evaluation only (a round now replaces all of a window's rows; rows
-- an earlier release left beside a newer verdict are hidden).
CREATE OR REPLACE VIEW performance_by_window AS
SELECT model_name, model_version, segment, window_start, window_end, metric, value, ci_low, ci_high,
       threshold, status, sample_size, label_coverage, sentence, evaluated_at
FROM (
    SELECT r.*, max(r.recorded_at) OVER (PARTITION BY r.model_name, r.model_version, r.segment, r.window_start)
               AS latest
    FROM monitor_results r
    WHERE r.kind = 'performance'
) AS r
WHERE recorded_at = latest
ORDER BY model_name, model_version, segment, window_start, metric;
COMMENT ON VIEW performance_by_window IS
    'Performance per model version, segment and window of prediction time (its latest evaluation), with confidence interval, label coverage and status.';
