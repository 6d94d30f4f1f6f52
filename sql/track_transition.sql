--
-- track_transition: an UPDATE that changes a column to a value
--
CREATE TYPE ws_status AS ENUM ('open', 'active', 'blocked', 'completed');
CREATE TABLE workstreams (
    id integer PRIMARY KEY,
    title text NOT NULL,
    status ws_status NOT NULL DEFAULT 'open',
    priority integer
);
INSERT INTO workstreams VALUES (1, 'one', 'open', 1), (2, 'two', 'active', 2),
                               (3, 'three', 'blocked', 3);

SELECT statehub_events.track_transition('workstreams', 'status', 'completed',
                                        'org.statehub.workstream.completed');

-- updates that do not transition queue nothing
UPDATE workstreams SET priority = priority + 1;                -- other column
UPDATE workstreams SET status = status;                        -- no change
UPDATE workstreams SET status = 'active' WHERE id = 1;         -- another value
SELECT pg_catalog.count(*) FROM statehub_events.outbox;

-- a transition queues one event, carrying the previous value
UPDATE workstreams SET status = 'completed' WHERE id = 1;
SELECT * FROM show_events();
SELECT clear_events();

-- completed -> completed is no transition
UPDATE workstreams SET status = 'completed', priority = 9 WHERE id = 1;
SELECT pg_catalog.count(*) FROM statehub_events.outbox;

-- a multi-row UPDATE queues one event per transitioning row
UPDATE workstreams SET status = 'completed';
SELECT * FROM show_events();
SELECT clear_events();

-- from_value: only from that value
UPDATE workstreams SET status = 'open';
SELECT statehub_events.track_transition('workstreams', 'status', 'completed',
                                        'org.statehub.workstream.completed',
                                        from_value => 'active',
                                        attributes => '{id,title}');
UPDATE workstreams SET status = 'active' WHERE id IN (1, 2);
UPDATE workstreams SET status = 'completed';
SELECT * FROM show_events();
SELECT clear_events();

-- text and integer columns work alike; NULL -> value is a transition
CREATE TABLE tasks (id integer PRIMARY KEY, state text, level integer);
INSERT INTO tasks VALUES (1, NULL, NULL), (2, 'open', 1);
SELECT statehub_events.track_transition('tasks', 'state', 'stale', 'org.statehub.task.stale', attributes => '{id}');
SELECT statehub_events.track_transition('tasks', 'level', '3', 'org.statehub.task.escalated', from_value => '1', attributes => '{id,level}');
UPDATE tasks SET state = 'stale';
UPDATE tasks SET level = 3;
UPDATE tasks SET level = 1;
UPDATE tasks SET level = 3;
SELECT * FROM show_events();
SELECT clear_events();

-- INSERT ... ON CONFLICT DO UPDATE transitions through the UPDATE
INSERT INTO tasks VALUES (2, 'open', 1) ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state;
INSERT INTO tasks VALUES (2, 'stale', 1) ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state;
SELECT * FROM show_events();
SELECT clear_events();

-- the trigger PostgreSQL filters with (WHEN and UPDATE OF)
SELECT pg_catalog.pg_get_triggerdef(oid) FROM pg_catalog.pg_trigger
 WHERE tgrelid = 'tasks'::regclass ORDER BY tgname;

SELECT table_name, event_type, operation, column_name, from_value, to_value, attributes
  FROM statehub_events.mappings WHERE operation = 'update';
