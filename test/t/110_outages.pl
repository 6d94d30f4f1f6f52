
# Copyright: statehub_events contributors
#
# Delivery cases 9, 2 and 3: NATS not configured, NATS down before the
# events are written, NATS killed in the middle of a large drain.  In each,
# nothing is published that shouldn't be, nothing is lost, connection
# failures burn no delivery attempts, and once NATS is back every committed
# event is in the stream exactly once, in id order.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $node = StatehubTest::new_node('outages');
StatehubTest::track_table($node);

sub insert_events { StatehubTest::insert_events($node, @_); return; }

sub max_attempts_in_outbox
{
	return $node->safe_psql('postgres',
		'SELECT coalesce(max(attempts), 0) FROM statehub_events.outbox');
}

# --- case 9: nats_url empty --------------------------------------------------

my $nats = StatehubTest::Nats->new('outages');
$nats->start;

ok(StatehubTest::wait_for_worker_state($node, qr/^disabled$/),
	'case 9: with nats_url empty the worker says it is disabled');
insert_events(100, 10);
is($node->safe_psql('postgres', q{SELECT statehub_events.wait_for_drain('2 s')}),
	'f', 'case 9: wait_for_drain times out: nothing is drained');
is(StatehubTest::outbox_count($node), 100, 'case 9: all 100 events stay queued');
ok(!$nats->stream_info('STATEHUB')->{exists},
	'case 9: nothing reached NATS (no stream was even created)');

my @ids = @{ StatehubTest::outbox_ids($node) };
StatehubTest::set_gucs($node, nats_url => $nats->url);
ok(StatehubTest::wait_for_drain($node), 'case 9: set + reload: the outbox drains');
StatehubTest::stream_order_is(
	StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@ids, 'case 9'),
	\@ids, 'case 9');
is(StatehubTest::dead_letter_count($node), 0, 'case 9: no dead letters');

# --- case 2: NATS down before the events are written ------------------------

my $nats2 = StatehubTest::Nats->new('outages2');    # port reserved, not started
StatehubTest::set_gucs($node, nats_url => $nats2->url);
ok(StatehubTest::wait_for_worker_state($node, qr/^(connecting|backoff)$/),
	'case 2: with NATS down the worker is connecting or backing off');

insert_events(1000, 100);
is($node->safe_psql('postgres', q{SELECT statehub_events.wait_for_drain('2 s')}),
	'f', 'case 2: nothing drains while NATS is down');
is(StatehubTest::outbox_count($node), 1000, 'case 2: all 1000 events are queued');
is(max_attempts_in_outbox(), 0, 'case 2: connection failures burn no attempts');
my $st = StatehubTest::worker_status($node);
ok(defined $st->{last_error} && $st->{last_error} ne '',
	'case 2: the status view shows the connection error')
  or diag explain $st;

my @ids2 = @{ StatehubTest::outbox_ids($node) };
$nats2->start;
ok(StatehubTest::wait_for_drain($node), 'case 2: NATS started: the outbox drains');
StatehubTest::stream_order_is(
	StatehubTest::stream_holds_exactly($nats2, 'STATEHUB', \@ids2, 'case 2'),
	\@ids2, 'case 2');
ok(StatehubTest::wait_for_worker_state($node, qr/^connected$/),
	'case 2: the worker reports connected');

# --- case 3: NATS killed in the middle of a large drain ---------------------

my $n3 = 20_000;
StatehubTest::set_gucs($node, nats_url => '');
ok(StatehubTest::wait_for_worker_state($node, qr/^disabled$/),
	'case 3: worker disabled while the events are queued');
insert_events($n3, 1000);
my @ids3 = @{ StatehubTest::outbox_ids($node) };
is(scalar @ids3, $n3, "case 3: $n3 events queued");

StatehubTest::set_gucs($node, nats_url => $nats2->url);
my $left = StatehubTest::wait_until_outbox_below($node, $n3);
$nats2->kill9;
note("NATS killed with $left events left in the outbox");
cmp_ok(StatehubTest::outbox_count($node), '>', 0,
	'case 3: NATS was killed in the middle of the drain');
cmp_ok($left, '<', $n3, 'case 3: the drain had started when NATS was killed');

ok(StatehubTest::wait_for_worker_state($node, qr/^(connecting|backoff)$/),
	'case 3: the worker noticed that NATS is gone');
is(max_attempts_in_outbox(), 0, 'case 3: the lost connection burnt no attempts');

$nats2->start;
ok(StatehubTest::wait_for_drain($node), 'case 3: NATS restarted: the outbox drains');
# the events after the first one without an answer when NATS died went
# out again behind it, in id order
StatehubTest::stream_order_is(
	StatehubTest::stream_holds_exactly($nats2, 'STATEHUB', [ @ids2, @ids3 ],
		'case 3'),
	[ @ids2, @ids3 ], 'case 3');
is(StatehubTest::dead_letter_count($node), 0, 'no dead letters in any case');

done_testing();
