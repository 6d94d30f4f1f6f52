
# Copyright: statehub_events contributors
#
# Issue 12, items 1 and 2, as consumers see them in the stream of a real
# nats-server: after RENAME COLUMN the events carry the keys they were
# declared with; a change a BEFORE UPDATE trigger makes to the tracked
# column is published as the transition; an UPDATE that moves a row to
# another partition publishes no deleted and no second recorded event, and
# the transition it makes, as the same UPDATE does on a plain table; so does
# a MERGE that moves rows, beside the rows it really inserts.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $nats = StatehubTest::Nats->new('fidelity');
$nats->start;
# no nats_url yet: the events wait in the outbox until they are all queued
my $node = StatehubTest::new_node('fidelity');

$node->safe_psql(
	'postgres', q{
CREATE TABLE workstreams (id int PRIMARY KEY, title text, status text);
SELECT statehub_events.track_insert('workstreams', 'org.statehub.workstream.created', '{id,title}');
SELECT statehub_events.track_transition('workstreams', 'status', 'completed',
                                        'org.statehub.workstream.completed',
                                        attributes => '{id,title}');
CREATE TABLE audit_log (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE audit_2026 PARTITION OF audit_log FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE audit_2027 PARTITION OF audit_log FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
SELECT statehub_events.track_insert('audit_log', 'org.statehub.audit.recorded');
SELECT statehub_events.track_delete('audit_log', 'org.statehub.audit.deleted', '{id}');
CREATE TABLE regional_ws (id int, region text, status text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE regional_ws_eu PARTITION OF regional_ws FOR VALUES IN ('eu');
CREATE TABLE regional_ws_us PARTITION OF regional_ws FOR VALUES IN ('us');
SELECT statehub_events.track_transition('regional_ws', 'status', 'completed',
                                        'org.statehub.workstream.completed',
                                        attributes => '{id,region}');
CREATE TABLE regional_tasks (id int, region text, status text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE regional_tasks_eu PARTITION OF regional_tasks FOR VALUES IN ('eu');
CREATE TABLE regional_tasks_us PARTITION OF regional_tasks FOR VALUES IN ('us');
SELECT statehub_events.track_insert('regional_tasks', 'org.statehub.task.created', '{id,region}');
SELECT statehub_events.track_transition('regional_tasks', 'status', 'stale', 'org.statehub.task.stale',
                                        attributes => '{id,region}');
});

$node->safe_psql(
	'postgres', q{
INSERT INTO workstreams VALUES (1, 'one', 'open'), (2, 'two', 'open');
ALTER TABLE workstreams RENAME COLUMN title TO name;
ALTER TABLE workstreams RENAME COLUMN status TO state;
UPDATE workstreams SET state = 'completed' WHERE id = 1;
CREATE FUNCTION close_on_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name LIKE '%(done)' THEN
        NEW.state := 'completed';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER close_on_done BEFORE UPDATE ON workstreams
    FOR EACH ROW EXECUTE FUNCTION close_on_done();
UPDATE workstreams SET name = 'two (done)' WHERE id = 2;
INSERT INTO audit_log VALUES (1, '2026-05-01'), (2, '2026-06-01');
UPDATE audit_log SET at = '2027-02-01' WHERE id = 1;
DELETE FROM audit_log WHERE id = 2;
INSERT INTO regional_ws VALUES (1, 'eu', 'open'), (2, 'eu', 'open'), (3, 'eu', 'open');
UPDATE regional_ws SET region = 'us', status = CASE WHEN id = 2 THEN 'open' ELSE 'completed' END;
INSERT INTO regional_tasks VALUES (1, 'eu', 'open'), (2, 'eu', 'open');
MERGE INTO regional_tasks t
USING (VALUES (1, 'us', 'stale'), (2, 'us', 'open'), (3, 'us', 'open')) s(id, region, status)
   ON t.id = s.id
 WHEN MATCHED THEN UPDATE SET region = s.region, status = s.status
 WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.region, s.status);
});

is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(event_type || ' ' || coalesce(column_name || '/' || column_key, '-') || ' '
                  || attribute_keys::text || ' ' || attribute_columns::text, ', ' ORDER BY event_type)
  FROM statehub_events.mappings WHERE table_name = 'workstreams'::regclass}),
	'org.statehub.workstream.completed state/status {id,title} {id,name}, '
	  . 'org.statehub.workstream.created - {id,title} {id,name}',
	'the mappings view shows each key and the column it is read from now');

