--
-- column_changes: what happens to a mapping when the table changes later.
-- The keys consumers receive are fixed when the event is declared (issue 12,
-- item 2): a RENAME is followed, a DROP of a published column is refused,
-- and capture never fails a write because of either.
--
CREATE TABLE cc_t (id integer PRIMARY KEY, name text, owner text, status text);
SELECT statehub_events.track_insert('cc_t', 'org.statehub.cc.created', '{id,name,owner}');
SELECT statehub_events.track_transition('cc_t', 'status', 'done', 'org.statehub.cc.done',
                                        attributes => '{id,owner}');
SELECT statehub_events.track_delete('cc_t', 'org.statehub.cc.deleted');

-- a published attribute column cannot be dropped: the ERROR names the event
ALTER TABLE cc_t DROP COLUMN owner;
ALTER TABLE cc_t DROP COLUMN owner CASCADE;
-- a renamed attribute column keeps its key ...
ALTER TABLE cc_t RENAME COLUMN name TO title;
INSERT INTO cc_t VALUES (1, 'one', 'ann', 'new');
UPDATE cc_t SET status = 'done';
-- ... and a new column shows up where all columns are attributes
ALTER TABLE cc_t ADD COLUMN extra integer DEFAULT 7;
DELETE FROM cc_t WHERE id = 1;
SELECT * FROM show_events();
SELECT clear_events();

-- the tracked column follows a RENAME; "previous" keeps its key
ALTER TABLE cc_t RENAME COLUMN status TO state;
-- so does a column added after an all-columns declaration
ALTER TABLE cc_t RENAME COLUMN extra TO surplus;
SELECT event_type, column_name, column_key, attributes, attribute_keys, attribute_columns
  FROM statehub_events.mappings WHERE table_name = 'cc_t'::regclass;
INSERT INTO cc_t VALUES (3, 'three', 'bob', 'new');
UPDATE cc_t SET state = 'done' WHERE id = 3;
DELETE FROM cc_t WHERE id = 3;
SELECT * FROM show_events();
SELECT clear_events();

-- a new column may not repeat a key the event publishes
ALTER TABLE cc_t ADD COLUMN name text;
ALTER TABLE cc_t ADD COLUMN extra text;
ALTER TABLE cc_t ADD COLUMN other text;

-- the tracked column cannot be retyped or dropped while tracked ...
ALTER TABLE cc_t ALTER COLUMN state TYPE varchar(20);
ALTER TABLE cc_t DROP COLUMN state;
-- ... nor with CASCADE while another event publishes it ...
ALTER TABLE cc_t DROP COLUMN state CASCADE;
-- ... and with CASCADE once none does, which ends the transition mapping
SELECT statehub_events.track_delete('cc_t', 'org.statehub.cc.deleted', '{id,title}');
ALTER TABLE cc_t DROP COLUMN state CASCADE;
SELECT event_type, operation FROM statehub_events.mappings WHERE table_name = 'cc_t'::regclass;
-- the sql_drop event trigger removed the dropped trigger's mapping row
SELECT event_type, operation, column_name FROM statehub_events.mapping
 WHERE table_name = 'cc_t'::regclass ORDER BY event_type;
-- a column no event publishes any more can be dropped
SELECT statehub_events.track_insert('cc_t', 'org.statehub.cc.created', '{id,title}');
ALTER TABLE cc_t DROP COLUMN owner;
SELECT event_type, operation FROM statehub_events.mapping WHERE table_name = 'cc_t'::regclass;

-- a partitioned table: a RENAME reaches the partitions' triggers
CREATE TABLE cc_p (id integer, region text, label text) PARTITION BY LIST (region);
CREATE TABLE cc_p_eu PARTITION OF cc_p FOR VALUES IN ('eu');
SELECT statehub_events.track_insert('cc_p', 'org.statehub.ccp.created', '{id,label}');
ALTER TABLE cc_p RENAME COLUMN label TO caption;
INSERT INTO cc_p VALUES (1, 'eu', 'first');
SELECT * FROM show_events();
SELECT clear_events();
DROP TABLE cc_p;

-- DROP TABLE ends its mappings
DROP TABLE cc_t;
SELECT pg_catalog.count(*) FROM statehub_events.mappings WHERE event_type LIKE 'org.statehub.cc.%';
