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

-- found by a hostile review (issue 11):
-- a column named "new" is not the row
CREATE TABLE bf_new (id integer PRIMARY KEY, new text, kind text);
INSERT INTO bf_new VALUES (1, 'hello', 'x'), (2, repeat('A', 300), 'x');
SELECT statehub_events.track_insert('bf_new', 'org.statehub.bf.newcol', '{id,kind}');
SELECT statehub_events.backfill('bf_new', 'org.statehub.bf.newcol');
SELECT payload::json -> 'attributes' AS attributes FROM statehub_events.outbox ORDER BY id;
SELECT clear_events();
-- a transition's value is the one declared, whatever the caller's DateStyle
CREATE TABLE bf_due (id integer PRIMARY KEY, due date);
INSERT INTO bf_due VALUES (1, '2026-01-02'), (2, '2026-02-01');
SET DateStyle = 'ISO, MDY';
SELECT statehub_events.track_transition('bf_due', 'due', '01/02/2026', 'org.statehub.bf.due');
SET DateStyle = 'ISO, DMY';
SELECT statehub_events.backfill('bf_due', 'org.statehub.bf.due');
RESET DateStyle;
SELECT payload::json -> 'attributes' ->> 'id' AS id FROM statehub_events.outbox;
SELECT clear_events();
-- an insert condition follows renames as its trigger does
CREATE TABLE bf_rn (id integer PRIMARY KEY, name text, kind text);
INSERT INTO bf_rn VALUES (1, 'service', 'lib'), (2, 'lib', 'service');
SELECT statehub_events.track_insert('bf_rn', 'org.statehub.bf.rn', '{id,kind}',
                                    $$NEW.kind = 'service'$$);
ALTER TABLE bf_rn RENAME COLUMN kind TO kind_tmp;
ALTER TABLE bf_rn RENAME COLUMN name TO kind;
ALTER TABLE bf_rn RENAME COLUMN kind_tmp TO name;
SELECT statehub_events.backfill('bf_rn', 'org.statehub.bf.rn');
SELECT payload::json -> 'attributes' AS attributes FROM statehub_events.outbox;
SELECT clear_events();
-- a declared condition calling another role's function is not run with the
-- caller's rights
CREATE ROLE bf_other;
CREATE FUNCTION bf_spy(t text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
ALTER FUNCTION bf_spy(text) OWNER TO bf_other;
CREATE TABLE bf_spied (id integer PRIMARY KEY, kind text);
INSERT INTO bf_spied VALUES (1, 'x');
SELECT statehub_events.track_insert('bf_spied', 'org.statehub.bf.spied', '{id}',
                                    'public.bf_spy(NEW.kind)');
SELECT statehub_events.backfill('bf_spied', 'org.statehub.bf.spied');
-- a domain CHECK that changes a setting leaves nothing behind in the session
CREATE FUNCTION bf_sneaky(v text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'bf_nowhere, pg_catalog', false);
    PERFORM pg_catalog.set_config('application_name', 'bf_sneaky', false);
    RETURN true;
END $$;
CREATE DOMAIN bf_dstat AS text CHECK (bf_sneaky(VALUE));
CREATE TABLE bf_dom (id integer PRIMARY KEY, status bf_dstat);
-- (a plain INSERT runs it as the writer: that changes this session, as it would)
INSERT INTO bf_dom VALUES (1, 'completed');
RESET search_path;
SET application_name = 'bf_test';
SELECT statehub_events.track_transition('bf_dom', 'status', 'completed', 'org.statehub.bf.dom');
SELECT pg_catalog.current_setting('search_path') AS search_path,
       pg_catalog.current_setting('application_name') AS application_name;
SELECT statehub_events.backfill('bf_dom', 'org.statehub.bf.dom');
SELECT pg_catalog.current_setting('search_path') AS search_path,
       pg_catalog.current_setting('application_name') AS application_name;
RESET application_name;
SELECT clear_events();
DROP TABLE bf_new, bf_due, bf_rn, bf_spied, bf_dom;
DROP DOMAIN bf_dstat;
DROP FUNCTION bf_sneaky(text), bf_spy(text);
DROP ROLE bf_other;

-- a transition of a column whose type is a domain over an enum: the rows
-- holding the value, compared as the trigger compares them
CREATE DOMAIN bf_dstatus AS bf_status;
CREATE TABLE bf_dtrans (id integer PRIMARY KEY, status bf_dstatus);
INSERT INTO bf_dtrans VALUES (1, 'active'), (2, 'draft'), (3, 'active');
SELECT statehub_events.track_transition('bf_dtrans', 'status', 'active', 'org.statehub.bf.dactive',
                                        attributes => '{id,status}');
SELECT statehub_events.backfill('bf_dtrans', 'org.statehub.bf.dactive');
SELECT subject, payload::json -> 'attributes' AS attributes FROM statehub_events.outbox ORDER BY id;
SELECT clear_events();
DROP TABLE bf_dtrans;
DROP DOMAIN bf_dstatus;

DROP TABLE bf_repos, bf_parted, bf_row4;
DROP FUNCTION bf_attributes(text, boolean), public.bf_even(integer);
DROP ROLE bf_app;
REVOKE ALL ON FUNCTION statehub_events.capture(),
    statehub_events.track_insert(regclass, text, text[], text),
    statehub_events.backfill(regclass, text, text) FROM bf_dba;
DROP ROLE bf_dba;
DROP TYPE bf_status;
DROP DOMAIN bf_label;
