--
-- security: who may declare and queue events (docs/security.md), and the
-- attacks issue 8 reproduced against 1.0, each of which must now fail
--
CREATE ROLE sec_attacker LOGIN;
CREATE ROLE sec_temp LOGIN;
CREATE ROLE sec_owner LOGIN;
CREATE ROLE sec_other LOGIN;

-- the delegated DBA role, granted as docs/security.md says
CREATE ROLE sec_dba NOLOGIN;
GRANT EXECUTE ON FUNCTION
    statehub_events.capture(),
    statehub_events.track_insert(regclass, text, text[], text),
    statehub_events.track_transition(regclass, name, text, text, text, text[]),
    statehub_events.track_delete(regclass, text, text[]),
    statehub_events.untrack(regclass, text)
  TO sec_dba;

-- PUBLIC executes none of the extension's functions but the two the
-- mappings view reads trigger arguments and compared values with (the view
-- is what everyone may read; they show what pg_trigger shows everyone)
SELECT p.oid::regprocedure AS function
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace = 'statehub_events'::regnamespace
   AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE')
 ORDER BY 1;

--
-- 1. Operator hijack.  A role granted EXECUTE on every function of the
-- extension, owning a table, puts "=" operators of its own ahead of
-- pg_catalog's; each turns it into a superuser if it is ever called by
-- another role.  Every call fails cleanly or does its job, and the
-- operators only ever run as the attacker.
--
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA statehub_events TO sec_attacker;
CREATE SCHEMA sec_evil AUTHORIZATION sec_attacker;
SET ROLE sec_attacker;
CREATE TABLE sec_evil.victim (id integer PRIMARY KEY, status text);
CREATE FUNCTION sec_evil.escalate() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF current_user <> 'sec_attacker' THEN
        RAISE NOTICE 'hijacked operator runs as %', current_user;
        EXECUTE 'ALTER ROLE sec_attacker SUPERUSER';
    END IF;
END
$$;
-- one "=" for each type the extension's SQL compares
DO $do$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['text', 'name', 'oid'] LOOP
        EXECUTE format($f$CREATE FUNCTION sec_evil.eq(%1$s, %1$s) RETURNS boolean
                          LANGUAGE plpgsql AS $b$
                          BEGIN
                              PERFORM sec_evil.escalate();
                              RETURN $1 OPERATOR(pg_catalog.=) $2;
                          END $b$$f$, t);
        EXECUTE format('CREATE OPERATOR sec_evil.= (LEFTARG = %1$s, RIGHTARG = %1$s, FUNCTION = sec_evil.eq)', t);
    END LOOP;
END
$do$;
SET search_path = sec_evil, pg_catalog;
SELECT statehub_events.track_insert('sec_evil.victim', 'org.statehub.sec.created');
SELECT statehub_events.track_insert('sec_evil.victim', 'org.statehub.sec.created', '{id}');
SELECT statehub_events.track_transition('sec_evil.victim', 'status', 'done', 'org.statehub.sec.done');
SELECT statehub_events.track_delete('sec_evil.victim', 'org.statehub.sec.created');
SELECT statehub_events.untrack('sec_evil.victim', 'org.statehub.sec.done');
SELECT statehub_events.untrack('sec_evil.victim', 'org.statehub.sec.never');
INSERT INTO sec_evil.victim VALUES (1, 'new');
DROP TABLE sec_evil.victim;
RESET search_path;
RESET ROLE;
SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'sec_attacker';
-- the insert was captured as declared, and the dropped table left no mapping
SELECT subject, payload::json -> 'attributes' AS attributes FROM statehub_events.outbox;
SELECT pg_catalog.count(*) AS stale_mappings
  FROM statehub_events.mapping m
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = m.table_name);
SELECT clear_events();

--
-- 2. A role with only the default rights (CONNECT, TEMP) cannot queue an
-- event by any path: no trigger on capture(), no track_*, no emit().
--
\set VERBOSITY sqlstate
SET ROLE sec_temp;
CREATE TEMP TABLE sec_forge (id integer);
CREATE TRIGGER forge AFTER INSERT ON sec_forge FOR EACH ROW
    EXECUTE FUNCTION statehub_events.capture('org.statehub.repo.registered', 'all');
