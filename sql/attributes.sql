--
-- attributes: each column rendered exactly as to_json renders its type
--
CREATE TYPE mood AS ENUM ('calm', 'busy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a integer, b text);
CREATE TABLE wide (
    i integer, b bigint, num numeric, nan numeric, f float8, inf float8,
    ok boolean, t text, ts timestamptz, tsl timestamp, d date,
    u uuid, e mood, dom positive, js json, jb jsonb,
    ia integer[], ta text[], p pair, bytes bytea, iv interval, nothing text
);
SELECT statehub_events.track_insert('wide', 'org.statehub.wide.created');

INSERT INTO wide VALUES (
    -2147483648, 9223372036854775807, 12345.678900, 'NaN', 1.5e300, '-Infinity',
    true, E'quote " backslash \\ newline \n tab \t bell \x07 ünïcødé ✓ 𝄞',
    '2026-11-27 15:33:45.123456+00', '2026-11-27 15:33:45', '2026-11-27',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'busy', 7,
    '{"k": [1, 2.50, null], "s": "x"}', '{"k": [1, 2.50, null], "s": "x"}',
    '{1,NULL,3}', E'{"a\\"b",NULL,"c d"}', ROW(1, 'x"y'), '\xdeadbeef',
    '1 day 02:03:04', NULL);
INSERT INTO wide (i) VALUES (NULL);

SELECT * FROM show_events();

-- every attribute equals what to_json gives for the same row
SELECT (o.payload::jsonb -> 'attributes') = pg_catalog.to_jsonb(w) AS same_as_to_jsonb
  FROM statehub_events.outbox o, wide w
 WHERE (o.payload::jsonb -> 'attributes' ->> 'i') IS NOT DISTINCT FROM w.i::text
 ORDER BY o.id;
-- and the text itself, byte for byte: to_json's members, joined with the
-- envelope's ", " and ": " separators
SELECT pg_catalog.substr(o.payload, pg_catalog.strpos(o.payload, '"attributes": ') + 14,
                         pg_catalog.length(o.payload) - pg_catalog.strpos(o.payload, '"attributes": ') - 14)
       = (SELECT '{' || pg_catalog.string_agg(pg_catalog.to_json(j.key)::text || ': ' || j.value::text,
                                              ', ' ORDER BY j.n) || '}'
            FROM pg_catalog.json_each(pg_catalog.to_json(w)) WITH ORDINALITY AS j(key, value, n))
       AS same_text
  FROM statehub_events.outbox o, wide w
 WHERE (o.payload::jsonb -> 'attributes' ->> 'i') IS NOT DISTINCT FROM w.i::text
 ORDER BY o.id;
SELECT clear_events();
