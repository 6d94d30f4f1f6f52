--
-- track_errors: bad declarations are refused with a clear error, and leave
-- nothing behind
--
CREATE TABLE err_t (id integer PRIMARY KEY, status text, payload json, n integer);
CREATE VIEW err_v AS SELECT * FROM err_t;
CREATE SEQUENCE err_seq;
CREATE TYPE err_enum AS ENUM ('x', 'y');
CREATE TABLE err_e (id integer, status err_enum, previous text);
CREATE TABLE err_p (id integer, status text, previous text);

-- a table that does not exist, or is not a table
SELECT statehub_events.track_insert('no_such_table', 'org.statehub.x.y');
SELECT statehub_events.track_insert('err_v', 'org.statehub.x.y');
SELECT statehub_events.track_insert('err_seq', 'org.statehub.x.y');
SELECT statehub_events.track_insert('statehub_events.outbox', 'org.statehub.x.y');
SELECT statehub_events.track_insert(NULL, 'org.statehub.x.y');

-- event types that are not valid literal NATS subjects for this use
SELECT statehub_events.track_insert('err_t', 'repo');
SELECT statehub_events.track_insert('err_t', '');
SELECT statehub_events.track_insert('err_t', 'org.statehub.*');
SELECT statehub_events.track_insert('err_t', 'org.statehub.>');
SELECT statehub_events.track_insert('err_t', 'org..statehub');
SELECT statehub_events.track_insert('err_t', '.org.statehub');
SELECT statehub_events.track_insert('err_t', 'org.statehub.');
SELECT statehub_events.track_insert('err_t', 'org.state hub');
SELECT statehub_events.track_insert('err_t', 'org.StateHub.repo');
SELECT statehub_events.track_insert('err_t', E'org.statehub\t.x');
SELECT statehub_events.track_insert('err_t', 'org.' || pg_catalog.repeat('a', 252));
SELECT statehub_events.track_insert('err_t', NULL);
-- at the limit is fine: 255 bytes
SELECT statehub_events.track_insert('err_t', 'org.' || pg_catalog.repeat('a', 251));
SELECT pg_catalog.length(event_type) FROM statehub_events.mappings WHERE table_name = 'err_t'::regclass;
SELECT statehub_events.untrack('err_t', 'org.' || pg_catalog.repeat('a', 251));

-- unknown columns
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', '{id,nope}');
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', '{id,id}');
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', '{id,NULL}');
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', '{{id},{n}}');
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', '{ctid}');
SELECT statehub_events.track_transition('err_t', 'nope', 'x', 'org.statehub.x.y');
SELECT statehub_events.track_transition('err_t', 'status', 'x', 'org.statehub.x.y', attributes => '{nope}');

-- values that are not valid for the column's type
SELECT statehub_events.track_transition('err_t', 'n', 'three', 'org.statehub.x.y');
SELECT statehub_events.track_transition('err_e', 'status', 'z', 'org.statehub.x.y', attributes => '{id}');
SELECT statehub_events.track_transition('err_e', 'status', 'y', 'org.statehub.x.y', from_value => 'z', attributes => '{id}');
SELECT statehub_events.track_transition('err_e', 'status', 'y', 'org.statehub.x.y', from_value => 'y', attributes => '{id}');
SELECT statehub_events.track_transition('err_t', 'status', NULL, 'org.statehub.x.y');
-- a type without equality cannot be tracked
SELECT statehub_events.track_transition('err_t', 'payload', '{}', 'org.statehub.x.y');
-- "previous" is reserved in transition events
SELECT statehub_events.track_transition('err_p', 'status', 'y', 'org.statehub.x.y');
SELECT statehub_events.track_transition('err_p', 'status', 'y', 'org.statehub.x.y', attributes => '{id,previous}');

-- bad conditions
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', NULL, 'NEW.nope = 1');
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', NULL, 'NEW.n + 1');
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', NULL, 'OLD.n = 1');
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', NULL, 'NEW.n = (SELECT 1)');
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', NULL, 'NEW.n = 1 FROM err_t');
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', NULL, 'true) EXECUTE FUNCTION pg_catalog.now(); --');
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', NULL, 'NEW.n = 1; DROP TABLE err_t');
SELECT statehub_events.track_insert('err_t', 'org.statehub.x.y', NULL, 'NEW.n = ');

-- emit's own checks
SELECT statehub_events.emit('org.statehub.x', '[1, 2]');
SELECT statehub_events.emit('org.statehub.x', '"text"');
SELECT statehub_events.emit('no-dots', '{}');

-- nothing was half-created by any of the above
SELECT pg_catalog.count(*) AS mappings FROM statehub_events.mapping
 WHERE table_name IN ('err_t'::regclass, 'err_e'::regclass, 'err_p'::regclass);
SELECT tgname FROM pg_catalog.pg_trigger
 WHERE tgrelid IN ('err_t'::regclass, 'err_e'::regclass, 'err_p'::regclass) AND NOT tgisinternal;
-- (an existing mapping survives a failed attempt to replace it)
SELECT statehub_events.track_insert('err_p', 'org.statehub.x.y', '{id}');
SELECT statehub_events.track_insert('err_p', 'org.statehub.x.y', '{nope}');
SELECT statehub_events.track_insert('err_p', 'org.statehub.x.y', NULL, 'NEW.nope');
SELECT table_name, event_type, attributes FROM statehub_events.mappings WHERE table_name = 'err_p'::regclass;
SELECT pg_catalog.count(*) AS events FROM statehub_events.outbox;

-- the trigger function refuses to be misused
CREATE TRIGGER wrong BEFORE INSERT ON err_t FOR EACH ROW
    EXECUTE FUNCTION statehub_events.capture('org.statehub.x.y', 'all');
INSERT INTO err_t VALUES (1);
DROP TRIGGER wrong ON err_t;
CREATE TRIGGER wrong AFTER INSERT ON err_t FOR EACH STATEMENT
    EXECUTE FUNCTION statehub_events.capture('org.statehub.x.y', 'all');
INSERT INTO err_t VALUES (2);
DROP TRIGGER wrong ON err_t;
CREATE TRIGGER wrong AFTER INSERT ON err_t FOR EACH ROW
    EXECUTE FUNCTION statehub_events.capture();
INSERT INTO err_t VALUES (3);
DROP TRIGGER wrong ON err_t;
CREATE TRIGGER wrong AFTER INSERT ON err_t FOR EACH ROW
    EXECUTE FUNCTION statehub_events.capture('org.statehub."quoted"', 'all');
INSERT INTO err_t VALUES (4);
DROP TRIGGER wrong ON err_t;
SELECT statehub_events.capture();
SELECT pg_catalog.count(*) AS events FROM statehub_events.outbox;

DROP TABLE err_t CASCADE;
DROP TABLE err_e, err_p;
DROP SEQUENCE err_seq;
DROP TYPE err_enum;
