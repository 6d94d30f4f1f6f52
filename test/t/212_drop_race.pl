
# Copyright: statehub_events contributors
#
# Issue 12 item 10, found by a hostile review: DROP EXTENSION is refused
# while events are queued, but the check counted rows before the DROP had
# its locks.  A transaction that had captured an event and committed while
# the DROP waited for it lost that event with the outbox.  The check now
# waits for such writers and counts what they committed.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

# no NATS: what is queued stays queued
my $node = StatehubTest::new_node('drop_race');
StatehubTest::track_table($node);

my $writer = $node->background_psql('postgres');
$writer->query_safe(q{BEGIN; INSERT INTO t VALUES (1, 'new');});

# the DROP waits for the writer's lock on the outbox
my ($stdout, $stderr) = ('', '');
my $drop = IPC::Run::start(
	[
		'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d',
		$node->connstr('postgres'), '-c',
		'DROP EXTENSION statehub_events CASCADE'
	],
	'>', \$stdout, '2>', \$stderr);
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) > 0 FROM pg_stat_activity
 WHERE query LIKE 'DROP EXTENSION%' AND wait_event_type = 'Lock'}),
	'the DROP waits for the capturing transaction');
$writer->query_safe('COMMIT');
$writer->quit;
$drop->finish;

isnt($drop->result(0), 0, 'the DROP fails once the event is committed');
like($stderr, qr/cannot drop extension statehub_events while it holds undelivered events/,
	'with the refusal');
is($node->safe_psql('postgres', 'SELECT count(*) FROM statehub_events.outbox'),
	'1', 'the committed event is still queued');

$node->stop;
done_testing();
