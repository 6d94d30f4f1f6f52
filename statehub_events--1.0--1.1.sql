/* statehub_events--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION statehub_events UPDATE TO '1.1'" to load this file. \quit

/*
 * Brings an installed 1.0 to exactly what statehub_events--1.1.sql creates:
 * a test compares the two (objects and privileges) after every change.
 */

-- ---------------------------------------------------------------------------
-- The schema (1.1): the extension's own
-- ---------------------------------------------------------------------------

/*
 * 1.0's control file named the schema, so CREATE EXTENSION created it
 * outside the extension and recorded the extension as living in it.  1.1
 * lives in pg_catalog (as a fresh install does, see the control file) and
 * owns the schema.  No SQL command moves a non-relocatable extension, so
 * the catalog rows are changed here, as the extension's superuser: the
 * extension's namespace, and its dependency on the old schema (pg_catalog
 * is pinned and has none).  Then the schema joins the extension, with its
 * ACL recorded as the initial privileges, as CREATE SCHEMA in a fresh
 * install records them.
 */
/*
 * 1.0 installed into a schema of that name whoever had created it: a role
 * with CREATE on the database could have made it first, and its owner can
 * drop, rename or replace everything in it (the outbox included).  Such a
 * schema is not adopted: the update fails until a superuser has checked it
 * and given it to the extension's owner.  Objects in it that the extension
 * did not create are refused too.
 */
DO $$
DECLARE
    ext_owner pg_catalog.oid;
    nsp pg_catalog.oid;
    nsp_owner pg_catalog.oid;
    stranger pg_catalog.text;
BEGIN
    SELECT e.extowner INTO ext_owner
      FROM pg_catalog.pg_extension e
     WHERE e.extname OPERATOR(pg_catalog.=) 'statehub_events';
    SELECT n.oid, n.nspowner INTO nsp, nsp_owner
      FROM pg_catalog.pg_namespace n
     WHERE n.nspname OPERATOR(pg_catalog.=) 'statehub_events';
    IF nsp_owner OPERATOR(pg_catalog.<>) ext_owner THEN
        RAISE EXCEPTION 'cannot update extension "statehub_events": schema "statehub_events" belongs to role "%"',
              nsp_owner::pg_catalog.regrole
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = pg_catalog.format('The extension''s schema must belong to the extension''s owner, %s: its owner can drop or replace the outbox.',
                                             ext_owner::pg_catalog.regrole),
                  HINT = pg_catalog.format('Check what the schema holds, then run ALTER SCHEMA statehub_events OWNER TO %s and update again.',
                                           pg_catalog.quote_ident(ext_owner::pg_catalog.regrole::pg_catalog.text));
    END IF;
    SELECT o.what INTO stranger
      FROM (SELECT pg_catalog.format('%s %s', 'relation', c.oid::pg_catalog.regclass) AS what,
                   'pg_catalog.pg_class'::pg_catalog.regclass AS classid, c.oid
              FROM pg_catalog.pg_class c
             WHERE c.relnamespace OPERATOR(pg_catalog.=) nsp
               AND c.relkind OPERATOR(pg_catalog.<>) ALL (ARRAY['i', 'I', 't']::pg_catalog."char"[])
            UNION ALL
            SELECT pg_catalog.format('%s %s', 'function', p.oid::pg_catalog.regprocedure),
                   'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid
              FROM pg_catalog.pg_proc p
             WHERE p.pronamespace OPERATOR(pg_catalog.=) nsp) o
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                        WHERE d.classid OPERATOR(pg_catalog.=) o.classid
                          AND d.objid OPERATOR(pg_catalog.=) o.oid
                          AND d.deptype OPERATOR(pg_catalog.=) 'e')
     LIMIT 1;
    IF stranger IS NOT NULL THEN
        RAISE EXCEPTION 'cannot update extension "statehub_events": schema "statehub_events" holds % which the extension did not create',
              stranger
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Move or drop the objects the extension did not create, then update again.';
    END IF;
END
$$;

UPDATE pg_catalog.pg_extension
   SET extnamespace = 'pg_catalog'::pg_catalog.regnamespace
 WHERE extname OPERATOR(pg_catalog.=) 'statehub_events';

DELETE FROM pg_catalog.pg_depend d
 WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass
   AND d.objid OPERATOR(pg_catalog.=) (SELECT e.oid FROM pg_catalog.pg_extension e
                                        WHERE e.extname OPERATOR(pg_catalog.=) 'statehub_events')
   AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
   AND d.refobjid OPERATOR(pg_catalog.=) 'statehub_events'::pg_catalog.regnamespace;

