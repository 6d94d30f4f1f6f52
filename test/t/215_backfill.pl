
# Copyright: statehub_events contributors
#
# Issue 11: backfill() with the real nats-server.  A backfilled event
# arrives with the header Statehub-Backfill: true (a live one without it);
# an open backfill blocks no writer of the table; and backfills running
# while two sessions flip the same rows leave each row's live events in
# commit order, each backfilled event carrying a state the row really had.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $nats = StatehubTest::Nats->new('backfill');
$nats->start;
my $node = StatehubTest::new_node('backfill', nats_url => $nats->url);
$node->safe_psql(
	'postgres', q{
CREATE TABLE r (id int PRIMARY KEY, status text NOT NULL, n int NOT NULL);
INSERT INTO r SELECT g, 'open', 0 FROM generate_series(1, 20000) g;
SELECT statehub_events.track_insert('r', 'org.statehub.test.registered');
SELECT statehub_events.track_transition('r', 'status', 'done', 'org.statehub.test.done');
SELECT statehub_events.track_transition('r', 'status', 'open', 'org.statehub.test.reopened');
CREATE TABLE backfilled (n bigint NOT NULL);
});

my $json = JSON::PP->new->utf8;

# --- the header --------------------------------------------------------------

# in one transaction, so the worker cannot drain the rows before they are read
is($node->safe_psql(
		'postgres', q{
BEGIN;
SELECT statehub_events.backfill('r', 'org.statehub.test.registered', 'NEW.id <= 3');
INSERT INTO r VALUES (0, 'open', 0);
SELECT backfill, count(*) FROM statehub_events.outbox GROUP BY 1 ORDER BY 1;
COMMIT;
}),
	"3\nf|1\nt|3", 'header: three rows backfilled, flagged in the outbox');
