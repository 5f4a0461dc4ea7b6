-- Dead letters are keyed by the life of their topic as well. The local broker keeps nothing across a restart:
-- it makes every topic again and starts its offsets at 0, so the same bad bytes sent again (a plain client's
-- test run, say) land at coordinates an earlier run's row already holds, and 003's key collapsed them into
-- that row (50 bad messages left 41 rows on a state directory used many times). The broker gives each topic an
-- id when it makes it (Kafka's topic id, KIP-516; Tansu's too, while its cluster id is the same at every start),
-- so a topic made again is told apart, and a redelivery within one life still finds its row. An empty id is a
-- life unknown: rows stored before this migration, and consumers that do not look the id up.

ALTER TABLE dead_letters ADD COLUMN source_topic_id text NOT NULL DEFAULT '';
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_source_raw_key;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_source_raw_key
    UNIQUE (source_topic, source_topic_id, source_partition, source_offset, element_index, raw_sha256);
COMMENT ON COLUMN dead_letters.source_topic_id IS
    'The id the broker gave source_topic (its life: a topic made again gets a new one); empty when unknown.';
