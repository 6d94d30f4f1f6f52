
# Copyright: statehub_events contributors
#
# A publish_timeout too short for batch_size (hostile review): each full
# batch took longer than publish_timeout to be stored, the worker took the
# server for hung, dropped the connection and published the same batch
# again, and the drain stopped moving.  A batch the server does not answer
# in time makes the next ones smaller, so the drain always moves on.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $nats = StatehubTest::Nats->new('short_timeout');
$nats->start;
my $node = StatehubTest::new_node(
	'short_timeout',
	nats_url => $nats->url,
	conf => "statehub_events.publish_timeout = '10ms'\n"
	  . "statehub_events.batch_size = 100000\n");
StatehubTest::track_table($node);
StatehubTest::insert_events($node, 1);
ok(StatehubTest::wait_for_drain($node), 'the first event drains');

# 100,000 events in one transaction, while the worker cannot publish
StatehubTest::set_gucs($node, nats_url => '');
StatehubTest::wait_for_worker_state($node, 'disabled');
StatehubTest::insert_events($node, 100_000);
StatehubTest::set_gucs($node, nats_url => $nats->url);

ok(StatehubTest::wait_for_drain($node, 240), 'the drain moves on to the end');
is($nats->stream_info('STATEHUB')->{messages}, 100_001,
	'every event is in the stream once');
is(StatehubTest::dead_letter_count($node), 0, 'nothing is dead-lettered');
like(slurp_file($node->logfile),
	qr/LOG:  statehub_events worker publishes batches of at most 50000 events until one is delivered/,
	'the worker said it made its batches smaller');

done_testing();
