
# Copyright: statehub_events contributors
#
# A batch in flight when something changes under it (docs/delivery.md,
# "Order and failures with a batch in flight"), and a NATS server that
# hangs instead of refusing (docs/operations.md, "NATS outages"):
#
# - TRUNCATE ... RESTART IDENTITY of the outbox in the middle of a drain,
#   with new events that reuse the ids of the batch in flight: the batch
#   is forgotten, not settled against the new rows, so every new event is
#   delivered, exactly once and in id order;
# - a connection setting reloaded in the middle of a drain: the batch in
#   flight is forgotten and published again, the stream drops what it
#   already had: every event exactly once;
# - nats-server stopped with SIGSTOP (it accepts nothing, refuses
#   nothing): writes still commit, their events wait, no attempt is burnt;
#   after SIGCONT everything is delivered exactly once, in id order.
#   (That the writes do not slow down is measured by bench/hung_nats.)

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;
use Time::HiRes qw(time);

my $nats = StatehubTest::Nats->new('in_flight');
$nats->start;
my $node = StatehubTest::new_node('in_flight', conf => "statehub_events.publish_timeout = '1s'\n");
StatehubTest::track_table($node);

sub queue_then_start_drain
{
	return StatehubTest::queue_then_start_drain($node, @_);
}

sub max_attempts
{
	return $node->safe_psql('postgres',
		'SELECT coalesce(max(attempts), 0) FROM statehub_events.outbox');
}

# --- TRUNCATE with a batch in flight -----------------------------------------

my $n = 20_000;
my ($old, $left) = queue_then_start_drain('truncate', $n, $nats->url);
# a new outbox whose ids start over at 1, filled at once with more events
# than the drain had got through: the ids of the batch in flight come back
my $k = $n - $left + 3000;
# (read before the commit: the worker starts on them at once)
my ($new_min, @new) = split /\n/, $node->safe_psql(
	'postgres', qq{
BEGIN;
TRUNCATE statehub_events.outbox RESTART IDENTITY;
INSERT INTO t SELECT g, 'new' FROM generate_series(100001, 100000 + $k) g;
SELECT min(id) FROM statehub_events.outbox;
SELECT event_id FROM statehub_events.outbox ORDER BY id;
COMMIT;
});
my $new = \@new;
note("outbox truncated with $left of $n events left; $k new events queued");
cmp_ok($left, '<', $n, 'truncate: the drain had started');
is(scalar @$new, $k, "truncate: $k new events queued in the truncated outbox");
is($new_min, 1, 'truncate: the new ids start over at 1, where the batch in flight was');
ok(StatehubTest::wait_for_drain($node), 'truncate: the new outbox drains');

my $msgs = $nats->consume('STATEHUB');
my %is_new = map { $_ => 1 } @$new;
my @new_in_stream = map { $_->{headers}{'Nats-Msg-Id'} }
  grep { $is_new{ $_->{headers}{'Nats-Msg-Id'} // '' } }
  sort { $a->{seq} <=> $b->{seq} } @$msgs;
is(scalar @new_in_stream, $k, 'truncate: every new event is in the stream');
is_deeply(\@new_in_stream, $new, 'truncate: once each, in id order');
my %is_old = map { $_ => 1 } @$old;
my %seen;
my @dups = grep { $seen{$_}++ } map { $_->{headers}{'Nats-Msg-Id'} } @$msgs;
is(scalar @dups, 0, 'truncate: no message twice in the stream');
is(scalar(grep { !$is_new{ $_->{headers}{'Nats-Msg-Id'} } && !$is_old{ $_->{headers}{'Nats-Msg-Id'} } } @$msgs),
	0, 'truncate: nothing else in the stream');
my $before = scalar @$msgs;

# --- a connection setting reloaded with a batch in flight --------------------

# the same server under another name: a new connection, the same stream
my $other_url = 'nats://localhost:' . $nats->port;
my $ids;
($ids, $left) = queue_then_start_drain('reload', $n, $nats->url);
StatehubTest::set_gucs($node, nats_url => $other_url);
note("connection settings reloaded with $left of $n events left");
cmp_ok($left, '<', $n, 'reload: the drain had started');
ok(StatehubTest::wait_for_drain($node), 'reload: the outbox drains');
ok(StatehubTest::wait_for_status($node,
		"state = 'connected' AND server LIKE '%localhost:" . $nats->port . "%'"),
	'reload: the worker uses the new setting')
  or diag explain StatehubTest::worker_status($node);
is($nats->wait_for_stream_count('STATEHUB', $before + $n), $before + $n,
	"reload: the stream holds $n more messages");
$msgs = $nats->consume('STATEHUB');
%seen = ();
@dups = grep { $seen{$_}++ } map { $_->{headers}{'Nats-Msg-Id'} } @$msgs;
is(scalar @dups, 0, 'reload: no message twice in the stream');
my %in_stream = map { $_->{headers}{'Nats-Msg-Id'} => 1 } @$msgs;
is(scalar(grep { !$in_stream{$_} } @$ids), 0, 'reload: every event is in the stream');
$before = scalar @$msgs;

# --- a NATS server that hangs -------------------------------------------------

StatehubTest::insert_events($node, 10);
ok(StatehubTest::wait_for_drain($node), 'hung: delivering before the hang');
my $delivered_before = StatehubTest::worker_status($node)->{published};
kill 'STOP', $nats->{pid};
note("nats-server $nats->{pid} stopped with SIGSTOP");
my $t0 = time();
foreach my $round (1 .. 20)
{
	StatehubTest::insert_events($node, 10);
}
my $took = time() - $t0;
note(sprintf('20 write transactions with NATS hung took %.2f s', $took));
$ids = StatehubTest::outbox_ids($node);
is(scalar @$ids, 200, 'hung: the 200 events of 20 transactions committed and wait in the outbox');
ok(StatehubTest::wait_for_status($node, q{state <> 'connected' AND last_error IS NOT NULL}),
	'hung: the worker notices that NATS does not answer');
note('last_error: ' . StatehubTest::worker_status($node)->{last_error});
is($node->safe_psql('postgres', q{SELECT statehub_events.wait_for_drain('1 s')}),
	'f', 'hung: nothing drains');
is(StatehubTest::outbox_count($node), 200, 'hung: all 200 events still wait');
is(max_attempts(), 0, 'hung: no attempts burnt');
is(StatehubTest::worker_status($node)->{published}, $delivered_before,
	'hung: nothing was acknowledged');

kill 'CONT', $nats->{pid};
ok(StatehubTest::wait_for_drain($node), 'hung: after SIGCONT the outbox drains');
ok(StatehubTest::wait_for_worker_state($node, qr/^connected$/), 'hung: connected again');
is($nats->wait_for_stream_count('STATEHUB', $before + 210), $before + 210,
	'hung: the stream holds the 210 events of this case');
$msgs = $nats->consume('STATEHUB');
%seen = ();
@dups = grep { $seen{$_}++ } map { $_->{headers}{'Nats-Msg-Id'} } @$msgs;
is(scalar @dups, 0, 'hung: no message twice in the stream');
my @tail = map { $_->{headers}{'Nats-Msg-Id'} }
  (sort { $a->{seq} <=> $b->{seq} } @$msgs)[ $before + 10 .. $before + 209 ];
is_deeply(\@tail, $ids, 'hung: the events written during the hang, in id order');

done_testing();
