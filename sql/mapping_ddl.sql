--
-- mapping_ddl: DDL that reaches a declared event's columns by another way
-- than ALTER TABLE on the table itself, and type changes (issue 12, review)
--

-- ALTER TYPE ... CASCADE changes the tables typed with the type: the rules
-- of ALTER TABLE apply to them
CREATE TYPE md_ct AS (id integer, note text, status text);
CREATE TABLE md_typed OF md_ct (PRIMARY KEY (id));
SELECT statehub_events.track_insert('md_typed', 'org.statehub.md.typed');
SELECT statehub_events.track_transition('md_typed', 'status', 'done', 'org.statehub.md.typed-done');
-- a renamed attribute keeps its key
ALTER TYPE md_ct RENAME ATTRIBUTE id TO ident CASCADE;
SELECT event_type, attribute_keys, attribute_columns
  FROM statehub_events.mappings WHERE table_name = 'md_typed'::regclass ORDER BY 1;
INSERT INTO md_typed VALUES (1, 'n', 'open');
UPDATE md_typed SET status = 'done';
SELECT * FROM show_events();
SELECT clear_events();
-- a published attribute is not dropped
ALTER TYPE md_ct DROP ATTRIBUTE note CASCADE;
-- an attribute named previous, or after a key, is not added
ALTER TYPE md_ct ADD ATTRIBUTE previous integer CASCADE;
ALTER TYPE md_ct ADD ATTRIBUTE id integer CASCADE;
-- a published attribute keeps its JSON form
ALTER TYPE md_ct ALTER ATTRIBUTE note TYPE integer CASCADE;
-- an attribute no event publishes comes and goes
SELECT statehub_events.track_transition('md_typed', 'status', 'done', 'org.statehub.md.typed-done',
                                        attributes => '{ident}');
SELECT statehub_events.untrack('md_typed', 'org.statehub.md.typed');
ALTER TYPE md_ct ADD ATTRIBUTE spare integer CASCADE;
ALTER TYPE md_ct DROP ATTRIBUTE note CASCADE;
\d md_typed

-- the type of a published column changes only when its JSON form does not
CREATE TABLE md_price (id integer PRIMARY KEY, amount numeric(10,2), label varchar(10),
                       due date, spare text);
SELECT statehub_events.track_insert('md_price', 'org.statehub.md.priced', '{id,amount,label,due}');
ALTER TABLE md_price ALTER COLUMN amount TYPE text;
ALTER TABLE md_price ALTER COLUMN id TYPE text;
ALTER TABLE md_price ALTER COLUMN due TYPE timestamp;
ALTER TABLE md_price ALTER COLUMN label TYPE integer USING 0;
-- same JSON form: a wider type, another string or number type
ALTER TABLE md_price ALTER COLUMN label TYPE varchar(20);
ALTER TABLE md_price ALTER COLUMN label TYPE text;
ALTER TABLE md_price ALTER COLUMN amount TYPE numeric(12,2);
ALTER TABLE md_price ALTER COLUMN id TYPE bigint;
-- a column no event publishes may become anything
ALTER TABLE md_price ALTER COLUMN spare TYPE integer USING 0;
INSERT INTO md_price VALUES (1, 12.50, 'a', '2026-01-01', 0);
SELECT * FROM show_events();
SELECT clear_events();

-- a column added to a partitioned table reaches every partition: a
-- declaration on a partition refuses it as on the partition itself
CREATE TABLE md_log (id integer, at date, kind text) PARTITION BY RANGE (at);
CREATE TABLE md_log_2026 PARTITION OF md_log FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
SELECT statehub_events.track_transition('md_log_2026', 'kind', 'done', 'org.statehub.md.log-done');
ALTER TABLE md_log ADD COLUMN previous integer;
ALTER TABLE md_log RENAME COLUMN id TO ident;
ALTER TABLE md_log ADD COLUMN id integer;
-- and the type of a partition's published column is kept the same way
ALTER TABLE md_log ALTER COLUMN ident TYPE text;
ALTER TABLE md_log ADD COLUMN extra integer;
SELECT event_type, attribute_keys, attribute_columns
  FROM statehub_events.mappings WHERE table_name = 'md_log_2026'::regclass;

-- declaring an all-columns event again after a rename changes its keys:
-- the NOTICE shows both lists (and none when they stay)
CREATE TABLE md_keys (id integer PRIMARY KEY, note text);
SELECT statehub_events.track_insert('md_keys', 'org.statehub.md.keys');
ALTER TABLE md_keys RENAME COLUMN note TO remark;
SELECT statehub_events.track_insert('md_keys', 'org.statehub.md.keys');
SELECT statehub_events.track_insert('md_keys', 'org.statehub.md.keys');
SELECT statehub_events.track_insert('md_keys', 'org.statehub.md.keys', '{id}');

-- a renamed enum label: the trigger fires on the new label, and mappings
-- shows the values as the trigger compares them
CREATE TYPE md_st AS ENUM ('active', 'completed');
CREATE TABLE md_ws (id integer PRIMARY KEY, st md_st, note text);
SELECT statehub_events.track_transition('md_ws', 'st', 'completed', 'org.statehub.md.ws-done',
                                        from_value => 'active', attributes => '{id}');
SELECT statehub_events.track_transition('md_ws', 'note', 'x', 'org.statehub.md.ws-noted',
                                        from_value => 'y', attributes => '{id}');
ALTER TYPE md_st RENAME VALUE 'completed' TO 'archived';
ALTER TYPE md_st RENAME VALUE 'active' TO 'live';
SELECT event_type, column_name, from_value, to_value
  FROM statehub_events.mappings WHERE table_name = 'md_ws'::regclass ORDER BY 1;
INSERT INTO md_ws VALUES (1, 'live', 'y');
UPDATE md_ws SET st = 'archived', note = 'x';
SELECT subject, payload FROM show_events();
SELECT clear_events();

DROP TABLE md_typed, md_price, md_log, md_keys, md_ws;
DROP TYPE md_ct, md_st;
