-- Which series of a window changed, and in which transaction: every accumulator row carries the id of the
-- transaction that last changed it (xid8), set by the same write that changes its counts or aggregates
-- (feedback/monitoring/windows.py). window_changes (015) tells a round which windows of which versions changed;
-- these marks tell it which rows of those windows to read again: late labels change a window's label series and
-- aggregates, not its twenty feature series, so a round reads and judges the label series again and keeps the
-- statistics of the others (feedback/monitoring/incremental.py).
--
-- The column is added without a value and its default set afterwards, so that neither table is rewritten: a row
-- written before this migration has no mark (NULL), and is older than any snapshot a round compares it with.
ALTER TABLE window_counts ADD COLUMN changed xid8;
ALTER TABLE window_counts ALTER COLUMN changed SET DEFAULT pg_current_xact_id();
ALTER TABLE window_performance ADD COLUMN changed xid8;
ALTER TABLE window_performance ALTER COLUMN changed SET DEFAULT pg_current_xact_id();
COMMENT ON COLUMN window_counts.changed IS 'the transaction that last changed these counts (NULL: before migration 017)';
COMMENT ON COLUMN window_performance.changed IS
    'the transaction that last changed these aggregates (NULL: before migration 017)';

-- A round now writes, in a window whose results changed, only the rows that differ (feedback/monitoring/round.py).
COMMENT ON COLUMN monitor_results.evaluated_at IS
    'event time of the evaluation that last changed this row: the newest predicted_at of the version then';
-- Rows are updated in place round after round (the newest window's every round): room on each page lets an update
-- stay on its page without touching the primary key's index (a HOT update). Applies to pages written from now on.
ALTER TABLE monitor_results SET (fillfactor = 70);