SELECT statehub_events.track_insert('pg_temp.sec_forge', 'org.statehub.repo.registered');
SELECT statehub_events.emit('org.statehub.repo.registered', '{}');
SELECT statehub_events.retry_dead_letters();
SELECT statehub_events.wake_worker();
INSERT INTO sec_forge VALUES (1);
RESET ROLE;
\set VERBOSITY default
DROP TABLE sec_forge;
SELECT pg_catalog.count(*) AS queued FROM statehub_events.outbox;

--
-- 3. A table owner cannot declare events on its own table without the
-- grant; once granted the delegated DBA role, it can.
--
CREATE TABLE sec_owned (id integer PRIMARY KEY, status text);
ALTER TABLE sec_owned OWNER TO sec_owner;
SET ROLE sec_owner;
SELECT statehub_events.track_insert('sec_owned', 'org.statehub.sec.owned');
RESET ROLE;
GRANT sec_dba TO sec_owner;
SET ROLE sec_owner;
SELECT statehub_events.track_insert('sec_owned', 'org.statehub.sec.owned');
RESET ROLE;
-- the grant covers no table the role may not create triggers on
CREATE TABLE sec_not_theirs (id integer);
SET ROLE sec_owner;
SELECT statehub_events.track_insert('sec_not_theirs', 'org.statehub.sec.other');
INSERT INTO sec_owned VALUES (1, 'new');
RESET ROLE;
SELECT subject FROM statehub_events.outbox;
SELECT clear_events();
-- with the optional grant of the docs, it puts a dead letter back (it has,
-- and needs, no rights on the outbox or the dead letters)
INSERT INTO statehub_events.dead_letter (id, event_id, subject, payload, enqueued_at, attempts, reason)
VALUES (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'org.statehub.sec.dead', '{}', pg_catalog.now(), 3, 'test');
GRANT EXECUTE ON FUNCTION statehub_events.retry_dead_letters(uuid[]) TO sec_dba;
SET ROLE sec_owner;
SELECT statehub_events.retry_dead_letters();
RESET ROLE;
SELECT pg_catalog.count(*) AS dead_letters FROM statehub_events.dead_letter;
REVOKE EXECUTE ON FUNCTION statehub_events.retry_dead_letters(uuid[]) FROM sec_dba;
SELECT event_id, subject FROM statehub_events.outbox;
SELECT clear_events();

--
-- 4. Temporary tables are refused; no mapping outlives its table or its
-- trigger, whatever drops them.
--
CREATE TEMP TABLE sec_temp_t (id integer);
SELECT statehub_events.track_insert('sec_temp_t', 'org.statehub.sec.temp');
DROP TABLE sec_temp_t;

CREATE SCHEMA sec_drop;
CREATE TABLE sec_drop.a (id integer PRIMARY KEY, status text, extra text);
CREATE TABLE sec_drop.b (id integer PRIMARY KEY);
CREATE TABLE sec_drop.c (id integer PRIMARY KEY);
SELECT statehub_events.track_insert('sec_drop.a', 'org.statehub.sec.a-created', '{id,status}');
SELECT statehub_events.track_transition('sec_drop.a', 'extra', 'x', 'org.statehub.sec.a-extra');
SELECT statehub_events.track_delete('sec_drop.b', 'org.statehub.sec.b-deleted');
SELECT statehub_events.track_insert('sec_drop.c', 'org.statehub.sec.c-created');
SELECT table_name::text, event_type FROM statehub_events.mapping
 WHERE event_type LIKE 'org.statehub.sec.%' ORDER BY 2;
ALTER TABLE sec_drop.a DROP COLUMN extra CASCADE;
DROP TRIGGER "statehub_events:org.statehub.sec.c-created" ON sec_drop.c;
SELECT table_name::text, event_type FROM statehub_events.mapping
 WHERE event_type LIKE 'org.statehub.sec.%' ORDER BY 2;
DROP TABLE sec_drop.b;
SELECT table_name::text, event_type FROM statehub_events.mapping
 WHERE event_type LIKE 'org.statehub.sec.%' ORDER BY 2;
-- a declared capture trigger keeps its name: a rename is refused
ALTER TRIGGER "statehub_events:org.statehub.sec.a-created" ON sec_drop.a RENAME TO renamed;
SELECT tgname FROM pg_catalog.pg_trigger
 WHERE tgrelid = 'sec_drop.a'::regclass AND NOT tgisinternal ORDER BY 1;
