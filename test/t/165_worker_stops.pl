
# Copyright: statehub_events contributors
#
# Issue 9: the delivery worker stops at once, whatever NATS does.  With
# nats-server frozen (SIGSTOP) and publish_timeout = 30s, the worker waits
# for the acks of an event it published; during that wait it holds no
# transaction and no lock (LOCK TABLE ... ACCESS EXCLUSIVE on the outbox is
# granted at once), SIGTERM (pg_terminate_backend) ends it at once, so does
# a fast shutdown, and it notices postmaster death.  A worker that waited
# in one blocking call would take the whole publish_timeout (30 s) for
# each; the bounds below (5 s) separate that from a prompt stop on a busy
# machine.  The times measured are printed; bench/ is where timing targets
# belong.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;
use Time::HiRes qw(usleep time);

my $bound = 5;

my $nats = StatehubTest::Nats->new('stops');
$nats->start;
my $node = StatehubTest::new_node(
	'stops',
	nats_url => $nats->url,
	conf => "statehub_events.publish_timeout = '30s'\n");
StatehubTest::track_table($node);

# Queue one event while NATS is frozen and wait until the worker waits for
# its ack.  Returns the worker's pid.
sub freeze_with_event_in_flight
{
	my ($case) = @_;

	StatehubTest::insert_events($node, 1);
	ok(StatehubTest::wait_for_drain($node), "$case: NATS is up and the outbox drains");
	kill 'STOP', $nats->{pid};
	StatehubTest::insert_events($node, 1);
	ok( $node->poll_query_until(
			'postgres', q{
SELECT pg_catalog.count(*) = 1
  FROM pg_catalog.pg_stat_activity
 WHERE backend_type = 'statehub_events worker' AND state = 'active'
   AND query IN ('waiting for NATS JetStream', 'draining statehub_events.outbox')}),
		"$case: with NATS frozen the worker works on the new event");
	return StatehubTest::worker_status($node)->{pid};
}

# Whether the worker is seen waiting for JetStream outside any transaction
# within a few seconds.
sub waits_outside_transaction
{
	my $deadline = time() + $bound;
	while (time() < $deadline)
	{
		return 1
		  if $node->safe_psql(
			'postgres', q{
SELECT pg_catalog.count(*)
  FROM pg_catalog.pg_stat_activity
 WHERE backend_type = 'statehub_events worker'
   AND query = 'waiting for NATS JetStream' AND wait_event_type = 'Extension'
   AND backend_xid IS NULL AND backend_xmin IS NULL}) == 1;
		usleep(50_000);
	}
	return 0;
}

sub thaw
{
	kill 'CONT', $nats->{pid};
	return;
}

# true once the process is gone (or a zombie nobody reaped yet)
sub process_gone
{
	my ($pid) = @_;
	return 1 unless kill 0, $pid;
	open(my $fh, '<', "/proc/$pid/stat") or return 1;
	my $stat = <$fh>;
	close $fh;
	return defined $stat && $stat =~ /^\d+ \(.*\) [ZX] /;
}

sub wait_gone
{
	my ($pid) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	usleep(10_000) until process_gone($pid) || time() > $deadline;
	return process_gone($pid);
}

# --- LOCK TABLE while the worker waits ---------------------------------------

my $pid = freeze_with_event_in_flight('lock');
my $t0 = time();
my ($rc, $out, $err) = $node->psql('postgres', qq{
SET lock_timeout = '${bound}s';
BEGIN;
LOCK TABLE statehub_events.outbox IN ACCESS EXCLUSIVE MODE;
COMMIT;});
my $took = time() - $t0;
note(sprintf('LOCK TABLE ... ACCESS EXCLUSIVE granted in %.3f s', $took));
is($rc, 0, 'lock: ACCESS EXCLUSIVE on the outbox is granted while NATS is frozen')
  or diag($err);
cmp_ok($took, '<', $bound, "lock: and granted in less than $bound s");

# --- pg_terminate_backend while the worker waits ----------------------------

$t0 = time();
$node->safe_psql('postgres', "SELECT pg_catalog.pg_terminate_backend($pid)");
ok(wait_gone($pid), 'terminate: the worker process is gone');
$took = time() - $t0;
note(sprintf('worker gone %.3f s after pg_terminate_backend', $took));
cmp_ok($took, '<', $bound, "terminate: within $bound s of SIGTERM");

thaw();
ok($node->poll_query_until('postgres',
		q{SELECT pid IS NOT NULL FROM statehub_events.status}),
	'terminate: the postmaster starts a new worker');

# --- pg_terminate_backend while a big batch cannot be written ---------------
# (3,000 events of 8 kB fill the socket's buffers: a frozen NATS then blocks
# the worker's writes, not only its wait for acks)

StatehubTest::insert_events($node, 1);
ok(StatehubTest::wait_for_drain($node), 'big batch: NATS is up and the outbox drains');
kill 'STOP', $nats->{pid};
$node->safe_psql('postgres', q{
SELECT statehub_events.emit('org.statehub.test.created',
                            pg_catalog.jsonb_build_object('pad', pg_catalog.repeat('x', 8000)))
  FROM pg_catalog.generate_series(1, 3000)});
ok( $node->poll_query_until(
		'postgres', q{
SELECT pg_catalog.count(*) = 1
  FROM pg_catalog.pg_stat_activity
 WHERE backend_type = 'statehub_events worker' AND state = 'active'
   AND query = 'waiting for NATS JetStream'}),
	'big batch: with NATS frozen the worker publishes the batch');
$pid = StatehubTest::worker_status($node)->{pid};
$t0 = time();
$node->safe_psql('postgres', "SELECT pg_catalog.pg_terminate_backend($pid)");
ok(wait_gone($pid), 'big batch: the worker process is gone');
$took = time() - $t0;
note(sprintf('worker gone %.3f s after pg_terminate_backend', $took));
cmp_ok($took, '<', $bound, "big batch: within $bound s of SIGTERM");
thaw();
ok(StatehubTest::wait_for_drain($node, 120), 'big batch: the events drain once NATS is back');

# --- pg_ctl stop -m fast while the worker waits ------------------------------

freeze_with_event_in_flight('fast stop');
ok(waits_outside_transaction(),
	'fast stop: the worker waits for JetStream in a wait event, with no transaction or snapshot');
$t0 = time();
$node->stop('fast');
$took = time() - $t0;
note(sprintf('pg_ctl stop -m fast took %.3f s', $took));
cmp_ok($took, '<', $bound, "fast stop: the server stops within $bound s");
thaw();

# after all that, nothing was lost
$node->start;
ok(StatehubTest::wait_for_drain($node), 'after a restart the outbox drains');
is($nats->stream_info('STATEHUB')->{messages},
	$node->safe_psql('postgres', 'SELECT count(*) + 3000 FROM t'),
	'every committed event (the big batch\'s 3,000 too) is in the stream once');

# --- postmaster death while the worker waits --------------------------------

$pid = freeze_with_event_in_flight('postmaster death');
$t0 = time();
$node->kill9;
ok(wait_gone($pid), 'postmaster death: the worker process is gone');
$took = time() - $t0;
note(sprintf('worker gone %.3f s after the postmaster was killed', $took));
cmp_ok($took, '<', $bound, "postmaster death: noticed within $bound s");
thaw();

$nats->stop;
done_testing();
