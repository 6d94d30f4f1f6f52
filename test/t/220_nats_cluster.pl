
# Copyright: statehub_events contributors
#
# Issue 10: a 3-node NATS JetStream cluster with an R3 stream, under a
# steady load of single-row transactions for the whole test.  The worker
# has every node in nats_url and stream_replicas = 3, and creates the
# stream R3.  Four failures, one after another:
#
#   1. SIGKILL of the node the worker is connected to; later its restart;
#   2. SIGKILL of the node that leads the stream; later its restart;
#   3. SIGSTOP of the node the worker is connected to (hung: it neither
#      answers nor refuses; found by a hostile review, delivery stopped for
#      as long as the node hung), later SIGCONT;
#   4. a rolling restart: SIGTERM, start, wait healthy, node by node.
#
# After each: every event drained so far is in the stream exactly once
# (by Nats-Msg-Id), the stream's order is the outbox's id order (the load
# is one session, so that is commit order, and with it each row's order),
# nothing was dead-lettered, no attempt was burnt, the status view is back
# to "connected".  At the end, with the load stopped, the stream holds
# exactly the committed events.  "The stream" is what a majority of its
# replicas holds, each replica read from its node's store; what a consumer
# reads (one replica) is checked too, and a replica that lacks what the
# others hold is reported (see check_stream).  The worker's DEBUG2 log
# records each event's answer, so a missing event is shown with it.
#
# What was committed and when each event left the outbox is recorded by
# test triggers (StatehubTest::audit_outbox), so the longest time an event waited in
# the outbox during each phase is printed (as a note; timings are not
# pass/fail here, bench/ measures).
#
# The load rate is STATEHUB_CLUSTER_RATE transactions/s (default 200):
# with three nats-servers, PostgreSQL and other tests sharing 2 cores,
# 200/s is sustained reliably; 1,000/s (the issue's figure) runs where the
# machine has the room: STATEHUB_CLUSTER_RATE=1000.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;
use Time::HiRes qw(time usleep);

my $rate = $ENV{STATEHUB_CLUSTER_RATE} // 200;
my $stream = 'STATEHUB';

my $cluster = StatehubTest::NatsCluster->new('c');
$cluster->start;

my $node = StatehubTest::new_node(
	'cluster',
	nats_url => $cluster->url,
	conf     => "statehub_events.stream_replicas = 3\n"
	  . "log_min_messages = debug2\n");
$node->safe_psql(
	'postgres', q{
CREATE TABLE t (id bigint PRIMARY KEY, kind int NOT NULL, status text NOT NULL);
CREATE SEQUENCE t_ids;
SELECT statehub_events.track_insert('t', 'org.statehub.test.created',
                                    ARRAY['id', 'kind']);
SELECT statehub_events.track_transition('t', 'status', 'done',
                                        'org.statehub.test.done', NULL,
                                        ARRAY['id', 'kind']);
});
StatehubTest::audit_outbox($node);

ok( StatehubTest::wait_for_status($node,
		"state = 'connected' AND stream = '$stream'"),
	'the worker connects to the cluster');
$node->safe_psql('postgres', q{INSERT INTO t VALUES (nextval('t_ids'), 0, 'new')});
ok(StatehubTest::wait_for_drain($node), 'a first event drains');
my $info = $cluster->stream_info($stream);
is($info->{config}{num_replicas}, 3, 'the worker created the stream R3');
ok($cluster->wait_healthy($stream), 'all three replicas are current');

# The load: one pgbench client, single-row transactions at $rate/s; one in
# five marks the newest row done (a second event of that row).
my $script_new = $node->basedir . '/load_new.sql';
my $script_done = $node->basedir . '/load_done.sql';
append_to_file($script_new,
	"\\set k random(1, 4)\n"
	  . "INSERT INTO t VALUES (nextval('t_ids'), :k, 'new');\n");
append_to_file($script_done,
	"UPDATE t SET status = 'done'\n"
	  . " WHERE id = (SELECT max(id) FROM t) AND status = 'new';\n");
