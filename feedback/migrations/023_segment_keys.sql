-- A segment value is a key of the window and ramp tables' btrees, whose entries hold at most 2,704 bytes: a value
-- longer than 128 bytes (UTF-8) is keyed by its first 32 characters, '…' and its md5, as
-- feedback.monitoring.windows.segment_value writes it (a test holds the two equal), so that an event with a long
-- segment value (the contract allows 10,000 characters) is stored and counted instead of dead-lettered.
CREATE OR REPLACE FUNCTION ramp_part(segment jsonb, attribute text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT attribute || '=' || CASE WHEN octet_length(v) <= 128 THEN v ELSE left(v, 32) || '…' || md5(v) END
    FROM (SELECT CASE jsonb_typeof(segment -> attribute)
        WHEN 'boolean' THEN initcap(segment ->> attribute)
        WHEN 'null' THEN 'None'
        ELSE coalesce(segment ->> attribute, 'None') END AS v) AS value
$$;
