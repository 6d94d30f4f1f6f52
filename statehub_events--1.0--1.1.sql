/* statehub_events--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION statehub_events UPDATE TO '1.1'" to load this file. \quit

/*
 * Brings an installed 1.0 to exactly what statehub_events--1.1.sql creates:
 * a test compares the two (objects and privileges) after every change.
 */

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
