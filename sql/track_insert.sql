--
-- track_insert: every committed INSERT (matching an optional condition)
--
CREATE TABLE repos (
    id integer PRIMARY KEY,
    name text NOT NULL,
    kind text,
    archived boolean NOT NULL DEFAULT false
);

SELECT statehub_events.track_insert('repos', 'org.statehub.repo.registered');
INSERT INTO repos VALUES (1, 'custodian', 'service');
INSERT INTO repos VALUES (2, 'docs', NULL, true), (3, 'infra', 'library', false);
SELECT * FROM show_events();
SELECT clear_events();

-- an attribute list: exactly those columns, in that order
SELECT statehub_events.track_insert('repos', 'org.statehub.repo.registered',
                                    attributes => '{name,id}');
INSERT INTO repos VALUES (4, 'hub', 'service');
SELECT * FROM show_events();
SELECT clear_events();

-- an empty attribute list
SELECT statehub_events.track_insert('repos', 'org.statehub.repo.registered', '{}');
INSERT INTO repos VALUES (5, 'empty', NULL);
SELECT * FROM show_events();
SELECT clear_events();

-- a condition over NEW: only matching rows queue an event
SELECT statehub_events.track_insert('repos', 'org.statehub.repo.registered',
                                    '{id,name,kind}', $$NEW.kind = 'service'$$);
INSERT INTO repos VALUES (6, 'api', 'service'), (7, 'lib', 'library'), (8, 'nokind', NULL);
SELECT * FROM show_events();
SELECT clear_events();

-- the mapping is replaced, not duplicated
SELECT table_name, event_type, operation, column_name, attributes, condition
  FROM statehub_events.mappings;
SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = 'repos'::regclass;

-- a second event on the same table
SELECT statehub_events.track_insert('repos', 'org.statehub.repo.archived-on-create',
                                    '{id}', 'NEW.archived');
INSERT INTO repos VALUES (9, 'old', 'service', true);
SELECT * FROM show_events();
SELECT clear_events();

-- COPY queues events like INSERT
COPY repos (id, name, kind) FROM stdin;
10	copied	service
11	copied-too	library
\.
SELECT * FROM show_events();
SELECT clear_events();

-- INSERT ... ON CONFLICT DO NOTHING queues nothing for the skipped row
INSERT INTO repos VALUES (10, 'dup', 'service') ON CONFLICT DO NOTHING;
SELECT pg_catalog.count(*) FROM statehub_events.outbox;

-- untrack
SELECT statehub_events.untrack('repos', 'org.statehub.repo.archived-on-create');
SELECT statehub_events.untrack('repos', 'org.statehub.repo.archived-on-create');
SELECT statehub_events.untrack('repos', 'org.statehub.no.such-event');
SELECT table_name, event_type FROM statehub_events.mappings;
SELECT tgname FROM pg_catalog.pg_trigger WHERE tgrelid = 'repos'::regclass ORDER BY 1;
