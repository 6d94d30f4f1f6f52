
# Copyright: statehub_events contributors
#
# Issue 10: a connection that closes while the worker waits for a batch's
# acks.  Seen in the cluster test's rolling restart: the node the worker
# used stopped while a batch waited for its acks, and the worker waited out
# the whole publish_timeout on the dead connection before it connected to
# another node.  Here, reproducibly: nats-server is frozen (SIGSTOP), so
# full batches (batch_size 5) go out and get no ack, then it is killed,
# which closes the connection.
# With publish_timeout = 60s the worker must notice the closed connection
# at once (well within the timeout), back off, and deliver everything
# exactly once when the server is back.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $nats = StatehubTest::Nats->new('closed');
$nats->start;
my $node = StatehubTest::new_node(
	'closed',
	nats_url => $nats->url,
	conf     => "statehub_events.publish_timeout = '60s'\n"
	  . "statehub_events.batch_size = 5\n");
StatehubTest::track_table($node);
StatehubTest::insert_events($node, 10, 1);
ok(StatehubTest::wait_for_drain($node), 'the first events drain');

# frozen: full batches go out without a flush, and the worker waits for
# their acks, which never come
kill 'STOP', $nats->{pid};
StatehubTest::insert_events($node, 20, 20);
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) = 1 FROM pg_catalog.pg_stat_activity
 WHERE backend_type = 'statehub_events worker'
   AND query = 'waiting for NATS JetStream' AND state = 'active'}),
	'the worker waits for the acks of the batch');

# killed: the kernel closes the connection
$nats->kill9;
ok( StatehubTest::wait_for_status($node, q{state = 'backoff'}, 20),
	'the worker notices the closed connection long before publish_timeout');
unlike(StatehubTest::worker_status($node)->{last_error},
	qr/timed out/, 'it says the connection closed, not that the acks timed out');

my $ids = StatehubTest::outbox_ids($node);
$nats->start;
ok(StatehubTest::wait_for_drain($node), 'once the server is back the events drain');
is(StatehubTest::dead_letter_count($node), 0, 'no dead letters');
is( $node->safe_psql('postgres',
		'SELECT count(*) FROM statehub_events.outbox WHERE attempts > 0'),
	'0', 'no attempt was burnt');
my $msgs = $nats->consume('STATEHUB');
my %seen;
$seen{ $_->{headers}{'Nats-Msg-Id'} }++ foreach @$msgs;
is(scalar(grep { $seen{$_} == 1 } @$ids), scalar(@$ids),
	'the waiting events are in the stream once each');
is(scalar @$msgs, 30, 'the stream holds all 30 events');

$node->stop;
$nats->stop;
done_testing();
