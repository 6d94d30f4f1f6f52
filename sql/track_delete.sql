--
-- track_delete: each deleted row, built from OLD
--
CREATE TABLE decisions (id integer PRIMARY KEY, title text, status text);
INSERT INTO decisions VALUES (1, 'a', 'open'), (2, 'b', 'resolved'), (3, 'c', 'open');
SELECT statehub_events.track_delete('decisions', 'org.statehub.decision.deleted');
DELETE FROM decisions WHERE id = 1;
DELETE FROM decisions WHERE id > 1;
DELETE FROM decisions;    -- nothing left: nothing queued
SELECT * FROM show_events();
SELECT clear_events();

SELECT statehub_events.track_delete('decisions', 'org.statehub.decision.deleted', '{id}');
INSERT INTO decisions VALUES (4, 'd', 'open');
DELETE FROM decisions;
SELECT * FROM show_events();
SELECT clear_events();

-- TRUNCATE fires no row trigger, and queues nothing
INSERT INTO decisions VALUES (5, 'e', 'open');
TRUNCATE decisions;
SELECT pg_catalog.count(*) FROM statehub_events.outbox;