SET client_min_messages = warning;
DROP SCHEMA sec_drop CASCADE;
RESET client_min_messages;
SELECT table_name::text, event_type FROM statehub_events.mapping
 WHERE event_type LIKE 'org.statehub.sec.%' ORDER BY 2;
SELECT pg_catalog.count(*) AS stale_mappings
  FROM statehub_events.mapping m
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = m.table_name);

--
-- 5. An event type is declared once per table: track_delete after
-- track_insert of the same type fails, and the insert mapping stays.
--
CREATE TABLE sec_once (id integer PRIMARY KEY, status text);
SELECT statehub_events.track_insert('sec_once', 'org.statehub.sec.once');
SELECT statehub_events.track_delete('sec_once', 'org.statehub.sec.once');
SELECT statehub_events.track_transition('sec_once', 'status', 'done', 'org.statehub.sec.once');
SELECT table_name, event_type, operation FROM statehub_events.mappings
 WHERE table_name = 'sec_once'::regclass;
-- the same function again replaces, as before
SELECT statehub_events.track_insert('sec_once', 'org.statehub.sec.once', '{id}');
SELECT table_name, event_type, operation, attributes FROM statehub_events.mappings
 WHERE table_name = 'sec_once'::regclass;
-- after untrack, the type is free for another operation
SELECT statehub_events.untrack('sec_once', 'org.statehub.sec.once');
SELECT statehub_events.track_delete('sec_once', 'org.statehub.sec.once');
SELECT table_name, event_type, operation FROM statehub_events.mappings
 WHERE table_name = 'sec_once'::regclass;
DROP TABLE sec_once, sec_owned, sec_not_theirs;

--
-- 5b. The column type's own code runs as the table's owner, never as the
-- role declaring the event: a domain CHECK of the owner's that would make
-- the owner superuser when run by a superuser runs as the owner (twice:
-- to_value and from_value) and makes nobody superuser.
--
CREATE SCHEMA sec_dom AUTHORIZATION sec_owner;
SET ROLE sec_owner;
CREATE TABLE sec_dom.seen (who name, search_path text);
CREATE FUNCTION sec_dom.check_st(v text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sec_dom.seen VALUES (current_user, current_setting('search_path'));
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE 'ALTER ROLE sec_owner SUPERUSER';
    END IF;
    RETURN true;
END
$$;
CREATE DOMAIN sec_dom.st AS text CHECK (sec_dom.check_st(VALUE));
CREATE TABLE sec_dom.t (id integer PRIMARY KEY, status sec_dom.st);
RESET ROLE;
SELECT statehub_events.track_transition('sec_dom.t', 'status', 'done',
                                        'org.statehub.sec.dom-done', from_value => 'open');
SELECT who, search_path, pg_catalog.count(*) FROM sec_dom.seen GROUP BY 1, 2;
SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'sec_owner';
SET client_min_messages = warning;
DROP SCHEMA sec_dom CASCADE;
RESET client_min_messages;

--
-- 6. The extension owns its schema: DROP EXTENSION leaves none behind, and
-- CREATE EXTENSION refuses a schema someone prepared.
--
SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) AS object,
       d.deptype
  FROM pg_catalog.pg_depend d
 WHERE d.classid = 'pg_catalog.pg_namespace'::regclass
   AND d.objid = 'statehub_events'::regnamespace;
SELECT e.extnamespace::regnamespace AS extnamespace
  FROM pg_catalog.pg_extension e WHERE e.extname = 'statehub_events';
SET client_min_messages = warning;
DROP EXTENSION statehub_events CASCADE;
RESET client_min_messages;
SELECT pg_catalog.count(*) AS schemas_left
  FROM pg_catalog.pg_namespace WHERE nspname = 'statehub_events';
CREATE SCHEMA statehub_events AUTHORIZATION sec_other;
CREATE EXTENSION statehub_events;
DROP SCHEMA statehub_events;
SET client_min_messages = error;
CREATE EXTENSION statehub_events;
RESET client_min_messages;
SELECT n.nspowner = e.extowner AS schema_owned_by_installer
  FROM pg_catalog.pg_namespace n, pg_catalog.pg_extension e
 WHERE n.nspname = 'statehub_events' AND e.extname = 'statehub_events';

DROP SCHEMA sec_evil CASCADE;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA statehub_events FROM sec_attacker;
DROP ROLE sec_attacker, sec_temp, sec_owner, sec_other, sec_dba;
