
# Copyright: statehub_events contributors
#
# Issue 9: the general poison guard.  An event that every scan-time check
# passes can still make the connection drop each time it is sent (a
# server or a middlebox that chokes on it).  Here a TCP relay between the
# worker and a real nats-server closes both sides whenever the worker's
# bytes hold a marker, before passing them on.  The event that carries it
# goes to the dead letters as suspected poison after POISON_LOSSES losses,
# by the same worker process; the innocent event published just before
# it, in the same batch, is delivered (a suspect goes out alone, so its
# own losses are the ones that count); everything before and after is in
# the stream exactly once, in order.
#
# The other side: when the connection is lost a while after the event went
# out (a hung server that a watchdog kills and restarts), the event is not
# poison, however often that happens: the relay then waits 800 ms before it
# drops, the event stays queued through more than 5 such losses, and is
# delivered once the relay lets it through.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use IO::Select;
use IO::Socket::INET;
use POSIX qw(_exit);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;
use Time::HiRes qw(usleep);

my $marker = 'CHOKE-ON-THIS';

my $nats = StatehubTest::Nats->new('poison_guard');
$nats->start;

# The relay: listens on a free loopback port, one upstream connection per
# client, both closed at once when the client sends the marker.
my $relay_dir = PostgreSQL::Test::Utils::tempdir;
my $drops_file = "$relay_dir/drops";
my $mode_file = "$relay_dir/mode";    # "fast", "slow" (800 ms) or "pass"
PostgreSQL::Test::Utils::append_to_file($mode_file, "fast\n");
my $listener = IO::Socket::INET->new(
	LocalAddr => '127.0.0.1',
	LocalPort => 0,
	Listen => 16,
	ReuseAddr => 1) or die "relay: cannot listen: $!";
my $relay_port = $listener->sockport;
my $relay_pid = fork() // die "fork: $!";
if ($relay_pid == 0)
{
	my $sel = IO::Select->new($listener);
	my %peer;
	my $drop = sub {
		my ($s) = @_;
		my $p = delete $peer{$s};
		delete $peer{$p} if $p;
		for my $x (grep { defined } $s, $p)
		{
			$sel->remove($x);
			close($x);
		}
	};
	while (1)
	{
		foreach my $s ($sel->can_read(1))
		{
			if ($s == $listener)
			{
				my $c = $listener->accept or next;
				my $u = IO::Socket::INET->new(
					PeerAddr => '127.0.0.1',
					PeerPort => $nats->port) or do { close($c); next };
				$peer{$c} = $u;
				$peer{$u} = $c;
				${*$c}{client} = 1;
				$sel->add($c, $u);
				next;
			}
			my $buf;
			my $n = sysread($s, $buf, 65536);
			if (!$n || !$peer{$s})
			{
				$drop->($s);
				next;
			}
			my $mode = PostgreSQL::Test::Utils::slurp_file($mode_file);
			if (${*$s}{client} && index($buf, $marker) >= 0 && $mode !~ /pass/)
			{
				select(undef, undef, undef, 0.8) if $mode =~ /slow/;
				open(my $f, '>>', $drops_file) or die;
				print $f "drop\n";
				close($f);
				$drop->($s);
				next;
			}
			my $off = 0;
			while ($off < length $buf)
			{
				my $w = syswrite($peer{$s}, $buf, length($buf) - $off, $off);
				last unless $w;
				$off += $w;
			}
		}
	}
	_exit(0);
}
close($listener);

my $node = StatehubTest::new_node('poison_guard',
	nats_url => "nats://127.0.0.1:$relay_port");
StatehubTest::track_table($node);

StatehubTest::insert_events($node, 1);
ok(StatehubTest::wait_for_drain($node), 'an event drains through the relay');
my @expected = map { $_->{headers}{'Nats-Msg-Id'} } @{ $nats->consume('STATEHUB') };
my $pid = StatehubTest::worker_status($node)->{pid};

# worker off while the three are queued, so they go out in one batch
StatehubTest::set_gucs($node, nats_url => '');
StatehubTest::wait_for_worker_state($node, 'disabled');
my ($innocent, $poison) = split /\n/, $node->safe_psql('postgres', qq{
BEGIN;
SELECT statehub_events.emit('org.statehub.test.created', '{"innocent": "first in the batch"}');
SELECT statehub_events.emit('org.statehub.test.created', '{"payload": "$marker"}');
COMMIT;});
push @expected, $innocent;
push @expected,
  $node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.created', '{"after": "the poison"}')});
StatehubTest::set_gucs($node, nats_url => "nats://127.0.0.1:$relay_port");

ok(StatehubTest::wait_for_drain($node, 60), 'the outbox drains past the poison event');
StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@expected, 'poison guard');

is( $node->safe_psql('postgres',
		q{SELECT event_id || ' ' || attempts FROM statehub_events.dead_letter}),
	"$poison 1",
	'only the event that chokes the connection is a dead letter');
like(
	$node->safe_psql('postgres', q{SELECT reason FROM statehub_events.dead_letter}),
	qr/^suspected poison: the connection to NATS was lost 5 times in a row/,
	'its reason says why');
my @drops = split /\n/, slurp_file($drops_file);
cmp_ok(scalar @drops, '>=', 5, 'the relay dropped the connection at least 5 times');
cmp_ok(scalar @drops, '<=', 7,
	'and not many more: the innocent event cost at most one more loss');
is(StatehubTest::worker_status($node)->{pid}, $pid, 'the same worker process throughout');
StatehubTest::wait_for_worker_state($node, 'connected');

# slow losses: not poison
open(my $mf, '>', $mode_file) or die;
print $mf "slow\n";
close($mf);
my $drops_before = scalar @drops;
my $slow = $node->safe_psql('postgres',
	qq{SELECT statehub_events.emit('org.statehub.test.created', '{"slow": "$marker"}')});
my $lost = 0;
foreach (1 .. 600)
{
	$lost = scalar(split /\n/, slurp_file($drops_file)) - $drops_before;
	last if $lost >= 7;
	usleep(100_000);
}
cmp_ok($lost, '>=', 7, 'slow losses: the connection was lost 7 times with the event first');
is($node->safe_psql('postgres', q{SELECT count(*) FROM statehub_events.dead_letter}),
	'1', 'slow losses: the event is not taken for poison');
open($mf, '>', $mode_file) or die;
print $mf "pass\n";
close($mf);
ok(StatehubTest::wait_for_drain($node, 60), 'slow losses: the event drains once it gets through');
push @expected, $slow;
StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@expected, 'after slow losses');

$node->stop;
kill 'KILL', $relay_pid;
waitpid($relay_pid, 0);
$nats->stop;
done_testing();
