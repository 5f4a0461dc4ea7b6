-- The rollout: shadow evaluation of a candidate on live traffic, the canary/A-B ramp, promotion and
-- rollback. Every step is a row with its event time, its sentence and its evidence (one trail per
-- version); the deployment each model's routers follow is a row too, published through the outbox.

-- One shadow per candidate version: it scores the model's predictions beside the champion that served them.
CREATE TABLE shadows (
    model_name    text NOT NULL,
    version       text NOT NULL,
    champion      text,                   -- the champion when the shadow started (NULL: the model had none)
    cutoff        timestamptz NOT NULL,   -- the candidate's training cutoff: only labels observed after it judge it
    started_at    timestamptz NOT NULL,   -- event time: the model's newest prediction when the shadow started
    status        text NOT NULL CHECK (status IN ('waiting', 'running', 'passed', 'failed', 'expired')),
    sentence      text NOT NULL DEFAULT '',
    verdict       jsonb NOT NULL DEFAULT '{}'::jsonb,  -- the gate's figures at its last look
    decided_at    timestamptz,            -- event time of the verdict
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
);
CREATE INDEX shadows_running ON shadows (model_name) WHERE status IN ('waiting', 'running');
COMMENT ON TABLE shadows IS
    'Shadow evaluations: a candidate scores the live predictions of its model beside the serving champion; status waiting (a rollout is under way), running, passed, failed or expired (never gathered enough labels).';

CREATE TABLE shadow_predictions (
    model_name     text NOT NULL,
    version        text NOT NULL,
    prediction_id  text NOT NULL,
    prediction     jsonb,                 -- NULL when the shadow model failed on the row
    probabilities  jsonb,
    latency_ms     double precision,      -- measured on a sample of rows scored one at a time (NULL otherwise)
    error          text,                  -- the failure, if the model raised or answered nothing usable
    backfilled     boolean NOT NULL DEFAULT false,  -- made before the shadow started, unlabelled at its cutoff
    scored_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version, prediction_id)
);
COMMENT ON TABLE shadow_predictions IS
    'What a shadow version predicted for a served prediction (same prediction_id), or why it failed.';

CREATE VIEW shadow_feedback AS
SELECT s.model_name, s.version AS shadow_version, p.model_version AS served_version, s.prediction_id,
       p.predicted_at, p.routing_key, p.segment,
       p.prediction AS served_prediction, p.probabilities AS served_probabilities,
       s.prediction AS shadow_prediction, s.probabilities AS shadow_probabilities,
       p.latency_ms AS served_latency_ms, s.latency_ms AS shadow_latency_ms, s.error AS shadow_error,
       s.backfilled, l.label, l.observed_at AS labeled_at
FROM shadow_predictions s
JOIN predictions p USING (prediction_id)
LEFT JOIN current_labels l USING (prediction_id);
COMMENT ON VIEW shadow_feedback IS
    'Each shadow-scored prediction with the served prediction, the shadow''s, and the current label.';

-- One rollout per challenger version: the ramp from its first step to promotion, rollback or keeping
-- the champion.
CREATE TABLE rollouts (
    rollout_id     text PRIMARY KEY,       -- deterministic: model/version
    model_name     text NOT NULL,
    champion       text NOT NULL,
    challenger     text NOT NULL,
    salt           text NOT NULL,          -- the routing hash's salt, new per rollout
    state          text NOT NULL CHECK (state IN ('ramping', 'paused', 'holding', 'promoted', 'rolled_back',
                                                  'kept_champion', 'abandoned')),
    step           integer NOT NULL,       -- index into the configured shares (-1 before the first)
    share          double precision NOT NULL,
    step_started_at timestamptz NOT NULL,  -- event time
    started_at     timestamptz NOT NULL,   -- event time
    ended_at       timestamptz,            -- event time
    baseline       jsonb NOT NULL DEFAULT '{}'::jsonb,  -- the champion's frozen figures for the hold period
    test           jsonb NOT NULL DEFAULT '{}'::jsonb,  -- the promotion test's state across looks
    sentence       text NOT NULL DEFAULT '',
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (model_name, challenger) REFERENCES model_versions (model_name, version)
);
CREATE UNIQUE INDEX rollouts_one_active ON rollouts (model_name) WHERE state IN ('ramping', 'paused', 'holding');
COMMENT ON TABLE rollouts IS
    'Each challenger''s ramp: the champion it is compared with, its current step and share, and how it ended.';

