--
-- operations: what on-call staff (pg_monitor) see, and DROP EXTENSION
-- refused while it would discard events (issue 12, items 8-11)
--

-- the regression database is not the one the worker drains: the status
-- view says so, and shows nothing of the worker's
SELECT pid, state, drained_database, published, failed, last_error
  FROM statehub_events.status;
SELECT count(*) FROM statehub_events.event_counters;

-- an event queued, with something secret in its payload, and a dead letter
CREATE TABLE ops_t (id int PRIMARY KEY, secret text);
SELECT statehub_events.track_insert('ops_t', 'org.statehub.test.ops_created');
INSERT INTO ops_t VALUES (1, 's3cr3t');
INSERT INTO statehub_events.dead_letter
       (id, event_id, subject, payload, enqueued_at, attempts, reason)
VALUES (-1, '00000000-0000-4000-8000-000000000001', 'org.statehub.test.ops_dead',
        '{"secret": "s3cr3t"}', now(), 5, 'no stream listens on the subject');
UPDATE statehub_events.outbox SET attempts = 2, last_error = 'rejected';

CREATE ROLE regress_oncall IN ROLE pg_monitor;
CREATE ROLE regress_plain;

-- pg_monitor: the queue without payloads, the counters, not the tables
SET ROLE regress_oncall;
SELECT queue, subject, attempts, enqueued_at IS NOT NULL AS has_enqueued_at,
       next_attempt_at, failed_at IS NOT NULL AS has_failed_at, last_error, reason
  FROM statehub_events.undelivered
 ORDER BY queue DESC, id;
SELECT count(*) AS rows_with_payload_text
  FROM statehub_events.undelivered u
 WHERE u::text LIKE '%s3cr3t%';
SELECT payload FROM statehub_events.undelivered;
SELECT count(*) FROM statehub_events.outbox;
SELECT count(*) FROM statehub_events.dead_letter;
SELECT state FROM statehub_events.status;
SELECT count(*) FROM statehub_events.event_counters;
SELECT statehub_events.reset_counters();
RESET ROLE;

-- a role without pg_monitor: nothing
SET ROLE regress_plain;
SELECT count(*) FROM statehub_events.undelivered;
SELECT count(*) FROM statehub_events.event_counters;
SELECT count(*) FROM statehub_events.status;
RESET ROLE;

-- the view's column list: no payload among them
SELECT attname FROM pg_attribute
 WHERE attrelid = 'statehub_events.undelivered'::regclass AND attnum > 0
 ORDER BY attnum;

-- nothing drains this database: wait_for_drain() says so at once
SELECT statehub_events.wait_for_drain('1 min');

-- DROP EXTENSION is refused while events are queued or dead-lettered
DROP EXTENSION statehub_events;
DROP EXTENSION statehub_events CASCADE;
DROP EXTENSION IF EXISTS no_such_extension, statehub_events CASCADE;
-- a role without the owner's privileges learns nothing of the queue
SET ROLE regress_plain;
DROP EXTENSION statehub_events CASCADE;
RESET ROLE;
-- and so is a DROP OWNED that would take the extension with it
BEGIN;
DROP OWNED BY CURRENT_USER CASCADE;
ROLLBACK;
-- other DROPs are not concerned
DROP EXTENSION IF EXISTS no_such_extension;
BEGIN;
DROP OWNED BY regress_plain;
ROLLBACK;
SELECT count(*) AS still_queued FROM statehub_events.outbox;

-- with the dead letters given up, the queued event still holds it back
BEGIN;
DELETE FROM statehub_events.dead_letter;
DROP EXTENSION statehub_events CASCADE;
ROLLBACK;

-- rows deleted on purpose: the drop goes through
BEGIN;
DELETE FROM statehub_events.outbox;
DELETE FROM statehub_events.dead_letter;
DROP EXTENSION statehub_events CASCADE;
SELECT count(*) FROM pg_extension WHERE extname = 'statehub_events';
ROLLBACK;

-- a superuser's way out without touching the rows (docs/operations.md)
BEGIN;
SET LOCAL session_replication_role = replica;
DROP EXTENSION statehub_events CASCADE;
SELECT count(*) FROM pg_extension WHERE extname = 'statehub_events';
ROLLBACK;

SELECT count(*) AS still_queued FROM statehub_events.outbox;

-- clean up
DELETE FROM statehub_events.outbox;
DELETE FROM statehub_events.dead_letter;
DROP TABLE ops_t;
DROP ROLE regress_oncall;
DROP ROLE regress_plain;
