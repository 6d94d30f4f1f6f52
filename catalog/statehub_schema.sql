/*
 * statehub_schema.sql -- a reference state hub schema.
 *
 *   psql -v ON_ERROR_STOP=1 [-v hub_schema=statehub] -f catalog/statehub_schema.sql
 *
 * The five tables a state hub keeps (repos, workstreams, decisions,
 * domain goals, tasks), the shape catalog/v1_events.sql declares its events
 * on.  A hub that already has its own tables does not need this file; it
 * needs only the columns that v1_events.sql names as attributes.
 *
 * Choices worth knowing:
 *  - ids are uuid: they travel in events to other systems, where a
 *    database-local serial would mean nothing and could collide.
 *  - status columns are text with a CHECK, not enum types: adding a status
 *    is one ALTER TABLE in a transaction, and a consumer reads the value as
 *    the plain string it is either way.
 *  - the lifecycle timestamps (completed_at, resolved_at, activated_at) are
 *    stamped by a BEFORE trigger in the same UPDATE that changes the status,
 *    so the event, which is built from the new row, always carries them,
 *    whoever wrote the row.
 *  - tasks.last_activity_at is what the stale sweep reads; the sweep itself
 *    does not touch it (going stale is not activity).
 *
 * Everything is created in one transaction; the schema must not exist yet.
 */

\if :{?hub_schema}
\else
\set hub_schema statehub
\endif

BEGIN;

CREATE SCHEMA :"hub_schema";
SET LOCAL search_path = :"hub_schema", pg_catalog;

/*
 * Keeps updated_at current and stamps a lifecycle column when the status
 * enters a state: the trigger's arguments are (status value, column name),
 * e.g. ('completed', 'completed_at').  A column the writer already set is
 * left alone.
 */
CREATE FUNCTION stamp_lifecycle()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    IF TG_NARGS = 2
       AND NEW.status = TG_ARGV[0]
       AND NEW.status IS DISTINCT FROM OLD.status
       AND pg_catalog.to_jsonb(NEW) -> TG_ARGV[1] = 'null'::pg_catalog.jsonb
    THEN
        NEW := pg_catalog.jsonb_populate_record(
                   NEW, pg_catalog.jsonb_build_object(TG_ARGV[1], pg_catalog.now()));
    END IF;
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION stamp_lifecycle() IS
'BEFORE UPDATE trigger: sets updated_at, and the lifecycle column named by the second argument when status becomes the first.';

CREATE TABLE repos (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL UNIQUE,
    url             text,
    default_branch  text NOT NULL DEFAULT 'main',
    status          text NOT NULL DEFAULT 'active'
                    CONSTRAINT repos_status_check CHECK (status IN ('active', 'archived')),
    registered_at   timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE repos IS 'Repositories the hub tracks; a new row is org.statehub.repo.registered.';

CREATE TRIGGER repos_stamp BEFORE UPDATE ON repos
    FOR EACH ROW EXECUTE FUNCTION stamp_lifecycle();

CREATE TABLE workstreams (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    repo_id         uuid NOT NULL REFERENCES repos (id),
    title           text NOT NULL,
    status          text NOT NULL DEFAULT 'planned'
                    CONSTRAINT workstreams_status_check
                    CHECK (status IN ('planned', 'active', 'blocked', 'completed', 'cancelled')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    UNIQUE (repo_id, title)
);

COMMENT ON TABLE workstreams IS 'Units of work within a repo; status becoming completed is org.statehub.workstream.completed.';

CREATE INDEX workstreams_repo_id_idx ON workstreams (repo_id);

CREATE TRIGGER workstreams_stamp BEFORE UPDATE ON workstreams
    FOR EACH ROW EXECUTE FUNCTION stamp_lifecycle('completed', 'completed_at');

CREATE TABLE decisions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    repo_id         uuid NOT NULL REFERENCES repos (id),
    workstream_id   uuid REFERENCES workstreams (id),
    title           text NOT NULL,
    status          text NOT NULL DEFAULT 'open'
                    CONSTRAINT decisions_status_check
                    CHECK (status IN ('open', 'resolved', 'withdrawn')),
    outcome         text,
    resolved_by     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    CONSTRAINT decisions_outcome_check CHECK (status <> 'resolved' OR outcome IS NOT NULL)
);

COMMENT ON TABLE decisions IS 'Open questions and their outcomes; status becoming resolved is org.statehub.decision.resolved.';

CREATE INDEX decisions_repo_id_idx ON decisions (repo_id);
CREATE INDEX decisions_workstream_id_idx ON decisions (workstream_id);

CREATE TRIGGER decisions_stamp BEFORE UPDATE ON decisions
    FOR EACH ROW EXECUTE FUNCTION stamp_lifecycle('resolved', 'resolved_at');

CREATE TABLE domain_goals (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    domain          text NOT NULL,
    title           text NOT NULL,
    status          text NOT NULL DEFAULT 'proposed'
                    CONSTRAINT domain_goals_status_check
                    CHECK (status IN ('proposed', 'active', 'achieved', 'dropped')),
    target_date     date,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    activated_at    timestamptz,
    UNIQUE (domain, title)
);

COMMENT ON TABLE domain_goals IS 'Goals per domain; status becoming active is org.statehub.domain.goal.activated.';

CREATE TRIGGER domain_goals_stamp BEFORE UPDATE ON domain_goals
    FOR EACH ROW EXECUTE FUNCTION stamp_lifecycle('active', 'activated_at');

CREATE TABLE tasks (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    repo_id          uuid NOT NULL REFERENCES repos (id),
    workstream_id    uuid REFERENCES workstreams (id),
    title            text NOT NULL,
    status           text NOT NULL DEFAULT 'open'
                     CONSTRAINT tasks_status_check
                     CHECK (status IN ('open', 'in_progress', 'blocked', 'done', 'stale')),
    assignee         text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_activity_at timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);

COMMENT ON TABLE tasks IS 'Tasks; status becoming stale (the stale sweep) is org.statehub.task.stale.';
COMMENT ON COLUMN tasks.last_activity_at IS 'Last time someone worked on the task; the stale sweep reads it.';

CREATE INDEX tasks_repo_id_idx ON tasks (repo_id);
CREATE INDEX tasks_workstream_id_idx ON tasks (workstream_id);
/* The sweep's scan: only tasks that can still go stale. */
CREATE INDEX tasks_sweep_idx ON tasks (last_activity_at)
    WHERE status IN ('open', 'in_progress', 'blocked');

CREATE TRIGGER tasks_stamp BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION stamp_lifecycle('done', 'completed_at');

COMMIT;
