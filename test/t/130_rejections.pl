
# Copyright: statehub_events contributors
#
# Delivery cases 7 and 8: per-event rejections.  With stream_create = off
# and no stream, events on a subject outside the configured stream_subjects
# (no stream listens on it, nor would the configured one; such a mapping is
# declared with a warning, emit() refuses the type) are retried
# max_attempts times and then dead-lettered with a clear reason; once a DBA
# creates a stream for them, retry_dead_letters() delivers them.  (Events
# on the configured subjects wait for their stream instead: 187_stream.pl.)  An event larger than the server's
# max_payload goes straight to the dead letters and the events around it
# are delivered.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $nats = StatehubTest::Nats->new('rejections');
$nats->start;
my $node = StatehubTest::new_node(
	'rejections',
	nats_url => $nats->url,
	conf     => qq{
statehub_events.stream_create = off
statehub_events.max_attempts = 3
});

sub emit
{
	my ($type, $attrs) = @_;
	$attrs //= q{'{}'};
	return $node->safe_psql('postgres',
		"SELECT statehub_events.emit('$type', $attrs)");
}

# --- case 7: no stream, stream_create = off ---------------------------------

# emit() refuses a type outside stream_subjects; a declaration only warns,
# so events of such a mapping can still be queued (issue 12, item 6)
my ($rc, $out, $err) = $node->psql('postgres',
	q{SELECT statehub_events.emit('org.nostream.test.event', '{}')});
isnt($rc, 0, 'case 7: emit() refuses a type outside stream_subjects');
like($err, qr/HINT:  .*statehub_events\.stream_subjects/,
	'case 7: the hint names the setting');
($rc, $out, $err) = $node->psql('postgres', q{
CREATE TABLE nostream (n int);
SELECT statehub_events.track_insert('nostream', 'org.nostream.test.event')});
like($err, qr/WARNING:  event type "org.nostream.test.event" is not among the stream's subjects/,
	'case 7: declaring such a type warns');
my @ids = split /\n/, $node->safe_psql(
	'postgres', q{
BEGIN;
INSERT INTO nostream SELECT pg_catalog.generate_series(1, 5);
SELECT event_id FROM statehub_events.outbox ORDER BY id;
COMMIT;});
is(scalar @ids, 5, 'case 7: five events queued');

ok($node->poll_query_until('postgres',
		'SELECT count(*) = 5 FROM statehub_events.dead_letter'),
	'case 7: all five events end up as dead letters');
is(StatehubTest::outbox_count($node), 0, 'case 7: nothing is left in the outbox');
is($node->safe_psql('postgres',
		'SELECT string_agg(DISTINCT attempts::text, \',\') FROM statehub_events.dead_letter'),
	'3', 'case 7: each was tried max_attempts (3) times');
my $reasons = $node->safe_psql('postgres',
	'SELECT string_agg(DISTINCT reason, E\'\n\') FROM statehub_events.dead_letter');
note("dead letter reason: $reasons");
like($reasons, qr/stream|responders/i,
	'case 7: the reason says that no stream takes the subject');
is_deeply([ sort split /\n/, $node->safe_psql('postgres',
			'SELECT event_id FROM statehub_events.dead_letter') ],
	[ sort @ids ], 'case 7: the dead letters are the five events');
ok(!$nats->stream_info('STATEHUB')->{exists},
	'case 7: the worker did not create the stream');
# every rejection counts once: as many as the attempts the dead letters record
my $failed7 = StatehubTest::worker_status($node)->{failed};
is($failed7,
	$node->safe_psql('postgres', 'SELECT sum(attempts) FROM statehub_events.dead_letter'),
	'case 7: the status view counts each rejection once (the attempts of the dead letters)');

# a DBA creates the stream, then retries one dead letter, then the rest
$nats->create_stream('STATEHUB', 'org.statehub.>,org.nostream.>');
is($node->safe_psql('postgres',
		"SELECT statehub_events.retry_dead_letters(ARRAY['$ids[0]']::uuid[])"),
	1, 'case 7: retry_dead_letters(ids) moves one event back');
ok(StatehubTest::wait_for_drain($node), 'case 7: the retried event drains');
StatehubTest::stream_holds_exactly($nats, 'STATEHUB', [ $ids[0] ],
	'case 7 (one retried)');
