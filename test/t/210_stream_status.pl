
# Copyright: statehub_events contributors
#
# Issue 12, items 7-9, with the real nats-server:
#  7. the stream is deleted while the worker is connected (stream_create =
#     on): the worker looks the stream up again, creates it again, and no
#     event is dead-lettered for it;
#  8. in a database the worker does not drain, the status view says so
#     (state and the drained database) and the documented health check is
#     false;
#  9. last_error stays with its time but is marked resolved once the worker
#     is connected again; per-event-type counters count published and
#     failed events, are readable by pg_monitor and reset by
#     reset_counters(), and beyond 1000 event types count the rest
#     together as (other).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;
use JSON::PP;
use Time::HiRes qw(time usleep);

my $nats = StatehubTest::Nats->new('stream_status');
$nats->start;
my $node = StatehubTest::new_node('stream_status', nats_url => $nats->url);
StatehubTest::track_table($node);

# The health check of docs/operations.md, as written there.
my $health_check = q{
SELECT state = 'connected'
       AND coalesce(oldest_queued_age, '0') < interval '1 min'
       AND dead_letters = 0
       AND NOT coalesce(dedup_window_exceeded, false) AS healthy
  FROM statehub_events.status};

StatehubTest::insert_events($node, 5);
ok(StatehubTest::wait_for_drain($node), 'the first events drain (the worker creates the stream)');
my $first = $nats->stream_info('STATEHUB');
is($first->{messages}, 5, 'the stream holds them');

# ---------------------------------------------------------------------------
# 7. the stream is deleted under the connected worker
# ---------------------------------------------------------------------------

my ($ok, $rc, $out, $err) = $nats->_run_client('-X', $nats->url, 'STATEHUB');
ok($ok, 'the stream is deleted while the worker is connected') or diag($err);
StatehubTest::insert_events($node, 10, 2);
ok(StatehubTest::wait_for_drain($node), 'the events queued after the delete drain');
is(StatehubTest::dead_letter_count($node), 0, 'no event is dead-lettered for the missing stream');
StatehubTest::insert_events($node, 3);
ok(StatehubTest::wait_for_drain($node), 'later events drain too');
is(StatehubTest::dead_letter_count($node), 0, 'still no dead letters');
$nats->wait_for_stream_count('STATEHUB', 13);
my $msgs = $nats->consume('STATEHUB');
my %ids = map { $_->{headers}{'Nats-Msg-Id'} => 1 } @$msgs;
is(scalar keys %ids, 13, 'the stream, created again, holds the 13 events once each');
is_deeply(
	[ sort { $a <=> $b } map { JSON::PP->new->utf8->decode($_->{body})->{attributes}{id} } @$msgs ],
	[ 6 .. 18 ], '... the rows inserted since the delete');
ok(StatehubTest::wait_for_worker_state($node, qr/^connected$/), 'the worker is connected');

# ---------------------------------------------------------------------------
# 8. a database the worker does not drain
# ---------------------------------------------------------------------------

$node->safe_psql('postgres', 'CREATE DATABASE scratch');
$node->safe_psql('scratch', 'CREATE EXTENSION statehub_events');
$node->safe_psql('scratch',
	q{SELECT statehub_events.emit('org.statehub.test.scratch', '{"n": 1}')});
is($node->safe_psql('scratch',
		q{SELECT state || '|' || drained_database || '|' || (pid IS NULL)::int FROM statehub_events.status}),
	'not draining this database|postgres|1',
	'status in another database: not draining it, and which database is drained');
is($node->safe_psql('scratch', $health_check), 'f',
	'the health check is false there');
is($node->safe_psql('postgres', $health_check), 't',
	'and true in the drained database');
is($node->safe_psql('postgres',
		'SELECT state || \'|\' || drained_database FROM statehub_events.status'),
	'connected|postgres', 'the drained database names itself');

# ---------------------------------------------------------------------------
# 9. last_error resolved; per-event-type counters
# ---------------------------------------------------------------------------

$nats->stop;
StatehubTest::insert_events($node, 2);
ok( StatehubTest::wait_for_status($node,
		q{state = 'backoff' AND last_error IS NOT NULL AND last_error_resolved_at IS NULL}),
	'NATS down: the last error is current (not resolved)');
