/* statehub_events--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION statehub_events UPDATE TO '1.2'" to load this file. \quit

/*
 * Brings an installed 1.1 to exactly what statehub_events--1.2.sql creates:
 * test/t/010_upgrade.pl compares the two (objects, privileges, pg_dump)
 * after every change.  Each section names the change it makes.
 */

-- ---------------------------------------------------------------------------
-- Operations (1.2, issue 12 items 8-11): the status view in a database the
-- worker does not drain, last errors that are past, counters per event
-- type, the queue for pg_monitor, and DROP EXTENSION refused while events
-- would be lost
-- ---------------------------------------------------------------------------

/* worker_status() gets new columns: it and the view on it are made again */
DROP VIEW statehub_events.status;
DROP FUNCTION statehub_events.worker_status();

/*
 * The worker drains one database per cluster (statehub_events.database).
 * In any other database, state is 'not draining this database' and
 * drained_database names the one it drains; nothing else of the worker's
 * is shown there.  last_error_resolved_at is set once the worker is
 * connected and delivering again after the last error (NULL while it is
 * current).
 */
CREATE FUNCTION statehub_events.worker_status(
    OUT pid pg_catalog.int4,
    OUT state pg_catalog.text,
    OUT drained_database pg_catalog.text,
    OUT server pg_catalog.text,
    OUT stream pg_catalog.text,
    OUT published pg_catalog.int8,
    OUT failed pg_catalog.int8,
    OUT last_error pg_catalog.text,
    OUT last_error_at pg_catalog.timestamptz,
    OUT last_error_resolved_at pg_catalog.timestamptz,
    OUT last_publish_at pg_catalog.timestamptz,
    OUT dedup_window pg_catalog.interval)
RETURNS record
AS 'MODULE_PATHNAME', 'worker_status'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION statehub_events.worker_status() IS
'The delivery worker''s shared state; read it through the status view.';

CREATE VIEW statehub_events.status AS
SELECT w.pid,
       w.state,
       w.drained_database,
       w.server,
       w.stream,
       q.queued,
       pg_catalog.now() - q.oldest_enqueued_at AS oldest_queued_age,
       q.retrying,
       d.dead_letters,
       w.published,
       w.failed,
       w.last_error,
       w.last_error_at,
       w.last_error_resolved_at,
       w.last_publish_at,
       w.dedup_window,
       COALESCE(q.oldest_enqueued_at < pg_catalog.now() - w.dedup_window,
                false) AS dedup_window_exceeded
  FROM statehub_events.worker_status() w,
       LATERAL (SELECT pg_catalog.count(*) AS queued,
                       pg_catalog.min(o.enqueued_at) AS oldest_enqueued_at,
                       pg_catalog.count(*) FILTER (WHERE o.attempts > 0) AS retrying
                  FROM statehub_events.outbox o) q,
       LATERAL (SELECT pg_catalog.count(*) AS dead_letters
                  FROM statehub_events.dead_letter) d;

COMMENT ON VIEW statehub_events.status IS
'Delivery health: worker state and drained database, NATS server and stream, queue depth and age, dead letters, counters, last error.';

REVOKE ALL ON statehub_events.status FROM PUBLIC;
REVOKE ALL ON FUNCTION statehub_events.worker_status() FROM PUBLIC;
GRANT SELECT ON statehub_events.status TO pg_monitor;
GRANT EXECUTE ON FUNCTION statehub_events.worker_status() TO pg_monitor;

/*
 * Published and failed events per event type since the worker started,
 * from a fixed-size table in shared memory: at most 1000 event types one
 * by one, any further ones together as '(other)' (src/counters.c).
 */
CREATE FUNCTION statehub_events.event_type_counters(
    OUT event_type pg_catalog.text,
    OUT published pg_catalog.int8,
    OUT failed pg_catalog.int8)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'event_type_counters'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION statehub_events.event_type_counters() IS
'The delivery worker''s counters per event type; read them through the event_counters view.';

CREATE VIEW statehub_events.event_counters AS
SELECT c.event_type,
       c.published,
       c.failed
  FROM statehub_events.event_type_counters() c
 ORDER BY c.event_type;

COMMENT ON VIEW statehub_events.event_counters IS
'Events published and failed per event type since the worker started (or reset_counters()).';

REVOKE ALL ON statehub_events.event_counters FROM PUBLIC;
REVOKE ALL ON FUNCTION statehub_events.event_type_counters() FROM PUBLIC;
GRANT SELECT ON statehub_events.event_counters TO pg_monitor;
GRANT EXECUTE ON FUNCTION statehub_events.event_type_counters() TO pg_monitor;

/* As pg_stat_statements_reset(): the DBA's, granted on purpose. */
CREATE FUNCTION statehub_events.reset_counters()
RETURNS pg_catalog.void
AS 'MODULE_PATHNAME', 'reset_counters'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION statehub_events.reset_counters() IS
'Sets the per-event-type counters and the status view''s published and failed to zero.';

REVOKE ALL ON FUNCTION statehub_events.reset_counters() FROM PUBLIC;

/*
 * The outbox and the dead letters for on-call staff (pg_monitor): every
 * column but the payload, which is the event's data.  The view reads the
 * tables with its owner's rights; pg_monitor gets no right on the tables.
 */
CREATE VIEW statehub_events.undelivered AS
SELECT 'outbox'::pg_catalog.text AS queue,
       o.id,
       o.event_id,
       o.subject,
       o.attempts,
       o.enqueued_at,
       o.next_attempt_at,
       NULL::pg_catalog.timestamptz AS failed_at,
       o.last_error,
       NULL::pg_catalog.text AS reason
  FROM statehub_events.outbox o
UNION ALL
SELECT 'dead_letter'::pg_catalog.text,
       d.id,
       d.event_id,
       d.subject,
       d.attempts,
       d.enqueued_at,
       NULL::pg_catalog.timestamptz,
       d.failed_at,
       NULL::pg_catalog.text,
       d.reason
  FROM statehub_events.dead_letter d;

COMMENT ON VIEW statehub_events.undelivered IS
'Queued events (queue = ''outbox'') and dead letters (queue = ''dead_letter''), without their payloads.';

REVOKE ALL ON statehub_events.undelivered FROM PUBLIC;
GRANT SELECT ON statehub_events.undelivered TO pg_monitor;

/*
 * DROP EXTENSION statehub_events (and a DROP OWNED that would take it) is
 * refused while the outbox or the dead letters hold events: losing them
 * is a decision (wait_for_drain(), or delete the rows on purpose), not a
 * side effect of CASCADE.  The function reads the parse tree, hence C; it
 * runs as the caller (only one with the owner's privileges can drop the
 * extension, and only such a one learns how much it holds), with a pinned
 * search_path.
 */
CREATE FUNCTION statehub_events.refuse_drop_with_events()
RETURNS pg_catalog.event_trigger
AS 'MODULE_PATHNAME', 'refuse_drop_with_events'
LANGUAGE C
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION statehub_events.refuse_drop_with_events() IS
'Event trigger function: refuses to drop the extension while it holds undelivered events.';

REVOKE ALL ON FUNCTION statehub_events.refuse_drop_with_events() FROM PUBLIC;

CREATE EVENT TRIGGER statehub_events_refuse_drop_with_events ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP OWNED')
    EXECUTE FUNCTION statehub_events.refuse_drop_with_events();

COMMENT ON EVENT TRIGGER statehub_events_refuse_drop_with_events IS
'Keeps DROP EXTENSION statehub_events from discarding queued events and dead letters.';
