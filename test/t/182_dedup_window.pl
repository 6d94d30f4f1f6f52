
# Copyright: statehub_events contributors
#
# Issue 9: dedup_window_exceeded in the status view is true whenever the
# oldest queued event is older than the stream's duplicate window, also
# when it waits out a NATS outage (which burns no attempts), the long
# outage being the case the window is about.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $nats = StatehubTest::Nats->new('dedup');
$nats->start;
$nats->create_stream('STATEHUB', 'org.statehub.>', 1);    # a 1 s window
my $node = StatehubTest::new_node(
	'dedup',
	nats_url => $nats->url,
	conf => "statehub_events.stream_create = off\n");
StatehubTest::track_table($node);

StatehubTest::insert_events($node, 1);
ok(StatehubTest::wait_for_drain($node), 'the first event drains');
is( $node->safe_psql(
		'postgres',
		'SELECT dedup_window, dedup_window_exceeded FROM statehub_events.status'),
	'00:00:01|f',
	'the worker knows the 1 s window, and nothing is queued');

$nats->stop;
StatehubTest::insert_events($node, 1);
ok( $node->poll_query_until(
		'postgres', q{
SELECT dedup_window_exceeded AND queued = 1 AND retrying = 0
  FROM statehub_events.status}),
	'an event older than the window during an outage (no attempt burnt) is flagged');

$nats->start;
ok(StatehubTest::wait_for_drain($node), 'once NATS is back the outbox drains');
is($node->safe_psql('postgres', 'SELECT dedup_window_exceeded FROM statehub_events.status'),
	'f', 'and the flag clears');

$node->stop;
$nats->stop;
done_testing();
