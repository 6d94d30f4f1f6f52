
# Copyright: statehub_events contributors
#
# Backups (docs/operations.md, "Backups and restores"): pg_dump keeps the
# dead letters as well as the queued events, and a database restored where
# a worker runs resumes delivering: the queued events reach the stream in
# order, and a dead letter put back there is delivered with its id.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

# the source: a server whose max_payload makes a large event a dead letter
my $small = StatehubTest::Nats->new('dump_small', max_payload => 16384);
$small->start;
my $src = StatehubTest::new_node('dump_src', nats_url => $small->url);
StatehubTest::track_table($src);

my $big = $src->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.big', jsonb_build_object('blob', repeat('x', 20000)))});
ok($src->poll_query_until('postgres',
		'SELECT count(*) = 1 FROM statehub_events.dead_letter'),
	'the oversized event is a dead letter');

# then events that wait: no NATS
StatehubTest::set_gucs($src, nats_url => '');
ok(StatehubTest::wait_for_worker_state($src, qr/^disabled$/), 'source worker disabled');
StatehubTest::insert_events($src, 5);
$src->safe_psql('postgres', q{SELECT statehub_events.emit('org.statehub.test.x', '{"k": 1}')});
my $queued = StatehubTest::outbox_ids($src);
is(scalar @$queued, 6, 'six events queued in the source');

my $dead_sql = q{SELECT id, event_id, subject, payload, enqueued_at, attempts, failed_at, reason
                   FROM statehub_events.dead_letter ORDER BY id};
my $src_dead = $src->safe_psql('postgres', $dead_sql);

my $dump = PostgreSQL::Test::Utils::tempdir . '/src.dump';
$src->command_ok(
	[ 'pg_dump', '-h', $src->host, '-p', $src->port, '-Fc', '-f', $dump, 'postgres' ],
	'pg_dump of the source database');
$src->stop;

# the target: a worker connected to a NATS server that takes every event,
# and no extension until the restore creates it
my $nats = StatehubTest::Nats->new('dump');
$nats->start;
my $dst = StatehubTest::new_node('dump_dst', nats_url => $nats->url, no_extension => 1);
$dst->safe_psql('postgres', 'ALTER SYSTEM SET statehub_events.poll_interval = 100');
$dst->reload;
$dst->command_ok(
	[
		'pg_restore', '-h', $dst->host, '-p', $dst->port, '--exit-on-error',
		'-d', 'postgres', $dump
	],
	'pg_restore into the database the worker drains');

is($dst->safe_psql('postgres', $dead_sql), $src_dead,
	'the dead letters are restored as they were, byte for byte');

ok(StatehubTest::wait_for_drain($dst), 'the restored database delivers its queued events');
StatehubTest::stream_order_is(
	StatehubTest::stream_holds_exactly($nats, 'STATEHUB', $queued, 'restored queue'),
	$queued, 'restored queue');
is(StatehubTest::dead_letter_count($dst), 1, 'the dead letter stays until it is put back');

is($dst->safe_psql('postgres', 'SELECT statehub_events.retry_dead_letters()'),
	1, 'retry_dead_letters() puts the restored dead letter back');
ok(StatehubTest::wait_for_drain($dst), 'it drains');
my $msgs = StatehubTest::stream_holds_exactly($nats, 'STATEHUB', [ @$queued, $big ],
	'after the retry');
is($msgs->[-1]{headers}{'Nats-Msg-Id'}, $big, 'the put-back event is delivered with its id');

is(StatehubTest::outbox_count($dst), 0, 'nothing left queued');

done_testing();
