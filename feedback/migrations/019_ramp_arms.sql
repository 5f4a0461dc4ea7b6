-- A ramp's figures kept as its requests, labels and shadow scores land, so that a look reads a few rows
-- (feedback/rollout/arms.py reads them). Triggers on predictions, current_labels and shadow_predictions keep them,
-- in the writer's own transaction, whoever writes (the ingest, a COPY, a test's INSERT).
--
-- A ramp's periods: period k holds the requests predicted after period_starts[k+1] (1-based SQL arrays) and up to
-- the next start; a step, a resume and the hold each begin a period. The whole ramp's counts are the sum of its
-- periods' (its users' mean errors are not: they are kept per period only). A request belongs to the
-- arm that served it (its model_version, the champion or the challenger).
--
-- ramp_rows is the ledger: per routed request that did not fail, what the figures hold for it (its error, and the
-- champion's error on it, the CUPED covariate). Every change is settled against it (new minus held), so a label
-- corrected, a shadow score landing after the label, or the same change seen twice each count exactly once. A label
-- stored before its prediction is visible leaves a placeholder row (rollout_id NULL) while a ramp is under way: its
-- key is where a prediction committing beside it meets it (the second writer waits on the first and then sees its
-- rows), so neither order of two concurrent transactions loses the label.

ALTER TABLE rollouts ADD COLUMN period_starts timestamptz[];   -- NULL: the figures are not built yet (a look builds them)
ALTER TABLE rollouts ADD COLUMN task text;                      -- classification | regression: how an error is counted
ALTER TABLE rollouts ADD COLUMN segments text[] NOT NULL DEFAULT '{}';  -- the model's declared segment attributes
COMMENT ON COLUMN rollouts.period_starts IS
    'event times the ramp''s periods begin after: its start, each later step, the hold (NULL: figures not built yet)';

CREATE TABLE ramp_rows (
    prediction_id  text PRIMARY KEY,
    rollout_id     text,                  -- NULL: a placeholder (a label stored before its prediction)
    period         integer,
    version        text,
    unit           text,                  -- the routing key, else the request
    parts          text[],                -- '' (all users) and 'attribute=value' per declared segment attribute
    err            double precision,      -- the served version's error on the label held (NULL: none held)
    cov            double precision,      -- the champion's error on the request (NULL: none held)
    placed_at      timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80);
CREATE INDEX ramp_rows_placeholders ON ramp_rows (placed_at) WHERE rollout_id IS NULL;
COMMENT ON TABLE ramp_rows IS
    'Per request a ramp routed: the error and covariate its figures hold (rollout_id NULL: a label waiting for its prediction).';

-- per user (unit), period, arm and part: labelled requests, their error sum; on the requests with a covariate,
-- their count, error sum and covariate sum
CREATE TABLE ramp_units (
    rollout_id  text NOT NULL,
    period      integer NOT NULL,
    version     text NOT NULL,
    part        text NOT NULL,
    unit        text NOT NULL,
    n           integer NOT NULL DEFAULT 0,
    e           double precision NOT NULL DEFAULT 0,
    cn          integer NOT NULL DEFAULT 0,
    ce          double precision NOT NULL DEFAULT 0,
    cx          double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (rollout_id, period, version, part, unit)
) WITH (fillfactor = 70);  -- updated in place (HOT): every label rewrites its user's rows

-- per period, arm and part: requests and failures (part '' only), labelled requests and their error sum, and the
-- running sums over users of the users' mean errors (users, sum, sum of squares); on the requests with a
-- covariate, the same over the users' means (y: error, x: covariate) with the cross products CUPED needs
CREATE TABLE ramp_arms (
    rollout_id  text NOT NULL,
    period      integer NOT NULL,
    version     text NOT NULL,
    part        text NOT NULL,
    requests    bigint NOT NULL DEFAULT 0,
    failures    bigint NOT NULL DEFAULT 0,
    labelled    bigint NOT NULL DEFAULT 0,
    error_sum   double precision NOT NULL DEFAULT 0,
    users       bigint NOT NULL DEFAULT 0,
    sum_m       double precision NOT NULL DEFAULT 0,
    sum_m2      double precision NOT NULL DEFAULT 0,
    c_labelled  bigint NOT NULL DEFAULT 0,
    c_users     bigint NOT NULL DEFAULT 0,
    c_sy        double precision NOT NULL DEFAULT 0,
    c_sx        double precision NOT NULL DEFAULT 0,
    c_syy       double precision NOT NULL DEFAULT 0,
    c_sxx       double precision NOT NULL DEFAULT 0,
    c_sxy       double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (rollout_id, period, version, part)
);
COMMENT ON TABLE ramp_arms IS
    'Each ramp period''s figures per arm and segment value, kept as rows land.';

-- latency per period and arm in logarithmic buckets of 2% (a value's bucket: ceil(ln(ms) / ln(1.02)); ms <= 0.001
-- in one bucket): a percentile within 1% of the exact one
CREATE TABLE ramp_latency (
    rollout_id  text NOT NULL,
    period      integer NOT NULL,
    version     text NOT NULL,
    bucket      integer NOT NULL,
    n           bigint NOT NULL,
    PRIMARY KEY (rollout_id, period, version, bucket)
);

-- the rollouts under way: the ones whose requests the figures count
CREATE VIEW active_rollouts AS SELECT * FROM rollouts WHERE state IN ('ramping', 'paused', 'holding');

-- the error of a prediction against a label, as feedback/rollout/controller.py row_errors counts it (NULL: none).
-- A regression error past 1e150 is none: the per-user sums hold squares of the errors, and float8 arithmetic that
-- overflows raises, which would fail the writer's transaction (a prediction of 1e308 and a label of -1e308 are
-- valid events); numeric arithmetic here, for the same reason.
CREATE FUNCTION ramp_error(task text, prediction jsonb, label jsonb) RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN prediction IS NULL OR label IS NULL OR jsonb_typeof(prediction) = 'null' THEN NULL
        WHEN task = 'classification' THEN (prediction <> label)::int::float8
        WHEN jsonb_typeof(prediction) = 'number' AND jsonb_typeof(label) = 'number'
             AND abs(prediction::numeric - label::numeric) <= 1e150
            THEN abs(prediction::numeric - label::numeric)::float8
    END
