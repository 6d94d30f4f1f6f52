/*
 * demo_lifecycle.sql -- a short life of a state hub, played by `make demo`
 * and by test/t/200_demo_scenario.pl (one file, so the two cannot drift).
 *
 *   psql -v ON_ERROR_STOP=1 [-v hub_schema=statehub] -f catalog/demo_lifecycle.sql
 *
 * Expects an empty hub (catalog/statehub_schema.sql) with the v1.0 catalog
 * declared (catalog/v1_events.sql).  It commits exactly these events:
 *
 *   org.statehub.repo.registered        name  the-custodian/state-hub
 *   org.statehub.repo.registered        name  the-custodian/activity-core
 *   org.statehub.repo.registered        name  the-custodian/custodian-sync
 *   org.statehub.workstream.completed   title NATS integration
 *   org.statehub.decision.resolved      title Where do events come from?
 *   org.statehub.domain.goal.activated  title Automation is declarative
 *   org.statehub.task.stale             title Triage open pull requests
 *   org.statehub.task.stale             title Write release notes for 0.9
 *
 * and, on purpose, several changes that must publish nothing: a rolled-back
 * transaction, a rolled-back savepoint, updates that do not transition, and
 * tasks the sweep must leave alone.
 */

\if :{?hub_schema}
\else
\set hub_schema statehub
\endif

SET search_path = :"hub_schema", pg_catalog;

\echo '-- register three repos'
INSERT INTO repos (name, url) VALUES
    ('the-custodian/state-hub',      'https://git.example.org/the-custodian/state-hub'),
    ('the-custodian/activity-core',  'https://git.example.org/the-custodian/activity-core'),
    ('the-custodian/custodian-sync', 'https://git.example.org/the-custodian/custodian-sync');

\echo '-- plan the work (no events: nothing transitions on insert)'
INSERT INTO workstreams (repo_id, title, status)
SELECT id, 'NATS integration', 'active' FROM repos WHERE name = 'the-custodian/state-hub'
UNION ALL
SELECT id, 'ActivityDefinitions for maintenance', 'active' FROM repos WHERE name = 'the-custodian/activity-core';

INSERT INTO decisions (repo_id, workstream_id, title)
SELECT w.repo_id, w.id, 'Where do events come from?'
  FROM workstreams w WHERE w.title = 'NATS integration';

INSERT INTO domain_goals (domain, title, target_date) VALUES
    ('maintenance', 'Automation is declarative', DATE '2027-03-31'),
    ('maintenance', 'Every repo has an owner', NULL);

/* last_activity_at in the past: what the sweep will find */
INSERT INTO tasks (repo_id, workstream_id, title, status, assignee, last_activity_at)
SELECT w.repo_id, w.id, t.title, t.status, t.assignee, pg_catalog.now() - t.idle
  FROM workstreams w,
       (VALUES ('Triage open pull requests',    'open',        'alex',  interval '30 days'),
               ('Write release notes for 0.9',  'in_progress', 'sam',   interval '20 days'),
               ('Rotate NATS credentials',      'open',        'alex',  interval '2 days'),
               ('Archive the old cron host',    'done',        'robin', interval '60 days'))
       AS t (title, status, assignee, idle)
 WHERE w.title = 'NATS integration';

\echo '-- complete a workstream'
UPDATE workstreams SET status = 'completed' WHERE title = 'NATS integration';

\echo '-- update it again without a transition (no event)'
UPDATE workstreams SET title = 'NATS integration' WHERE title = 'NATS integration';
UPDATE workstreams SET status = 'completed' WHERE title = 'NATS integration';

\echo '-- resolve a decision'
UPDATE decisions
   SET status = 'resolved',
       outcome = 'The database publishes them: statehub_events captures committed row changes.',
       resolved_by = 'architecture review'
 WHERE title = 'Where do events come from?';

\echo '-- activate a domain goal'
UPDATE domain_goals SET status = 'active' WHERE title = 'Automation is declarative';

\echo '-- a transaction that rolls back (no event)'
BEGIN;
INSERT INTO repos (name) VALUES ('scratch/never-registered');
UPDATE workstreams SET status = 'completed' WHERE title = 'ActivityDefinitions for maintenance';
ROLLBACK;

\echo '-- a savepoint that rolls back inside a committed transaction (no event)'
BEGIN;
UPDATE domain_goals SET target_date = DATE '2027-06-30' WHERE title = 'Automation is declarative';
SAVEPOINT maybe;
UPDATE domain_goals SET status = 'active' WHERE title = 'Every repo has an owner';
ROLLBACK TO SAVEPOINT maybe;
COMMIT;

\echo '-- run the stale-task sweep (tasks idle for more than 14 days)'
\set stale_after '14 days'
\ir stale_sweep.sql

\echo '-- run it again: nothing left to mark (no event)'
\ir stale_sweep.sql

RESET search_path;
