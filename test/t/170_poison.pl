
# Copyright: statehub_events contributors
#
# Issue 9: one bad row must not stop delivery.  Rows put into the outbox
# by hand (a path operations.md and wake_worker() allow) with a subject
# that is not a valid event type (a blank makes nats-server drop the
# connection), a payload that is not JSON, or a body larger than the
# server's max_payload go to the dead letters with their reason as soon as
# the worker scans them, and are never sent; an event queued behind them
# arrives within seconds.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;
use Time::HiRes qw(time);

my $nats = StatehubTest::Nats->new('poison', max_payload => 4096);
$nats->start;
my $node = StatehubTest::new_node('poison', nats_url => $nats->url);
StatehubTest::track_table($node);

StatehubTest::insert_events($node, 1);
ok(StatehubTest::wait_for_drain($node), 'the first event drains');
my @expected = map { $_->{headers}{'Nats-Msg-Id'} } @{ $nats->consume('STATEHUB') };

$node->safe_psql('postgres', <<'SQL');
INSERT INTO statehub_events.outbox (event_id, subject, payload) VALUES
  (gen_random_uuid(), 'org.statehub.bad subject', '{"ok": true}'),
  (gen_random_uuid(), 'org.statehub.test.created', 'not json {'),
  (gen_random_uuid(), 'org.statehub.test.created',
   '{"big": "' || repeat('x', 5000) || '"}');
SELECT statehub_events.wake_worker();
SQL
my $t0 = time();
push @expected,
  $node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.created', '{"after": "the bad rows"}')});

ok(StatehubTest::wait_for_drain($node, 30), 'the outbox drains past the bad rows');
my $took = time() - $t0;
note(sprintf('the event behind the bad rows drained %.3f s after its commit', $took));
cmp_ok($took, '<', 10, 'and within seconds, not after retries or reconnects');

StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@expected, 'poison');

my $reasons = $node->safe_psql('postgres',
	q{SELECT subject || ' | ' || attempts || ' | ' || reason
	    FROM statehub_events.dead_letter ORDER BY id});
my @rows = split /\n/, $reasons;
is(scalar @rows, 3, 'the three bad rows are dead letters');
like($rows[0], qr/^org\.statehub\.bad subject \| 0 \| invalid event type/,
	'bad subject: dead-lettered at once with its reason');
like($rows[1], qr/\| 0 \| the payload is not valid JSON/,
	'payload not JSON: dead-lettered at once with its reason');
like($rows[2], qr/\| 0 \| .*max_payload/,
	'too large: dead-lettered at once with its reason');

my $log = slurp_file($nats->logfile);
unlike($log, qr/Parse Error|bad subject/, 'nats-server never saw the bad rows');
is(StatehubTest::worker_status($node)->{state},
	'connected', 'the worker stays connected');

$node->stop;
$nats->stop;
done_testing();
