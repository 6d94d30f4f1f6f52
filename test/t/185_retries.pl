
# Copyright: statehub_events contributors
#
# Retries of an event JetStream rejects (docs/delivery.md, "Outcomes per
# event"): the stream takes the subject but refuses the message (it is
# larger than the stream's max_msg_size, a JetStream error for this
# message).  Each rejection counts one attempt and schedules the next at
# retry_backoff_base x 2^(attempts - 1), at most retry_backoff_max; the
# other events go on; at max_attempts the event becomes a dead letter.
# The status view shows it meanwhile (retrying, last_error, last_error_at,
# then dead_letters).  Put back with retry_dead_letters() once the stream
# takes it, it keeps its id and arrives behind the events written since.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $base = 0.5;          # retry_backoff_base, s
my $max = 2;             # retry_backoff_max, s
my $max_attempts = 6;
my $slack = 0.9;         # how late a retry may come after its due time, s
                         # (below the smallest step the checks tell apart)

my $nats = StatehubTest::Nats->new('retries');
$nats->start;
my $stream_config = {
	name             => 'STATEHUB',
	subjects         => ['org.statehub.>'],
	storage          => 'file',
	max_msg_size     => 1024,
	duplicate_window => 120 * 1_000_000_000
};
my $reply = $nats->js_api('$JS.API.STREAM.CREATE.STATEHUB', $stream_config);
ok(!$reply->{error}, 'a stream that refuses messages over 1 kB is created')
  or diag explain $reply;

my $node = StatehubTest::new_node(
	'retries',
	nats_url => $nats->url,
	conf     => qq{
statehub_events.stream_create = off
statehub_events.retry_backoff_base = '${\ ($base * 1000)}ms'
statehub_events.retry_backoff_max = '${max}s'
statehub_events.max_attempts = $max_attempts
});
ok(StatehubTest::wait_for_worker_state($node, qr/^connected$/), 'the worker is connected');
is(StatehubTest::worker_status($node)->{dedup_window}, '00:02:00',
	"status: dedup_window is the existing stream's duplicate window, not the setting's 1 day");

sub emit
{
	my ($type, $attrs) = @_;
	return $node->safe_psql('postgres',
		"SELECT statehub_events.emit('$type', $attrs)");
}

my $before = emit('org.statehub.test.small', q{'{"n": 1}'});
my $big = emit('org.statehub.test.big', q{jsonb_build_object('blob', repeat('x', 2000))});
my $after = emit('org.statehub.test.small', q{'{"n": 2}'});

# Watch the rejected event from inside the server until it leaves the
# outbox: every (attempts, next_attempt_at) it goes through, and the status
# view while it is being retried.
my $bound = $PostgreSQL::Test::Utils::timeout_default;
my $seen = $node->safe_psql(
	'postgres', qq{
CREATE TEMP TABLE seen (attempts int, next_attempt_at timestamptz,
                        last_error text, retrying bigint);
DO \$\$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '$bound s';
	r record;
	last int := 0;
BEGIN
	LOOP
		SELECT o.attempts, o.next_attempt_at, o.last_error INTO r
		  FROM statehub_events.outbox o WHERE o.event_id = '$big';
		EXIT WHEN NOT FOUND OR clock_timestamp() > deadline;
		IF r.attempts > last THEN
			INSERT INTO seen
			SELECT r.attempts, r.next_attempt_at, r.last_error, s.retrying
			  FROM statehub_events.status s;
			last := r.attempts;
		END IF;
		PERFORM pg_sleep(0.005);
	END LOOP;
END
\$\$;
SELECT pg_catalog.json_agg(s ORDER BY s.attempts) FROM (
  SELECT attempts,
         extract(epoch FROM next_attempt_at - o.enqueued_at)::float8 AS due_after_enqueue,
         last_error, retrying
    FROM seen, (SELECT d.enqueued_at FROM statehub_events.dead_letter d
                 WHERE d.event_id = '$big') o) s;
});
my $steps = decode_json($seen || 'null') // [];
note(explain $steps);

is_deeply([ map { $_->{attempts} } @$steps ], [ 1 .. $max_attempts - 1 ],
	'the rejected event was retried with attempts 1 .. max_attempts - 1, then left the outbox');

# the due time of each attempt against the schedule: the first is base
# after the first publish (right after the commit), each next one the
# delay of its attempt after the previous due time (plus the moment the
# worker takes to retry)
my $prev = 0;
foreach my $st (@$steps)
{
	my $k = $st->{attempts};
	my $delay = $base * 2**($k - 1);
	$delay = $max if $delay > $max;
	my $gap = $st->{due_after_enqueue} - $prev;
	ok($gap >= $delay - 0.01 && $gap < $delay + $slack,
		sprintf('attempt %d: next attempt %.2f s after the previous due time, schedule says %.1f s',
			$k, $gap, $delay));
	$prev = $st->{due_after_enqueue};
}

like($steps->[0]{last_error} // '', qr/maximum|size/i,
	'the outbox row says why JetStream rejected it');
is(scalar(grep { $_->{retrying} == 1 } @$steps), scalar @$steps,
	'status: retrying = 1 while it waits');

is($node->safe_psql('postgres',
		"SELECT attempts || ' ' || (reason ~* 'maximum|size') FROM statehub_events.dead_letter WHERE event_id = '$big'"),
	"$max_attempts true", "at max_attempts ($max_attempts) it is a dead letter with the reason");
ok(StatehubTest::wait_for_status($node,
		q{last_error ~* 'maximum|size' AND abs(extract(epoch FROM last_error_at -
		    (SELECT failed_at FROM statehub_events.dead_letter))) < 1}, 10),
	'status: last_error is the rejection, last_error_at its time');
my $st = StatehubTest::worker_status($node);
is($st->{dead_letters}, 1, 'status: dead_letters = 1');
is($st->{retrying}, 0, 'status: retrying = 0 once it gave up');
ok(StatehubTest::wait_for_drain($node), 'the other events drained');
StatehubTest::stream_order_is(
	StatehubTest::stream_holds_exactly($nats, 'STATEHUB', [ $before, $after ],
		'around the rejected event'),
	[ $before, $after ], 'around the rejected event');

# --- a dead letter put back --------------------------------------------------

$stream_config->{max_msg_size} = -1;
$reply = $nats->js_api('$JS.API.STREAM.UPDATE.STATEHUB', $stream_config);
ok(!$reply->{error}, 'the stream now takes messages of any size') or diag explain $reply;
my $later = emit('org.statehub.test.small', q{'{"n": 3}'});
ok(StatehubTest::wait_for_drain($node), 'an event written since is delivered');
is($node->safe_psql('postgres', 'SELECT statehub_events.retry_dead_letters()'),
	1, 'retry_dead_letters() puts it back');
ok(StatehubTest::wait_for_drain($node), 'the put-back event drains');
my $msgs = StatehubTest::stream_holds_exactly($nats, 'STATEHUB',
	[ $before, $after, $later, $big ], 'after the retry');
StatehubTest::stream_order_is($msgs, [ $before, $after, $later, $big ],
	'the put-back event arrives behind the events written since');
is(decode_json($msgs->[-1]{body})->{id}, $big, 'it keeps its id in the envelope too');
is(StatehubTest::dead_letter_count($node), 0, 'no dead letters left');

done_testing();
