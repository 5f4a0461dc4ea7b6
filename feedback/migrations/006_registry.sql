-- The model registry: versions and their stages (every move a row with its reason), lineage, metrics, gate
-- results, and artifacts with their sha256 (stored in PostgreSQL: one transaction with their version, one backup).

CREATE TABLE model_artifacts (
    artifact_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sha256         bytea NOT NULL,
    format         text NOT NULL CHECK (format IN ('skops', 'pickle')),
    trusted_types  text[] NOT NULL DEFAULT '{}',   -- skops: the types the loader is told to trust
    size_bytes     bigint NOT NULL,
    data           bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE model_artifacts IS
    'Serialised models. Every load checks sha256 before deserialising and refuses a mismatch; skops artifacts load only the types recorded in trusted_types.';

CREATE TABLE model_versions (
    model_name     text NOT NULL,
    version        text NOT NULL,
    stage          text NOT NULL CHECK (stage IN ('candidate', 'shadow', 'canary', 'champion', 'previous', 'rejected',
                                                  'archived')),
    trigger_id     text,                  -- the retrain trigger it answers (none for an imported model)
    trainer        text,                  -- module:callable
    params         jsonb NOT NULL DEFAULT '{}'::jsonb,
    lineage        jsonb NOT NULL DEFAULT '{}'::jsonb,   -- data window, row counts, change point, weights, code version
    metrics        jsonb NOT NULL DEFAULT '{}'::jsonb,
    artifact_id    bigint REFERENCES model_artifacts (artifact_id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version)
);
-- one champion per model at a time
CREATE UNIQUE INDEX model_versions_one_champion ON model_versions (model_name) WHERE stage = 'champion';

CREATE TABLE model_stage_changes (
    change_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_name     text NOT NULL,
    version        text NOT NULL,
    from_stage     text,                  -- NULL when the version was registered
    to_stage       text NOT NULL,
    reason         text NOT NULL,
    changed_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
);
CREATE INDEX model_stage_changes_version ON model_stage_changes (model_name, version, change_id);

CREATE TABLE model_gate_results (
    model_name     text NOT NULL,
    version        text NOT NULL,
    ordinal        integer NOT NULL,
    name           text NOT NULL,
    set_name       text NOT NULL,
    passed         boolean,               -- NULL: informational (a segment too small to judge)
    observed       double precision,
    threshold      double precision,
    sample_size    bigint,
    sentence       text NOT NULL,
    PRIMARY KEY (model_name, version, ordinal),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
);

CREATE VIEW model_registry AS
SELECT v.model_name, v.version, v.stage, v.trigger_id, v.trainer, v.created_at, v.updated_at,
       a.sha256, a.format, a.size_bytes,
       (SELECT count(*) FILTER (WHERE g.passed) || ' of ' || count(*) FILTER (WHERE g.passed IS NOT NULL)
        FROM model_gate_results g WHERE g.model_name = v.model_name AND g.version = v.version) AS gates_passed
FROM model_versions v LEFT JOIN model_artifacts a USING (artifact_id)
ORDER BY v.model_name, v.created_at DESC;
COMMENT ON VIEW model_registry IS 'Model versions, newest first per model, with their stage, artifact digest and gates passed.';
