
# Copyright: statehub_events contributors
#
# The status view (docs/operations.md, "Monitoring") when no worker runs:
# the library loaded without shared_preload_libraries.  CREATE EXTENSION
# warns, capture still queues, and the view says "not running" with the
# queue as it is: queued, oldest_queued_age (growing), retrying and
# dead_letters.  (With a worker: 185_retries.pl for retrying, dead_letters,
# last_error_at and dedup_window.)

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('not_preloaded');
$node->init;
$node->start;

my ($rc, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION statehub_events');
is($rc, 0, 'CREATE EXTENSION works without preloading');
like($err, qr/WARNING: .*shared_preload_libraries/,
	'... and warns that nothing will deliver the events');

my $st = StatehubTest::worker_status($node);
is($st->{state}, 'not running', 'status: state is "not running"');
ok(!defined $st->{pid}, 'status: no pid');
is($st->{queued}, 0, 'status: nothing queued yet');
is($node->safe_psql('postgres',
		'SELECT oldest_queued_age IS NULL FROM statehub_events.status'),
	't', 'status: no oldest_queued_age for an empty outbox');

# three events: two in one transaction between two readings of the
# server's clock, then one more after them
my $t0 = $node->safe_psql('postgres', 'SELECT pg_catalog.clock_timestamp()');
$node->safe_psql(
	'postgres', q{
BEGIN;
SELECT statehub_events.emit('org.statehub.test.x', '{"n": 1}');
SELECT statehub_events.emit('org.statehub.test.x', '{"n": 2}');
COMMIT;
});
my $t1 = $node->safe_psql('postgres', 'SELECT pg_catalog.clock_timestamp()');
$node->safe_psql('postgres', q{SELECT statehub_events.emit('org.statehub.test.x', '{"n": 3}')});

$st = StatehubTest::worker_status($node);
is($st->{queued}, 3, 'status: queued counts the three committed events');
is($st->{retrying}, 0, 'status: none is being retried');
is($st->{dead_letters}, 0, 'status: no dead letters');
is($node->safe_psql('postgres',
		qq{SELECT oldest_queued_age BETWEEN pg_catalog.now() - '$t1'::timestamptz
		                                AND pg_catalog.now() - '$t0'::timestamptz
		     FROM statehub_events.status}),
	't', 'status: oldest_queued_age is the age of the first events, not of the last');
ok($node->poll_query_until('postgres',
		q{SELECT oldest_queued_age > interval '1 s' FROM statehub_events.status}),
	'status: oldest_queued_age grows while nothing delivers');
is($node->safe_psql('postgres', q{SELECT statehub_events.wait_for_drain('1 s')}),
	'f', 'wait_for_drain() times out: nothing drains');
is(StatehubTest::worker_status($node)->{queued}, 3, 'the events are still queued');

done_testing();
