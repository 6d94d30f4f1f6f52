--
-- outbox_tx: only committed changes become events, in commit order
--
CREATE TABLE tx_t (id integer PRIMARY KEY, status text);
SELECT statehub_events.track_insert('tx_t', 'org.statehub.tx.created', '{id}');
SELECT statehub_events.track_transition('tx_t', 'status', 'done', 'org.statehub.tx.done', attributes => '{id}');

-- a rolled-back transaction queues nothing
BEGIN;
INSERT INTO tx_t VALUES (1, 'new');
UPDATE tx_t SET status = 'done';
ROLLBACK;
SELECT pg_catalog.count(*) FROM statehub_events.outbox;

-- a rolled-back savepoint takes its events with it, the rest commits
BEGIN;
INSERT INTO tx_t VALUES (2, 'new');
SAVEPOINT s1;
INSERT INTO tx_t VALUES (3, 'new');
UPDATE tx_t SET status = 'done' WHERE id = 2;
ROLLBACK TO SAVEPOINT s1;
INSERT INTO tx_t VALUES (4, 'new');
SAVEPOINT s2;
UPDATE tx_t SET status = 'done' WHERE id = 4;
RELEASE SAVEPOINT s2;
COMMIT;
SELECT * FROM show_events();
SELECT clear_events();

-- a failing statement's events go with it
BEGIN;
INSERT INTO tx_t VALUES (5, 'new');
INSERT INTO tx_t VALUES (6, 'new'), (5, 'dup');
ROLLBACK;
SELECT pg_catalog.count(*) FROM statehub_events.outbox;

-- a row's events are in the order of its changes
INSERT INTO tx_t VALUES (7, 'new');
UPDATE tx_t SET status = 'done' WHERE id = 7;
UPDATE tx_t SET status = 'reopened' WHERE id = 7;
UPDATE tx_t SET status = 'done' WHERE id = 7;
SELECT o.subject, o.payload::json -> 'attributes' AS attributes
  FROM statehub_events.outbox o ORDER BY o.id;
-- drain keys increase with the order of the changes (each statement above
-- is its own transaction, with its own timestamp)
SELECT pg_catalog.count(*) AS later_events,
       pg_catalog.bool_and(d.id > d.previous_id) AS drain_keys_increase
  FROM (SELECT o.id,
               pg_catalog.lag(o.id) OVER (ORDER BY o.enqueued_at) AS previous_id
          FROM statehub_events.outbox o) d
 WHERE d.previous_id IS NOT NULL;
-- enqueued_at is the event's timestamp, and nothing was tried yet
SELECT pg_catalog.bool_and(o.enqueued_at = (o.payload::json ->> 'timestamp')::timestamptz)
       AS enqueued_at_is_timestamp,
       pg_catalog.bool_and(o.attempts = 0 AND o.next_attempt_at IS NULL AND o.last_error IS NULL)
       AS ready
  FROM statehub_events.outbox o;
SELECT clear_events();
