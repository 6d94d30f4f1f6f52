
# Copyright: statehub_events contributors
#
# Answers that are not JetStream acks, and a stream that never answers
# (hostile review, issue 13).
#
# 1. Something other than a stream answers on an event's subject (a
#    service subscribed to it, or anyone who can publish to the worker's
#    reply subjects).  Before: an answer that did not parse left the event
#    unanswered, published again about once a second for good, with no
#    reason anywhere; {"stream": ..., "seq": 0} and "seq": -1 or 1e3 were
#    taken for acks and the event deleted, stored nowhere.  Now an answer
#    that is no JetStream ack is a rejection (retried, then a dead letter
#    with a reason that quotes it), and sequence 0 is trouble of the stream:
#    the event is never deleted on it.
# 2. A stream edited to no_ack: every batch times out, the worker drops the
#    connection and connects again.  Before: the status view said the error
#    was resolved after each reconnect, and the log got four lines every
#    publish_timeout.  Now the error stays current until events are
#    delivered again, and the repeated drop is logged once.
# 3. Acks planted ahead of a publish (second hostile review): the reply
#    subjects named the batch by a counter, so anyone who saw one could
#    answer those of the next batches before they were published, and the
#    worker took the planted answers for acks: events the stream refused
#    were deleted, lost.  Reply subjects now carry a random token per batch.
#    Also: a "seq" past 64 bits or given twice, and a "duplicate" that is
#    not a boolean, are no acks.
# Third hostile review: an answer shaped like our stream's ack on a subject
# the stream does not cover is no ack (there it was the only answer, and
# the event was deleted); a quoted answer has its quotes escaped; a dead
# letter found while the stream does not answer leaves that error current.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use IO::Socket::INET;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;
use Time::HiRes qw(usleep time);

my $nats = StatehubTest::Nats->new('answers');
$nats->start;
my $node = StatehubTest::new_node(
	'answers',
	nats_url => $nats->url,
	conf => "statehub_events.max_attempts = 2\n");

# A process that answers every message on $subject with $answer.
sub start_responder
{
	my ($subject, $answer) = @_;
	my $ready = "$PostgreSQL::Test::Utils::tmp_check/responder.ready";
	unlink $ready;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		my $sock = IO::Socket::INET->new(
			PeerAddr => '127.0.0.1',
			PeerPort => $nats->port,
			Proto    => 'tcp') or POSIX::_exit(1);
		binmode $sock;
		$sock->autoflush(1);
		<$sock>;    # INFO
		print $sock qq{CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n}
		  . "SUB $subject 1\r\nPING\r\n";
		while (my $line = <$sock>)
		{
			if ($line =~ /^PONG/)
			{
				my $fh;
				open($fh, '>>', $ready) and print $fh "pong\n" and close($fh);
			}
			elsif ($line =~ /^PING/)
			{
				print $sock "PONG\r\n";
			}
			elsif ($line =~ /^H?MSG \S+ 1 (\S+) (?:\d+ )?(\d+)\r\n$/)
			{
				my ($reply, $total) = ($1, $2);
				my $skip = '';
				read($sock, $skip, $total + 2);
				my @out = ref $answer ? $answer->($reply) : ([ $reply, $answer ]);
				print $sock "PUB $_->[0] " . length($_->[1]) . "\r\n$_->[1]\r\n" foreach @out;
				if (ref $answer)
				{
					print $sock "PING\r\n";    # its PONG: all of it went out
					$answer = sub { () };        # once
				}
			}
		}
		POSIX::_exit(0);
	}
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	usleep(20_000) while !-e $ready && time() < $deadline;
	die "the responder did not start\n" unless -e $ready;
	return $pid;
}

sub stop_responder
{
	my ($pid) = @_;
	kill 'KILL', $pid;
	waitpid($pid, 0);
	return;
}

