
# Copyright: statehub_events contributors
#
# Delivery cases 12 and 6: the events of one row reach the stream in
# commit order, also when two sessions fight over the row while the worker
# drains; an event that commits after later-numbered ones (a long
# transaction, a prepared transaction) is still delivered; rolled-back work
# (transaction, savepoint, error, ROLLBACK PREPARED) publishes nothing.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $nats = StatehubTest::Nats->new('ordering');
$nats->start;
my $node = StatehubTest::new_node(
	'ordering',
	nats_url => $nats->url,
	conf     => "max_prepared_transactions = 5\n");
$node->safe_psql(
	'postgres', q{
CREATE TABLE r (id int PRIMARY KEY, status text NOT NULL, n int NOT NULL);
INSERT INTO r SELECT g, 'open', 0 FROM generate_series(1, 3) g;
SELECT statehub_events.track_transition('r', 'status', 'done', 'org.statehub.test.done');
SELECT statehub_events.track_transition('r', 'status', 'open', 'org.statehub.test.reopened');
});

my $json = JSON::PP->new->utf8;

# --- case 12: one row transitions back and forth ----------------------------

# Two sessions flip row 3 concurrently (the row lock orders them, n counts
# the commits) while each also flips a row of its own; the worker drains
# all along.
my $flips = 150;
my @sessions = map { $node->background_psql('postgres') } 1 .. 2;
my $flip3 = q{UPDATE r SET status = CASE status WHEN 'open' THEN 'done' ELSE 'open' END, n = n + 1 WHERE id = 3;};
foreach my $i (0, 1)
{
	my $own = $i + 1;
	my $sql = '';
	$sql .= "UPDATE r SET status = CASE status WHEN 'open' THEN 'done' ELSE 'open' END, n = n + 1 WHERE id = $own;\n$flip3\n"
	  for 1 .. $flips;
	# send without waiting, so the two sessions really interleave
	$sessions[$i]->{stdin} .= $sql . "\\echo flipped\n";
	$sessions[$i]->{run}->pump_nb;
}
foreach my $s (@sessions)
{
	$s->{run}->pump until $s->{stdout} =~ /flipped/ || $s->{timeout}->is_expired;
	like($s->{stdout}, qr/flipped/, 'case 12: a session finished its flips');
	$s->quit;
}

is($node->safe_psql('postgres', 'SELECT n FROM r ORDER BY id'),
	join("\n", $flips, $flips, 2 * $flips), 'case 12: every flip committed');
ok(StatehubTest::wait_for_drain($node), 'case 12: the outbox drains');

my $msgs = $nats->consume('STATEHUB');
is(scalar @$msgs, 4 * $flips, 'case 12: one event per committed flip in the stream');
foreach my $row (1, 2, 3)
{
	my @evs = grep { $_->{attributes}{id} == $row }
	  map { $json->decode($_->{body}) } @$msgs;
	my $count = $row == 3 ? 2 * $flips : $flips;
	is_deeply([ map { $_->{attributes}{n} } @evs ], [ 1 .. $count ],
		"case 12: row $row: events in commit order (n = 1 .. $count in stream order)");
	my @want = map { $_ % 2 ? 'org.statehub.test.done' : 'org.statehub.test.reopened' } 1 .. $count;
	is_deeply([ map { $_->{type} } @evs ], \@want,
		"case 12: row $row: done and reopened alternate, starting with done");
}

# --- a transaction that commits after later events were delivered ----------

my $long = $node->background_psql('postgres');
$long->query_safe(
	q{BEGIN; UPDATE r SET status = 'done', n = n + 1 WHERE id = 1;});
my $later = $node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.later', '{}')});
ok(StatehubTest::wait_for_drain($node), 'the later event drains while the earlier transaction is open');
$nats->wait_for_stream_count('STATEHUB', 4 * $flips + 1);
$long->query_safe('COMMIT');
$long->quit;
ok(StatehubTest::wait_for_drain($node),
	'an event committed after later-numbered ones were delivered still drains');
my $all = $nats->consume('STATEHUB');
is(scalar @$all, 4 * $flips + 2, 'the stream holds both events');
is($json->decode($all->[-1]{body})->{attributes}{n}, $flips + 1,
	'the late transition is the last message');

# --- case 6: rolled-back work publishes nothing -----------------------------

my $before = $nats->stream_info('STATEHUB')->{messages};
my $kept = (split /\n/, $node->safe_psql(
	'postgres', q{
BEGIN;
UPDATE r SET status = 'done', n = n + 100 WHERE id = 2;
SELECT statehub_events.emit('org.statehub.test.rolledback', '{"how": "rollback"}');
ROLLBACK;

BEGIN;
SAVEPOINT s;
SELECT statehub_events.emit('org.statehub.test.rolledback', '{"how": "savepoint"}');
ROLLBACK TO SAVEPOINT s;
SELECT statehub_events.emit('org.statehub.test.kept', '{"how": "after savepoint"}') \gset
COMMIT;
SELECT :'emit';
}))[-1];
my ($rc) = $node->psql('postgres', q{
BEGIN;
SELECT statehub_events.emit('org.statehub.test.rolledback', '{"how": "error"}');
SELECT 1 / 0;
COMMIT;
});
isnt($rc, 0, 'case 6: the failing transaction failed');
$node->safe_psql('postgres', q{
BEGIN;
SELECT statehub_events.emit('org.statehub.test.rolledback', '{"how": "rollback prepared"}');
PREPARE TRANSACTION 'gone';
ROLLBACK PREPARED 'gone';
BEGIN;
SELECT statehub_events.emit('org.statehub.test.prepared', '{"how": "commit prepared"}');
PREPARE TRANSACTION 'kept';
COMMIT PREPARED 'kept';
});
my $marker = $node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.marker', '{}')});

ok(StatehubTest::wait_for_drain($node), 'case 6: the outbox drains');
$nats->wait_for_stream_count('STATEHUB', $before + 3);
my $after = $nats->consume('STATEHUB');
my @new = map { $json->decode($_->{body}) } @$after[ $before .. $#$after ];
is_deeply([ sort map { $_->{type} } @new ],
	[ sort qw(org.statehub.test.kept org.statehub.test.prepared org.statehub.test.marker) ],
	'case 6: only the committed events are in the stream');
is((grep { $_->{id} eq $kept } @new) ? 1 : 0, 1, 'case 6: the event after the rolled-back savepoint is there');
is((grep { $_->{id} eq $marker } @new) ? 1 : 0, 1, 'case 6: the marker is there');
is($node->safe_psql('postgres', 'SELECT n FROM r WHERE id = 2'), $flips,
	'case 6: the rolled-back update left the row alone');

done_testing();