my $queued = StatehubTest::outbox_events($node);
StatehubTest::set_gucs($node, nats_url => $nats->url);
ok(StatehubTest::wait_for_drain($node), 'the outbox drains');
my $msgs = StatehubTest::stream_holds_exactly($nats, 'STATEHUB',
	[ map { $_->{event_id} } @$queued ], 'fidelity');
my $json = JSON::PP->new->utf8->canonical;
my @got = map {
	my $env = $json->decode($_->{body});
	"$env->{type} " . $json->encode($env->{attributes})
} sort { $a->{seq} <=> $b->{seq} } @$msgs;
# the MERGE's events follow its join's row order: compared as a set
my @merged = sort splice(@got, 9);
is_deeply(
	\@got,
	[
		'org.statehub.workstream.created {"id":1,"title":"one"}',
		'org.statehub.workstream.created {"id":2,"title":"two"}',
		'org.statehub.workstream.completed {"id":1,"previous":{"status":"open"},"title":"one"}',
		'org.statehub.workstream.completed {"id":2,"previous":{"status":"open"},"title":"two (done)"}',
		'org.statehub.audit.recorded {"at":"2026-05-01","id":1}',
		'org.statehub.audit.recorded {"at":"2026-06-01","id":2}',
		'org.statehub.audit.deleted {"id":2}',
		'org.statehub.workstream.completed {"id":1,"previous":{"status":"open"},"region":"us"}',
		'org.statehub.workstream.completed {"id":3,"previous":{"status":"open"},"region":"us"}',
	],
	'the stream: declared keys after the renames, the BEFORE trigger\'s transition, '
	  . 'no insert or delete events for moved rows, the transitions of moved rows'
);
is_deeply(
	\@merged,
	[
		'org.statehub.task.created {"id":1,"region":"eu"}',
		'org.statehub.task.created {"id":2,"region":"eu"}',
		'org.statehub.task.created {"id":3,"region":"us"}',
		'org.statehub.task.stale {"id":1,"previous":{"status":"open"},"region":"us"}',
	],
	'the stream: a MERGE publishes the transition of a moved row and its real insert, '
	  . 'no insert for moved rows');

# A dump restores the declarations with their keys and columns: the trigger
# names its columns (a restored table has no dropped columns, so attribute
# numbers would shift), and the keys survive a rename before the dump.
$node->safe_psql(
	'postgres', q{
CREATE TABLE shifted (id int PRIMARY KEY, junk text, title text);
SELECT statehub_events.track_insert('shifted', 'org.statehub.shifted.created', '{id,title}');
ALTER TABLE shifted DROP COLUMN junk;
ALTER TABLE shifted RENAME COLUMN title TO label;
});
my @conn = ('-h', $node->host, '-p', $node->port);
my $tmp = PostgreSQL::Test::Utils::tempdir;
$node->command_ok([ 'pg_dump', @conn, '-Fc', '-f', "$tmp/fidelity.dump", 'postgres' ],
	'pg_dump of the database');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok(
	[ 'pg_restore', @conn, '--exit-on-error', '-d', 'restored', "$tmp/fidelity.dump" ],
	'the dump restores');
my $view = q{SELECT table_name, event_type, column_name, column_key, attribute_keys,
                    attribute_columns FROM statehub_events.mappings ORDER BY table_name::text, 2};
is($node->safe_psql('restored', $view), $node->safe_psql('postgres', $view),
	'the restored mappings show the same keys and columns');
is( $node->safe_psql(
		'restored', q{
INSERT INTO shifted VALUES (1, 'moved up');
SELECT (payload::json -> 'attributes')::text FROM statehub_events.outbox
 WHERE subject = 'org.statehub.shifted.created'}),
	'{"id": 1, "title": "moved up"}',
	'the restored table publishes under the declared keys');

$node->stop;
$nats->stop;
done_testing();
