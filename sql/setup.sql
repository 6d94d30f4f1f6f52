--
-- setup: the extension, and helpers the other tests use to look at the outbox
--
CREATE EXTENSION statehub_events;

-- The queued events in drain order, with the two values that differ on every
-- run masked -- but only when they have the contract's exact format, so a
-- malformed id or timestamp shows up unmasked in the diff.  id_ok checks the
-- outbox's event_id against the envelope, json_ok that the payload parses.
CREATE FUNCTION show_events()
RETURNS TABLE (n bigint, subject text, id_ok boolean, json_ok boolean, payload text)
LANGUAGE sql AS $$
  SELECT pg_catalog.row_number() OVER (ORDER BY o.id),
         o.subject,
         (o.payload::json ->> 'id')::uuid = o.event_id,
         pg_catalog.json_typeof(o.payload::json) = 'object',
         regexp_replace(
           regexp_replace(o.payload,
             '^\{"id": "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", ',
             '{"id": "<uuid-v4>", '),
           '"timestamp": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ',
           '"timestamp": "<utc>", ')
    FROM statehub_events.outbox o
   ORDER BY o.id
$$;

CREATE FUNCTION clear_events() RETURNS void
LANGUAGE sql AS $$ DELETE FROM statehub_events.outbox $$;

-- the objects the extension made
SELECT pg_catalog.pg_describe_object(classid, objid, objsubid) AS object
  FROM pg_catalog.pg_depend
 WHERE refclassid = 'pg_catalog.pg_extension'::regclass
   AND refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'statehub_events')
   AND deptype = 'e'
 ORDER BY 1;
