/* statehub_events--1.2.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION statehub_events" to load this file. \quit

/*
 * Every object lives in the fixed schema statehub_events; every built-in is
 * pg_catalog-qualified and every function that runs SQL pins search_path,
 * so nothing here can be redirected by a caller's search_path.
 */

-- ---------------------------------------------------------------------------
-- The schema (1.1): the extension's own
-- ---------------------------------------------------------------------------

/*
 * Created here rather than by the control file (whose schema is
 * pg_catalog, as pg_cron's), so it is a member of the extension: DROP
 * EXTENSION drops it, and CREATE EXTENSION fails on a schema that already
 * exists instead of adopting one another role prepared.
 */
CREATE SCHEMA statehub_events;

COMMENT ON SCHEMA statehub_events IS
'Objects of the statehub_events extension (dropped with it).';

/*
 * Anyone may look up the extension's objects; each table, view and function
 * below carries its own rights (the outbox and dead letters: none).
 */
GRANT USAGE ON SCHEMA statehub_events TO PUBLIC;

-- ---------------------------------------------------------------------------
-- The DBA's declarations
-- ---------------------------------------------------------------------------

CREATE TABLE statehub_events.mapping (
    table_name      pg_catalog.regclass NOT NULL,
    event_type      pg_catalog.text NOT NULL,
    operation       pg_catalog.text NOT NULL,
    column_name     pg_catalog.name,
    from_value      pg_catalog.text,
    to_value        pg_catalog.text,
    attributes      pg_catalog.text[],
    condition       pg_catalog.text,
    trigger_name    pg_catalog.name NOT NULL,
    declared_at     pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (table_name, event_type),
    CONSTRAINT mapping_operation_check
        CHECK (operation IN ('insert', 'update', 'delete'))
);

COMMENT ON TABLE statehub_events.mapping IS
'Row changes declared as events (written by track_insert, track_transition, track_delete and untrack; read through the mappings view).';

SELECT pg_catalog.pg_extension_config_dump('statehub_events.mapping', '');

/*
 * A mapping is in force while its trigger exists.  A DROP TABLE, or a DROP
 * COLUMN ... CASCADE that takes a transition trigger with it, leaves a stale
 * row behind; the view hides it and the next track/untrack on the table
 * prunes it.  column_name is read from the trigger, so it follows a RENAME.
 */
CREATE VIEW statehub_events.mappings AS
SELECT m.table_name,
       m.event_type,
       m.operation,
       a.attname AS column_name,
       m.from_value,
       m.to_value,
       m.attributes,
       m.condition
  FROM statehub_events.mapping m
  JOIN pg_catalog.pg_trigger t
    ON t.tgrelid = m.table_name::pg_catalog.oid
   AND t.tgname = m.trigger_name
  LEFT JOIN pg_catalog.pg_attribute a
    ON m.operation = 'update'
   AND a.attrelid = t.tgrelid
   AND a.attnum = t.tgattr[0]
 ORDER BY m.table_name::pg_catalog.text, m.event_type;

COMMENT ON VIEW statehub_events.mappings IS
'The row changes that are currently captured as events, one row per (table, event type).';

GRANT SELECT ON statehub_events.mappings TO PUBLIC;

-- ---------------------------------------------------------------------------
-- The outbox: events queued by committed transactions, drained by the worker
-- ---------------------------------------------------------------------------

/* Drain order.  CACHE 1 keeps ids in allocation order across backends. */
CREATE SEQUENCE statehub_events.outbox_id_seq AS pg_catalog.int8 CACHE 1;

COMMENT ON SEQUENCE statehub_events.outbox_id_seq IS
'Drain order of statehub_events.outbox.';

/*
 * A queue table that churns.  Only the primary key is indexed: capture
 * appends with a direct heap and index insert (see src/outbox.c), and the
 * worker walks the primary key from a cursor it keeps, so it never wades
 * through the dead entries that a held-back xmin leaves behind it.  Vacuum
 * is told to keep up with the churn on its own.
 */
