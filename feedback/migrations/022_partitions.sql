-- The event tables partitioned by time (issue 19): predictions by predicted_at and outcomes by observed_at, one
-- partition per UTC week (Monday 00:00 to the next), so that retention drops whole partitions instead of deleting
-- rows (docs/design.md "Partitions and retention").
--
-- A partitioned table's unique keys must hold its partition column, so predictions' key becomes
-- (prediction_id, predicted_at). prediction_index keeps prediction_id unique across partitions (first arrival wins,
-- as before) and tells a label which partition holds its prediction. outcomes' key held observed_at already.
--
-- An existing store migrates in place: each table's rows are copied into a partitioned table of the same columns,
-- which then takes the table's name, its indexes, triggers and comments; the views that read it are made again
-- from their own definitions, with their comments, and granted to the analysts again.

CREATE TABLE prediction_index (
    prediction_id  text PRIMARY KEY,
    predicted_at   timestamptz NOT NULL
);
COMMENT ON TABLE prediction_index IS
    'Every stored prediction_id and the predicted_at that places it in a partition of predictions: prediction_id '
    'stays unique across the partitions (first arrival wins), and a label finds its prediction in one partition.';

-- The week ``at`` falls in, as the partitions bound it: [Monday 00:00 UTC, the next Monday).
CREATE FUNCTION partition_week(at timestamptz) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS $$
    SELECT date_trunc('week', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

-- Make the partitions of ``parent`` for the weeks of ``times`` that have none; returns the partitions made. Each is
-- made as a table of its own and then attached, which locks the parent in SHARE UPDATE EXCLUSIVE mode only: the
-- ingest and the readers go on meanwhile (CREATE TABLE ... PARTITION OF would lock them out).
CREATE FUNCTION ensure_partitions(parent text, times timestamptz[]) RETURNS text[]
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    week timestamptz;
    child text;
    made text[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(current_schema() || '.' || parent || ' partitions'));
    FOR week IN SELECT DISTINCT partition_week(t) FROM unnest(times) t WHERE t IS NOT NULL ORDER BY 1 LOOP
        child := parent || '_' || to_char(week AT TIME ZONE 'UTC', 'YYYYMMDD');
        CONTINUE WHEN to_regclass(quote_ident(child)) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)',
                       child, parent);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       parent, child, week, week + interval '1 week');
        made := made || child;
    END LOOP;
    RETURN made;
END
$$;
COMMENT ON FUNCTION ensure_partitions(text, timestamptz[]) IS
    'Makes the missing weekly partitions of predictions or outcomes for the given times; returns their names.';

