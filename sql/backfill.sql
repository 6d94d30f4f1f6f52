--
-- backfill: one event per existing row of a declared mapping, built like a
-- live event of that row (minus "previous"), flagged as a backfill
--
CREATE TYPE bf_status AS ENUM ('draft', 'active', 'archived');
CREATE DOMAIN bf_label AS text CHECK (VALUE <> '');
CREATE TABLE bf_repos (
    id integer PRIMARY KEY,
    gone integer,
    name bf_label NOT NULL,
    status bf_status NOT NULL,
    kind text,
    tags text[],
    meta jsonb,
    created_at timestamptz
);
ALTER TABLE bf_repos DROP COLUMN gone;
INSERT INTO bf_repos
SELECT g, 'repo-' || g,
       (ARRAY['draft', 'active', 'archived']::bf_status[])[g % 3 + 1],
       CASE WHEN g % 2 = 0 THEN 'service' ELSE 'library' END,
       ARRAY['t' || g], jsonb_build_object('n', g),
       '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 hour'
  FROM generate_series(1, 12) g;

SELECT statehub_events.track_insert('bf_repos', 'org.statehub.bf.registered');
SELECT statehub_events.track_insert('bf_repos', 'org.statehub.bf.service',
                                    '{id,kind}', 'NEW.kind = ''service''');
SELECT statehub_events.track_transition('bf_repos', 'status', 'active',
                                        'org.statehub.bf.activated');
SELECT statehub_events.track_delete('bf_repos', 'org.statehub.bf.removed', '{id}');

-- counts per mapping kind: every row, the insert condition's rows, the rows
-- whose column equals to_value
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.service');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.activated');
SELECT subject, backfill, pg_catalog.count(*)
  FROM statehub_events.outbox GROUP BY 1, 2 ORDER BY 1, 2;
SELECT live_queued, backfill_queued, backfill_dead_letters
  FROM statehub_events.queued_by_origin;
SELECT clear_events();

-- the caller's condition narrows further, over NEW like an insert condition
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered', 'NEW.id <= 5');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.service', 'NEW.id > 6');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.activated',
                                'NEW.created_at > ''2026-01-01 06:00+00''');
-- a condition that opens with ")" stays one expression: no row outside the
-- mapping's (4 active rows, not 12)
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.activated', 'false) OR (true');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered', 'NEW.id > 100');
SELECT * FROM show_events() WHERE n <= 2 OR subject = 'org.statehub.bf.service';
SELECT clear_events();

-- in the caller's transaction: a rollback takes the events with it
BEGIN;
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered');
ROLLBACK;
SELECT pg_catalog.count(*) FROM statehub_events.outbox;

-- attributes are byte for byte those of a live event of the same row
-- (insert: the row deleted and inserted again; transition: moved away and
-- back, whose live event also carries "previous")
CREATE FUNCTION bf_attributes(subj text, want_backfill boolean) RETURNS text
LANGUAGE sql AS $$
  SELECT pg_catalog.substring(o.payload, '"attributes": (.*)}$')
    FROM statehub_events.outbox o
   WHERE o.subject = subj AND o.backfill = want_backfill
$$;
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered', 'NEW.id = 4');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.activated', 'NEW.id = 4');
CREATE TEMP TABLE bf_row4 AS SELECT * FROM bf_repos WHERE id = 4;
DELETE FROM bf_repos WHERE id = 4;
INSERT INTO bf_repos SELECT * FROM bf_row4;
UPDATE bf_repos SET status = 'draft' WHERE id = 4;
UPDATE bf_repos SET status = 'active' WHERE id = 4;
SELECT bf_attributes('org.statehub.bf.registered', true) AS backfilled,
       bf_attributes('org.statehub.bf.registered', false) AS live;
SELECT bf_attributes('org.statehub.bf.registered', true)
     = bf_attributes('org.statehub.bf.registered', false) AS insert_identical;
SELECT bf_attributes('org.statehub.bf.activated', true) AS backfilled,
       bf_attributes('org.statehub.bf.activated', false) AS live;
SELECT bf_attributes('org.statehub.bf.activated', true)
     = pg_catalog.replace(bf_attributes('org.statehub.bf.activated', false),
                          ', "previous": {"status": "draft"}', '') AS transition_identical_but_previous;
SELECT subject, backfill FROM statehub_events.outbox ORDER BY id;
SELECT clear_events();