CREATE TABLE statehub_events.outbox (
    id              pg_catalog.int8 NOT NULL
                    DEFAULT pg_catalog.nextval('statehub_events.outbox_id_seq'::pg_catalog.regclass),
    event_id        pg_catalog.uuid NOT NULL,
    subject         pg_catalog.text NOT NULL,
    payload         pg_catalog.text NOT NULL,
    enqueued_at     pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    attempts        pg_catalog.int4 NOT NULL DEFAULT 0,
    next_attempt_at pg_catalog.timestamptz,
    last_error      pg_catalog.text,
    CONSTRAINT outbox_pkey PRIMARY KEY (id)
) WITH (autovacuum_vacuum_scale_factor = 0.0,
        autovacuum_vacuum_threshold = 10000,
        autovacuum_vacuum_cost_delay = 0);

ALTER SEQUENCE statehub_events.outbox_id_seq OWNED BY statehub_events.outbox.id;

/*
 * Delivery worker (issue 9): the worker finds due retries below its scan
 * cursor through this index instead of rescanning the outbox from its
 * start; only rescheduled rows have next_attempt_at, so it stays small.
 */
CREATE INDEX outbox_next_attempt_at_idx ON statehub_events.outbox (next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;

COMMENT ON TABLE statehub_events.outbox IS
'Events queued by committed transactions, waiting for delivery to NATS JetStream; payload is the exact published body.';
COMMENT ON COLUMN statehub_events.outbox.id IS 'Drain order (oldest first).';
COMMENT ON COLUMN statehub_events.outbox.event_id IS 'Envelope id, published as the Nats-Msg-Id header.';
COMMENT ON COLUMN statehub_events.outbox.subject IS 'NATS subject (the event type).';
COMMENT ON COLUMN statehub_events.outbox.payload IS 'The envelope, byte for byte as it is published.';
COMMENT ON COLUMN statehub_events.outbox.attempts IS 'Delivery attempts the event was rejected on.';
COMMENT ON COLUMN statehub_events.outbox.next_attempt_at IS 'Not retried before this time; NULL when ready now.';
COMMENT ON COLUMN statehub_events.outbox.last_error IS 'Why the last attempt was rejected.';

SELECT pg_catalog.pg_extension_config_dump('statehub_events.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('statehub_events.outbox_id_seq', '');

CREATE TABLE statehub_events.dead_letter (
    id              pg_catalog.int8 NOT NULL,
    event_id        pg_catalog.uuid NOT NULL,
    subject         pg_catalog.text NOT NULL,
    payload         pg_catalog.text NOT NULL,
    enqueued_at     pg_catalog.timestamptz NOT NULL,
    attempts        pg_catalog.int4 NOT NULL,
    failed_at       pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    reason          pg_catalog.text NOT NULL,
    CONSTRAINT dead_letter_pkey PRIMARY KEY (id)
);

CREATE INDEX dead_letter_event_id_idx ON statehub_events.dead_letter (event_id);

COMMENT ON TABLE statehub_events.dead_letter IS
'Events that could not be delivered, with the reason; retry_dead_letters() puts them back in the outbox.';

SELECT pg_catalog.pg_extension_config_dump('statehub_events.dead_letter', '');

REVOKE ALL ON statehub_events.mapping, statehub_events.outbox,
              statehub_events.dead_letter FROM PUBLIC;
REVOKE ALL ON SEQUENCE statehub_events.outbox_id_seq FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Capture
-- ---------------------------------------------------------------------------

CREATE FUNCTION statehub_events.capture()
RETURNS pg_catalog.trigger
AS 'MODULE_PATHNAME', 'capture'
LANGUAGE C;

COMMENT ON FUNCTION statehub_events.capture() IS
'Row trigger that queues an event in statehub_events.outbox; created by track_insert, track_transition and track_delete.';

CREATE FUNCTION statehub_events.track_insert(tbl pg_catalog.regclass,
                                             event_type pg_catalog.text,
                                             attributes pg_catalog.text[] DEFAULT NULL,
                                             condition pg_catalog.text DEFAULT NULL)
RETURNS pg_catalog.void
AS 'MODULE_PATHNAME', 'track_insert'
LANGUAGE C;

COMMENT ON FUNCTION statehub_events.track_insert(pg_catalog.regclass, pg_catalog.text, pg_catalog.text[], pg_catalog.text) IS
'Queues an event_type event for every committed INSERT into tbl (rows matching condition, an expression over NEW, when given).';

CREATE FUNCTION statehub_events.track_transition(tbl pg_catalog.regclass,
                                                 column_name pg_catalog.name,
                                                 to_value pg_catalog.text,
                                                 event_type pg_catalog.text,
                                                 from_value pg_catalog.text DEFAULT NULL,
                                                 attributes pg_catalog.text[] DEFAULT NULL)
RETURNS pg_catalog.void
AS 'MODULE_PATHNAME', 'track_transition'
LANGUAGE C;

COMMENT ON FUNCTION statehub_events.track_transition(pg_catalog.regclass, pg_catalog.name, pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.text[]) IS
'Queues an event_type event for every committed UPDATE that changes column_name to to_value (from from_value, when given).';

CREATE FUNCTION statehub_events.track_delete(tbl pg_catalog.regclass,
                                             event_type pg_catalog.text,
                                             attributes pg_catalog.text[] DEFAULT NULL)
RETURNS pg_catalog.void
AS 'MODULE_PATHNAME', 'track_delete'
LANGUAGE C;

COMMENT ON FUNCTION statehub_events.track_delete(pg_catalog.regclass, pg_catalog.text, pg_catalog.text[]) IS
'Queues an event_type event, built from the old row, for every committed DELETE from tbl.';

CREATE FUNCTION statehub_events.untrack(tbl pg_catalog.regclass,
                                        event_type pg_catalog.text)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'untrack'
LANGUAGE C STRICT;

COMMENT ON FUNCTION statehub_events.untrack(pg_catalog.regclass, pg_catalog.text) IS
'Stops capturing event_type from tbl; returns whether such a mapping existed.';

CREATE FUNCTION statehub_events.emit(event_type pg_catalog.text,
                                     attributes pg_catalog.jsonb DEFAULT '{}')
RETURNS pg_catalog.uuid
AS 'MODULE_PATHNAME', 'emit'
LANGUAGE C CALLED ON NULL INPUT VOLATILE;

COMMENT ON FUNCTION statehub_events.emit(pg_catalog.text, pg_catalog.jsonb) IS
'Queues one event_type event with the given attributes object in the current transaction; returns its id.';

/* Forging events is a DBA's right, not an application's. */
REVOKE ALL ON FUNCTION statehub_events.emit(pg_catalog.text, pg_catalog.jsonb) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Operations
-- ---------------------------------------------------------------------------

/*
 * worker_status() and status were changed in 1.2 (issue 12): see the
 * section "Operations (1.2)" at the end.
 */

CREATE FUNCTION statehub_events.wake_worker()
RETURNS pg_catalog.void
AS 'MODULE_PATHNAME', 'wake_worker'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION statehub_events.wake_worker() IS
'Wakes the delivery worker when the current transaction commits (for rows put in the outbox by hand).';

REVOKE ALL ON FUNCTION statehub_events.wake_worker() FROM PUBLIC;

/*
 * SECURITY DEFINER: the role granted EXECUTE (docs/security.md) has, and
 * needs, no rights on the outbox or the dead letters; it can only move dead
 * letters back as they are.
 */
CREATE FUNCTION statehub_events.retry_dead_letters(event_ids pg_catalog.uuid[] DEFAULT NULL)
RETURNS pg_catalog.int8
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    moved pg_catalog.int8;
BEGIN
    /*
     * A retried event gets a new drain key: the worker's cursor may already
     * be past its old one.  It keeps its event id, so a copy that did reach
     * the stream is still dropped there as a duplicate.
     */
    WITH gone AS (
        DELETE FROM statehub_events.dead_letter d
         WHERE event_ids IS NULL OR d.event_id = ANY (event_ids)
        RETURNING d.id, d.event_id, d.subject, d.payload, d.enqueued_at, d.backfill
    ), ordered AS (
        SELECT g.event_id, g.subject, g.payload, g.enqueued_at, g.backfill
          FROM gone g
         ORDER BY g.id
    )
    INSERT INTO statehub_events.outbox (event_id, subject, payload, enqueued_at, backfill)
    SELECT o.event_id, o.subject, o.payload, o.enqueued_at, o.backfill
      FROM ordered o;
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved > 0 THEN
        PERFORM statehub_events.wake_worker();
    END IF;
    RETURN moved;
END
$$;

COMMENT ON FUNCTION statehub_events.retry_dead_letters(pg_catalog.uuid[]) IS
'Puts dead letters (all, or those with the given event ids) back in the outbox; returns how many.';

REVOKE ALL ON FUNCTION statehub_events.retry_dead_letters(pg_catalog.uuid[]) FROM PUBLIC;

CREATE FUNCTION statehub_events.wait_for_drain(timeout pg_catalog.interval DEFAULT '30 s')
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'wait_for_drain'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION statehub_events.wait_for_drain(pg_catalog.interval) IS
'Blocks until the outbox is empty (true) or the timeout passes (false); for deploy scripts and tests.';

REVOKE ALL ON FUNCTION statehub_events.wait_for_drain(pg_catalog.interval) FROM PUBLIC;

-- A DBA should hear at once when delivery cannot start: warn when the
-- library is not preloaded (capture works, events wait in the outbox).
CREATE FUNCTION statehub_events.warn_if_no_worker()
RETURNS pg_catalog.void
AS 'MODULE_PATHNAME', 'warn_if_no_worker'
LANGUAGE C;
SELECT statehub_events.warn_if_no_worker();
DROP FUNCTION statehub_events.warn_if_no_worker();

-- ---------------------------------------------------------------------------
-- Privileges and mapping hygiene (1.1)
-- ---------------------------------------------------------------------------

/*
 * Declaring events and queueing them are the DBA's rights, as in pg_cron:
 * a superuser can, and grants them (see docs/security.md).  capture() is
 * revoked too, because CREATE TRIGGER checks EXECUTE on it: without the
 * grant, no hand-made trigger can queue events either.
 */
REVOKE ALL ON FUNCTION statehub_events.capture() FROM PUBLIC;
REVOKE ALL ON FUNCTION statehub_events.track_insert(pg_catalog.regclass, pg_catalog.text, pg_catalog.text[], pg_catalog.text) FROM PUBLIC;
REVOKE ALL ON FUNCTION statehub_events.track_transition(pg_catalog.regclass, pg_catalog.name, pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION statehub_events.track_delete(pg_catalog.regclass, pg_catalog.text, pg_catalog.text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION statehub_events.untrack(pg_catalog.regclass, pg_catalog.text) FROM PUBLIC;

/*
 * No mapping outlives its trigger: whatever drops a tracked table or a
 * capture trigger (DROP TABLE, DROP SCHEMA ... CASCADE, DROP OWNED, DROP
 * COLUMN ... CASCADE, DROP TRIGGER) forgets the mapping rows in the same
 * transaction, so pg_dump never writes the OID of a table that is gone.
 * It runs as the extension's owner (the dropping role has no rights on
 * the mapping table), with a pinned search_path and qualified operators.
 */
CREATE FUNCTION statehub_events.forget_dropped_mappings()
RETURNS pg_catalog.event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM statehub_events.mapping m
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t
                        WHERE t.tgrelid OPERATOR(pg_catalog.=) m.table_name::pg_catalog.oid
                          AND t.tgname OPERATOR(pg_catalog.=) m.trigger_name);
END
$$;

COMMENT ON FUNCTION statehub_events.forget_dropped_mappings() IS
'Event trigger function: deletes the mapping rows whose capture trigger was dropped.';

REVOKE ALL ON FUNCTION statehub_events.forget_dropped_mappings() FROM PUBLIC;

CREATE EVENT TRIGGER statehub_events_forget_dropped_mappings ON sql_drop
    EXECUTE FUNCTION statehub_events.forget_dropped_mappings();

COMMENT ON EVENT TRIGGER statehub_events_forget_dropped_mappings IS
'Keeps statehub_events.mapping free of rows whose table or trigger was dropped.';

/*
 * A capture trigger keeps the name its declaration gave it: renamed, it
 * would go on publishing while the mapping row (which names it) looks
 * dropped, so the next DROP of anything would forget the row and a new
 * declaration of the same event would add a second trigger (every event
 * twice).  ALTER TRIGGER ... RENAME of a declared capture trigger is
 * refused; untrack() and a new declaration change a declaration.
 */
CREATE FUNCTION statehub_events.refuse_capture_trigger_rename()
RETURNS pg_catalog.event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    renamed record;
BEGIN
    /* a renamed capture trigger, and the declaration whose trigger it was */
    FOR renamed IN
        SELECT m.trigger_name, m.event_type, m.table_name
          FROM pg_catalog.pg_event_trigger_ddl_commands() c
          JOIN pg_catalog.pg_trigger t ON t.oid OPERATOR(pg_catalog.=) c.objid
          JOIN statehub_events.mapping m
            ON m.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) t.tgrelid
         WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass
           AND t.tgfoid OPERATOR(pg_catalog.=) 'statehub_events.capture()'::pg_catalog.regprocedure
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger o
                            WHERE o.tgrelid OPERATOR(pg_catalog.=) t.tgrelid
                              AND o.tgname OPERATOR(pg_catalog.=) m.trigger_name)
    LOOP
        RAISE EXCEPTION 'cannot rename trigger "%" on table %',
              renamed.trigger_name, renamed.table_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('It is the capture trigger of event "%s", declared with statehub_events.',
                                             renamed.event_type),
                  HINT = 'Use statehub_events.untrack() and declare the event again.';
    END LOOP;
END
$$;

COMMENT ON FUNCTION statehub_events.refuse_capture_trigger_rename() IS
'Event trigger function: refuses to rename the capture trigger of a declared event.';

REVOKE ALL ON FUNCTION statehub_events.refuse_capture_trigger_rename() FROM PUBLIC;

CREATE EVENT TRIGGER statehub_events_refuse_capture_trigger_rename ON ddl_command_end
    WHEN TAG IN ('ALTER TRIGGER')
    EXECUTE FUNCTION statehub_events.refuse_capture_trigger_rename();

COMMENT ON EVENT TRIGGER statehub_events_refuse_capture_trigger_rename IS
'Keeps each declared capture trigger under the name its mapping row records.';

-- ---------------------------------------------------------------------------
-- Operations (1.2, issue 12 items 8-11): the status view in a database the
-- worker does not drain, last errors that are past, counters per event
-- type, the queue for pg_monitor, and DROP EXTENSION refused while events
-- would be lost
-- ---------------------------------------------------------------------------

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
       pg_catalog.clock_timestamp() - q.oldest_enqueued_at AS oldest_queued_age,
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

-- Mapping fidelity (issue 12): keys fixed at declaration, no UPDATE OF
-- ---------------------------------------------------------------------------

/*
 * The mappings view shows, beside the declaration as written, what each
 * capture trigger publishes: the keys fixed at declaration and the column
 * each is read from now (a RENAME changes the column, never the key).
 * capture_arguments() decodes the trigger's arguments; it shows what
 * pg_trigger shows everyone, and the view's readers must be able to call it.
 */
CREATE FUNCTION statehub_events.capture_arguments(trigger_oid pg_catalog.oid,
    OUT column_key pg_catalog.text,
    OUT column_name pg_catalog.text,
    OUT attribute_keys pg_catalog.text[],
    OUT attribute_columns pg_catalog.text[])
RETURNS record
AS 'MODULE_PATHNAME', 'capture_arguments'
LANGUAGE C STABLE STRICT;

COMMENT ON FUNCTION statehub_events.capture_arguments(pg_catalog.oid) IS
'The keys a capture trigger publishes and the columns they are read from; read it through the mappings view.';

/*
 * A RENAME COLUMN renames the column in the capture triggers' arguments
 * (their keys stay); a column added where all columns are published may
 * not repeat a key (see src/mapping_upkeep.c).
 */
CREATE FUNCTION statehub_events.follow_column_renames()
RETURNS pg_catalog.event_trigger
AS 'MODULE_PATHNAME', 'follow_column_renames'
LANGUAGE C;

COMMENT ON FUNCTION statehub_events.follow_column_renames() IS
'Event trigger function: keeps capture triggers reading renamed columns under their declared keys.';

REVOKE ALL ON FUNCTION statehub_events.follow_column_renames() FROM PUBLIC;

CREATE EVENT TRIGGER statehub_events_follow_column_renames ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION statehub_events.follow_column_renames();

COMMENT ON EVENT TRIGGER statehub_events_follow_column_renames IS
'Keeps the keys of declared events fixed through ALTER TABLE.';

/* Dropping a column a declared event publishes is an ERROR naming it. */
CREATE FUNCTION statehub_events.refuse_dropping_attribute_columns()
RETURNS pg_catalog.event_trigger
AS 'MODULE_PATHNAME', 'refuse_dropping_attribute_columns'
LANGUAGE C;

COMMENT ON FUNCTION statehub_events.refuse_dropping_attribute_columns() IS
'Event trigger function: refuses to drop a column that a declared event publishes.';

REVOKE ALL ON FUNCTION statehub_events.refuse_dropping_attribute_columns() FROM PUBLIC;

CREATE EVENT TRIGGER statehub_events_refuse_dropping_attribute_columns ON sql_drop
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION statehub_events.refuse_dropping_attribute_columns();

COMMENT ON EVENT TRIGGER statehub_events_refuse_dropping_attribute_columns IS
'Refuses ALTER TABLE ... DROP COLUMN of a column a declared event publishes.';

-- ---------------------------------------------------------------------------
-- Mapping fidelity through ALTER TYPE and type changes (issue 12, review)
-- ---------------------------------------------------------------------------

/*
 * ALTER TYPE ... RENAME / ADD / DROP ATTRIBUTE ... CASCADE changes the
 * columns of every table typed with the type: the same rules as ALTER
 * TABLE apply to each (src/mapping_upkeep.c).
 */
CREATE EVENT TRIGGER statehub_events_follow_attribute_renames ON ddl_command_end
    WHEN TAG IN ('ALTER TYPE')
    EXECUTE FUNCTION statehub_events.follow_column_renames();

COMMENT ON EVENT TRIGGER statehub_events_follow_attribute_renames IS
'Keeps the keys of declared events fixed through ALTER TYPE ... CASCADE on the tables typed with it.';

CREATE EVENT TRIGGER statehub_events_refuse_dropping_attributes ON sql_drop
    WHEN TAG IN ('ALTER TYPE')
    EXECUTE FUNCTION statehub_events.refuse_dropping_attribute_columns();

COMMENT ON EVENT TRIGGER statehub_events_refuse_dropping_attributes IS
'Refuses ALTER TYPE ... DROP ATTRIBUTE ... CASCADE of a column a declared event publishes.';

/*
 * Changing the type of a published column is refused when its JSON form
 * would change (a number becoming a string...).  Checked before the
 * command runs, while the old type is there to compare.
 */
CREATE FUNCTION statehub_events.refuse_retyping_attribute_columns()
RETURNS pg_catalog.event_trigger
AS 'MODULE_PATHNAME', 'refuse_retyping_attribute_columns'
LANGUAGE C;

COMMENT ON FUNCTION statehub_events.refuse_retyping_attribute_columns() IS
'Event trigger function: refuses to change the JSON form of a column that a declared event publishes.';

REVOKE ALL ON FUNCTION statehub_events.refuse_retyping_attribute_columns() FROM PUBLIC;

CREATE EVENT TRIGGER statehub_events_refuse_retyping_attribute_columns ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE', 'ALTER TYPE')
    EXECUTE FUNCTION statehub_events.refuse_retyping_attribute_columns();

COMMENT ON EVENT TRIGGER statehub_events_refuse_retyping_attribute_columns IS
'Refuses ALTER COLUMN ... TYPE of a column a declared event publishes when its JSON form would change.';

/*
 * After ALTER TYPE ... RENAME VALUE, a transition on an enum column fires
 * on the new label (its WHEN clause holds the label's oid): the mappings
 * view shows from_value and to_value as the trigger compares them.
 */
CREATE FUNCTION statehub_events.transition_values(trigger_oid pg_catalog.oid,
    OUT from_value pg_catalog.text,
    OUT to_value pg_catalog.text)
RETURNS record
AS 'MODULE_PATHNAME', 'transition_values'
LANGUAGE C STABLE STRICT;

COMMENT ON FUNCTION statehub_events.transition_values(pg_catalog.oid) IS
'The enum labels a transition trigger compares with, as they read now (NULL for other types); read them through the mappings view.';

CREATE OR REPLACE VIEW statehub_events.mappings AS
SELECT m.table_name,
       m.event_type,
       m.operation,
       a.column_name::pg_catalog.name COLLATE pg_catalog."C" AS column_name,
       COALESCE(v.from_value, m.from_value) AS from_value,
       COALESCE(v.to_value, m.to_value) AS to_value,
       m.attributes,
       m.condition,
       a.column_key,
       a.attribute_keys,
       a.attribute_columns
  FROM statehub_events.mapping m
  JOIN pg_catalog.pg_trigger t
    ON t.tgrelid = m.table_name::pg_catalog.oid
   AND t.tgname = m.trigger_name
 CROSS JOIN LATERAL statehub_events.capture_arguments(t.oid) a
 CROSS JOIN LATERAL statehub_events.transition_values(t.oid) v
 ORDER BY m.table_name::pg_catalog.text, m.event_type;

COMMENT ON COLUMN statehub_events.mappings.from_value IS 'The previous value a transition requires (NULL: any), as its trigger compares it now (an enum label renamed since the declaration reads renamed).';
COMMENT ON COLUMN statehub_events.mappings.to_value IS 'The value a transition fires on, as its trigger compares it now (an enum label renamed since the declaration reads renamed).';
COMMENT ON COLUMN statehub_events.mappings.column_name IS 'The tracked column as it is called now.';
COMMENT ON COLUMN statehub_events.mappings.attributes IS 'The attribute list as declared (NULL: all columns).';
COMMENT ON COLUMN statehub_events.mappings.column_key IS 'The key of the tracked column''s old value under "previous" (fixed at declaration).';
COMMENT ON COLUMN statehub_events.mappings.attribute_keys IS 'The attribute keys published (fixed at declaration; with all columns, columns added later follow under their own name).';
COMMENT ON COLUMN statehub_events.mappings.attribute_columns IS 'The column each attribute key is read from now.';

-- ---------------------------------------------------------------------------
-- Backfill (1.2, issue 11): events for the rows that existed before their
-- declaration, flagged in the queue and on the wire
-- ---------------------------------------------------------------------------

/*
 * A backfilled event is a normal envelope; the flag travels beside it: the
 * worker publishes a flagged row with the header Statehub-Backfill: true,
 * and a dead letter keeps the flag (retry_dead_letters puts it back).
 */
ALTER TABLE statehub_events.outbox
    ADD COLUMN backfill pg_catalog.bool NOT NULL DEFAULT false;

COMMENT ON COLUMN statehub_events.outbox.backfill IS
'Queued by backfill() for a row that existed before its declaration (published with the header Statehub-Backfill: true).';

ALTER TABLE statehub_events.dead_letter
    ADD COLUMN backfill pg_catalog.bool NOT NULL DEFAULT false;

COMMENT ON COLUMN statehub_events.dead_letter.backfill IS
'The event was queued by backfill().';

/*
 * SET search_path: the conditions (the insert mapping's and the caller's)
 * are parsed and run as the caller, resolving names in pg_catalog only, as
 * the capture trigger's WHEN clause does.
 */
CREATE FUNCTION statehub_events.backfill(tbl pg_catalog.regclass,
                                         event_type pg_catalog.text,
                                         condition pg_catalog.text DEFAULT NULL)
RETURNS pg_catalog.int8
AS 'MODULE_PATHNAME', 'backfill'
LANGUAGE C CALLED ON NULL INPUT VOLATILE
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION statehub_events.backfill(pg_catalog.regclass, pg_catalog.text, pg_catalog.text) IS
'Queues one event_type event per existing row of tbl that its declaration announces (narrowed by condition, an expression over NEW), flagged as a backfill; returns how many.';

/* Queueing events is a DBA's right: granted like the track_* functions. */
REVOKE ALL ON FUNCTION statehub_events.backfill(pg_catalog.regclass, pg_catalog.text, pg_catalog.text) FROM PUBLIC;

CREATE VIEW statehub_events.queued_by_origin AS
SELECT pg_catalog.count(*) FILTER (WHERE NOT o.backfill) AS live_queued,
       pg_catalog.count(*) FILTER (WHERE o.backfill) AS backfill_queued,
       pg_catalog.clock_timestamp() - pg_catalog.min(o.enqueued_at) FILTER (WHERE NOT o.backfill)
           AS oldest_live_age,
       pg_catalog.clock_timestamp() - pg_catalog.min(o.enqueued_at) FILTER (WHERE o.backfill)
           AS oldest_backfill_age,
       (SELECT pg_catalog.count(*) FROM statehub_events.dead_letter d
         WHERE d.backfill) AS backfill_dead_letters
  FROM statehub_events.outbox o;

COMMENT ON VIEW statehub_events.queued_by_origin IS
'The outbox split into live events and backfilled ones: counts and oldest ages, and the dead letters of backfills.';

REVOKE ALL ON statehub_events.queued_by_origin FROM PUBLIC;
GRANT SELECT ON statehub_events.queued_by_origin TO pg_monitor;
