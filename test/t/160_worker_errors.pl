
# Copyright: statehub_events contributors
#
# Issue 9: a round of the delivery worker is one unit of recovery.  A
# queued event locked by another session (SELECT ... FOR UPDATE) past the
# worker's lock_timeout makes the worker's DELETE fail.  The worker must
# stay the same process (no crash, no restart by the postmaster), log the
# error once however often it recurs, and once the lock is gone deliver
# every event exactly once.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;
use Time::HiRes qw(usleep time);

my $nats = StatehubTest::Nats->new('errors');
$nats->start;
my $node = StatehubTest::new_node('errors', nats_url => $nats->url);
StatehubTest::track_table($node);

# the stream exists and the worker is connected
StatehubTest::insert_events($node, 1);
ok(StatehubTest::wait_for_drain($node), 'the first event drains');
my @ids = @{ $nats->consume('STATEHUB') };
my @expected = map { $_->{headers}{'Nats-Msg-Id'} } @ids;

# queue ten events while delivery is off, and lock one of them
StatehubTest::set_gucs($node, nats_url => '');
ok(StatehubTest::wait_for_worker_state($node, qr/^disabled$/),
	'delivery off: the worker is disabled');
StatehubTest::insert_events($node, 10);
push @expected, @{ StatehubTest::outbox_ids($node) };
my $pid = StatehubTest::worker_status($node)->{pid};

my $locker = $node->background_psql('postgres');
$locker->query_safe(q{BEGIN});
$locker->query_safe(
	q{SELECT id FROM statehub_events.outbox ORDER BY id OFFSET 4 LIMIT 1 FOR UPDATE});

my $log_offset = -s $node->logfile;
StatehubTest::set_gucs($node, nats_url => $nats->url);

# the worker publishes, then its DELETE waits for the row lock and fails;
# hold the lock until the error came back at least twice
ok( $node->poll_query_until(
		'postgres',
		q{SELECT last_error LIKE '%lock timeout%' FROM statehub_events.status}),
	'the lock timeout shows as the last error');
my $first_at = StatehubTest::worker_status($node)->{last_error_at};
ok( $node->poll_query_until(
		'postgres',
		qq{SELECT last_error_at > '$first_at' AND last_error LIKE '%lock timeout%'
		     FROM statehub_events.status}),
	'the error comes back while the lock is held');
is(StatehubTest::outbox_count($node), 10, 'nothing was deleted meanwhile');

$locker->query_safe(q{COMMIT});
$locker->quit;

ok(StatehubTest::wait_for_drain($node), 'once the lock is gone the outbox drains');
StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@expected,
	'lock past lock_timeout');
is(StatehubTest::worker_status($node)->{pid},
	$pid, 'the worker is the same process throughout');
is(StatehubTest::dead_letter_count($node), 0, 'no dead letters');

my $log = slurp_file($node->logfile, $log_offset);
my $logged = () = $log =~ /could not drain statehub_events\.outbox/g;
is($logged, 1, 'the recurring error is logged once');
unlike($log, qr/terminated by signal|exited with exit code/,
	'no process of the cluster died');

$node->stop;
$nats->stop;
done_testing();