ok(StatehubTest::wait_for_drain($node), 'header: the outbox drains');
is($nats->wait_for_stream_count('STATEHUB', 4), 4, 'header: four messages in the stream');
my $msgs = $nats->consume('STATEHUB');
my @backfilled = grep { ($_->{headers}{'Statehub-Backfill'} // '') eq 'true' } @$msgs;
is_deeply([ sort map { $json->decode($_->{body})->{attributes}{id} } @backfilled ],
	[ 1, 2, 3 ], 'header: the backfilled events carry Statehub-Backfill: true');
my @live = grep { !exists $_->{headers}{'Statehub-Backfill'} } @$msgs;
is_deeply([ map { $json->decode($_->{body})->{attributes}{id} } @live ],
	[0], 'header: the live event carries no such header');
ok((!grep { !defined $_->{headers}{'Nats-Msg-Id'} } @$msgs),
	'header: every message keeps its Nats-Msg-Id');
$node->safe_psql('postgres', 'DELETE FROM r WHERE id = 0');

# --- an open backfill blocks no writer ----------------------------------------

my $open = $node->background_psql('postgres');
$open->query_safe(
	q{BEGIN; SELECT statehub_events.backfill('r', 'org.statehub.test.registered');});
my ($rc, $out, $err) = $node->psql('postgres',
	q{SET lock_timeout = '5s';
	  UPDATE r SET status = 'done', n = n + 1 WHERE id = 10;
	  UPDATE r SET status = 'open', n = n + 1 WHERE id = 10;
	  INSERT INTO r VALUES (20001, 'open', 0);
	  DELETE FROM r WHERE id = 20001;});
is($rc, 0, 'no blocking: writes to backfilled rows commit while the backfill is open')
  or diag($err);
$open->query_safe('ROLLBACK');
$open->quit;
ok(StatehubTest::wait_for_drain($node), 'no blocking: the outbox drains');
my $base = $nats->stream_info('STATEHUB')->{messages};

# --- concurrent backfills and live transitions --------------------------------

# Two sessions flip rows 1 to 3 (row 3 by both: its row lock orders them,
# n counts the commits) while a third backfills those rows, again and
# again, with both mappings, and once the whole table; the worker drains
# all along.
my $flips = 100;
my @sessions = map { $node->background_psql('postgres') } 1 .. 3;
my $flip = sub {
	my $id = shift;
	return "UPDATE r SET status = CASE status WHEN 'open' THEN 'done' ELSE 'open' END, n = n + 1 WHERE id = $id;\n";
};
foreach my $i (0, 1)
{
	my $sql = '';
	$sql .= $flip->($i + 1) . $flip->(3) for 1 .. $flips;
	$sessions[$i]->{stdin} .= $sql . "\\echo flipped\n";
	$sessions[$i]->{run}->pump_nb;
}
my $bf = '';
foreach my $k (1 .. 40)
{
	my $type = $k % 2 ? 'org.statehub.test.registered' : 'org.statehub.test.done';
	$bf .= "INSERT INTO backfilled SELECT statehub_events.backfill('r', '$type', 'NEW.id <= 3');\n";
	$bf .= "INSERT INTO backfilled SELECT statehub_events.backfill('r', 'org.statehub.test.registered');\n"
	  if $k == 20;
}
$sessions[2]->{stdin} .= $bf . "\\echo flipped\n";
$sessions[2]->{run}->pump_nb;
foreach my $s (@sessions)
{
	$s->{run}->pump until $s->{stdout} =~ /flipped/ || $s->{timeout}->is_expired;
	like($s->{stdout}, qr/flipped/, 'concurrent: a session finished');
	$s->quit;
}

is($node->safe_psql('postgres', 'SELECT n FROM r WHERE id <= 3 ORDER BY id'),
	join("\n", $flips, $flips, 2 * $flips), 'concurrent: every flip committed');
my $nbackfilled = $node->safe_psql('postgres', 'SELECT sum(n) FROM backfilled');
cmp_ok($nbackfilled, '>', 20000, 'concurrent: the backfills queued their events');
ok(StatehubTest::wait_for_drain($node, 300), 'concurrent: the outbox drains');
my $total = $base + 4 * $flips + $nbackfilled;
is($nats->wait_for_stream_count('STATEHUB', $total, 120), $total,
	'concurrent: one message per flip and per backfilled row');

$msgs = $nats->consume('STATEHUB');
my @events = map {
	my $e = $json->decode($_->{body});
	$e->{backfill} = ($_->{headers}{'Statehub-Backfill'} // '') eq 'true';
	$e
} sort { $a->{seq} <=> $b->{seq} } @$msgs[ $base .. $#$msgs ];
is(scalar(grep { $_->{backfill} } @events), $nbackfilled,
	'concurrent: every backfilled event has the header, no live one');
foreach my $row (1, 2, 3)
{
	my $count = $row == 3 ? 2 * $flips : $flips;
	my @mine = grep { $_->{attributes}{id} == $row } @events;
	my @live = grep { !$_->{backfill} } @mine;
	is_deeply([ map { $_->{attributes}{n} } @live ], [ 1 .. $count ],
		"concurrent: row $row: live events in commit order (n = 1 .. $count)");
	my @want = map { $_ % 2 ? 'org.statehub.test.done' : 'org.statehub.test.reopened' } 1 .. $count;
	is_deeply([ map { $_->{type} } @live ], \@want,
		"concurrent: row $row: done and reopened alternate");
	ok((!grep { exists $_->{attributes}{previous} } grep { $_->{backfill} } @mine),
		"concurrent: row $row: no backfilled event carries previous");
	# n counts the flips from 'open': odd n is 'done'
	my @wrong = grep {
		$_->{attributes}{status} ne ($_->{attributes}{n} % 2 ? 'done' : 'open')
		  || ($_->{type} eq 'org.statehub.test.done' && $_->{attributes}{status} ne 'done')
	} grep { $_->{backfill} } @mine;
	is(scalar @wrong, 0,
		"concurrent: row $row: each backfilled event carries a state the row had");
}

done_testing();