$$;

-- the period ``at`` falls in: after its start, up to the next one (timestamps are whole microseconds); -1: before
-- the ramp (one expression, so that it is inlined: a function with a subquery ran per row at 48 us a request)
CREATE FUNCTION ramp_period(starts timestamptz[], at timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$ SELECT width_bucket(at - interval '1 microsecond', starts) - 1 $$;

-- (the top bucket holds every latency past 1e300 ms: 1.02 to a larger power overflows a float)
CREATE FUNCTION ramp_bucket(ms double precision) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN ms <= 0.001 THEN -349 ELSE least(ceil(ln(ms) / ln(1.02)), 34884)::int END
$$;

-- a segment attribute's value as Python's str() writes it (arm_stats groups by str(segment.get(attribute)))
CREATE FUNCTION ramp_part(segment jsonb, attribute text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT attribute || '=' || CASE jsonb_typeof(segment -> attribute)
        WHEN 'boolean' THEN initcap(segment ->> attribute)
        WHEN 'null' THEN 'None'
        ELSE coalesce(segment ->> attribute, 'None') END
$$;

-- Settle the ledger rows of ``ids`` against what is stored now (label, shadow score): the figures take each
-- row's change. The rows are locked first (in key order), and the fresh values read by a later statement, so a
-- writer that waited on another's lock sees what that one committed.
CREATE FUNCTION ramp_settle(ids text[]) RETURNS void LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    PERFORM 1 FROM ramp_rows WHERE prediction_id = ANY(ids) AND rollout_id IS NOT NULL
        ORDER BY prediction_id FOR UPDATE;
    WITH fresh AS (
        SELECT r.prediction_id, r.rollout_id, r.period, r.version, r.unit, r.parts, r.err AS err0, r.cov AS cov0,
               e.err AS err1,
               CASE WHEN e.err IS NULL THEN NULL
                    WHEN r.version = ro.champion THEN e.err
                    ELSE ramp_error(ro.task, s.prediction, l.label) END AS cov1
        FROM ramp_rows r
        JOIN rollouts ro ON ro.rollout_id = r.rollout_id
        JOIN predictions p ON p.prediction_id = r.prediction_id
        LEFT JOIN current_labels l ON l.prediction_id = r.prediction_id
        LEFT JOIN shadow_predictions s ON r.version <> ro.champion AND s.model_name = ro.model_name
            AND s.version = ro.champion AND s.prediction_id = r.prediction_id AND s.error IS NULL
        CROSS JOIN LATERAL (SELECT ramp_error(ro.task, p.prediction, l.label) AS err) e
        WHERE r.prediction_id = ANY(ids) AND r.rollout_id IS NOT NULL
    ), changed AS (
        SELECT * FROM fresh WHERE err0 IS DISTINCT FROM err1 OR cov0 IS DISTINCT FROM cov1
    ), ledger AS (
        UPDATE ramp_rows r SET err = c.err1, cov = c.cov1 FROM changed c
        WHERE r.prediction_id = ANY(ids) AND r.prediction_id = c.prediction_id
    ), d AS (
        SELECT c.rollout_id, c.period, c.version, part, c.unit,
               sum((c.err1 IS NOT NULL)::int - (c.err0 IS NOT NULL)::int) AS n,
               sum(coalesce(c.err1, 0) - coalesce(c.err0, 0)) AS e,
               sum((c.cov1 IS NOT NULL)::int - (c.cov0 IS NOT NULL)::int) AS cn,
               sum(CASE WHEN c.cov1 IS NOT NULL THEN c.err1 ELSE 0 END
                   - CASE WHEN c.cov0 IS NOT NULL THEN c.err0 ELSE 0 END) AS ce,
               sum(coalesce(c.cov1, 0) - coalesce(c.cov0, 0)) AS cx
        FROM changed c CROSS JOIN LATERAL unnest(c.parts) AS part
        GROUP BY 1, 2, 3, 4, 5
    ), u AS (
        INSERT INTO ramp_units AS t (rollout_id, period, version, part, unit, n, e, cn, ce, cx)
        SELECT * FROM d ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (rollout_id, period, version, part, unit) DO UPDATE
            SET n = t.n + excluded.n, e = t.e + excluded.e, cn = t.cn + excluded.cn, ce = t.ce + excluded.ce,
                cx = t.cx + excluded.cx
        RETURNING t.rollout_id, t.period, t.version, t.part,
                  coalesce(old.n, 0) AS n0, coalesce(old.e, 0) AS e0, coalesce(old.cn, 0) AS cn0,
                  coalesce(old.ce, 0) AS ce0, coalesce(old.cx, 0) AS cx0,
                  new.n AS n1, new.e AS e1, new.cn AS cn1, new.ce AS ce1, new.cx AS cx1
    ), m AS (
        SELECT u.*,
               CASE WHEN n0 > 0 THEN e0 / n0 ELSE 0 END AS m0, CASE WHEN n1 > 0 THEN e1 / n1 ELSE 0 END AS m1,
               CASE WHEN cn0 > 0 THEN ce0 / cn0 ELSE 0 END AS y0, CASE WHEN cn1 > 0 THEN ce1 / cn1 ELSE 0 END AS y1,
               CASE WHEN cn0 > 0 THEN cx0 / cn0 ELSE 0 END AS x0, CASE WHEN cn1 > 0 THEN cx1 / cn1 ELSE 0 END AS x1
        FROM u
    )
    INSERT INTO ramp_arms AS a (rollout_id, period, version, part, labelled, error_sum, users, sum_m, sum_m2,
                                c_labelled, c_users, c_sy, c_sx, c_syy, c_sxx, c_sxy)
    SELECT rollout_id, period, version, part, sum(n1 - n0), sum(e1 - e0),
           sum((n1 > 0)::int - (n0 > 0)::int), sum(m1 - m0), sum(m1 * m1 - m0 * m0),
           sum(cn1 - cn0), sum((cn1 > 0)::int - (cn0 > 0)::int), sum(y1 - y0), sum(x1 - x0),
           sum(y1 * y1 - y0 * y0), sum(x1 * x1 - x0 * x0), sum(x1 * y1 - x0 * y0)
    FROM m GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (rollout_id, period, version, part) DO UPDATE
        SET labelled = a.labelled + excluded.labelled, error_sum = a.error_sum + excluded.error_sum,
            users = a.users + excluded.users, sum_m = a.sum_m + excluded.sum_m, sum_m2 = a.sum_m2 + excluded.sum_m2,
            c_labelled = a.c_labelled + excluded.c_labelled, c_users = a.c_users + excluded.c_users,
            c_sy = a.c_sy + excluded.c_sy, c_sx = a.c_sx + excluded.c_sx, c_syy = a.c_syy + excluded.c_syy,
            c_sxx = a.c_sxx + excluded.c_sxx, c_sxy = a.c_sxy + excluded.c_sxy;
END
$$;

-- Count the requests of ``ids`` (stored predictions) that an active ramp routed and does not hold yet: requests,
-- failures and latency per period and arm, a ledger row per request that did not fail (filling a placeholder),
-- then settle them (a label stored first is counted now).
CREATE FUNCTION ramp_count(ids text[]) RETURNS void LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    routed text[];
    met text[];
BEGIN
    IF cardinality(ids) = 0 THEN  -- a statement of other models' rows while a ramp is under way
        RETURN;
    END IF;
    WITH n AS (
        SELECT p.prediction_id, ro.rollout_id, ramp_period(ro.period_starts, p.predicted_at) AS period,
               p.model_version AS version, coalesce(p.routing_key, p.prediction_id) AS unit,
               CASE cardinality(ro.segments) WHEN 0 THEN ARRAY['']
                   WHEN 1 THEN ARRAY['', ramp_part(p.segment, ro.segments[1])]
                   ELSE ARRAY[''] || ARRAY(SELECT ramp_part(p.segment, a) FROM unnest(ro.segments) AS a) END AS parts,
               p.error IS NOT NULL AS failed, p.latency_ms
        FROM predictions p
        JOIN active_rollouts ro ON ro.model_name = p.model_name AND ro.period_starts IS NOT NULL AND p.model_version IN (ro.champion, ro.challenger)
            AND p.predicted_at > ro.period_starts[1]
        WHERE p.prediction_id = ANY(ids)
          AND NOT EXISTS (SELECT 1 FROM ramp_rows r WHERE r.prediction_id = p.prediction_id
                          AND r.rollout_id IS NOT NULL)
    ), arms AS (
        INSERT INTO ramp_arms AS a (rollout_id, period, version, part, requests, failures)
        SELECT n.rollout_id, n.period, n.version, '', count(*), count(*) FILTER (WHERE n.failed)
        FROM n
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (rollout_id, period, version, part) DO UPDATE
            SET requests = a.requests + excluded.requests, failures = a.failures + excluded.failures
    ), latency AS (
        INSERT INTO ramp_latency AS t (rollout_id, period, version, bucket, n)
        SELECT n.rollout_id, n.period, n.version, ramp_bucket(n.latency_ms), count(*)
        FROM n
        WHERE n.latency_ms IS NOT NULL
        GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (rollout_id, period, version, bucket) DO UPDATE SET n = t.n + excluded.n
    ), ledger AS (
        INSERT INTO ramp_rows AS r (prediction_id, rollout_id, period, version, unit, parts)
        SELECT prediction_id, rollout_id, period, version, unit, parts FROM n WHERE NOT failed
        ORDER BY prediction_id
        ON CONFLICT (prediction_id) DO UPDATE
            SET rollout_id = excluded.rollout_id, period = excluded.period, version = excluded.version,
                unit = excluded.unit, parts = excluded.parts, err = NULL, cov = NULL
            WHERE r.rollout_id IS NULL
        RETURNING r.prediction_id, old.prediction_id IS NOT NULL AS was_placeholder
    )
    SELECT array_agg(prediction_id) FILTER (WHERE was_placeholder),
           array_agg(prediction_id) FILTER (WHERE NOT was_placeholder)
    INTO met, routed FROM ledger;
    -- to settle: the placeholders met (their label committed meanwhile) and the requests whose label came first; a
    -- label committing later than this has met this transaction's ledger row, and its writer settles it
    routed := coalesce(met, '{}') || ARRAY(SELECT c.prediction_id FROM current_labels c
                                         WHERE c.prediction_id = ANY(coalesce(routed, '{}')));
    IF cardinality(routed) > 0 THEN
        PERFORM ramp_settle(routed);
    END IF;
END
$$;

CREATE FUNCTION ramp_on_predictions() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM active_rollouts) THEN
        RETURN NULL;
    END IF;
    PERFORM ramp_count(ARRAY(SELECT n.prediction_id FROM new_rows n
        WHERE EXISTS (SELECT 1 FROM active_rollouts ro WHERE ro.model_name = n.model_name
                      AND n.model_version IN (ro.champion, ro.challenger))));
    RETURN NULL;
END
$$;

-- labels: the changed ones of ramp requests are settled; one whose prediction is not visible leaves a placeholder
CREATE FUNCTION ramp_on_labels() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    changed text[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM active_rollouts) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        changed := ARRAY(SELECT n.prediction_id FROM new_rows n JOIN old_rows o USING (prediction_id)
                         WHERE n.label IS DISTINCT FROM o.label);
    ELSE
        changed := ARRAY(SELECT prediction_id FROM new_rows);
    END IF;
    IF cardinality(changed) = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO ramp_rows (prediction_id)
    SELECT id FROM unnest(changed) AS id
    WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.prediction_id = id)
    ORDER BY id
    ON CONFLICT (prediction_id) DO NOTHING;
    PERFORM ramp_settle(changed);
    RETURN NULL;
