
# Copyright: statehub_events contributors
#
# Delivery cases 4 and 5: the worker killed with SIGKILL, and the
# postmaster stopped in immediate mode, each in the middle of a drain of
# 20,000 events.  Events whose removal from the outbox did not commit are
# published again with the same Nats-Msg-Id, so the stream must still hold
# every committed event exactly once.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $n = 20_000;

my $nats = StatehubTest::Nats->new('crashes');
$nats->start;
my $node = StatehubTest::new_node('crashes');
StatehubTest::track_table($node);
my @all_ids;

# With the worker disabled, queue $n events in transactions of 1000 rows
# and return their ids; then enable delivery and return once the first
# batches are gone (the middle of the drain).
sub queue_then_start_drain
{
	my ($case) = @_;
	StatehubTest::set_gucs($node, nats_url => '');
	ok(StatehubTest::wait_for_worker_state($node, qr/^disabled$/),
		"$case: worker disabled while the events are queued");
	StatehubTest::insert_events($node, $n, 1000);
	my $ids = StatehubTest::outbox_ids($node);
	is(scalar @$ids, $n, "$case: $n events queued");
	push @all_ids, @$ids;

	StatehubTest::set_gucs($node, nats_url => $nats->url);
	my $left = StatehubTest::wait_until_outbox_below($node, $n);
	return $left;
}

# --- case 4: the worker killed with SIGKILL ---------------------------------

my $left = queue_then_start_drain('case 4');
my $pid = StatehubTest::worker_status($node)->{pid};
kill 'KILL', $pid;
note("worker $pid killed with $left events left in the outbox");
ok($left > 0 && $left < $n, 'case 4: the worker was killed in the middle of the drain');

# the postmaster reinitializes after a crashed child and starts the worker again
ok($node->poll_query_until('postgres',
		q{SELECT pid IS NOT NULL FROM statehub_events.status}),
	'case 4: the server accepts connections again and a worker runs');
isnt(StatehubTest::worker_status($node)->{pid}, $pid, 'case 4: a new worker was started');
ok(StatehubTest::wait_for_drain($node), 'case 4: the new worker drains the outbox');
StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@all_ids, 'case 4');

# --- case 5: postmaster immediate shutdown during a drain -------------------

$left = queue_then_start_drain('case 5');
$node->stop('immediate');
note("postmaster stopped (immediate) with $left events left in the outbox");
ok($left > 0 && $left < $n, 'case 5: the server stopped in the middle of the drain');
$node->start;
ok(StatehubTest::wait_for_drain($node), 'case 5: after restart the outbox drains');
StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@all_ids, 'case 5');

is(StatehubTest::dead_letter_count($node), 0, 'no dead letters');

done_testing();