my $load_started = time();
my $load = StatehubTest::start_load($node, $rate, "$script_new\@4",
	"$script_done\@1");
ok(wait_for_audit(100), 'the load runs');

# Wait (bounded) until every event queued so far left the outbox.
sub drain_to_now
{
	my ($what) = @_;
	my $upto = $node->safe_psql('postgres', 'SELECT max(id) FROM audit');
	my $ok = $node->poll_query_until('postgres',
		"SELECT NOT EXISTS (SELECT FROM audit WHERE id <= $upto AND gone_at IS NULL)");
	ok($ok, "$what: every event queued so far was published");
	return $ok;
}

sub wait_for_audit
{
	my ($n) = @_;
	return $node->poll_query_until('postgres',
		"SELECT count(*) >= $n FROM audit");
}

# Events go on flowing: $n more were queued and all of them published.
sub flowing
{
	my ($what, $n) = @_;
	my $from = $node->safe_psql('postgres', 'SELECT max(id) FROM audit');
	$node->poll_query_until('postgres',
		"SELECT count(*) >= $n FROM audit WHERE id > $from");
	return drain_to_now($what);
}

# The replicas of the stream, each read from its node's store on disk.
# A replica is sound when it holds every event of @$want (all that were
# published, or with $exact exactly those), each once, nothing that was not
# committed, in the outbox's id order.  Polls (bounded) until a majority
# of the replicas is sound, since a server writes its blocks out a moment
# after it stored a message.  Returns whether a majority is sound and, per
# node whose replica is not, what is wrong with it.
sub sound_replicas
{
	my ($want, $exact) = @_;
	my $majority = int(scalar($cluster->nodes) / 2) + 1;
	# a server writes its blocks out within milliseconds
	my $deadline = time() + 30;
	my $settling = 0;
	for (;;)
	{
		my %replica = map { $_->server_name => $_->replica_ids($stream) } $cluster->nodes;
		# read after the replicas: it knows every event they hold
		my $order = outbox_order();
		my ($sound, %wrong) = (0);
		foreach my $name (sort keys %replica)
		{
			my $ids = $replica{$name};
			my (%count, @twice, @unknown, $disorder);
			my $last = -1;
			foreach my $id (@$ids)
			{
				push @twice, $id if $count{$id}++;
				if (!exists $order->{$id}) { push @unknown, $id; next; }
				$disorder //= $id if $order->{$id} <= $last;
				$last = $order->{$id};
			}
			my @lacks = grep { !$count{$_} } @$want;
			my @why;
			push @why, scalar(@lacks) . " published events missing (e.g. $lacks[0])"
			  if @lacks;
			push @why, scalar(@twice) . " events twice (e.g. $twice[0])" if @twice;
			push @why, scalar(@unknown) . " events never committed (e.g. $unknown[0])"
			  if @unknown;
			push @why, "out of id order at $disorder" if defined $disorder;
			push @why, scalar(@$ids) . ' messages, not ' . scalar(@$want)
			  if $exact && !@why && @$ids != @$want;
			if (@why) { $wrong{$name} = join('; ', @why); }
			else      { $sound++; }
		}
		# a sound majority: give the others a moment to write out too
		$deadline = time() + 5 if $sound >= $majority && !$settling++;
		return ($sound >= $majority, %wrong)
		  if $sound == scalar(keys %replica) || time() >= $deadline;
		usleep(100_000);
	}
}

# The audit's ids by event id (the outbox's order, which is commit order).
sub outbox_order
{
	my %order;
	foreach (split /\n/, $node->safe_psql('postgres', 'SELECT event_id, id FROM audit'))
	{
		my ($event_id, $id) = split /\|/;
		$order{$event_id} = $id;
	}
	return \%order;
}