$nats->start;
ok(StatehubTest::wait_for_drain($node), 'NATS back: the outbox drains');
ok( StatehubTest::wait_for_status($node,
		q{state = 'connected' AND last_error IS NOT NULL
		  AND last_error_resolved_at >= last_error_at}),
	'connected again: the last error is kept, with the time it was resolved');

# a server that hangs while nothing is published (third hostile review: the
# view said "connected" for minutes, until cnats' PING of every 2 minutes
# went unanswered twice): PINGs every 5 s notice it
$nats->freeze;
ok(StatehubTest::wait_for_status($node, q{state <> 'connected'}),
	'NATS hung while nothing is published: the worker notices');
$nats->thaw;
ok( StatehubTest::wait_for_status($node,
		q{state = 'connected' AND last_error_resolved_at IS NOT NULL}),
	'NATS answers again: connected');

# connection settings changed and reloaded: the worker connects anew, which
# is no lost connection (third hostile review: it said so, in last_error
# and the log)
my $error_at = $node->safe_psql('postgres', 'SELECT last_error_at FROM statehub_events.status');
my $reload_from = -s $node->logfile;
StatehubTest::set_gucs($node, nats_url => $nats->url . ',' . $nats->url);
my $reload_deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
usleep(50_000)
  until substr(slurp_file($node->logfile), $reload_from) =~ /because its connection settings changed/
  || time() > $reload_deadline;
ok( substr(slurp_file($node->logfile), $reload_from) =~ /because its connection settings changed/
	  && $node->poll_query_until('postgres', q{SELECT state = 'connected' FROM statehub_events.status}),
	'a reloaded nats_url: the worker connects anew');
is($node->safe_psql('postgres', 'SELECT last_error_at FROM statehub_events.status'),
	$error_at, '... and records no error');
unlike(substr(slurp_file($node->logfile), $reload_from), qr/could not deliver events/,
	'... and logs none');

# a row no server can take: dead at once, counted as failed for its type
$node->safe_psql('postgres', q{
INSERT INTO statehub_events.outbox (event_id, subject, payload)
VALUES (gen_random_uuid(), 'org.statehub.test.broken', 'not json');
SELECT statehub_events.wake_worker();
});
$node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.emitted', '{}') FROM generate_series(1, 4)});
ok(StatehubTest::wait_for_drain($node), 'the emitted events drain');
is(StatehubTest::dead_letter_count($node), 1, 'the broken row is a dead letter');

# a dead letter with nothing else going on: no rejected event waits for a
# retry, so its error is over at once, not at a next delivery that a quiet
# system may not have for hours
my $published = $node->safe_psql('postgres', 'SELECT published FROM statehub_events.status');
$node->safe_psql('postgres', q{
INSERT INTO statehub_events.outbox (event_id, subject, payload)
VALUES (gen_random_uuid(), 'org.statehub.test.broken', 'not json either');
SELECT statehub_events.wake_worker();
});
ok( $node->poll_query_until('postgres',
		'SELECT count(*) = 2 FROM statehub_events.dead_letter'),
	'a second broken row is a dead letter');
ok( StatehubTest::wait_for_status($node,
		q{last_error LIKE '%JSON%' AND last_error_resolved_at >= last_error_at}),
	'a dead letter alone: its error is resolved at once')
  or diag($node->safe_psql('postgres',
		'SELECT last_error, last_error_at, last_error_resolved_at FROM statehub_events.status'));
is($node->safe_psql('postgres', 'SELECT published FROM statehub_events.status'),
	$published, '... without a delivery in between');

# an event whose retry is still ahead keeps its rejection current, however
# much else is delivered meanwhile; once it is gone, the next delivery
# resolves it
$node->safe_psql('postgres', q{
INSERT INTO statehub_events.outbox (event_id, subject, payload)
VALUES (gen_random_uuid(), 'org.nostream.retrying', '{}');
SELECT statehub_events.wake_worker();
});
ok( StatehubTest::wait_for_status($node,
		q{last_error LIKE '%org.nostream.retrying%' AND last_error_resolved_at IS NULL}),
	'a rejected event: its error is current');
