
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

# The worker also rescans the outbox from its start once a minute, which
# would deliver an event its cursor skipped.  So these checks run in the
# first minute of a fresh worker (whose only full scan so far is the one
# at its start), and each wait is bounded well below a minute: only the
# cursor can deliver within it.
my $full_scan_period = 60;
my $old_pid = StatehubTest::worker_status($node)->{pid};
my $fresh_since = time();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($old_pid)");
ok($node->poll_query_until('postgres',
		qq{SELECT pid IS NOT NULL AND pid <> $old_pid AND state = 'connected'
		     FROM statehub_events.status}),
	'late commit: a fresh worker runs');
my $bound = 15;

# Negative control: an event placed below the cursor (by hand, with an id
# lower than ones already delivered, so no cursor rule covers it) is not
# seen by the scans that deliver the events after it.  The fresh worker's
# cursor starts at 0; a few events, each delivered before the next, move
# it up.
foreach my $k (1 .. 3)
{
	my $warm = $node->safe_psql('postgres',
		q{SELECT statehub_events.emit('org.statehub.test.warm', '{}')});
	ok($node->poll_query_until('postgres',
			qq{SELECT NOT EXISTS (SELECT FROM statehub_events.outbox WHERE event_id = '$warm')}),
		"negative control: warm-up event $k delivered");
}
my $below = $node->safe_psql(
	'postgres', q{
INSERT INTO statehub_events.outbox (id, event_id, subject, payload)
SELECT 1, e, 'org.statehub.test.below',
       pg_catalog.json_build_object('id', e, 'type', 'org.statehub.test.below')::text
  FROM (SELECT pg_catalog.gen_random_uuid() AS e) g
RETURNING event_id;
});
my $after_below = $node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.after_below', '{}')});
ok($node->poll_query_until('postgres',
		qq{SELECT NOT EXISTS (SELECT FROM statehub_events.outbox WHERE event_id = '$after_below')}),
	'negative control: the event emitted after it is delivered');
is($node->safe_psql('postgres',
		qq{SELECT count(*) FROM statehub_events.outbox WHERE event_id = '$below'}),
	1, 'negative control: an event below the cursor waits for the full rescan');
$node->safe_psql('postgres',
	qq{DELETE FROM statehub_events.outbox WHERE event_id = '$below'});
my $before_late = $nats->stream_info('STATEHUB')->{messages};

my $long = $node->background_psql('postgres');
$long->query_safe(
	q{BEGIN; UPDATE r SET status = 'done', n = n + 1 WHERE id = 1;});
my $later = $node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.later', '{}')});
ok(StatehubTest::wait_for_drain($node, $bound),
	'the later event drains while the earlier transaction is open');
is($nats->wait_for_stream_count('STATEHUB', $before_late + 1, $bound),
	$before_late + 1, 'the later event is in the stream');
$long->query_safe('COMMIT');
$long->quit;
my $committed_at = time();
ok(StatehubTest::wait_for_drain($node, $bound),
	"an event committed after later-numbered ones were delivered drains within $bound s");
my $took = time() - $fresh_since;
cmp_ok($took, '<', $full_scan_period - 5,
	'... in the first minute of the worker, before any rescan from the start');
note(sprintf('late event drained %.1f s after its commit, %.1f s after the worker restart',
		time() - $committed_at, $took));
my $all = $nats->consume('STATEHUB');
is(scalar @$all, $before_late + 2, 'the stream holds both events');
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