END
$$;

CREATE FUNCTION ramp_on_shadow() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM active_rollouts) THEN
        RETURN NULL;
    END IF;
    PERFORM ramp_settle(ARRAY(SELECT prediction_id FROM new_rows));
    RETURN NULL;
END
$$;

CREATE TRIGGER ramp_predictions AFTER INSERT ON predictions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ramp_on_predictions();
CREATE TRIGGER ramp_labels_inserted AFTER INSERT ON current_labels
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ramp_on_labels();
CREATE TRIGGER ramp_labels_updated AFTER UPDATE ON current_labels
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION ramp_on_labels();
CREATE TRIGGER ramp_shadow_scores AFTER INSERT ON shadow_predictions
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION ramp_on_shadow();

-- Build a ramp's figures from the rows stored (a ramp under way when this migration ran, or rows loaded without
-- the triggers): under the model's exclusive counting lock, taken by the caller.
CREATE FUNCTION ramp_rebuild(rollout text) RETURNS void LANGUAGE plpgsql SET search_path FROM CURRENT SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    ro rollouts%ROWTYPE;
BEGIN
    SELECT * INTO ro FROM rollouts WHERE rollout_id = rollout;
    DELETE FROM ramp_rows WHERE rollout_id = rollout;
    DELETE FROM ramp_units WHERE rollout_id = rollout;
    DELETE FROM ramp_arms WHERE rollout_id = rollout;
    DELETE FROM ramp_latency WHERE rollout_id = rollout;
    PERFORM ramp_count(ARRAY(SELECT prediction_id FROM predictions
        WHERE model_name = ro.model_name AND model_version IN (ro.champion, ro.challenger)
          AND predicted_at > ro.period_starts[1]));
END
$$;
