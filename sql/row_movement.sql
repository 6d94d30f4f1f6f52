--
-- row movement in MERGE, in statements with a data-modifying WITH, through
-- a parent above the declaring table and into partitions that declare
-- events alone (issue 12, the part left): each moved row publishes what the
-- same statement publishes on an unpartitioned table (its transitions, no
-- insert, no delete), or the statement is refused with an ERROR
--
CREATE TABLE rm_t (id integer, region text, status text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE rm_eu PARTITION OF rm_t FOR VALUES IN ('eu');
-- the destination's columns in another order (other attribute numbers)
CREATE TABLE rm_us (status text, region text, id integer, PRIMARY KEY (id, region));
ALTER TABLE rm_t ATTACH PARTITION rm_us FOR VALUES IN ('us');
SELECT statehub_events.track_insert('rm_t', 'org.statehub.rm.created', '{id,region}');
SELECT statehub_events.track_delete('rm_t', 'org.statehub.rm.deleted', '{id}');
SELECT statehub_events.track_transition('rm_t', 'status', 'done', 'org.statehub.rm.done',
                                        attributes => '{id,region}');
INSERT INTO rm_t VALUES (1, 'eu', 'open'), (2, 'eu', 'open'), (3, 'eu', 'open'), (4, 'us', 'open');
SELECT clear_events();

-- MERGE: moved rows (1 with its transition, 2 without), a row updated in
-- place (3), a real insert (5) and a real delete (4), in one statement
CREATE TABLE rm_src (id integer, region text, status text, action text);
INSERT INTO rm_src VALUES (1, 'us', 'done', 'update'), (2, 'us', 'open', 'update'),
                          (3, 'eu', 'done', 'update'), (4, 'us', NULL, 'delete'),
                          (5, 'eu', 'open', 'insert');
MERGE INTO rm_t t USING rm_src s ON t.id = s.id
  WHEN MATCHED AND s.action = 'delete' THEN DELETE
  WHEN MATCHED THEN UPDATE SET region = s.region, status = s.status
  WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.region, s.status);
SELECT * FROM show_events();
SELECT clear_events();
SELECT tableoid::regclass, id, status FROM rm_t ORDER BY id;

-- WITH: moved rows, several in one statement, back the other way
WITH moved AS (UPDATE rm_t SET region = 'eu', status = 'done' WHERE region = 'us' RETURNING id)
SELECT count(*) FROM moved;
SELECT * FROM show_events();
SELECT clear_events();

-- WITH that moves rows and inserts for real into the same tree, on both
-- sides, in one statement: the inserts are published, the moves are not
WITH ins AS (INSERT INTO rm_t VALUES (10, 'us', 'open'), (11, 'eu', 'done') RETURNING id),
     moved AS (UPDATE rm_t SET region = 'us', status = 'open' WHERE id IN (1, 2, 5) RETURNING id)
SELECT (SELECT count(*) FROM ins) AS inserted, (SELECT count(*) FROM moved) AS moved;
WITH moved AS (UPDATE rm_t SET region = 'eu', status = 'done' WHERE id IN (1, 2) RETURNING id)
INSERT INTO rm_t SELECT id + 20, 'us', 'open' FROM moved;
SELECT * FROM show_events();
SELECT clear_events();
SELECT tableoid::regclass, id, status FROM rm_t ORDER BY id;