# (two rounds, one after the other: the first is reported by the time the
# second is delivered)
for my $n (1, 2)
{
	$node->safe_psql('postgres',
		q{SELECT statehub_events.emit('org.statehub.test.emitted', '{}')});
	ok( $node->poll_query_until('postgres',
			q{SELECT count(*) = 1 FROM statehub_events.outbox}),
		"other events are delivered meanwhile ($n)");
}
is($node->safe_psql('postgres', q{
SELECT last_error_resolved_at IS NULL FROM statehub_events.status}),
	't', 'its error stays current while it waits for its retry');
$published = $node->safe_psql('postgres', 'SELECT published FROM statehub_events.status');
$node->safe_psql('postgres',
	q{DELETE FROM statehub_events.outbox WHERE subject = 'org.nostream.retrying'});
# (third hostile review: the error stayed current until the next delivery,
# for good on a quiet system; the worker notices by the time its retry
# would have been due)
ok( StatehubTest::wait_for_status($node, q{
last_error LIKE '%org.nostream.retrying%' AND last_error_resolved_at >= last_error_at}),
	'the rejected event removed by hand: its error is resolved');
is($node->safe_psql('postgres', 'SELECT published FROM statehub_events.status'),
	$published, '... without a delivery');
my $emitted = 6;
my $counters = q{SELECT string_agg(event_type || '=' || published || '/' || failed, ' ' ORDER BY event_type)
                   FROM statehub_events.event_counters WHERE event_type <> 'org.nostream.retrying'};
# (counted just after the commit that empties the outbox)
ok( $node->poll_query_until('postgres', $counters,
		"org.statehub.test.broken=0/2 org.statehub.test.created=20/0 org.statehub.test.emitted=$emitted/0"),
	'per-event-type counters: published and failed since the worker started');
my $retrying = $node->safe_psql('postgres',
	q{SELECT failed FROM statehub_events.event_counters WHERE event_type = 'org.nostream.retrying'});
cmp_ok($retrying, '>=', 1, 'the rejections of the retrying event are counted');
is($node->safe_psql('postgres',
		'SELECT published || \'/\' || failed FROM statehub_events.status'),
	(20 + $emitted) . '/' . (2 + $retrying), 'they add up to the totals of the status view');

$node->safe_psql('postgres', 'CREATE ROLE oncall LOGIN IN ROLE pg_monitor; CREATE ROLE app LOGIN');
is($node->safe_psql('postgres', $counters, extra_params => [ '-U', 'oncall' ]),
	"org.statehub.test.broken=0/2 org.statehub.test.created=20/0 org.statehub.test.emitted=$emitted/0",
	'pg_monitor reads the counters');
my ($ret, $o, $e) = $node->psql('postgres', 'SELECT * FROM statehub_events.event_counters',
	extra_params => [ '-U', 'app' ]);
like($e, qr/permission denied/, 'a plain role does not');
($ret, $o, $e) = $node->psql('postgres', 'SELECT statehub_events.reset_counters()',
	extra_params => [ '-U', 'oncall' ]);
like($e, qr/permission denied for function reset_counters/, 'pg_monitor cannot reset them');

$node->safe_psql('postgres', 'SELECT statehub_events.reset_counters()');
is($node->safe_psql('postgres', 'SELECT count(*) FROM statehub_events.event_counters'),
	'0', 'reset_counters() empties the per-type counters');
is($node->safe_psql('postgres',
		'SELECT published || \'/\' || failed FROM statehub_events.status'),
	'0/0', '... and the totals');
StatehubTest::insert_events($node, 2);
ok(StatehubTest::wait_for_drain($node), 'events after the reset drain');
ok( $node->poll_query_until('postgres', $counters, 'org.statehub.test.created=2/0'),
	'and are counted from zero');

# more event types than the shared table holds: the rest count as (other)
$node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.t' || g, '{}') FROM generate_series(1, 1005) g});
ok(StatehubTest::wait_for_drain($node), '1005 events of as many types drain');
# (the counters are added to just after the commit that empties the outbox)
ok( $node->poll_query_until('postgres', q{
SELECT count(*) || '|' || count(*) FILTER (WHERE event_type = '(other)') || '|'
       || (sum(published) = (SELECT published FROM statehub_events.status)
           AND sum(published) = 1007)
  FROM statehub_events.event_counters}, '1001|1|true'),
	'1000 event types are counted one by one, the others together; the sums equal the totals');

$node->stop;
$nats->stop;
done_testing();