# Queue an event of $type by hand (emit() takes only the stream's subjects),
# with $payload (default {"k": 1}).
sub emit
{
	my ($type, $payload) = @_;
	$payload //= '{"k": 1}';
	my $id = $node->safe_psql('postgres', qq{
INSERT INTO statehub_events.outbox (event_id, subject, payload)
VALUES (gen_random_uuid(), '$type', '$payload') RETURNING event_id});
	$node->safe_psql('postgres', 'SELECT statehub_events.wake_worker()');
	return $id;
}

# Whether event $id became a dead letter (bounded poll).
sub wait_for_dead_letter
{
	my ($id) = @_;
	return $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM statehub_events.dead_letter WHERE event_id = '$id'");
}

# "attempts | reason" of dead letter $id.
sub dead_letter_reason
{
	my ($id) = @_;
	return $node->safe_psql('postgres',
		"SELECT attempts || ' | ' || reason FROM statehub_events.dead_letter WHERE event_id = '$id'");
}

# 1. answers that are no JetStream ack
my %answers = (
	'spoof.bigseq' => '{"stream": "STATEHUB", "seq": 99999999999999999999999}',
	'spoof.dupyes' => '{"stream": "STATEHUB", "seq": 5, "duplicate": "yes"}',
	'spoof.twoseq' => '{"stream": "STATEHUB", "seq": 0, "seq": 5}',
	'spoof.garbage' => 'this is not JSON',
	'spoof.negative' => '{"stream": "STATEHUB", "seq": -1}',
	'spoof.exponent' => '{"stream": "STATEHUB", "seq": 1e3}',
	'spoof.noseq' => '{"stream": "STATEHUB"}');
