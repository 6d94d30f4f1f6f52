
# Copyright: statehub_events contributors
#
# ALTER EXTENSION statehub_events UPDATE from 1.0 (through 1.1) and from 1.1
# to the current version, on a database in use: the mappings declared under
# 1.0 keep firing, the events queued under 1.0 are delivered to a real
# nats-server, and each updated extension is identical to a fresh install (every member object, its ACL and its
# initial privileges, the schema's membership, the extension's own row).
# A mapping of a table dropped under 1.0 is gone after the update, and a
# dump of the updated database restores.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $nats = StatehubTest::Nats->new('upgrade');
$nats->start;

# nats_url empty: what 1.0 queues waits in the outbox
my $node = StatehubTest::new_node('upgrade', no_extension => 1);

# the version a fresh CREATE EXTENSION installs
my $current = $node->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'statehub_events'});

# The same user objects in both databases, declared through the extension.
my $declare = q{
CREATE TABLE repos (id int PRIMARY KEY, name text, kind text);
CREATE TABLE tasks (id int PRIMARY KEY, status text);
SELECT statehub_events.track_insert('repos', 'org.statehub.repo.registered',
                                    '{id,name}', $$NEW.kind = 'service'$$);
SELECT statehub_events.track_delete('repos', 'org.statehub.repo.removed', '{id}');
SELECT statehub_events.track_transition('tasks', 'status', 'done',
                                        'org.statehub.task.done', from_value => 'open');
CREATE TABLE shards (id int, region text, status text, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE shards_eu PARTITION OF shards FOR VALUES IN ('eu');
SELECT statehub_events.track_transition('shards', 'status', 'done', 'org.statehub.shard.done');
};
# what a 1.1 library made: no row-move trigger (the update makes it)
my $as_11 = q{DROP TRIGGER "statehub_events:row moved:shards" ON shards};

# mapping rows whose table is gone
my $stale_sql = q{SELECT count(*) FROM statehub_events.mapping m
           WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = m.table_name)};

$node->safe_psql('postgres', q{CREATE EXTENSION statehub_events VERSION '1.0'});
$node->safe_psql('postgres', $declare);
$node->safe_psql('postgres', $as_11);
$node->safe_psql(
	'postgres', q{
CREATE TABLE doomed (id int PRIMARY KEY);
SELECT statehub_events.track_insert('doomed', 'org.statehub.doomed.created');
DROP TABLE doomed;
INSERT INTO repos VALUES (1, 'hub', 'service'), (2, 'lib', 'library');
INSERT INTO tasks VALUES (1, 'open');
UPDATE tasks SET status = 'done';
DELETE FROM repos WHERE id = 2;
SELECT statehub_events.emit('org.statehub.task.stale', '{"task_id": 7}');
});
is( $node->safe_psql('postgres', $stale_sql),
	'1',
	'1.0 keeps the mapping row of a dropped table');
my $queued_10 = StatehubTest::outbox_events($node);
is(scalar @$queued_10, 4, '1.0 queued four events');

$node->safe_psql('postgres', 'ALTER EXTENSION statehub_events UPDATE');
is( $node->safe_psql(
		'postgres',
		q{SELECT extversion || ' ' || extnamespace::regnamespace
            FROM pg_extension WHERE extname = 'statehub_events'}),
	"$current pg_catalog",
	"the extension is at $current, recorded in pg_catalog");
is( $node->safe_psql('postgres', $stale_sql),
	'0',
	'the update forgets the mapping row of the dropped table');

