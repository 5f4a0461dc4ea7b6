-- Which windows changed, and in which transaction, so that a monitor round evaluates only the windows changed
-- since the last one (feedback/monitoring/changes.py). One row per window and segment of a version, set by the
-- transaction that changes the window's counts or aggregates (the ingest's write, a profile's recount) to that
-- transaction's id: xid8, 64 bits, which never wraps around.
--
-- A round reads under a snapshot (pg_current_snapshot()); the next round takes the rows whose transaction that
-- snapshot did not see: committed after it, in whatever order the transactions began. A transaction id is
-- handed out when a transaction first writes, so a slow transaction that began before a round and committed
-- after it is seen by the next round, never skipped.
CREATE TABLE window_changes (
    model_name     text NOT NULL,
    model_version  text NOT NULL,
    window_s       integer NOT NULL,
    segment        text NOT NULL,
    window_start   timestamptz NOT NULL,
    changed        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (model_name, model_version, window_s, segment, window_start)
);
CREATE INDEX window_changes_changed ON window_changes (changed);
COMMENT ON TABLE window_changes IS 'the transaction that last changed each window''s counts or aggregates (per segment)';

INSERT INTO window_changes (model_name, model_version, window_s, segment, window_start)
SELECT model_name, model_version, window_s, segment, window_start FROM window_counts
UNION
SELECT model_name, model_version, window_s, segment, window_start FROM window_performance;
