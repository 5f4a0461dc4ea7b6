-- Dead letters are keyed by their bytes as well as by their Kafka coordinates: coordinates repeat (a
-- memory-only broker restarts its offsets at 0, a re-created topic does too, while this table keeps
-- everything), so a different message at coordinates that once held another is a new row, and only a
-- redelivery (same coordinates, same bytes) collapses into the row it already has. Each row gets an id
-- that the dead-letter topic's event names.

ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_pkey;
ALTER TABLE dead_letters ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE dead_letters ADD PRIMARY KEY (id);
ALTER TABLE dead_letters ADD COLUMN raw_sha256 bytea GENERATED ALWAYS AS (sha256(raw)) STORED;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_source_raw_key
    UNIQUE (source_topic, source_partition, source_offset, element_index, raw_sha256);
COMMENT ON TABLE dead_letters IS
    'Inputs that broke the contract, whole. element_index is the position in a batch message, -1 for the whole '
    'message. One row per (source coordinates, sha256 of raw): coordinates repeat when a broker or topic starts '
    'its offsets again.';
