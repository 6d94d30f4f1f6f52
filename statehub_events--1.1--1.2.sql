/* statehub_events--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION statehub_events UPDATE TO '1.2'" to load this file. \quit

/*
 * Brings an installed 1.1 to exactly what statehub_events--1.2.sql creates:
 * test/t/010_upgrade.pl compares the two (objects, privileges, pg_dump)
 * after every change.  Each section names the change it makes.
 */

-- ---------------------------------------------------------------------------
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

CREATE OR REPLACE VIEW statehub_events.mappings AS
SELECT m.table_name,
       m.event_type,
       m.operation,
       a.column_name::pg_catalog.name COLLATE pg_catalog."C" AS column_name,
       m.from_value,
       m.to_value,
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
 ORDER BY m.table_name::pg_catalog.text, m.event_type;

COMMENT ON COLUMN statehub_events.mappings.column_name IS 'The tracked column as it is called now.';
COMMENT ON COLUMN statehub_events.mappings.attributes IS 'The attribute list as declared (NULL: all columns).';
COMMENT ON COLUMN statehub_events.mappings.column_key IS 'The key of the tracked column''s old value under "previous" (fixed at declaration).';
COMMENT ON COLUMN statehub_events.mappings.attribute_keys IS 'The attribute keys published (fixed at declaration; with all columns, columns added later follow under their own name).';
COMMENT ON COLUMN statehub_events.mappings.attribute_columns IS 'The column each attribute key is read from now.';

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

/*
 * Existing capture triggers get the 1.2 arguments: keys fixed to today's
 * column names, and no UPDATE OF list (it hid changes a BEFORE trigger made
 * to the tracked column).  The trigger rows are rewritten in place.
 */
CREATE FUNCTION statehub_events.migrate_capture_triggers()
RETURNS pg_catalog.void
AS 'MODULE_PATHNAME', 'migrate_capture_triggers'
LANGUAGE C;
SELECT statehub_events.migrate_capture_triggers();
DROP FUNCTION statehub_events.migrate_capture_triggers();