foreach my $subject (sort keys %answers)
{
	my $responder = start_responder($subject, $answers{$subject});
	my $id = emit($subject);
	ok(wait_for_dead_letter($id), "$subject: a dead letter after max_attempts");
	(my $quoted = $answers{$subject}) =~ s/(["\\])/\\$1/g;
	like(
		dead_letter_reason($id),
		qr/^2 \| the answer to the event is not a JetStream acknowledgement \("\Q$quoted\E"\)/,
		"$subject: the reason quotes the answer, its quotes escaped");
	stop_responder($responder);
}

# An answer that looks like our stream's ack, on a subject the stream does
# not cover (third hostile review): nothing else answers there, so the
# forged ack was the only answer, and the event was deleted, stored
# nowhere.  Now an ack of our stream for a subject it does not listen on
# is a rejection.
{
	my $forged = '{"stream":"STATEHUB","seq":999999}';
	my $responder = start_responder('spoof.plausible', $forged);
	my $before = $nats->stream_info('STATEHUB')->{last_seq};
	my $id = emit('spoof.plausible');
	ok(wait_for_dead_letter($id),
		'a forged ack on a subject the stream does not cover: a dead letter after max_attempts');
	(my $quoted = $forged) =~ s/(["\\])/\\$1/g;
	like(
		dead_letter_reason($id),
		qr/^2 \| an answer \("\Q$quoted\E"\) says stream "STATEHUB" stored the event, but that stream does not listen on subject "spoof\.plausible"/,
		'... with the reason');
	is($nats->stream_info('STATEHUB')->{last_seq}, $before, '... and the stream took nothing');
	stop_responder($responder);
}

# A subject added to the stream while the worker's copy of its subjects is
# older (fourth hostile review): the stream's real ack was a rejection
# against that copy, and with max_attempts = 1 a dead letter, although the
# stream held the event.  Now the first such ack only makes the worker look
# the subjects up again; the event goes out again and its ack is taken.
{
	StatehubTest::set_gucs($node, max_attempts => 1);
	my $cfg = $nats->js_api('$JS.API.STREAM.INFO.STATEHUB', {})->{config};
	my @subjects = @{ $cfg->{subjects} };
	$cfg->{subjects} = [ @subjects, 'spoof.added' ];
	$nats->js_api('$JS.API.STREAM.UPDATE.STATEHUB', $cfg);
	my $id = emit('spoof.added');
	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) = 0 FROM statehub_events.outbox WHERE event_id = '$id'"),
		'a subject just added to the stream: its event leaves the outbox');
	is( $node->safe_psql(
			'postgres',
			"SELECT count(*) FROM statehub_events.dead_letter WHERE event_id = '$id'"),
		'0', '... as delivered, not as a dead letter');
	my @held = grep { ($_->{headers}{'Nats-Msg-Id'} // '') eq $id }
	  @{ $nats->consume('STATEHUB', filter => 'spoof.added') };
	is(scalar @held, 1, '... and the stream holds it once');
	$cfg->{subjects} = \@subjects;
	$nats->js_api('$JS.API.STREAM.UPDATE.STATEHUB', $cfg);
	$nats->js_api('$JS.API.STREAM.PURGE.STATEHUB', {});
	StatehubTest::set_gucs($node, max_attempts => 2);
}

# Another stream's JetStream error for a subject ours does not cover
# (fourth hostile review): it was taken for trouble of our stream, so the
# event waited for good, with the worker in backoff and every other event
# late.  Now it is the event's own rejection.
{
	# (too small for any message: each is refused, "maximum bytes exceeded")
	$nats->js_api('$JS.API.STREAM.CREATE.OTHER',
		{ name => 'OTHER', subjects => ['other.p.>'], max_bytes => 1,
		  discard => 'new', storage => 'memory' });
	my $id = emit('other.p.x');
	ok(wait_for_dead_letter($id),
		"another stream's error: the event is a dead letter after max_attempts");
	like(
		dead_letter_reason($id),
		qr/^2 \| JetStream rejected the event: "maximum bytes exceeded"/,
		'... with its reason, the description quoted');
	ok(StatehubTest::wait_for_status($node, q{state = 'connected'}),
		'... and the worker is connected, not backing off');
	$nats->js_api('$JS.API.STREAM.DELETE.OTHER', {});
}

# sequence 0: never taken for an ack.  (From our stream, on a subject it
# covers, it is trouble of the stream: the event waits, no attempt burnt.
# Here the subject is not the stream's, so since the fourth hostile review
# the answer came from something else: the event's own rejection.)
my $responder = start_responder('spoof.zero', '{"stream": "STATEHUB", "seq": 0}');
my $zero = emit('spoof.zero');
my $t0;
ok(wait_for_dead_letter($zero),
	'seq 0 on a subject that is not the stream\'s: a dead letter, never deleted as delivered');
like(dead_letter_reason($zero), qr/sequence 0/, 'seq 0: the reason says why');
stop_responder($responder);
is($nats->stream_info('STATEHUB')->{messages}, 0, 'the stream holds none of them');

# 3. acks planted ahead of a publish.  A subscriber of an event's subject
# sees its reply subject (JetStream answers it) and answers, before the
# worker publishes them, the subjects it guesses the next batches will
# use: with a batch number in the subject, the next numbers.  Then the
# stream is full (max_msgs 1, discard new), so every real answer is an
# error and nothing may be deleted.
$nats->js_api('$JS.API.STREAM.PURGE.STATEHUB', {});
my $planted_ack = '{"stream": "STATEHUB", "seq": 7}';
my $planter = start_responder(
	'org.statehub.test.fill',
	sub {
		my ($reply) = @_;
		my ($prefix, $batch) = $reply =~ /^(.*)\.([^.]+)\.\d+$/ or return ();
		my @batches = $batch =~ /^\d+$/ ? map { $batch + $_ } 1 .. 10 : ($batch);
		return map {
			my $b = $_;
			map { [ "$prefix.$b.$_", $planted_ack ] } 0 .. 9
		} @batches;
	});
my $ready = "$PostgreSQL::Test::Utils::tmp_check/responder.ready";
my $fill = $node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.fill')});
my $until = time() + $PostgreSQL::Test::Utils::timeout_default;
usleep(20_000) while (() = slurp_file($ready) =~ /pong/g) < 2 && time() < $until;
cmp_ok((() = slurp_file($ready) =~ /pong/g), '>=', 2, 'planted: the acks are planted');
ok(StatehubTest::wait_for_drain($node), 'planted: the fill event drains');
$nats->wait_for_stream_count('STATEHUB', 1);
my $info = $nats->js_api('$JS.API.STREAM.INFO.STATEHUB', {})->{config};
$info->{max_msgs} = 1;
$info->{discard} = 'new';
$nats->js_api('$JS.API.STREAM.UPDATE.STATEHUB', $info);
my @full = map {
	$node->safe_psql('postgres',
		"SELECT statehub_events.emit('org.statehub.test.full', '{\"n\": $_}')")
} 1 .. 5;
ok( $node->poll_query_until(
		'postgres', q{SELECT last_error ~* 'maximum messages' FROM statehub_events.status}),
	'planted: the stream refuses the events (full)');
$t0 = time();
usleep(100_000) while time() - $t0 < 3;
my $full_list = join(',', map { "'$_'" } @full);
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM statehub_events.outbox WHERE event_id IN ($full_list)"),
	'5',
	'planted: no event deleted on a planted ack');
stop_responder($planter);
$info->{max_msgs} = -1;
$info->{discard} = 'old';
$nats->js_api('$JS.API.STREAM.UPDATE.STATEHUB', $info);
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 0 FROM statehub_events.outbox WHERE event_id IN ($full_list)"),
	'planted: the events drain once the stream takes them');
my $planted_msgs = StatehubTest::stream_holds_exactly($nats, 'STATEHUB', [ $fill, @full ], 'planted');
StatehubTest::stream_order_is($planted_msgs, [ $fill, @full ], 'planted');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM statehub_events.outbox'),
	'planted: the outbox drains');

# 2. a stream that never answers
$node->safe_psql('postgres', 'TRUNCATE statehub_events.dead_letter');
$nats->js_api('$JS.API.STREAM.PURGE.STATEHUB', {});
StatehubTest::set_gucs($node, publish_timeout => '1s');
my $config = $nats->js_api('$JS.API.STREAM.INFO.STATEHUB', {})->{config};
$config->{no_ack} = JSON::PP::true;
$nats->js_api('$JS.API.STREAM.UPDATE.STATEHUB', $config);
my $log_from = -s $node->logfile;
my @ids = map { emit('org.statehub.test.noack') } 1 .. 3;
my %error_times;
my $wrong = 0;
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
while (keys %error_times < 4 && time() < $deadline)
{
	# the errors of this part: the acks timed out (earlier parts' are past)
	my ($queued, $error_at, $resolved) = split /\|/, $node->safe_psql('postgres',
		q{SELECT queued, CASE WHEN last_error ~ 'timed out' THEN last_error_at END,
		         coalesce(last_error_resolved_at::text, '')
		    FROM statehub_events.status});
	if (defined $error_at && $error_at ne '')
	{
		$error_times{$error_at} = 1;
		$wrong++ if $queued > 0 && $resolved ne '';
	}
	usleep(50_000);
}
cmp_ok(scalar keys %error_times, '>=', 4, 'no_ack: the batch timed out again and again');
is($wrong, 0, 'no_ack: the error never looked resolved while events waited');
my $log = substr(slurp_file($node->logfile), $log_from);
my $drops = () = $log =~ /drops its connection to NATS server/g;
is($drops, 1, 'no_ack: the dropped connection is logged once');

# a dead letter found meanwhile (third hostile review): its own error is
# over at once, but it must not end the stream's, which is not over
my $broken = emit('org.statehub.test.noack', 'not json');
ok(wait_for_dead_letter($broken), 'no_ack: a broken row meanwhile is a dead letter');
is( $node->safe_psql(
		'postgres',
		q{SELECT last_error ~ 'timed out' AND last_error_resolved_at IS NULL
		    FROM statehub_events.status}),
	't',
	'no_ack: ... and the error of the stream stays current');

$config->{no_ack} = JSON::PP::false;
$nats->js_api('$JS.API.STREAM.UPDATE.STATEHUB', $config);
ok(StatehubTest::wait_for_drain($node), 'no_ack off: the events drain');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT last_error_resolved_at IS NOT NULL FROM statehub_events.status}),
	'no_ack off: and the error is resolved');
StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@ids, 'no_ack');

$node->stop;
$nats->stop;
done_testing();
