--
-- privileges: application roles write tracked tables without any right on
-- the outbox; they can neither read nor forge events; declaring events needs
-- the ordinary right to create triggers and escalates nothing
--
CREATE ROLE priv_app LOGIN;
CREATE ROLE priv_dba LOGIN;
CREATE TABLE priv_t (id integer PRIMARY KEY, status text);
GRANT SELECT, INSERT, UPDATE, DELETE ON priv_t TO priv_app;
SELECT statehub_events.track_insert('priv_t', 'org.statehub.priv.created');
SELECT statehub_events.track_transition('priv_t', 'status', 'done', 'org.statehub.priv.done');

SET ROLE priv_app;
INSERT INTO priv_t VALUES (1, 'new');
UPDATE priv_t SET status = 'done';
SELECT * FROM statehub_events.outbox;
INSERT INTO statehub_events.outbox (event_id, subject, payload)
    VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'org.statehub.forged.event', '{}');
DELETE FROM statehub_events.outbox;
SELECT * FROM statehub_events.dead_letter;
SELECT * FROM statehub_events.mapping;
SELECT statehub_events.emit('org.statehub.forged.event', '{}');
SELECT pg_catalog.nextval('statehub_events.outbox_id_seq');
SELECT * FROM statehub_events.status;
-- the mappings view is public
SELECT table_name, event_type FROM statehub_events.mappings WHERE table_name = 'priv_t'::regclass;
-- no right to create triggers on the table: no declaration
SELECT statehub_events.track_delete('priv_t', 'org.statehub.priv.deleted');
SELECT statehub_events.untrack('priv_t', 'org.statehub.priv.created');
RESET ROLE;

-- the events of the application's writes were queued all the same
SELECT * FROM show_events();
SELECT clear_events();

-- the TRIGGER privilege alone declares nothing: declaring is the DBA's to grant
CREATE TABLE priv_other (id integer PRIMARY KEY);
GRANT TRIGGER ON priv_t TO priv_dba;
SET ROLE priv_dba;
SELECT statehub_events.track_delete('priv_t', 'org.statehub.priv.deleted', '{id}');
RESET ROLE;
-- granted as docs/security.md says, it may declare events on that table only
GRANT EXECUTE ON FUNCTION
    statehub_events.capture(),
    statehub_events.track_insert(regclass, text, text[], text),
    statehub_events.track_transition(regclass, name, text, text, text, text[]),
    statehub_events.track_delete(regclass, text, text[]),
    statehub_events.untrack(regclass, text)
  TO priv_dba;
SET ROLE priv_dba;
SELECT statehub_events.track_delete('priv_t', 'org.statehub.priv.deleted', '{id}');
SELECT statehub_events.track_insert('priv_other', 'org.statehub.priv.other');
RESET ROLE;
SELECT table_name, event_type, operation FROM statehub_events.mappings
 WHERE table_name = 'priv_t'::regclass ORDER BY event_type;

-- a search_path cannot redirect the operators the extension compiled in
CREATE SCHEMA evil;
CREATE FUNCTION evil.always(text, text) RETURNS boolean
    LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.always);
SET search_path = evil, pg_catalog, public;
SELECT statehub_events.track_transition('priv_t', 'status', 'archived', 'org.statehub.priv.archived', attributes => '{id}');
UPDATE priv_t SET status = 'something-else';
RESET search_path;
SELECT pg_catalog.count(*) AS events FROM statehub_events.outbox;
UPDATE priv_t SET status = 'archived';
SELECT subject FROM statehub_events.outbox;
SELECT clear_events();

DROP SCHEMA evil CASCADE;
DROP TABLE priv_t, priv_other;
DROP ROLE priv_app;
DROP OWNED BY priv_dba;
DROP ROLE priv_dba;