-- a partitioned table is read with its partitions
CREATE TABLE bf_parted (id integer, region text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE bf_parted_eu PARTITION OF bf_parted FOR VALUES IN ('eu');
CREATE TABLE bf_parted_us PARTITION OF bf_parted FOR VALUES IN ('us');
INSERT INTO bf_parted VALUES (1, 'eu'), (2, 'us'), (3, 'us');
SELECT statehub_events.track_insert('bf_parted', 'org.statehub.bf.parted');
SELECT statehub_events.backfill('bf_parted', 'org.statehub.bf.parted');
SELECT payload::json -> 'attributes' AS attributes FROM statehub_events.outbox ORDER BY 1::text;
SELECT clear_events();

-- the conditions resolve names in pg_catalog only, as a trigger's WHEN does
CREATE FUNCTION public.bf_even(integer) RETURNS boolean
    LANGUAGE sql IMMUTABLE AS 'SELECT $1 % 2 = 0';
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered', 'bf_even(NEW.id)');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered', 'public.bf_even(NEW.id)');
SELECT clear_events();

-- refusals: delete mappings, undeclared pairs, bad conditions, nulls
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.removed');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.unknown');
SELECT statehub_events.backfill('bf_parted', 'org.statehub.bf.registered');
SELECT statehub_events.backfill('bf_repos', 'not a subject');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered', 'NEW.nope = 1');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered', 'NEW.id');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered', 'true; DROP TABLE bf_repos');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered', 'true) UNION SELECT (true');
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered', 'NEW.id = ');
SELECT statehub_events.backfill(NULL, 'org.statehub.bf.registered');
SELECT statehub_events.backfill('bf_repos', NULL);
SELECT pg_catalog.count(*) FROM statehub_events.outbox;

-- rights: those of declaring events, and reading the table
CREATE ROLE bf_app;
CREATE ROLE bf_dba;
GRANT SELECT ON bf_repos TO bf_app;
SET ROLE bf_app;
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered');
RESET ROLE;
GRANT EXECUTE ON FUNCTION
    statehub_events.capture(),
    statehub_events.track_insert(regclass, text, text[], text),
    statehub_events.backfill(regclass, text, text)
  TO bf_dba;
SET ROLE bf_dba;
-- granted, but no TRIGGER right on the table: may not declare, may not backfill
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered');
RESET ROLE;
GRANT TRIGGER ON bf_repos TO bf_dba;
SET ROLE bf_dba;
-- may declare, but cannot read the table
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered');
RESET ROLE;
GRANT SELECT (id, kind) ON bf_repos TO bf_dba;
SET ROLE bf_dba;
-- nor with rights on some columns only: it reads whole rows
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered');
RESET ROLE;
GRANT SELECT ON bf_repos TO bf_dba;
ALTER TABLE bf_repos ENABLE ROW LEVEL SECURITY;
CREATE POLICY bf_services ON bf_repos FOR SELECT TO bf_dba USING (kind = 'service');
SET ROLE bf_dba;
-- the rows it can read, with its own rights: row security applies
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered');
-- the condition runs as the caller too
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered',
                                'current_user = ''bf_dba''');
RESET ROLE;
SELECT pg_catalog.count(*) FROM statehub_events.outbox;
SELECT clear_events();

-- a backfilled dead letter keeps its flag, and goes back flagged
SELECT statehub_events.backfill('bf_repos', 'org.statehub.bf.registered', 'NEW.id = 1');
INSERT INTO statehub_events.dead_letter
       (id, event_id, subject, payload, enqueued_at, attempts, reason, backfill)
SELECT id, event_id, subject, payload, enqueued_at, 1, 'test', backfill
  FROM statehub_events.outbox;
SELECT clear_events();
SELECT backfill_queued, backfill_dead_letters FROM statehub_events.queued_by_origin;
SELECT statehub_events.retry_dead_letters();
SELECT subject, backfill FROM statehub_events.outbox;
SELECT clear_events();

DROP TABLE bf_repos, bf_parted, bf_row4;
DROP FUNCTION bf_attributes(text, boolean), public.bf_even(integer);
DROP ROLE bf_app;
REVOKE ALL ON FUNCTION statehub_events.capture(),
    statehub_events.track_insert(regclass, text, text[], text),
    statehub_events.backfill(regclass, text, text) FROM bf_dba;
DROP ROLE bf_dba;
DROP TYPE bf_status;
DROP DOMAIN bf_label;