ALTER EXTENSION statehub_events ADD SCHEMA statehub_events;

COMMENT ON SCHEMA statehub_events IS
'Objects of the statehub_events extension (dropped with it).';

-- ---------------------------------------------------------------------------
-- Privileges and mapping hygiene (1.1)
-- ---------------------------------------------------------------------------

REVOKE ALL ON FUNCTION statehub_events.capture() FROM PUBLIC;
REVOKE ALL ON FUNCTION statehub_events.track_insert(pg_catalog.regclass, pg_catalog.text, pg_catalog.text[], pg_catalog.text) FROM PUBLIC;
REVOKE ALL ON FUNCTION statehub_events.track_transition(pg_catalog.regclass, pg_catalog.name, pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION statehub_events.track_delete(pg_catalog.regclass, pg_catalog.text, pg_catalog.text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION statehub_events.untrack(pg_catalog.regclass, pg_catalog.text) FROM PUBLIC;

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

/* 1.0 left the rows of dropped tables behind (hidden by the view): forget them. */
DELETE FROM statehub_events.mapping m
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t
                    WHERE t.tgrelid OPERATOR(pg_catalog.=) m.table_name::pg_catalog.oid
                      AND t.tgname OPERATOR(pg_catalog.=) m.trigger_name);

-- ---------------------------------------------------------------------------
-- Delivery worker (issue 9)
-- ---------------------------------------------------------------------------

/*
 * dedup_window_exceeded looks at the oldest queued event, not only at
 * events with attempts > 0: a connection outage burns no attempts, and it
 * is the long outage that can outlast the stream's duplicate window.
 * Same columns, so the view's privileges and comment stay.
 */
CREATE OR REPLACE VIEW statehub_events.status AS
SELECT w.pid,
       w.state,
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

/*
 * The worker finds due retries below its scan cursor through this index
 * instead of rescanning the outbox from its start; only rescheduled rows
 * have next_attempt_at, so it stays small.
 */
CREATE INDEX outbox_next_attempt_at_idx ON statehub_events.outbox (next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;

-- ---------------------------------------------------------------------------
-- emit() with a NULL argument (1.1)
-- ---------------------------------------------------------------------------

/*
 * 1.0's emit() was STRICT: a NULL attributes argument returned NULL and
 * queued nothing, without a word.  It is an error now (the C function
 * checks; 1.0's STRICT declaration never lets a NULL reach it).
 */
ALTER FUNCTION statehub_events.emit(pg_catalog.text, pg_catalog.jsonb) CALLED ON NULL INPUT;

-- ---------------------------------------------------------------------------
-- retry_dead_letters() for a granted role (1.1)
-- ---------------------------------------------------------------------------

/*
 * 1.0's retry_dead_letters ran with the caller's rights, so the role the
 * docs grant it to got "permission denied for table outbox".  It runs as
 * the extension's owner now (search_path pinned, as before).
 */
ALTER FUNCTION statehub_events.retry_dead_letters(pg_catalog.uuid[]) SECURITY DEFINER;

-- ---------------------------------------------------------------------------
-- Capture triggers no declaration made (1.1)
-- ---------------------------------------------------------------------------

/*
 * Under 1.0 any role could attach capture() to its own tables (track_* and
 * capture() were executable by PUBLIC).  Such triggers keep queueing events
 * after the update; the update cannot tell a DBA's hand-made trigger from a
 * forger's, so it names each one for the DBA to check (docs/operations.md).
 */
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT g.tgrelid::pg_catalog.regclass AS tbl, g.tgname
          FROM pg_catalog.pg_trigger g
         WHERE g.tgfoid OPERATOR(pg_catalog.=) 'statehub_events.capture()'::pg_catalog.regprocedure
           AND NOT EXISTS (SELECT FROM statehub_events.mapping m
                            WHERE m.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) g.tgrelid
                              AND m.trigger_name OPERATOR(pg_catalog.=) g.tgname)
         ORDER BY 1, 2
    LOOP
        RAISE WARNING 'trigger "%" on table % queues events but no statehub_events declaration made it',
              t.tgname, t.tbl
            USING HINT = 'Drop it unless a DBA made it on purpose: under 1.0 any role could attach capture() to its own tables.';
    END LOOP;
END
$$;