is($node->safe_psql('postgres', 'SELECT statehub_events.retry_dead_letters()'),
	4, 'case 7: retry_dead_letters() moves the other four back');
ok(StatehubTest::wait_for_drain($node), 'case 7: the retried events drain');
StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@ids, 'case 7');
is(StatehubTest::dead_letter_count($node), 0, 'case 7: no dead letters left');

# --- case 8: one oversized event --------------------------------------------

my $small = StatehubTest::Nats->new('small', max_payload => 16384);
$small->start;
StatehubTest::set_gucs($node, nats_url => $small->url, stream_create => 'on');
# the worker was connected before the reload: wait for the new server
my $small_port = $small->port;
ok(StatehubTest::wait_for_status($node,
		"state = 'connected' AND server LIKE '%:$small_port'"),
	'case 8: worker connected to the server with max_payload 16 kB');
my $failed_before8 = StatehubTest::worker_status($node)->{failed};

my $big_attrs = q{jsonb_build_object('blob', repeat('x', 20000))};
my @good;
my @big;
# each in its own transaction ...
push @good, emit('org.statehub.test.small', q{'{"n": 1}'});
push @big,  emit('org.statehub.test.big', $big_attrs);
push @good, emit('org.statehub.test.small', q{'{"n": 2}'});
# ... and in one transaction, so one batch holds all three
my @tx = split /\n/, $node->safe_psql(
	'postgres', qq{
BEGIN;
CREATE TEMP TABLE ids (i int, id uuid);
INSERT INTO ids SELECT 1, statehub_events.emit('org.statehub.test.small', '{"n": 3}');
INSERT INTO ids SELECT 2, statehub_events.emit('org.statehub.test.big', $big_attrs);
INSERT INTO ids SELECT 3, statehub_events.emit('org.statehub.test.small', '{"n": 4}');
COMMIT;
SELECT id FROM ids ORDER BY i;
});
push @good, $tx[0], $tx[2];
push @big, $tx[1];

ok(StatehubTest::wait_for_drain($node), 'case 8: the outbox drains');
is_deeply([ sort split /\n/, $node->safe_psql('postgres',
			'SELECT event_id FROM statehub_events.dead_letter') ],
	[ sort @big ], 'case 8: the two oversized events are dead letters');
$reasons = $node->safe_psql('postgres',
	'SELECT string_agg(DISTINCT reason, E\'\n\') FROM statehub_events.dead_letter');
note("dead letter reason: $reasons");
like($reasons, qr/max_payload|maximum payload|too large|exceeds|more than (the )?\d+ bytes/i,
	'case 8: the reason says the event exceeds the maximum payload');
is($node->safe_psql('postgres',
		'SELECT max(attempts) <= 1 FROM statehub_events.dead_letter'),
	't', 'case 8: no retries were wasted on them');
is(StatehubTest::worker_status($node)->{failed} - $failed_before8, 2,
	'case 8: the status view counts the two oversized events as failed');
StatehubTest::stream_holds_exactly($small, 'STATEHUB', \@good,
	'case 8: the events around the oversized ones');

# --- case 9: another stream takes the subject ---------------------------------
# Its ack is no delivery to our stream: the event is rejected, retried and
# dead-lettered like one nobody listens for, never counted as published.

$small->create_stream('OTHER', 'org.elsewhere.>');
$node->safe_psql('postgres', q{
INSERT INTO statehub_events.outbox (event_id, subject, payload)
VALUES (gen_random_uuid(), 'org.elsewhere.took', '{"n": 9}');
SELECT statehub_events.wake_worker();});
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM statehub_events.dead_letter WHERE subject = 'org.elsewhere.took'}),
	'case 9: the event another stream took is a dead letter');
like($node->safe_psql('postgres',
		q{SELECT attempts || ' ' || reason FROM statehub_events.dead_letter WHERE subject = 'org.elsewhere.took'}),
	qr/^3 stream "OTHER" took the event, not stream "STATEHUB"/,
	'case 9: after max_attempts, with a reason that names both streams');
StatehubTest::stream_holds_exactly($small, 'STATEHUB', \@good,
	'case 9: our stream');

done_testing();
