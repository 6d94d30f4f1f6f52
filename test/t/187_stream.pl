
# Copyright: statehub_events contributors
#
# Issue 9: trouble of the stream is not blamed on the events.  With
# stream_create = off, the stream is deleted while events flow and created
# again a moment later by a DBA: the events published meanwhile got "no
# responders" for a subject the stream covers, which is treated like a
# connection problem (no attempt burnt, nothing overtakes, published again
# in id order): no dead letters, and the stream holds the events in the
# order they were queued.  Only a subject the stream does not cover counts
# against the event (130_rejections.pl).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $nats = StatehubTest::Nats->new('stream');
$nats->start;
$nats->create_stream('STATEHUB', 'org.statehub.>');
my $node = StatehubTest::new_node(
	'stream',
	nats_url => $nats->url,
	conf => "statehub_events.stream_create = off\n");
StatehubTest::track_table($node);

StatehubTest::insert_events($node, 10, 1);
ok(StatehubTest::wait_for_drain($node), 'events drain into the stream');

# the stream goes away while events keep coming
my ($ok, $rc, $out, $err) = $nats->_run_client('-X', $nats->url, 'STATEHUB');
ok($ok, 'a DBA deletes the stream') or diag($err);
StatehubTest::insert_events($node, 20, 1);
ok( $node->poll_query_until(
		'postgres',
		q{SELECT state = 'backoff' AND last_error LIKE '%STATEHUB%'
		    FROM statehub_events.status}),
	'without its stream the worker backs off and says why');
StatehubTest::insert_events($node, 20, 1);
is($node->safe_psql('postgres',
		'SELECT count(*) FILTER (WHERE attempts > 0) FROM statehub_events.outbox'),
	'0', 'no attempt is burnt while the stream is missing');
is(StatehubTest::dead_letter_count($node), 0, 'nothing is dead-lettered meanwhile');

my @all = split /\n/, $node->safe_psql('postgres',
	q{SELECT event_id FROM statehub_events.outbox ORDER BY id});
is(scalar @all, 40, 'the 40 events of the outage are queued');

# the DBA creates it again
$nats->create_stream('STATEHUB', 'org.statehub.>');
ok(StatehubTest::wait_for_drain($node), 'once the stream is back the outbox drains');
is(StatehubTest::dead_letter_count($node), 0, 'no dead letters');
my $msgs = StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@all,
	'stream re-created');
is_deeply([ map { $_->{headers}{'Nats-Msg-Id'} } @$msgs ],
	\@all, 'the stream holds them in the order they were queued');
ok(StatehubTest::wait_for_worker_state($node, qr/^connected$/),
	'the worker is connected again');

$node->stop;
$nats->stop;
done_testing();
