-- The monitor workers sharing a store's models (feedback/monitoring/round.py): each says it is alive at every round.
-- A model is the share of one live worker (rendezvous hashing over the live workers' ids), and a worker evaluates
-- and decides for a model only under that model's advisory lock, so a share moving between workers (one started,
-- one killed) never has two workers on one model at once.
CREATE TABLE monitor_workers (
    worker_id  text PRIMARY KEY,
    seen_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE monitor_workers IS 'The monitor workers of this store and when each was last heard from.';
