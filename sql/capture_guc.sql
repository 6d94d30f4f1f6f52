--
-- capture_guc: statehub_events.capture = off turns capture into a no-op
--
CREATE TABLE guc_t (id integer PRIMARY KEY);
SELECT statehub_events.track_insert('guc_t', 'org.statehub.guc.created');
SHOW statehub_events.capture;
SET statehub_events.capture = off;
INSERT INTO guc_t VALUES (1);
SELECT pg_catalog.count(*) FROM statehub_events.outbox;
RESET statehub_events.capture;
INSERT INTO guc_t VALUES (2);
SELECT pg_catalog.count(*) FROM statehub_events.outbox;
SELECT clear_events();

-- only a superuser may turn it off
CREATE ROLE guc_app;
SET ROLE guc_app;
SET statehub_events.capture = off;
RESET ROLE;
DROP ROLE guc_app;

-- the publisher is superuser-only too: an application cannot pose as another
SELECT name, context FROM pg_catalog.pg_settings
 WHERE name IN ('statehub_events.capture', 'statehub_events.publisher') ORDER BY name;