-- a rolled back subtransaction around moves publishes nothing, the next
-- statement pairs its own rows
BEGIN;
SAVEPOINT s;
MERGE INTO rm_t t USING (VALUES (5)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET region = 'eu', status = 'done';
ROLLBACK TO SAVEPOINT s;
WITH moved AS (UPDATE rm_t SET region = 'eu', status = 'done' WHERE id = 10 RETURNING id)
INSERT INTO rm_t VALUES (30, 'us', 'open');
COMMIT;
SELECT * FROM show_events();
SELECT clear_events();

-- a BEFORE INSERT row trigger may skip a moved row's insert: in MERGE and
-- WITH the move's insert could then not be told from a real one (refused);
-- a plain UPDATE pairs each insert with the delete just before it
CREATE FUNCTION rm_keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER rm_keep BEFORE INSERT ON rm_us FOR EACH ROW EXECUTE FUNCTION rm_keep();
MERGE INTO rm_t t USING (VALUES (1)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET region = 'us';
WITH moved AS (UPDATE rm_t SET region = 'us' WHERE id = 1 RETURNING id) SELECT count(*) FROM moved;
-- a WITH or a MERGE that moves no row is not refused (a MERGE that can
-- insert too); one that moves a row and inserts is
WITH upd AS (UPDATE rm_t SET status = 'open' WHERE id = 1 RETURNING id) SELECT count(*) FROM upd;
MERGE INTO rm_t t USING (VALUES (1)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET status = 'done';
MERGE INTO rm_t t USING (VALUES (40)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET status = 'open'
  WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'us', 'open');
MERGE INTO rm_t t USING (VALUES (1), (41)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET status = 'open'
  WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'us', 'open');
MERGE INTO rm_t t USING (VALUES (1), (42)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET region = 'us'
  WHEN NOT MATCHED THEN INSERT VALUES (s.id, 'us', 'open');
-- a plain UPDATE into that partition is exact
UPDATE rm_t SET status = 'open' WHERE id = 3;
UPDATE rm_t SET region = 'us', status = 'done' WHERE id = 3;
SELECT * FROM show_events();
SELECT clear_events();
DROP TRIGGER rm_keep ON rm_us;
SELECT count(*) AS unchanged FROM rm_t WHERE id = 1 AND region = 'eu';

--
-- a parent above the declaring tables: two sub-partitioned siblings that
-- each declare the transition cover every partition (exact); with a
-- sibling that declares nothing, a move is refused
--
CREATE TABLE rm_p (id integer, k integer, status text) PARTITION BY RANGE (k);
CREATE TABLE rm_p_lo PARTITION OF rm_p FOR VALUES FROM (0) TO (10) PARTITION BY LIST (status);
CREATE TABLE rm_p_lo_open PARTITION OF rm_p_lo FOR VALUES IN ('open');
CREATE TABLE rm_p_lo_done PARTITION OF rm_p_lo DEFAULT;
CREATE TABLE rm_p_hi PARTITION OF rm_p FOR VALUES FROM (10) TO (20) PARTITION BY LIST (status);
CREATE TABLE rm_p_hi_all PARTITION OF rm_p_hi DEFAULT;
SELECT statehub_events.track_transition('rm_p_lo', 'status', 'done', 'org.statehub.rm.lo_done',
                                        attributes => '{id,k}');
SELECT statehub_events.track_transition('rm_p_hi', 'status', 'done', 'org.statehub.rm.hi_done',
                                        attributes => '{id,k}');
INSERT INTO rm_p VALUES (1, 1, 'open'), (2, 1, 'open'), (3, 15, 'open');
SELECT clear_events();
-- 1 moves inside rm_p_lo, 2 from rm_p_lo to rm_p_hi, 3 from rm_p_hi to rm_p_lo
UPDATE rm_p SET status = 'done', k = CASE id WHEN 1 THEN 1 WHEN 2 THEN 12 ELSE 2 END;
MERGE INTO rm_p t USING (VALUES (2)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET k = 3, status = 'open';
MERGE INTO rm_p t USING (VALUES (2)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET k = 13, status = 'done';
SELECT * FROM show_events();
SELECT clear_events();
SELECT tableoid::regclass, id, k, status FROM rm_p ORDER BY id;
-- a sibling without the row-move trigger: rows may move through it
CREATE TABLE rm_p_mid PARTITION OF rm_p FOR VALUES FROM (20) TO (30);
INSERT INTO rm_p VALUES (4, 25, 'open');
UPDATE rm_p SET k = 5, status = 'done' WHERE id = 4;
UPDATE rm_p SET k = 2, status = 'open' WHERE id = 1;
MERGE INTO rm_p t USING (VALUES (1)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET k = 12;
-- with capture off nothing is published, and nothing refused
SET statehub_events.capture = off;
UPDATE rm_p SET k = 5 WHERE id = 4;
RESET statehub_events.capture;
SELECT tableoid::regclass, id FROM rm_p WHERE id = 4;
-- statements that move no row are untouched; a statement naming a
-- declaring table moves within it, exactly
UPDATE rm_p SET k = 3 WHERE id = 3;
UPDATE rm_p_lo SET status = 'open' WHERE id = 3;
UPDATE rm_p_lo SET status = 'done' WHERE id = 3;
SELECT * FROM show_events();
SELECT clear_events();
DROP TABLE rm_p;

--
-- a transition declared on a leaf partition alone: no row-move trigger
-- sees rows move in or out, so moving rows is refused; other statements
-- publish as on any table
--
CREATE TABLE rm_l (id integer, region text, status text) PARTITION BY LIST (region);
CREATE TABLE rm_l_eu PARTITION OF rm_l FOR VALUES IN ('eu');
CREATE TABLE rm_l_us PARTITION OF rm_l FOR VALUES IN ('us');
SELECT statehub_events.track_transition('rm_l_eu', 'status', 'done', 'org.statehub.rm.leaf_done',
                                        attributes => '{id}');
SELECT statehub_events.track_insert('rm_l_us', 'org.statehub.rm.leaf_created', '{id}');
INSERT INTO rm_l VALUES (1, 'us', 'open'), (2, 'eu', 'open');
UPDATE rm_l SET status = 'done';
UPDATE rm_l SET region = 'eu', status = 'open' WHERE id = 1;
UPDATE rm_l SET region = 'us' WHERE id = 2;
MERGE INTO rm_l t USING (VALUES (2)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET region = 'us';
WITH moved AS (UPDATE rm_l SET region = 'eu' WHERE id = 1 RETURNING id) SELECT count(*) FROM moved;
-- an insert-only declaration (no transition): a plain UPDATE is exact, a
-- MERGE cannot tell its moved row from an insert
SELECT statehub_events.untrack('rm_l_eu', 'org.statehub.rm.leaf_done');
UPDATE rm_l SET region = 'us' WHERE id = 2;
MERGE INTO rm_l t USING (VALUES (2)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET region = 'eu';
MERGE INTO rm_l t USING (VALUES (2)) s(id) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET region = 'us';
-- one that updates in place and inserts moves nothing: its insert is real
MERGE INTO rm_l t USING (VALUES (2, 'us'), (3, 'us')) s(id, region) ON t.id = s.id
  WHEN MATCHED THEN UPDATE SET status = 'open'
  WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.region, 'new');
SELECT * FROM show_events();
SELECT clear_events();
SELECT tableoid::regclass, id, status FROM rm_l ORDER BY id;
DROP TABLE rm_l;

--
-- a moved row whose insert a BEFORE INSERT trigger of its new partition
-- skips is gone: neither its transition nor a delete would be true, so the
-- UPDATE is refused; and a move that a BEFORE DELETE trigger of its old
-- partition skips moves nothing, so nothing is refused
--
CREATE TABLE rm_s (id integer, region text, status text) PARTITION BY LIST (region);
CREATE TABLE rm_s_eu PARTITION OF rm_s FOR VALUES IN ('eu');
CREATE TABLE rm_s_us PARTITION OF rm_s FOR VALUES IN ('us');
SELECT statehub_events.track_transition('rm_s', 'status', 'done', 'org.statehub.rm.skip_done',
                                        attributes => '{id}');
SELECT statehub_events.track_delete('rm_s', 'org.statehub.rm.skip_deleted', '{id}');
INSERT INTO rm_s VALUES (1, 'eu', 'open'), (2, 'eu', 'open');
CREATE FUNCTION rm_skip() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
CREATE TRIGGER rm_skip BEFORE INSERT ON rm_s_us FOR EACH ROW EXECUTE FUNCTION rm_skip();
UPDATE rm_s SET region = 'us', status = 'done' WHERE id = 1;
UPDATE rm_s SET region = 'us', status = 'done';
SELECT * FROM show_events();
SELECT tableoid::regclass, id, status FROM rm_s ORDER BY id;
-- (a leaf-only transition, so any real move here would be refused)
CREATE TABLE rm_s2 (id integer, region text, status text) PARTITION BY LIST (region);
CREATE TABLE rm_s2_eu PARTITION OF rm_s2 FOR VALUES IN ('eu');
CREATE TABLE rm_s2_us PARTITION OF rm_s2 FOR VALUES IN ('us');
SELECT statehub_events.track_transition('rm_s2_eu', 'status', 'done', 'org.statehub.rm.skip2_done');
INSERT INTO rm_s2 VALUES (1, 'eu', 'open');
CREATE TRIGGER rm_skip BEFORE DELETE ON rm_s2_eu FOR EACH ROW EXECUTE FUNCTION rm_skip();
UPDATE rm_s2 SET region = 'us' WHERE id = 1;
WITH moved AS (UPDATE rm_s2 SET region = 'us' WHERE id = 1 RETURNING 1) SELECT count(*) FROM moved;
SELECT * FROM show_events();
SELECT tableoid::regclass, id, status FROM rm_s2 ORDER BY id;
DROP TABLE rm_s, rm_s2;
DROP FUNCTION rm_skip();

--
-- a COPY run by a trigger of an UPDATE inserts for real: its rows are none
-- of the UPDATE's moves
--
CREATE TABLE rm_c (id integer, region text) PARTITION BY LIST (region);
CREATE TABLE rm_c_eu PARTITION OF rm_c FOR VALUES IN ('eu');
SELECT statehub_events.track_insert('rm_c', 'org.statehub.rm.copied', '{id}');
CREATE TABLE rm_x (id integer PRIMARY KEY, v integer);
INSERT INTO rm_x VALUES (1, 0);
CREATE FUNCTION rm_x_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  COPY rm_c FROM PROGRAM 'printf "7,eu\n"' WITH (FORMAT csv);
  RETURN NULL;
END $$;
CREATE TRIGGER rm_x_copy AFTER UPDATE ON rm_x FOR EACH ROW EXECUTE FUNCTION rm_x_copy();
UPDATE rm_x SET v = 1;
SELECT * FROM show_events();
SELECT clear_events();
DROP TABLE rm_c, rm_x;
DROP FUNCTION rm_x_copy();

DROP TABLE rm_t, rm_src;
DROP FUNCTION rm_keep();
