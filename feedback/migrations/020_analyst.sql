-- The analysts' role: it reads the documented views of this schema and nothing else (issue 18).
--
-- One role a schema, named after it (`pitstop_analyst` for the default schema `pitstop`), so that stores sharing a
-- PostgreSQL server never see each other. It logs in without a password where the server trusts local connections
-- (the local stack); elsewhere an administrator gives it one (`ALTER ROLE ... PASSWORD`). Its sessions are read-only
-- and bounded (a query stops after 5 minutes), and its search path is this schema (its URL says so too). A view reads its tables with its
-- owner's rights: the role needs no right on any table, so it cannot write, read the artifacts' bytes or the dead
-- letters' raw messages, or see the window accumulators.
--
-- A database user without CREATEROLE cannot create it: the migration then says so and goes on (an administrator
-- creates the role and runs `pitstop migrate` again: grant_analyst_views() grants it the views).

-- Drift over time: every window's drift results (drift_latest holds only each series' latest window).
CREATE VIEW drift_by_window AS
SELECT model_name, model_version, segment, feature, metric, window_start, window_end, value, threshold, p_value,
       status, sample_size, sentence, evaluated_at
FROM monitor_results
WHERE kind = 'drift';
COMMENT ON VIEW drift_by_window IS 'Every window''s drift statistics per model version, segment and feature.';

-- The views analysts read (docs/analysts.md). A migration adding a view for them replaces this function and
-- calls grant_analyst_views().
CREATE FUNCTION analyst_views() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['feedback', 'label_coverage', 'unmatched_outcomes', 'drift_latest', 'drift_by_window',
                 'performance_by_window',
                 'retrain_decisions_view', 'model_registry', 'shadow_feedback', 'version_trail', 'active_rollouts']
$$;

CREATE FUNCTION analyst_role() RETURNS text LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT current_schema() || '_analyst'
$$;

-- creates the role when it may and it is missing, and grants it this schema's views; returns whether it exists
CREATE FUNCTION grant_analyst_views() RETURNS boolean LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    analyst text := analyst_role();
    view_name text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = analyst) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION',
                           analyst);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;  -- a concurrent migration of another database
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'role % not created (this user may not create roles): an administrator creates it '
                             'with "CREATE ROLE % LOGIN" and runs pitstop migrate again', analyst, analyst;
                RETURN false;
        END;
    END IF;
    BEGIN  -- a role an administrator made may be beyond this user's ALTER ROLE: its defaults are then theirs
        EXECUTE format('ALTER ROLE %I SET search_path = %I', analyst, current_schema());
        EXECUTE format('ALTER ROLE %I SET default_transaction_read_only = on', analyst);
        EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', analyst, '5min');
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE 'role % keeps its defaults (this user may not alter it): read-only sessions and a 5-minute '
                     'statement timeout are advised', analyst;
    END;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), analyst);
    FOREACH view_name IN ARRAY analyst_views() LOOP
        EXECUTE format('GRANT SELECT ON %I TO %I', view_name, analyst);
    END LOOP;
    RETURN true;
END
$$;
REVOKE EXECUTE ON FUNCTION grant_analyst_views() FROM PUBLIC;

SELECT grant_analyst_views();
