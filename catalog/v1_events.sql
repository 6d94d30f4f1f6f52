/*
 * v1_events.sql -- declares the state hub's v1.0 events.
 *
 *   psql -v ON_ERROR_STOP=1 [-v hub_schema=statehub] -f catalog/v1_events.sql
 *
 * Works on the reference schema (catalog/statehub_schema.sql) and on any
 * existing hub whose tables carry the columns named below.  Re-running it
 * replaces the five mappings (tracking the same table and event type again
 * replaces the old mapping), so it is also how a changed attribute list is
 * rolled out.  All five are declared in one transaction: a hub that lacks a
 * column gets an error naming it and keeps its previous mappings.
 *
 * Each attribute list is what a consumer (activity-core) needs to act on
 * the event without calling back: the row's id, its human name, the ids of
 * what owns it, and the timestamp of the fact.  Columns are listed, never
 * left to "all columns": a column added to a hub table later must not
 * change a published event type by accident (docs/nats-event-subjects.md,
 * versioning).  Transition events also carry "previous": {"status": ...}.
 */

\if :{?hub_schema}
\else
\set hub_schema statehub
\endif

BEGIN;

/* the calls return void: keep their empty result rows off the screen */
\o /dev/null

SELECT statehub_events.track_insert(
    tbl        => pg_catalog.format('%I.repos', :'hub_schema')::pg_catalog.regclass,
    event_type => 'org.statehub.repo.registered',
    attributes => ARRAY['id', 'name', 'url', 'default_branch', 'registered_at']);

SELECT statehub_events.track_transition(
    tbl         => pg_catalog.format('%I.workstreams', :'hub_schema')::pg_catalog.regclass,
    column_name => 'status',
    to_value    => 'completed',
    event_type  => 'org.statehub.workstream.completed',
    attributes  => ARRAY['id', 'repo_id', 'title', 'completed_at']);

SELECT statehub_events.track_transition(
    tbl         => pg_catalog.format('%I.decisions', :'hub_schema')::pg_catalog.regclass,
    column_name => 'status',
    to_value    => 'resolved',
    event_type  => 'org.statehub.decision.resolved',
    attributes  => ARRAY['id', 'repo_id', 'workstream_id', 'title', 'outcome',
                         'resolved_by', 'resolved_at']);

SELECT statehub_events.track_transition(
    tbl         => pg_catalog.format('%I.domain_goals', :'hub_schema')::pg_catalog.regclass,
    column_name => 'status',
    to_value    => 'active',
    event_type  => 'org.statehub.domain.goal.activated',
    attributes  => ARRAY['id', 'domain', 'title', 'target_date', 'activated_at']);

SELECT statehub_events.track_transition(
    tbl         => pg_catalog.format('%I.tasks', :'hub_schema')::pg_catalog.regclass,
    column_name => 'status',
    to_value    => 'stale',
    event_type  => 'org.statehub.task.stale',
    attributes  => ARRAY['id', 'repo_id', 'workstream_id', 'title', 'assignee',
                         'last_activity_at']);

COMMIT;
\o

\echo 'v1.0 catalog declared on schema' :"hub_schema"
