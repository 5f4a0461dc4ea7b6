-- The scheduled refresh (feedback/triggers/engine.py, Decider._refresh): a decision of a new kind, "refresh", a
-- candidate of the current concept that replaces the champion only when significantly better on the newest
-- labels (its outcome "unchanged" otherwise).

ALTER TABLE retrain_decisions DROP CONSTRAINT retrain_decisions_kind_check;
ALTER TABLE retrain_decisions ADD CONSTRAINT retrain_decisions_kind_check
    CHECK (kind IN ('calendar', 'drift', 'performance', 'volume', 'manual', 'detector', 'refit', 'pool', 'refresh'));