-- Turn ``tbl`` into a table partitioned by range of ``col`` with the primary key ``pkey``, rows and all.
CREATE OR REPLACE FUNCTION pg_temp.partition_in_place(tbl text, col text, pkey text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v record;
    statement text;
    saved_views jsonb := '[]';
    saved_other text[];
    old_comment text := obj_description(tbl::regclass, 'pg_class');
BEGIN
    -- the views that read the table, directly or through other views, deepest last
    FOR v IN
        WITH RECURSIVE deps(oid, depth) AS (
            SELECT DISTINCT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
            WHERE d.refobjid = tbl::regclass AND r.ev_class <> tbl::regclass
            UNION
            SELECT DISTINCT r.ev_class, deps.depth + 1 FROM deps
            JOIN pg_depend d ON d.refobjid = deps.oid JOIN pg_rewrite r ON r.oid = d.objid
            WHERE r.ev_class <> deps.oid
        )
        SELECT c.relname, max(deps.depth) AS depth, pg_get_viewdef(c.oid) AS def,
               obj_description(c.oid, 'pg_class') AS comment, c.reloptions,
               (SELECT jsonb_agg(jsonb_build_array(a.attname, col_description(c.oid, a.attnum)))
                FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                  AND col_description(c.oid, a.attnum) IS NOT NULL) AS column_comments
        FROM deps JOIN pg_class c ON c.oid = deps.oid
        GROUP BY c.oid, c.relname, c.reloptions ORDER BY depth
    LOOP
        saved_views := saved_views || jsonb_build_array(to_jsonb(v));
    END LOOP;
    -- its indexes other than the key, and its triggers, as statements that name it
    saved_other := ARRAY(
        SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
        WHERE i.indrelid = tbl::regclass AND NOT i.indisprimary
        UNION ALL
        SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE t.tgrelid = tbl::regclass AND NOT t.tgisinternal);

    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS INCLUDING STORAGE '
                   'INCLUDING COMPRESSION) PARTITION BY RANGE (%I)', tbl || '_022', tbl, col);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY (%s)', tbl || '_022', tbl || '_022_pkey',
                   (SELECT string_agg(quote_ident(k), ', ') FROM unnest(pkey) k));
    EXECUTE format('SELECT ensure_partitions(%L, ARRAY(SELECT DISTINCT partition_week(%I) FROM %I))',
                   tbl || '_022', col, tbl);
    EXECUTE format('INSERT INTO %I SELECT * FROM %I', tbl || '_022', tbl);
    EXECUTE format('DROP TABLE %I CASCADE', tbl);  -- and the views saved above
    EXECUTE format('ALTER TABLE %I RENAME TO %I', tbl || '_022', tbl);
    EXECUTE format('ALTER TABLE %I RENAME CONSTRAINT %I TO %I', tbl, tbl || '_022_pkey', tbl || '_pkey');
    FOR v IN SELECT c.relname FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
             WHERE h.inhparent = tbl::regclass LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', v.relname, replace(v.relname, tbl || '_022_', tbl || '_'));
    END LOOP;
    EXECUTE format('COMMENT ON TABLE %I IS %L', tbl, old_comment);
    FOREACH statement IN ARRAY saved_other LOOP
        EXECUTE statement;
    END LOOP;
    FOR v IN SELECT * FROM jsonb_to_recordset(saved_views)
             AS x(relname text, def text, comment text, reloptions text[], column_comments jsonb) LOOP
        EXECUTE format('CREATE VIEW %I%s AS %s', v.relname,
                       CASE WHEN v.reloptions IS NOT NULL
                            THEN ' WITH (' || array_to_string(v.reloptions, ', ') || ')' ELSE '' END, v.def);
        IF v.comment IS NOT NULL THEN
            EXECUTE format('COMMENT ON VIEW %I IS %L', v.relname, v.comment);
        END IF;
        FOR statement IN SELECT format('COMMENT ON COLUMN %I.%I IS %L', v.relname, c->>0, c->>1)
                         FROM jsonb_array_elements(coalesce(v.column_comments, '[]')) c LOOP
            EXECUTE statement;
        END LOOP;
    END LOOP;
END
$$;

INSERT INTO prediction_index (prediction_id, predicted_at) SELECT prediction_id, predicted_at FROM predictions;
SELECT pg_temp.partition_in_place('predictions', 'predicted_at', ARRAY['prediction_id', 'predicted_at']);
SELECT pg_temp.partition_in_place('outcomes', 'observed_at', ARRAY['prediction_id', 'observed_at', 'label']);
DROP FUNCTION pg_temp.partition_in_place(text, text, text[]);  -- a session migrating several schemas makes it again
COMMENT ON TABLE predictions IS
    'One row per prediction_id, first arrival wins (prediction_index keeps the ids unique across the weekly '
    'partitions); redelivered or duplicated predictions change nothing.';
-- one probe of the index instead of one per partition
CREATE OR REPLACE VIEW unmatched_outcomes AS
SELECT l.* FROM current_labels l
WHERE NOT EXISTS (SELECT 1 FROM prediction_index p WHERE p.prediction_id = l.prediction_id);

-- Rows taken out of predictions by hand leave prediction_index with them, so that they may be stored again (a
-- partition dropped by the prune is not a delete: the prune clears its ids itself).
CREATE FUNCTION prediction_index_deleted() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM prediction_index i USING gone g
    WHERE i.prediction_id = g.prediction_id AND i.predicted_at = g.predicted_at;
    RETURN NULL;
END
$$;
CREATE TRIGGER prediction_index_deleted AFTER DELETE ON predictions
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION prediction_index_deleted();
CREATE FUNCTION prediction_index_truncated() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    TRUNCATE prediction_index;
    RETURN NULL;
END
$$;
CREATE TRIGGER prediction_index_truncated AFTER TRUNCATE ON predictions
    FOR EACH STATEMENT EXECUTE FUNCTION prediction_index_truncated();

SELECT grant_analyst_views();
