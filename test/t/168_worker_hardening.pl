
# Copyright: statehub_events contributors
#
# Issue 9, found by a hostile review of the worker:
#   1. pg_cancel_backend() on the idle worker made it exit (the cancel was
#      raised outside the round's recovery): it must end at most a round.
#   2. A stream that refuses every event for a reason of its own (full,
#      discard new) made the worker flip between "backoff" and "connected"
#      once a second and log four lines each time: it must back off longer
#      and log the change of state once.
#   3. A row put into the outbox by hand with an id below 1 was never
#      scanned (scans started at 0).
#   4. batch_size counts events, not bytes: 150 events of 900 kB took the
#      worker's resident memory up by hundreds of MB while draining.  A
#      scan now stops at a byte cap.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;
use Time::HiRes qw(usleep time);

my $nats = StatehubTest::Nats->new('hardening');
$nats->start;
my $node = StatehubTest::new_node('hardening', nats_url => $nats->url);
StatehubTest::track_table($node);
StatehubTest::insert_events($node, 1);
ok(StatehubTest::wait_for_drain($node), 'the first event drains');
my @expected = map { $_->{headers}{'Nats-Msg-Id'} } @{ $nats->consume('STATEHUB') };
my $pid = StatehubTest::worker_status($node)->{pid};

# 1. a query cancel ends a round, not the worker
$node->safe_psql('postgres',
	'SELECT pg_cancel_backend(pid) FROM statehub_events.status');
push @expected,
  $node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.created', '{"after": "a cancel"}')});
ok(StatehubTest::wait_for_drain($node), 'cancel: an event queued after it drains');
is(StatehubTest::worker_status($node)->{pid}, $pid, 'cancel: the same worker process');
unlike(slurp_file($node->logfile), qr/background worker "statehub_events worker" \(PID \d+\) exited/,
	'cancel: the worker never exited');

# 3. ids below 1, put in by hand
push @expected,
  $node->safe_psql('postgres', q{
INSERT INTO statehub_events.outbox (id, event_id, subject, payload)
VALUES (-5, gen_random_uuid(), 'org.statehub.test.created', '{"by": "hand"}')
RETURNING event_id});
$node->safe_psql('postgres', 'SELECT statehub_events.wake_worker()');
ok(StatehubTest::wait_for_drain($node, 20), 'an id below 1 drains');

# 4. bounded memory for large events (max_payload is 1 MB by default)
StatehubTest::set_gucs($node, nats_url => '');
ok(StatehubTest::wait_for_worker_state($node, qr/^disabled$/), 'delivery off');
$node->safe_psql('postgres', q{
SELECT statehub_events.emit('org.statehub.test.created',
                            jsonb_build_object('n', g, 'pad', repeat('x', 900000)))
  FROM generate_series(1, 150) g});
push @expected, @{ StatehubTest::outbox_ids($node) }[-150 .. -1];
my $hwm_kb = sub {
	my $status = slurp_file("/proc/$pid/status");
	return $status =~ /^VmHWM:\s+(\d+) kB/m ? $1 : die "no VmHWM";
};
my $before = $hwm_kb->();
StatehubTest::set_gucs($node, nats_url => $nats->url);
ok(StatehubTest::wait_for_drain($node, 120), 'large events: 150 x 900 kB drain');
my $grew_mb = ($hwm_kb->() - $before) / 1024;
note(sprintf('peak resident memory of the worker grew by %.0f MB', $grew_mb));
cmp_ok($grew_mb, '<', 150,
	'large events: the worker\'s peak memory grew by less than 150 MB (135 MB passed through)');
StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@expected, 'hardening');

# 2. a stream that refuses events for its own reasons: backs off, logs once
my $reply = $nats->js_api(
	'$JS.API.STREAM.UPDATE.STATEHUB',
	{
		name             => 'STATEHUB',
		subjects         => ['org.statehub.>'],
		storage          => 'file',
		max_msgs         => 2,
		discard          => 'new',
		duplicate_window => 120 * 1_000_000_000
	});
ok(!$reply->{error}, 'the stream now refuses new messages beyond 2')
  or diag explain $reply;
my $log_offset = -s $node->logfile;
StatehubTest::insert_events($node, 5);
my $t0 = time();
usleep(100_000) while time() - $t0 < 15;
my $log = substr(slurp_file($node->logfile), $log_offset);
my $flips = () = $log =~ /could not deliver events to NATS, retrying/g;
my $connected = () = $log =~ /worker connected to NATS server/g;
note("in 15 s: $flips 'could not deliver' and $connected 'connected' lines");
cmp_ok($flips, '<=', 1, 'full stream: "could not deliver" is logged once');
cmp_ok($connected, '<=', 1, 'full stream: no flip back to "connected" without progress');
is(StatehubTest::worker_status($node)->{state}, 'backoff', 'full stream: the state says backoff');
is(StatehubTest::dead_letter_count($node), 0, 'full stream: nothing is dead-lettered');
is(StatehubTest::worker_status($node)->{pid}, $pid, 'the same worker process throughout');

$node->stop;
$nats->stop;
done_testing();
