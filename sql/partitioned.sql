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
