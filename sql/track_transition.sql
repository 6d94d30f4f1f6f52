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

--
-- a column whose type is a domain (issue 12, the part left): over an enum,
-- which has no "=" of its own (PostgreSQL's is the enum's, over the base
-- type), and over other types; the value is checked by the domain
--
CREATE TYPE tt_state AS ENUM ('open', 'done', 'gone');
CREATE DOMAIN tt_dstate AS tt_state CHECK (VALUE <> 'gone');
CREATE DOMAIN tt_dlevel AS integer CHECK (VALUE > 0);
CREATE TABLE tt_dom (id integer PRIMARY KEY, state tt_dstate, level tt_dlevel);
SELECT statehub_events.track_transition('tt_dom', 'state', 'done', 'org.statehub.tt.done',
                                        attributes => '{id,state}');
SELECT statehub_events.track_transition('tt_dom', 'state', 'open', 'org.statehub.tt.reopened',
                                        from_value => 'done', attributes => '{id}');
SELECT statehub_events.track_transition('tt_dom', 'level', '3', 'org.statehub.tt.escalated',
                                        attributes => '{id,level}');
-- values the domain refuses, or its enum lacks
SELECT statehub_events.track_transition('tt_dom', 'state', 'gone', 'org.statehub.tt.gone');
SELECT statehub_events.track_transition('tt_dom', 'state', 'lost', 'org.statehub.tt.lost');
SELECT statehub_events.track_transition('tt_dom', 'level', '-1', 'org.statehub.tt.negative');
INSERT INTO tt_dom VALUES (1, 'open', 1), (2, NULL, 2);
UPDATE tt_dom SET state = 'done', level = 3;
UPDATE tt_dom SET state = 'done';
UPDATE tt_dom SET state = 'open' WHERE id = 1;
SELECT * FROM show_events();
SELECT clear_events();
-- mappings shows the values, also after the label is renamed
ALTER TYPE tt_state RENAME VALUE 'done' TO 'closed';
SELECT event_type, column_name, from_value, to_value FROM statehub_events.mappings
 WHERE table_name = 'tt_dom'::regclass ORDER BY event_type;
UPDATE tt_dom SET state = 'closed' WHERE id = 1;
SELECT subject, payload::json -> 'attributes' AS attributes FROM statehub_events.outbox;
SELECT clear_events();
DROP TABLE tt_dom;
DROP DOMAIN tt_dstate, tt_dlevel;
DROP TYPE tt_state;
