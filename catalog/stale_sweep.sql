/*
 * stale_sweep.sql -- marks tasks stale that have not moved for a while.
 *
 *   psql -v ON_ERROR_STOP=1 [-v hub_schema=statehub] [-v stale_after='14 days'] \
 *        -f catalog/stale_sweep.sql
 *
 * What the old cleanup-stale cron did, as one UPDATE.  It publishes
 * nothing itself: the org.statehub.task.stale mapping (catalog/
 * v1_events.sql) queues one event per task it changes, in this
 * transaction, so the events exist exactly when the sweep commits.
 * Done tasks never go stale, and a task already stale is not touched
 * again (no second event).  Running it twice is harmless.
 *
 * Schedule it however you like (an ActivityDefinition on a schedule, see
 * docs/cron-migration.md, or pg_cron, or cron + psql).
 */

\if :{?hub_schema}
\else
\set hub_schema statehub
\endif
\if :{?stale_after}
\else
\set stale_after '14 days'
\endif

UPDATE :"hub_schema".tasks
   SET status = 'stale'
 WHERE status IN ('open', 'in_progress', 'blocked')
   AND last_activity_at < pg_catalog.now() - :'stale_after'::pg_catalog.interval;
