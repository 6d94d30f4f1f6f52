--
-- partitioned: rows routed to partitions are captured
--
CREATE TABLE part_t (id integer, region text, status text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE part_eu PARTITION OF part_t FOR VALUES IN ('eu');
-- a partition whose columns are in another order (other attribute numbers)
CREATE TABLE part_us (status text, region text, id integer, PRIMARY KEY (id, region));
ALTER TABLE part_t ATTACH PARTITION part_us FOR VALUES IN ('us');

SELECT statehub_events.track_insert('part_t', 'org.statehub.part.created');
SELECT statehub_events.track_transition('part_t', 'status', 'done', 'org.statehub.part.done',
                                        attributes => '{id,region}');
-- a partition created after the declaration gets the trigger too
CREATE TABLE part_ap PARTITION OF part_t FOR VALUES IN ('ap');

INSERT INTO part_t VALUES (1, 'eu', 'new'), (2, 'us', 'new'), (3, 'ap', 'new');
UPDATE part_t SET status = 'done';
-- a row moved to another partition is no insert (mapping_fidelity has more)
UPDATE part_t SET region = 'eu' WHERE id = 2;
SELECT * FROM show_events();
SELECT clear_events();

SELECT table_name, event_type FROM statehub_events.mappings WHERE table_name::text LIKE 'part%';

--
-- row movement (issue 12, item 1): an UPDATE that moves a row to another
-- partition publishes what it publishes on an unpartitioned table: the
-- transitions it makes, no insert, no delete
--
CREATE TABLE mv_t (id integer, region text, status text, note text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE mv_eu PARTITION OF mv_t FOR VALUES IN ('eu');
-- the destination's columns in another order (other attribute numbers)
CREATE TABLE mv_us (note text, status text, region text, id integer, PRIMARY KEY (id, region));
ALTER TABLE mv_t ATTACH PARTITION mv_us FOR VALUES IN ('us');
SELECT statehub_events.track_insert('mv_t', 'org.statehub.mv.created', '{id}');
SELECT statehub_events.track_delete('mv_t', 'org.statehub.mv.deleted', '{id}');
SELECT statehub_events.track_transition('mv_t', 'status', 'done', 'org.statehub.mv.done',
                                        attributes => '{id,region}');
SELECT statehub_events.track_transition('mv_t', 'status', 'done', 'org.statehub.mv.closed',
                                        from_value => 'open', attributes => '{id}');
-- the table, each partition, and a partition attached later have the
-- row-move trigger
CREATE TABLE mv_ap PARTITION OF mv_t FOR VALUES IN ('ap');
SELECT tgrelid::regclass, tgname FROM pg_trigger
 WHERE tgname LIKE 'statehub_events:row moved:%' ORDER BY tgrelid::regclass::text, tgname;
INSERT INTO mv_t VALUES (1, 'eu', 'open', 'a'), (2, 'eu', 'new', 'b'), (3, 'eu', 'open', 'c'),
                        (4, 'us', 'open', 'd'), (5, 'eu', 'done', 'e'), (6, 'eu', 'open', 'f');
SELECT clear_events();
-- one UPDATE, rows moved and not, in row order: 1 makes both transitions,
-- 2 only the one from any value, 3 stays in place, 5 was done already
UPDATE mv_t SET region = CASE WHEN id = 3 THEN 'eu' ELSE 'us' END, status = 'done'
 WHERE id IN (1, 2, 3, 5);
-- moved without a transition: nothing
UPDATE mv_t SET region = 'ap' WHERE id = 6;
-- from the other order of columns back
UPDATE mv_t SET region = 'eu', status = 'done' WHERE id = 4;
SELECT * FROM show_events();
SELECT clear_events();
SELECT tableoid::regclass, id, status FROM mv_t ORDER BY id;
-- a BEFORE trigger that makes the transition is published, as for a row
-- that stays; a BEFORE trigger of the destination's INSERT is part of the
-- row the UPDATE leaves
CREATE FUNCTION mv_close() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN NEW.status := CASE NEW.note WHEN 'close' THEN 'done' ELSE NEW.status END; RETURN NEW; END $$;
CREATE TRIGGER mv_close BEFORE UPDATE ON mv_t FOR EACH ROW EXECUTE FUNCTION mv_close();
UPDATE mv_t SET region = 'eu', note = 'close' WHERE id = 6;
SELECT * FROM show_events();
SELECT clear_events();
-- a rolled back subtransaction publishes nothing, and leaves nothing behind
INSERT INTO mv_t VALUES (7, 'eu', 'open', 'g'), (8, 'eu', 'open', 'h');
SELECT clear_events();
BEGIN;
SAVEPOINT s;
UPDATE mv_t SET region = 'us', status = 'done' WHERE id = 7;
ROLLBACK TO SAVEPOINT s;
UPDATE mv_t SET region = 'us' WHERE id = 8;
COMMIT;
SELECT * FROM show_events();
-- a real DELETE then INSERT in the same transaction are events, no transition
DELETE FROM mv_t WHERE id = 8;
INSERT INTO mv_t VALUES (8, 'eu', 'done', 'h');
SELECT * FROM show_events();
SELECT clear_events();
-- with capture off, a moved row publishes nothing
SET statehub_events.capture = off;
UPDATE mv_t SET region = 'us', status = 'done' WHERE id = 7;
RESET statehub_events.capture;
SELECT count(*) AS events FROM statehub_events.outbox;
-- the row-move trigger goes with the last transition, also after a RENAME
ALTER TABLE mv_t RENAME TO mv_renamed;
SELECT statehub_events.untrack('mv_renamed', 'org.statehub.mv.done');
SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'statehub_events:row moved:mv%';
SELECT statehub_events.untrack('mv_renamed', 'org.statehub.mv.closed');
SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'statehub_events:row moved:mv%';
DROP TABLE mv_renamed;
DROP FUNCTION mv_close();

-- a sub-partitioned partition declaring its own transition beside its
-- parent's: each has its row-move trigger, and a moved row's transitions
-- are published once each, those of the partition it lands in
CREATE TABLE mv_n (id integer, k integer, status text) PARTITION BY RANGE (k);
CREATE TABLE mv_n_lo PARTITION OF mv_n FOR VALUES FROM (0) TO (10) PARTITION BY LIST (status);
CREATE TABLE mv_n_lo_open PARTITION OF mv_n_lo FOR VALUES IN ('open');
CREATE TABLE mv_n_lo_done PARTITION OF mv_n_lo FOR VALUES IN ('done');
CREATE TABLE mv_n_hi PARTITION OF mv_n FOR VALUES FROM (10) TO (20);
SELECT statehub_events.track_transition('mv_n_lo', 'status', 'done', 'org.statehub.mv.lo_done',
                                        attributes => '{id}');
SELECT statehub_events.track_transition('mv_n', 'status', 'done', 'org.statehub.mv.n_done',
                                        attributes => '{id}');
SELECT tgrelid::regclass, tgname FROM pg_trigger
 WHERE tgname LIKE 'statehub_events:row moved:%' ORDER BY tgrelid::regclass::text, tgname;
INSERT INTO mv_n VALUES (1, 1, 'open'), (2, 1, 'open');
SELECT clear_events();
UPDATE mv_n SET status = 'done' WHERE id = 1;
UPDATE mv_n SET status = 'done', k = 15 WHERE id = 2;
SELECT * FROM show_events();
SELECT clear_events();
SELECT statehub_events.untrack('mv_n', 'org.statehub.mv.n_done');
SELECT tgrelid::regclass, tgname FROM pg_trigger
 WHERE tgname LIKE 'statehub_events:row moved:%' ORDER BY tgrelid::regclass::text, tgname;
-- an UPDATE of mv_n can move rows through partitions without the trigger
-- (mv_n_hi): one that moves rows is refused, whichever partitions they move
-- between (docs/operations.md; row_movement has more); one of mv_n_lo is
-- exact
UPDATE mv_n SET status = 'open' WHERE id = 1;
UPDATE mv_n SET status = 'done' WHERE id = 1;
SELECT count(*) AS events FROM statehub_events.outbox;
-- there, 5 leaves mv_n_lo and 6 enters it: 6 must not be paired with 5,
-- refused too
INSERT INTO mv_n VALUES (5, 1, 'open'), (6, 15, 'open');
UPDATE mv_n SET k = CASE id WHEN 5 THEN 16 ELSE 2 END, status = 'done' WHERE id IN (5, 6);
SELECT subject, payload::json -> 'attributes' AS attributes FROM statehub_events.outbox ORDER BY id;
SELECT clear_events();
UPDATE mv_n_lo SET status = 'open' WHERE id = 1;
UPDATE mv_n_lo SET status = 'done' WHERE id = 1;
SELECT * FROM show_events();
SELECT clear_events();
-- a row whose INSERT a BEFORE trigger skips would be gone without an event:
-- the UPDATE is refused; a row it keeps moves as any other
CREATE FUNCTION mv_skip() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RETURN CASE WHEN NEW.id = 3 THEN NULL ELSE NEW END; END $$;
CREATE TRIGGER mv_skip BEFORE INSERT ON mv_n_lo_done FOR EACH ROW EXECUTE FUNCTION mv_skip();
INSERT INTO mv_n_lo VALUES (3, 1, 'open'), (4, 1, 'open');
UPDATE mv_n_lo SET status = 'done' WHERE id IN (3, 4);
UPDATE mv_n_lo SET status = 'done' WHERE id = 4;
SELECT * FROM show_events();
SELECT clear_events();
DROP TABLE mv_n;
DROP FUNCTION mv_skip();
