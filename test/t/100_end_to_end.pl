
# Copyright: statehub_events contributors
#
# Delivery case 1, end to end: events queued by the real capture path
# (track_insert, track_transition, emit) reach JetStream with the queued
# payload byte for byte, Nats-Msg-Id = envelope id, subject = type; the
# outbox is empty afterwards.  Also: the worker creates the stream it
# needs, is visible in pg_stat_activity, and a commit wakes it at once
# (poll_interval set to an hour cannot be what delivers).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use Time::HiRes qw(usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $nats = StatehubTest::Nats->new('e2e');
$nats->start;

# nats_url empty at first: the events wait, so we can read them queued
my $node = StatehubTest::new_node('e2e');

$node->safe_psql(
	'postgres', q{
CREATE TABLE t (id int PRIMARY KEY, status text, note text);
SELECT statehub_events.track_insert('t', 'org.statehub.test.created');
SELECT statehub_events.track_transition('t', 'status', 'done', 'org.statehub.test.done');
});
$node->safe_psql(
	'postgres', q{
INSERT INTO t VALUES (1, 'open', 'plain');
INSERT INTO t VALUES (2, 'open', E'quote " backslash \\\\ newline \n tab \t');
INSERT INTO t VALUES (3, 'open', 'é ✓ 🚀 日本');
UPDATE t SET status = 'done' WHERE id = 3;
SELECT statehub_events.emit('org.statehub.test.x', '{"k": 1}');
});

my $queued = StatehubTest::outbox_events($node);
is(scalar @$queued, 5, 'five committed events are queued while nats_url is empty');

StatehubTest::set_gucs($node, nats_url => $nats->url);
ok(StatehubTest::wait_for_drain($node), 'the outbox drains once nats_url is set');

my $msgs = StatehubTest::stream_holds_exactly($nats, 'STATEHUB',
	[ map { $_->{event_id} } @$queued ], 'end to end');

my %by_id = map { ($_->{headers}{'Nats-Msg-Id'} // '') => $_ } @$msgs;
foreach my $ev (@$queued)
{
	my $m = $by_id{ $ev->{event_id} };
	ok($m, "event $ev->{event_id} ($ev->{subject}) is in the stream") or next;
	ok($m->{body} eq $ev->{payload},
		"$ev->{subject}: published body is the queued payload byte for byte")
	  or diag("published: $m->{body}\nqueued:    $ev->{payload}");
	is($m->{subject}, $ev->{subject}, "$ev->{subject}: subject is the queued subject");
	my $env = JSON::PP->new->utf8->decode($m->{body});
	is($env->{id},   $m->{headers}{'Nats-Msg-Id'}, "$ev->{subject}: Nats-Msg-Id is the envelope id");
	is($env->{type}, $m->{subject},               "$ev->{subject}: subject is the envelope type");
}

# the stream messages come out in drain (outbox) order
is_deeply(
	[ map { $_->{headers}{'Nats-Msg-Id'} } @$msgs ],
	[ map { $_->{event_id} } @$queued ],
	'the stream holds the events in outbox order');

my $note = (grep { $_->{subject} eq 'org.statehub.test.created' } @$msgs)[1];
is(JSON::PP->new->utf8->decode($note->{body})->{attributes}{note},
	qq{quote " backslash \\ newline \n tab \t},
	'quotes, backslashes and control characters survive the trip');

is(StatehubTest::outbox_count($node), 0, 'outbox is empty afterwards');
is(StatehubTest::dead_letter_count($node), 0, 'no dead letters');

my $info = $nats->stream_info('STATEHUB');
is_deeply($info->{subjects}, ['org.statehub.>'],
	'the worker created stream STATEHUB on org.statehub.>');
is($info->{duplicate_window_us}, 86400 * 1_000_000,
	'the created stream has the default duplicate window (1 day)');

my $st = StatehubTest::worker_status($node);
is($st->{state}, 'connected', 'status: worker connected');
is($st->{stream}, 'STATEHUB', 'status: stream');
is($st->{published}, 5, 'status: published counts the five events, once each');
ok(defined $st->{last_publish_at}, 'status: last publish time is set');
is($node->safe_psql('postgres',
		"SELECT backend_type FROM pg_stat_activity WHERE pid = $st->{pid}"),
	'statehub_events worker', 'the worker is its own entry in pg_stat_activity');

# Wake on commit: with the fallback poll at one hour, only the commit's
# wake-up can deliver within the bound below.
StatehubTest::set_gucs($node, poll_interval => '1h');
# the reload is processed when the worker next wakes: make sure it has
# been woken once since, so the new interval is in force
$node->safe_psql('postgres', q{SELECT statehub_events.emit('org.statehub.test.x', '{"k": 2}')});
ok(StatehubTest::wait_for_drain($node), 'event drained after reload');

# Negative control: a row inserted into the outbox by hand arms no wake-up,
# so only the poll can find it.  With the 1 s default it would be gone in
# a second; with one hour in force it waits.
my $quiet = 3;
my $by_hand = $node->safe_psql(
	'postgres', q{
INSERT INTO statehub_events.outbox (event_id, subject, payload)
SELECT e, 'org.statehub.test.by_hand',
       pg_catalog.json_build_object('id', e, 'type', 'org.statehub.test.by_hand')::text
  FROM (SELECT pg_catalog.gen_random_uuid() AS e) g
RETURNING event_id;
});
my $waited = 0;
while ($waited < $quiet * 10 && StatehubTest::outbox_count($node) == 1)
{
	usleep(100_000);
	$waited++;
}
is(StatehubTest::outbox_count($node), 1,
	"poll_interval = 1h is in force: a row inserted by hand (no wake-up) waits $quiet s");

my $id = $node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.x', '{"k": 3}')});
ok(StatehubTest::wait_for_drain($node, 10),
	'a committed event is delivered at once with poll_interval = 1h (commit wakes the worker)');
my $last = $nats->consume('STATEHUB');
is_deeply([ map { $_->{headers}{'Nats-Msg-Id'} } @$last[-2, -1] ],
	[ $by_hand, $id ],
	'the woken worker delivered the waiting row and then the new event');
is(StatehubTest::worker_status($node)->{published}, 8,
	'status: published counts every event delivered, once each');

done_testing();