# the 1.0 mappings fire after the update
$node->safe_psql(
	'postgres', q{
INSERT INTO repos VALUES (3, 'api', 'service'), (4, 'docs', 'library');
INSERT INTO tasks VALUES (2, 'open');
UPDATE tasks SET status = 'done' WHERE id = 2;
DELETE FROM repos WHERE id = 4;
});
my $queued = StatehubTest::outbox_events($node);
is( join(' ', map { $_->{subject} } @$queued[ 4 .. $#$queued ]),
	'org.statehub.repo.registered org.statehub.task.done org.statehub.repo.removed',
	'mappings declared under 1.0 queue events after the update');

# everything queued, before and after the update, reaches the stream
StatehubTest::set_gucs($node, nats_url => $nats->url);
ok(StatehubTest::wait_for_drain($node), 'the outbox drains after the update');
my $msgs = StatehubTest::stream_holds_exactly($nats, 'STATEHUB',
	[ map { $_->{event_id} } @$queued ], 'upgrade');
my %body = map { ($_->{headers}{'Nats-Msg-Id'} // '') => $_->{body} } @$msgs;
is_deeply(
	[ map { $body{ $_->{event_id} } // '(missing)' } @$queued_10 ],
	[ map { $_->{payload} } @$queued_10 ],
	'events queued under 1.0 are published byte for byte');

# a fresh install with the same declarations
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION statehub_events');
$node->safe_psql('fresh', $declare);

# a 1.1 install with the same declarations, updated
$node->safe_psql('postgres', 'CREATE DATABASE from11');
$node->safe_psql('from11', q{CREATE EXTENSION statehub_events VERSION '1.1'});
$node->safe_psql('from11', $declare);
$node->safe_psql('from11', $as_11);
$node->safe_psql('from11', 'ALTER EXTENSION statehub_events UPDATE');
is($node->safe_psql('from11',
		q{SELECT extversion FROM pg_extension WHERE extname = 'statehub_events'}),
	$current, "1.1 updates to $current");

# The extension as the catalogs see it: its row, every member with its ACL
# and initial privileges, every function's definition and settings.
my %catalog = (
	extension => q{
SELECT e.extname, e.extowner::regrole, e.extnamespace::regnamespace,
       e.extrelocatable, e.extversion,
       (SELECT array_agg(c::regclass::text ORDER BY c::regclass::text)
          FROM unnest(e.extconfig) c),
       e.extcondition
  FROM pg_extension e WHERE e.extname = 'statehub_events'},
	members => q{
SELECT pg_describe_object(d.classid, d.objid, d.objsubid), d.deptype,
       coalesce(c.relacl::text, p.proacl::text, n.nspacl::text, '-'),
       coalesce(c.relowner, p.proowner, n.nspowner)::regrole,
       (SELECT string_agg(i.objsubid || ':' || i.privtype::text || ':' || i.initprivs::text, ' '
                          ORDER BY i.objsubid)
          FROM pg_init_privs i
         WHERE i.classoid = d.classid AND i.objoid = d.objid)
  FROM pg_depend d
  LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
  LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
  LEFT JOIN pg_namespace n ON d.classid = 'pg_namespace'::regclass AND n.oid = d.objid
 WHERE d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'statehub_events')
 ORDER BY 1},
	functions => q{
SELECT p.oid::regprocedure, pg_get_functiondef(p.oid), p.proacl, p.proconfig,
       p.prosecdef, p.provolatile, p.proisstrict
  FROM pg_proc p
 WHERE p.pronamespace = 'statehub_events'::regnamespace
 ORDER BY 1},
	columns => q{
SELECT a.attrelid::regclass, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
       a.attnotnull, a.attisdropped, pg_get_expr(ad.adbin, ad.adrelid), a.attacl
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
 WHERE c.relnamespace = 'statehub_events'::regnamespace AND a.attnum > 0
 ORDER BY a.attrelid::regclass::text, 2},
	event_triggers => q{
SELECT evtname, evtevent, evtfoid::regprocedure, evtenabled, evttags
  FROM pg_event_trigger ORDER BY 1},
	schema => q{
SELECT n.nspname, n.nspowner::regrole, n.nspacl, obj_description(n.oid, 'pg_namespace')
  FROM pg_namespace n WHERE n.nspname = 'statehub_events'},);
foreach my $what (sort keys %catalog)
{
	my $fresh = $node->safe_psql('fresh', $catalog{$what});
	isnt($fresh, '', "catalog $what: the fresh install has some");
	foreach my $db ('postgres', 'from11')
	{
		is($node->safe_psql($db, $catalog{$what}), $fresh,
			"catalog $what: $db, updated, is identical to a fresh $current");
	}
}

# pg_dump of both: the user's schema, and every member object (a binary
# upgrade dump writes them out one by one), without the OIDs it pins
my @conn = ('-h', $node->host, '-p', $node->port);
foreach my $mode ([ 'schema-only', '--schema-only' ],
	[ 'binary-upgrade', '--schema-only', '--binary-upgrade' ])
{
	my ($name, @opts) = @$mode;
	my %dump;
	foreach my $db ('postgres', 'from11', 'fresh')
	{
		my ($out, $err) = run_command([ 'pg_dump', @conn, @opts, $db ]);
		is($err, '', "pg_dump $name of $db: no error");
		# what differs between any two databases: the dump's random
		# \restrict key, OIDs, xids, and the drain key reached
		$out =~ s/^\\(un)?restrict .*\n//mg;
		$out =~ s/^SELECT pg_catalog\.binary_upgrade_set_next_\w+\(.*\n//mg;
		$out =~ s/'\{[0-9,]+\}'/'{OIDS}'/g;
		$out =~ s/relfrozenxid = '\d+', relminmxid = '\d+'/relfrozenxid = X, relminmxid = X/g;
		$out =~ s/^WHERE oid = '\d+';/WHERE oid = X;/mg;
		$out =~ s/setval\('statehub_events\.outbox_id_seq', \d+, \w+\)/setval('statehub_events.outbox_id_seq', N)/g;
		$dump{$db} = $out;
	}
	ok(length($dump{fresh}) > 1000, "pg_dump $name of the fresh install is not empty");
	foreach my $db ('postgres', 'from11')
	{
		is($dump{$db}, $dump{fresh},
			"pg_dump $name: $db, updated, is identical to a fresh $current");
	}
}

# after a tracked table is dropped, a dump restores, and holds
# no mapping of a table that is gone
$node->safe_psql('postgres', 'DROP TABLE tasks');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(table_name::text || ' ' || event_type, ', ' ORDER BY event_type)
		    FROM statehub_events.mapping}),
	'repos org.statehub.repo.registered, repos org.statehub.repo.removed, '
	  . 'shards org.statehub.shard.done',
	'dropping a tracked table drops its mappings');
my $tmp = PostgreSQL::Test::Utils::tempdir;
$node->command_ok([ 'pg_dump', @conn, '-Fc', '-f', "$tmp/upg.dump", 'postgres' ],
	'pg_dump of the updated database');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok(
	[ 'pg_restore', @conn, '--exit-on-error', '-d', 'restored', "$tmp/upg.dump" ],
	'the dump restores');
my $mappings_sql = q{
SELECT table_name, event_type, operation, attributes, condition
  FROM statehub_events.mappings ORDER BY 1, 2};
is($node->safe_psql('restored', $mappings_sql),
	$node->safe_psql('postgres', $mappings_sql),
	'the restored database has the same mappings');
is( $node->safe_psql(
		'restored', q{SELECT string_agg(tgrelid::regclass::text, ' ' ORDER BY tgrelid::regclass::text)
		    FROM pg_trigger WHERE tgname = 'statehub_events:row moved:shards'}),
	'shards shards_eu',
	'the restored partitioned table and its partition have the row-move trigger');

# A 1.0 installed into a schema another role created first (1.0 adopted
# it) is not updated: that role could drop or replace the outbox.  Nor is
# one whose schema holds objects the extension did not create.  Each
# refusal leaves 1.0 in place; the documented fix lets the update through.
$node->safe_psql('postgres', q{
CREATE ROLE squatter;
CREATE DATABASE squatted;
GRANT CREATE ON DATABASE squatted TO squatter});
$node->safe_psql('squatted', q{
SET ROLE squatter;
CREATE SCHEMA statehub_events;
RESET ROLE;
CREATE EXTENSION statehub_events VERSION '1.0';
CREATE TABLE forged (id int);
CREATE TRIGGER forge AFTER INSERT ON forged FOR EACH ROW
    EXECUTE FUNCTION statehub_events.capture('org.statehub.repo.registered', 'all')});
my ($ret, $out, $err) =
  $node->psql('squatted', 'ALTER EXTENSION statehub_events UPDATE');
isnt($ret, 0, 'squatted schema: the update fails');
like($err, qr/schema "statehub_events" belongs to role "squatter"/,
	'squatted schema: the error names the schema\'s owner');
is($node->safe_psql('squatted',
		q{SELECT extversion FROM pg_extension WHERE extname = 'statehub_events'}),
	'1.0', 'squatted schema: 1.0 stays in place');
$node->safe_psql('squatted', q{
ALTER SCHEMA statehub_events OWNER TO CURRENT_USER;
CREATE FUNCTION statehub_events.planted() RETURNS int LANGUAGE sql AS 'SELECT 1'});
($ret, $out, $err) =
  $node->psql('squatted', 'ALTER EXTENSION statehub_events UPDATE');
isnt($ret, 0, 'a planted function: the update fails');
like($err, qr/holds function .*planted\(\) which the extension did not create/,
	'a planted function: the error names it');
$node->safe_psql('squatted', 'DROP FUNCTION statehub_events.planted()');
($ret, $out, $err) =
  $node->psql('squatted', 'ALTER EXTENSION statehub_events UPDATE');
is($ret, 0, 'checked and given to the extension\'s owner: the update succeeds');
like($err,
	qr/WARNING:  trigger "forge" on table public.forged queues events but no statehub_events declaration made it/,
	'the update names a capture trigger no declaration made');
is($node->safe_psql('squatted',
		q{SELECT extversion FROM pg_extension WHERE extname = 'statehub_events'}),
	$current, 'checked and given to the extension\'s owner, the schema updates');

$node->stop;
$nats->stop;
done_testing();
