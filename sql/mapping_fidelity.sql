--
-- mapping_fidelity: declarations mean what they say, or are refused
-- (issue 12, items 1-6 and 14; the keys through DDL are in column_changes)
--
CREATE TYPE mf_state AS ENUM ('open', 'active', 'done');
CREATE TABLE mf_t (
    id integer PRIMARY KEY,
    status text CHECK (status IN ('open', 'active', 'done')),
    state mf_state,
    due date,
    seen timestamptz,
    note text,
    CHECK (note <> status)
);
INSERT INTO mf_t VALUES (1, 'open', 'open', '2026-01-01', '2026-01-01', 'n');

-- a change a BEFORE UPDATE trigger makes to the tracked column is a
-- transition too (the capture trigger has no UPDATE OF list)
CREATE FUNCTION mf_close() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.note = 'close' THEN
        NEW.status := 'done';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER mf_close BEFORE UPDATE ON mf_t FOR EACH ROW EXECUTE FUNCTION mf_close();
SELECT statehub_events.track_transition('mf_t', 'status', 'done', 'org.statehub.mf.done',
                                        attributes => '{id}');
UPDATE mf_t SET note = 'close' WHERE id = 1;
SELECT * FROM show_events();
SELECT clear_events();

-- re-declaring names what it replaces, old and new
SELECT statehub_events.track_transition('mf_t', 'status', 'done', 'org.statehub.mf.done',
                                        from_value => 'active', attributes => '{id,note}');

-- values the column can never hold are refused: a single-column CHECK ...
SELECT statehub_events.track_transition('mf_t', 'status', 'done', 'org.statehub.mf.done',
                                        from_value => 'opne');
SELECT statehub_events.track_transition('mf_t', 'status', 'closed', 'org.statehub.mf.closed');
-- ... (a CHECK over several columns does not decide alone) ...
SELECT statehub_events.track_transition('mf_t', 'note', 'x', 'org.statehub.mf.noted',
                                        attributes => '{id}');
-- ... and an enum label the type lacks, with a hint
SELECT statehub_events.track_transition('mf_t', 'state', 'done', 'org.statehub.mf.state-done',
                                        from_value => 'opne');
SELECT statehub_events.track_transition('mf_t', 'state', 'done', 'org.statehub.mf.state-done',
                                        from_value => 'open', attributes => '{id}');
-- the declaration in force is unchanged by the refused ones
SELECT event_type, column_name, from_value, to_value, attributes
  FROM statehub_events.mappings WHERE table_name = 'mf_t'::regclass ORDER BY 1;

-- dates and times relative to now would be frozen at declaration: refused
SELECT statehub_events.track_transition('mf_t', 'seen', 'yesterday', 'org.statehub.mf.seen');
SELECT statehub_events.track_transition('mf_t', 'due', 'today', 'org.statehub.mf.due');
SELECT statehub_events.track_transition('mf_t', 'due', '2027-01-01', 'org.statehub.mf.due',
                                        from_value => 'Tomorrow');
SELECT statehub_events.track_transition('mf_t', 'seen', 'NOW', 'org.statehub.mf.seen');
-- constants are fine, 'infinity' included
SELECT statehub_events.track_transition('mf_t', 'due', 'infinity', 'org.statehub.mf.due',
                                        attributes => '{id}');
-- text may say "today": it is only a date or time that moves
SELECT statehub_events.track_transition('mf_t', 'note', 'today', 'org.statehub.mf.today',
                                        attributes => '{id}');

-- an event type outside statehub_events.stream_subjects: emit fails ...
SHOW statehub_events.stream_subjects;
SELECT statehub_events.emit('acme.billing.invoiced', '{}');
-- ... a declaration warns (the DBA may be widening the stream)
SELECT statehub_events.track_insert('mf_t', 'acme.billing.invoiced', '{id}');
SELECT statehub_events.untrack('mf_t', 'acme.billing.invoiced');

-- "previous" is the transition's own key: a column of that name is refused
-- at declaration (track_errors) and when it is added later to a table whose
-- transition publishes all columns
CREATE TABLE mf_prev (id integer PRIMARY KEY, status text);
SELECT statehub_events.track_transition('mf_prev', 'status', 'done', 'org.statehub.mf.prev');
ALTER TABLE mf_prev ADD COLUMN previous text;
-- with an attribute list, the column is no attribute and may be added
SELECT statehub_events.track_transition('mf_prev', 'status', 'done', 'org.statehub.mf.prev',
                                        attributes => '{id,status}');
ALTER TABLE mf_prev ADD COLUMN previous text;
INSERT INTO mf_prev VALUES (1, 'open', 'p');
UPDATE mf_prev SET status = 'done';
SELECT * FROM show_events();
SELECT clear_events();

-- row movement: an UPDATE that moves a row to another partition is neither
-- a delete nor an insert
CREATE TABLE mf_audit (id integer, at date, kind text, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE mf_audit_2026 PARTITION OF mf_audit FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE mf_audit_2027 PARTITION OF mf_audit FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
SELECT statehub_events.track_insert('mf_audit', 'org.statehub.audit.recorded', '{id,at}');
SELECT statehub_events.track_delete('mf_audit', 'org.statehub.audit.deleted', '{id}');
INSERT INTO mf_audit VALUES (1, '2026-06-01', 'a'), (2, '2026-07-01', 'b');
SELECT clear_events();
UPDATE mf_audit SET at = '2027-02-01' WHERE id = 1;
SELECT pg_catalog.count(*) AS events FROM statehub_events.outbox;
SELECT tableoid::regclass, * FROM mf_audit ORDER BY id;
-- real deletes and inserts are events, also beside a data-modifying WITH.
-- Moving a row there (or in MERGE) is refused: the table has insert events
-- and no row-move trigger, so the moved row's INSERT could not be told
-- from a real one (docs/operations.md; row_movement has more)
WITH gone AS (DELETE FROM mf_audit WHERE id = 2 RETURNING id)
UPDATE mf_audit SET at = '2026-03-01' WHERE id = 1;
WITH gone AS (DELETE FROM mf_audit WHERE id = 2 RETURNING id)
UPDATE mf_audit SET at = '2027-03-01' WHERE id = 1;
INSERT INTO mf_audit VALUES (3, '2027-03-01', 'c');
SELECT * FROM show_events();
SELECT clear_events();

DROP TABLE mf_t, mf_prev, mf_audit;
DROP FUNCTION mf_close();
DROP TYPE mf_state;

-- a value the column's precision rounds can never be stored (hostile review):
-- the trigger would compare with 1.55 while the column holds 1.6
CREATE TABLE mf_prec (id integer PRIMARY KEY, amt numeric(5,1), ts timestamp(0), code varchar(3));
SELECT statehub_events.track_transition('mf_prec', 'amt', '1.55', 'org.statehub.mf.amt');
SELECT statehub_events.track_transition('mf_prec', 'ts', '2026-01-01 00:00:00.7', 'org.statehub.mf.ts');
-- what the column stores exactly is fine
SELECT statehub_events.track_transition('mf_prec', 'amt', '1.5', 'org.statehub.mf.amt');
SELECT statehub_events.track_transition('mf_prec', 'code', 'ab', 'org.statehub.mf.code');
DROP TABLE mf_prec;
