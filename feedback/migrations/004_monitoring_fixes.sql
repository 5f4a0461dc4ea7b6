-- Detector state keeps its configuration beside the pickled state (not inside it), so a changed
-- pitstop.toml is noticed and the state rebuilt from the store under the new parameters.
ALTER TABLE detector_state ADD COLUMN config jsonb NOT NULL DEFAULT '{}'::jsonb;
