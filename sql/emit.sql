--
-- emit: an event queued from SQL, in the current transaction
--
SELECT statehub_events.emit('org.statehub.task.stale',
                            '{"task_id": 42, "title": "fix \"it\"", "tags": ["a", "b"], "n": null}')
       IS NOT NULL AS queued;
SELECT statehub_events.emit('org.statehub.heartbeat.beat') IS NOT NULL AS queued;
SELECT * FROM show_events();
-- the returned id is the envelope's id and the outbox's event_id
SELECT statehub_events.emit('org.statehub.check.id', '{}') AS emitted_id \gset
SELECT pg_catalog.count(*) = 1 AS id_matches
  FROM statehub_events.outbox o
 WHERE o.event_id = :'emitted_id' AND (o.payload::json ->> 'id')::uuid = :'emitted_id';
SELECT clear_events();

-- a NULL argument is an error, never a silent no-op
SELECT statehub_events.emit('org.statehub.task.stale', NULL);
SELECT statehub_events.emit(NULL, '{}');
SELECT pg_catalog.count(*) FROM statehub_events.outbox;

-- emit inside a rolled-back transaction leaves nothing
BEGIN;
SELECT statehub_events.emit('org.statehub.task.stale', '{"task_id": 1}') IS NOT NULL AS queued;
ROLLBACK;
SELECT pg_catalog.count(*) FROM statehub_events.outbox;

-- emit is not affected by statehub_events.capture: it is an explicit call
SET statehub_events.capture = off;
SELECT statehub_events.emit('org.statehub.task.stale', '{"task_id": 2}') IS NOT NULL AS queued;
RESET statehub_events.capture;
SELECT pg_catalog.count(*) FROM statehub_events.outbox;
SELECT clear_events();

-- the publisher comes from statehub_events.publisher
SET statehub_events.publisher = 'test/publisher';
SELECT statehub_events.emit('org.statehub.task.stale', '{}') IS NOT NULL AS queued;
RESET statehub_events.publisher;
SELECT payload::json ->> 'publisher' AS publisher FROM statehub_events.outbox;
SELECT clear_events();
SET statehub_events.publisher = 'bad"publisher';
SET statehub_events.publisher = '';