CREATE TABLE rollout_events (
    event_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollout_id     text,                   -- NULL for a model-level event (a latch cleared, a manual rollback)
    model_name     text NOT NULL,
    version        text,
    kind           text NOT NULL CHECK (kind IN ('shadow_started', 'shadow_waiting', 'shadow_passed', 'shadow_failed',
                                                 'shadow_expired', 'shadow_escalated', 'abandoned', 'step', 'paused',
                                                 'resumed', 'holding', 'promoted', 'rolled_back', 'kept_champion',
                                                 'latch_cleared', 'waiting')),
    at             timestamptz NOT NULL,   -- event time
    share          double precision,
    sentence       text NOT NULL,
    evidence       jsonb NOT NULL DEFAULT '{}'::jsonb,
    actor          text NOT NULL DEFAULT 'controller',  -- controller, shadow, or who ran the CLI
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollout_events_version ON rollout_events (model_name, version, event_id);
COMMENT ON TABLE rollout_events IS
    'Every shadow verdict, ramp step, pause, hold, promotion and rollback, with its event time, sentence and evidence.';

-- The deployment each model's routers follow; every change is a new message_version, published through
-- the outbox on the deployments topic (keyed by model name).
CREATE TABLE deployments (
    model_name        text PRIMARY KEY,
    message_version   bigint NOT NULL,
    champion          text NOT NULL,
    challenger        text,
    challenger_share  double precision NOT NULL DEFAULT 0,
    salt              text NOT NULL,
    state             text NOT NULL,
    decided_at        timestamptz NOT NULL,
    reason            text NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- A rollback latches: no new rollout of the model starts until a person clears it.
CREATE TABLE rollback_latches (
    model_name   text PRIMARY KEY,
    version      text NOT NULL,
    reason       text NOT NULL,
    latched_at   timestamptz NOT NULL DEFAULT now()
);

-- One trail per version: the decision that asked for it (its change point and the labels it waited for), the
-- training's outcome, each offline gate, each stage move, the shadow verdict and every ramp step, to promotion or
-- rollback; in the order they were recorded, with the event time where the step has one.
CREATE VIEW version_trail AS
SELECT v.model_name, v.version, d.recorded_at, coalesce(d.fired_at, d.decided_at) AS at, 0 AS source, 0::bigint AS seq,
       'decision' AS step,
       d.kind || ' (' || d.urgency || ', ' || d.status || '): ' || d.sentence
       || coalesce('; change from ' || to_char(d.change_point AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC', '')
       || coalesce(', ' || d.labels_since_change || ' labels since', '') AS sentence
FROM model_versions v JOIN retrain_decisions d ON d.decision_id = v.trigger_id
UNION ALL
SELECT v.model_name, v.version, o.recorded_at, NULL, 1, 0, 'training', o.outcome || ': ' || o.sentence
FROM model_versions v JOIN retrain_outcomes o ON o.trigger_id = v.trigger_id
UNION ALL
SELECT g.model_name, g.version, v.created_at, NULL, 2, g.ordinal, 'gate',
       CASE WHEN g.passed THEN 'pass ' WHEN NOT g.passed THEN 'FAIL ' ELSE 'info ' END || g.set_name || ': ' || g.sentence
FROM model_gate_results g JOIN model_versions v USING (model_name, version)
UNION ALL
SELECT c.model_name, c.version, c.changed_at, NULL, 3, c.change_id, 'stage',
       coalesce(c.from_stage, 'registered') || ' -> ' || c.to_stage
       || CASE WHEN EXISTS (SELECT 1 FROM rollout_events e WHERE e.model_name = c.model_name AND e.version = c.version
                            AND e.recorded_at = c.changed_at) THEN '' ELSE ': ' || c.reason END
FROM model_stage_changes c
UNION ALL
SELECT e.model_name, e.version, e.recorded_at, e.at, 4, e.event_id, e.kind,
       e.sentence || CASE WHEN e.actor IN ('controller', 'shadow') THEN '' ELSE ' (by ' || e.actor || ')' END
FROM rollout_events e WHERE e.version IS NOT NULL;
COMMENT ON VIEW version_trail IS
    'For each model version, every step from the retrain decision to promotion or rollback, each with its sentence; order by recorded_at, source, seq.';
