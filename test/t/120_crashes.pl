
# Copyright: statehub_events contributors
#
# Delivery cases 4 and 5: the worker killed with SIGKILL, and the
# postmaster stopped in immediate mode, each in the middle of a drain of
# 50,000 events.  Events whose removal from the outbox did not commit are
# published again with the same Nats-Msg-Id, so the stream must still hold
# every committed event exactly once, and in id order: the events after
# the first one without an answer go out again behind it.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

# large enough that the kill lands mid-drain: the worker publishes tens of
# thousands of events a second here, and the test polls, then kills
my $n = 50_000;

my $nats = StatehubTest::Nats->new('crashes');
$nats->start;
my $node = StatehubTest::new_node('crashes');
StatehubTest::track_table($node);
my @all_ids;

# Queue $n events, start the drain; returns how many were left then.
sub queue_then_start_drain
{
	my ($case) = @_;
	my ($ids, $left) =
	  StatehubTest::queue_then_start_drain($node, $case, $n, $nats->url);
	push @all_ids, @$ids;
	return $left;
}

# --- case 4: the worker killed with SIGKILL ---------------------------------

my $left = queue_then_start_drain('case 4');
my $pid = StatehubTest::worker_status($node)->{pid};
my $log_offset = -s $node->logfile;
kill 'KILL', $pid;
# What the stream holds now is at least what the killed worker published:
# fewer than all of them means it died before the end of the drain (the
# next worker only starts after the postmaster's crash cycle).
my $in_stream = $nats->stream_info('STATEHUB')->{messages};
note("worker $pid killed with $left events left in the outbox before the "
	  . "kill, $in_stream in the stream after it");
cmp_ok($left, '<', $n, 'case 4: the drain had started when the worker was killed');
cmp_ok($in_stream, '<', $n,
	'case 4: the worker was killed before it had published every event');

# The postmaster reinitializes after a crashed child (ending every session,
# so no query may run until it is done) and starts the worker again.  The
# killed worker's pid may linger in shared memory until then, so wait for a
# different one.
$node->wait_for_log(
	qr/all server processes terminated; reinitializing.*database system is ready to accept connections/s,
	$log_offset);
ok($node->poll_query_until('postgres',
		qq{SELECT pid IS NOT NULL AND pid <> $pid FROM statehub_events.status}),
	'case 4: the server accepts connections again and a new worker runs');
ok(StatehubTest::wait_for_drain($node), 'case 4: the new worker drains the outbox');
my $msgs = StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@all_ids, 'case 4');
StatehubTest::stream_order_is($msgs, \@all_ids, 'case 4');

# --- case 5: postmaster immediate shutdown during a drain -------------------

$left = queue_then_start_drain('case 5');
$node->stop('immediate');
# the server is down: nothing more can reach the stream until it restarts
$in_stream = $nats->stream_info('STATEHUB')->{messages};
note("postmaster stopped (immediate) with $left events left in the outbox "
	  . "before the stop, $in_stream in the stream after it");
cmp_ok($left, '<', $n, 'case 5: the drain had started when the server stopped');
cmp_ok($in_stream, '<', scalar @all_ids,
	'case 5: the server stopped before the worker had published every event');
$node->start;
ok(StatehubTest::wait_for_drain($node), 'case 5: after restart the outbox drains');
$msgs = StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@all_ids, 'case 5');
StatehubTest::stream_order_is($msgs, \@all_ids, 'case 5');

is(StatehubTest::dead_letter_count($node), 0, 'no dead letters');

done_testing();
