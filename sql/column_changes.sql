--
-- column_changes: what happens to a mapping when the table changes later.
-- Capture never fails a write because of it.
--
CREATE TABLE cc_t (id integer PRIMARY KEY, name text, owner text, status text);
SELECT statehub_events.track_insert('cc_t', 'org.statehub.cc.created', '{id,name,owner}');
SELECT statehub_events.track_transition('cc_t', 'status', 'done', 'org.statehub.cc.done',
                                        attributes => '{id,owner}');
SELECT statehub_events.track_delete('cc_t', 'org.statehub.cc.deleted');

-- a dropped attribute column is left out of the event; the write succeeds
ALTER TABLE cc_t DROP COLUMN owner;
INSERT INTO cc_t VALUES (1, 'one', 'new');
UPDATE cc_t SET status = 'done';
-- a renamed attribute column is left out too (declare the event again)
ALTER TABLE cc_t RENAME COLUMN name TO title;
INSERT INTO cc_t VALUES (2, 'two', 'new');
-- a new column shows up where all columns are attributes
ALTER TABLE cc_t ADD COLUMN extra integer DEFAULT 7;
DELETE FROM cc_t WHERE id = 2;
SELECT * FROM show_events();
SELECT clear_events();

-- the tracked column follows a RENAME
ALTER TABLE cc_t RENAME COLUMN status TO state;
SELECT event_type, column_name FROM statehub_events.mappings
 WHERE table_name = 'cc_t'::regclass AND operation = 'update';
INSERT INTO cc_t VALUES (3, 'three', 'new');
UPDATE cc_t SET state = 'done' WHERE id = 3;
SELECT subject, payload::json -> 'attributes' -> 'previous' AS previous
  FROM statehub_events.outbox WHERE subject = 'org.statehub.cc.done';
SELECT clear_events();

-- the tracked column cannot be retyped or dropped while tracked ...
ALTER TABLE cc_t ALTER COLUMN state TYPE varchar(20);
ALTER TABLE cc_t DROP COLUMN state;
-- ... unless with CASCADE, which ends that mapping
ALTER TABLE cc_t DROP COLUMN state CASCADE;
SELECT event_type, operation FROM statehub_events.mappings WHERE table_name = 'cc_t'::regclass;
-- the sql_drop event trigger removed the dropped trigger's mapping row
SELECT event_type, operation, column_name FROM statehub_events.mapping
 WHERE table_name = 'cc_t'::regclass ORDER BY event_type;
-- declaring it again
SELECT statehub_events.track_insert('cc_t', 'org.statehub.cc.created', '{id,title}');
SELECT event_type, operation FROM statehub_events.mapping WHERE table_name = 'cc_t'::regclass;

-- DROP TABLE ends its mappings
DROP TABLE cc_t;
SELECT pg_catalog.count(*) FROM statehub_events.mappings WHERE event_type LIKE 'org.statehub.cc.%';