# What the stream holds is what was committed, once each, in id order.
#
# "The stream" is what a majority of its replicas holds: what JetStream
# acknowledges, it has stored on a majority.  So each replica is read from
# its store on disk (sound_replicas), and a majority must hold every event
# published so far, once each, in id order.  A consumer reads one replica
# (the node that leads the consumer): what it reads must hold nothing
# twice, nothing uncommitted, in id order; what it lacks is reported.  A
# replica that is not sound is reported too, as is the stream's own count
# when it is short (it is the leader's replica), and neither is the
# worker's doing: with nats-server 2.9.10 one replica lacked one event in
# several runs, each time after its node had been stopped (SIGSTOP) while
# it led the stream and let go again; the worker had the ack of the event
# (sequence N), and the two other replicas held it at sequence N (see
# docs/delivery.md, "A replica that lacks a message").
#
# With $exact (the load stopped, all drained): the stream holds exactly the
# committed events.
sub check_stream
{
	my ($what, $reader, $exact) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	# published before the stream is read, so all must be in it ...
	my @gone = @{ StatehubTest::audit_ids($node, $exact ? () : ('gone_at IS NOT NULL')) };
	my $msgs = $reader->consume($stream);
	# ... and everything in it was committed, by then
	my $order = outbox_order();

	my ($majority, %wrong) = sound_replicas(\@gone, $exact);
	ok($majority,
		"$what: a majority of the replicas holds "
		  . ($exact ? 'exactly the ' . scalar(@gone) . ' committed events' : 'every published event')
		  . ', once each, in id order') or explain_missing(@gone);
	diag("$what: the replica of $_ is not sound: $wrong{$_}") foreach sort keys %wrong;
	# the stream's own count is its leader's replica
	my $count = $exact ? $reader->stream_info($stream)->{messages} : undef;
	diag("$what: the stream's leader counts $count messages, not " . scalar(@gone))
	  if $exact && $count != @gone;

	my (%seen, @dups, @unknown);
	foreach my $m (sort { $a->{seq} <=> $b->{seq} } @$msgs)
	{
		my $id = $m->{headers}{'Nats-Msg-Id'} // '(none)';
		push @dups, $id if $seen{$id}++;
		push @unknown, $id unless exists $order->{$id};
	}
	is(scalar @dups, 0, "$what: a consumer reads no Nats-Msg-Id twice")
	  or diag("e.g. @dups[0 .. ($#dups < 4 ? $#dups : 4)]");
	is(scalar @unknown, 0,
		"$what: a consumer reads only committed events");
	my @unread = grep { !$seen{$_} } @gone;
	diag("$what: a consumer did not read " . scalar(@unread)
		  . ' published events: its replica lacks them')
	  if @unread;

	# the stream's order is the outbox's id order
	my @ids = map { $order->{ $_->{headers}{'Nats-Msg-Id'} // '' } // -1 }
	  sort { $a->{seq} <=> $b->{seq} } @$msgs;
	my $bad = 0;
	$bad++ while $bad < $#ids && $ids[$bad] < $ids[ $bad + 1 ];
	ok($bad >= $#ids, "$what: a consumer reads the outbox's id order")
	  or diag("out of order at stream position $bad: ids $ids[$bad], $ids[$bad + 1]");

	is($node->safe_psql('postgres',
			'SELECT count(*) FROM audit WHERE attempts > 0'),
		'0', "$what: no published event burnt an attempt");
	is($node->safe_psql('postgres',
			'SELECT count(*) FROM statehub_events.outbox WHERE attempts > 0'),
		'0', "$what: no queued event burnt an attempt");
	is(StatehubTest::dead_letter_count($node), 0,
		"$what: nothing was dead-lettered");
	return scalar @gone;
}

# For (up to 3) published events a majority of the replicas lacks: what
# JetStream answered the worker (its DEBUG2 log) and which replicas hold
# it, to tell an event the worker lost from replicas that lost it.
sub explain_missing
{
	my @want = @_;
	my $log = slurp_file($node->logfile);
	my %held;
	foreach my $n ($cluster->nodes)
	{
		push @{ $held{$_} }, $n->server_name foreach @{ $n->replica_ids($stream) };
	}
	my @missing = grep { @{ $held{$_} // [] } < 2 } @want;
	diag(scalar(@missing) . ' published events held by fewer than two replicas');
	foreach my $id (@missing[0 .. ($#missing < 2 ? $#missing : 2)])
	{
		my @answers = $log =~ /the answer to event \Q$id\E is "([^\n]*)"/g;
		diag("$id: answered @answers; held by: @{ $held{$id} // [] }");
	}
	return;
}

# Run one phase: the failure and its recovery in $body; then the checks.
my @report;

sub phase
{
	my ($what, $body) = @_;
	my $t0 = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
	$body->();
	drain_to_now($what);
	ok(StatehubTest::wait_for_worker_state($node, qr/^connected$/),
		"$what: the status view is back to connected");
	my $t1 = $node->safe_psql('postgres', 'SELECT clock_timestamp()');
	check_stream($what, $cluster->any_node);
	my ($n, $max) = split /\|/, $node->safe_psql(
		'postgres', qq{
SELECT count(*),
       round(extract(epoch FROM max(gone_at - queued_at)) * 1000)
  FROM audit WHERE queued_at BETWEEN '$t0' AND '$t1'});
	push @report, "$what: $n events, longest wait in the outbox $max ms";
	note($report[-1]);
	return;
}

phase(
	'connected node killed',
	sub {
		my $server = StatehubTest::worker_status($node)->{server};
		my $victim = $cluster->node_of_url($server);
		ok($victim, "the worker is connected to a node ($server)");
		my $log_offset = -s $node->logfile;
		$victim->kill9;
		ok( StatehubTest::wait_for_status($node,
				"state = 'connected' AND server <> '$server'"),
			'the worker connects to another node');
		like(substr(slurp_file($node->logfile), $log_offset),
			qr/statehub_events worker could not deliver events to NATS, retrying/,
			'the lost connection is logged');
		flowing('connected node down', 100);
		$victim->start;
		ok($cluster->wait_healthy($stream), 'the node is back and current');
	});

phase(
	'stream leader killed',
	sub {
		my $leader = $cluster->wait_for_stream_leader($stream);
		ok($leader, 'the stream has a leader (' . $leader->server_name . ')');
		$leader->kill9;
		my $new = $cluster->wait_for_stream_leader($stream, $leader);
		ok($new && $new != $leader, 'another node leads the stream');
		flowing('leader down', 100);
		$leader->start;
		ok($cluster->wait_healthy($stream), 'the old leader is back and current');
	});

phase(
	'connected node hung',
	sub {
		my $server = StatehubTest::worker_status($node)->{server};
		my $victim = $cluster->node_of_url($server);
		ok($victim, "the worker is connected to a node ($server)");
		$victim->freeze;
		ok( StatehubTest::wait_for_status($node,
				"state = 'connected' AND server <> '$server'"),
			'the worker leaves the hung node for another');
		flowing('connected node hung', 100);
		$victim->thaw;
		ok($cluster->wait_healthy($stream), 'the node answers again and is current');
	});

phase(
	'rolling restart',
	sub {
		foreach my $n ($cluster->nodes)
		{
			$n->stop;
			$n->start;
			ok($cluster->wait_healthy($stream),
				'restarted ' . $n->server_name . ', the cluster is healthy');
			flowing('restarted ' . $n->server_name, 50);
		}
	});

# The load stops; the stream then holds exactly what was committed.
StatehubTest::stop_load($load);
my $load_seconds = time() - $load_started;
ok(StatehubTest::wait_for_drain($node), 'the outbox drains once the load stops');
my $events = check_stream('the whole run', $cluster->any_node, 1);
diag(sprintf('load: %d transactions/s asked, %.0f/s done (%d events in %.0f s)',
		$rate, $events / $load_seconds, $events, $load_seconds));
diag($_) foreach @report;

$node->stop;
$cluster->stop;
done_testing();
