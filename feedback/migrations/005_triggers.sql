-- Retrain decisions: every decision the trigger engine makes, fired or not, and the outbox that carries a
-- fired decision's event to Kafka (written in the decision's transaction, published after commit).

CREATE TABLE retrain_decisions (
    decision_id          text PRIMARY KEY,           -- deterministic: model/kind/version/change point (or slot)
    model_name           text NOT NULL,
    model_version        text,                       -- the version whose windows decided (none for manual, calendar)
    kind                 text NOT NULL CHECK (kind IN ('calendar', 'drift', 'performance', 'volume', 'manual',
                                                       'detector')),
    urgency              text NOT NULL CHECK (urgency IN ('routine', 'elevated', 'critical')),
    status               text NOT NULL CHECK (status IN ('fired', 'pending', 'watch', 'unjudged', 'suppressed')),
    sentence             text NOT NULL,
    suppressed_by        text,                       -- storm control's reason, while suppressed
    change_point         timestamptz,                -- where the change began (drift, performance)
    labels_since_change  bigint,
    labels_needed        bigint,
    first_decided_at     timestamptz NOT NULL,       -- event time
    decided_at           timestamptz NOT NULL,       -- event time of the latest look at it
    fired_at             timestamptz,                -- event time it fired
    requested_by         text,                       -- manual requests: who asked
    evidence             jsonb NOT NULL DEFAULT '{}'::jsonb,
    recorded_at          timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX retrain_decisions_model ON retrain_decisions (model_name, decided_at);
CREATE INDEX retrain_decisions_fired ON retrain_decisions (model_name, fired_at) WHERE status = 'fired';
COMMENT ON TABLE retrain_decisions IS
    'Every retrain decision, fired or not: kind, urgency, status, the sentence that explains it, its change point and evidence. A fired decision''s id is its trigger event''s id.';

-- What became of a fired trigger (the retrain worker writes it): feeds "a training is running" and the
-- circuit breaker.
CREATE TABLE retrain_outcomes (
    trigger_id   text PRIMARY KEY,
    model_name   text NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN ('candidate', 'rejected', 'failed')),
    sentence     text NOT NULL DEFAULT '',
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX retrain_outcomes_model ON retrain_outcomes (model_name, recorded_at);

-- A person reset a model's circuit breaker (`pitstop triggers reset`).
CREATE TABLE trigger_resets (
    model_name  text NOT NULL,
    reset_at    timestamptz NOT NULL DEFAULT now(),
    reset_by    text NOT NULL DEFAULT current_user,
    PRIMARY KEY (model_name, reset_at)
);

-- Per model: the last calendar slot looked at (event time); its row also serialises the model's decisions.
CREATE TABLE trigger_state (
    model_name     text PRIMARY KEY,
    calendar_slot  timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Events to publish: written in the transaction of the decision they announce, published in order by the
-- relay after commit, then marked sent. A crash between publish and mark republishes the same event id.
CREATE TABLE outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    text NOT NULL UNIQUE,
    topic       text NOT NULL,                       -- the topic's name without the deployment's prefix
    key         text,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

CREATE VIEW retrain_decisions_view AS
SELECT d.model_name, d.model_version, d.kind, d.urgency, d.status, d.decided_at, d.fired_at, d.change_point,
       d.labels_since_change, d.labels_needed, d.sentence, d.suppressed_by, d.decision_id,
       o.outcome, o.sentence AS outcome_sentence, x.sent_at AS published_at
FROM retrain_decisions d
LEFT JOIN retrain_outcomes o ON o.trigger_id = d.decision_id
LEFT JOIN outbox x ON x.event_id = d.decision_id
ORDER BY d.model_name, d.decided_at DESC;
COMMENT ON VIEW retrain_decisions_view IS
    'Retrain decisions for analysts, newest first per model, with what became of the fired ones and when their event was published.';
