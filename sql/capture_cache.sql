--
-- capture_cache: the capture trigger's per-trigger cache forgets the
-- entries of dropped tables (a session that creates and drops tracked
-- tables does not grow), and rebuilds an entry after ALTER TABLE
--
CREATE TABLE cache_keep (id integer PRIMARY KEY, note text);
SELECT statehub_events.track_insert('cache_keep', 'org.statehub.cache.kept');
INSERT INTO cache_keep VALUES (1, 'one');

-- forty tracked tables, each captured once: forty more entries
DO $$
BEGIN
    FOR i IN 1..40 LOOP
        EXECUTE pg_catalog.format('CREATE TABLE cache_drop_%s (id integer)', i);
        PERFORM statehub_events.track_insert(pg_catalog.format('cache_drop_%s', i)::regclass,
                                             'org.statehub.cache.dropped' || i);
        EXECUTE pg_catalog.format('INSERT INTO cache_drop_%s VALUES (1)', i);
    END LOOP;
END $$;
SELECT pg_catalog.count(*) AS entries FROM pg_catalog.pg_backend_memory_contexts
 WHERE name = 'statehub_events capture entry';

-- dropped: the next capture frees their entries
DO $$
BEGIN
    FOR i IN 1..40 LOOP
        EXECUTE pg_catalog.format('DROP TABLE cache_drop_%s', i);
    END LOOP;
END $$;
INSERT INTO cache_keep VALUES (2, 'two');
SELECT pg_catalog.count(*) AS entries FROM pg_catalog.pg_backend_memory_contexts
 WHERE name = 'statehub_events capture entry';

-- a column added after the entry was built is in the next event
ALTER TABLE cache_keep ADD COLUMN added integer DEFAULT 7;
INSERT INTO cache_keep VALUES (3, 'three');
SELECT payload::json -> 'attributes' AS attributes
  FROM statehub_events.outbox WHERE subject = 'org.statehub.cache.kept' ORDER BY id;
SELECT clear_events();
DROP TABLE cache_keep;
