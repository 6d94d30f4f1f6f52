
# Copyright: statehub_events contributors

=pod

=head1 NAME

StatehubTest - real nats-server and PostgreSQL nodes for the TAP tests of
statehub_events

=head1 SYNOPSIS

  use FindBin;
  use lib $FindBin::RealBin;
  use StatehubTest;

  my $nats = StatehubTest::Nats->new('nats');      # free loopback port
  $nats->start;
  my $node = StatehubTest::new_node('main', nats_url => $nats->url);

  $node->safe_psql('postgres', q{SELECT statehub_events.emit('org.statehub.test.x')});
  StatehubTest::wait_for_drain($node);
  my $msgs = $nats->consume('STATEHUB');            # [ {subject, headers, body, ...} ]
  StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@event_ids, 'case name');

=head1 DESCRIPTION

Every server is real and started here: nats-server with JetStream on a free
loopback port (reserved through PostgreSQL::Test::Cluster::get_free_port, so
it never collides with a PostgreSQL node), with its own store directory under
the test's temporary directory; PostgreSQL through PostgreSQL::Test::Cluster
with statehub_events preloaded.  All waits are bounded polls, never fixed
sleeps; the bound is $PostgreSQL::Test::Utils::timeout_default seconds
unless a call says otherwise.

The stream is read back with test/nats_consume (built by "make"); see the
header of test/nats_consume.c for what it prints.

=head2 StatehubTest::Nats

=over

=item StatehubTest::Nats->new($name, %opts)

A nats-server, not yet started.  Options: C<user> and C<password>, or
C<token> (authorization); C<tls> => { cert => FILE, key => FILE } (the server
then requires TLS); C<max_payload> (bytes).  The port and the store
directory stay the same across stop/start, so a restart keeps the stream.

=item $nats->start / stop / kill9 / restart

start waits (bounded) until the server logs that it is ready and accepts
connections; stop sends SIGTERM and waits for the process to exit; kill9
sends SIGKILL.  A server still running when the test exits is killed.

=item $nats->url / port / host_url

C<nats://127.0.0.1:PORT> (C<tls://...> when TLS is on), without credentials.

=item $nats->client_args

The nats_consume options for this server's auth and TLS (used by the
methods below; override with C<< $nats->{client_args} = [...] >>).

=item $nats->freeze / thaw

SIGSTOP (a hung server: it neither answers nor refuses) and SIGCONT.

=item $nats->replica_ids($stream)

The Nats-Msg-Ids of the messages of $stream in this server's replica, in
sequence order, read from its message blocks on disk (what the server has
not written out yet is missing: poll).  A consumer reads one replica; this
tells what each replica of a clustered stream holds.

=item $nats->stream_info($stream)

Hash of nats_consume -i: C<exists>, C<messages>, C<first_seq>, C<last_seq>,
C<duplicate_window_us>, C<subjects>.

=item $nats->create_stream($stream, $subjects_csv, $dup_window_s)

Creates a file-storage stream (as a DBA would with the nats CLI).

=item $nats->js_api($subject, \%request)

One JetStream API request over a plain connection (no auth, no TLS),
spoken in the NATS protocol itself: publishes the request as JSON to
$subject (e.g. C<$JS.API.STREAM.CREATE.STATEHUB>) and returns the decoded
reply.  For what nats_consume cannot set up, e.g. a stream with a
C<max_msg_size>.

=item $nats->wait_for_stream_count($stream, $count, $timeout_s)

Polls until the stream holds at least $count messages; returns the last
count seen (compare it with what you expected).

=item $nats->consume($stream, %opts)

Reads every message the stream holds now (or with C<count> => N, follows it
until N arrived; C<filter> => SUBJECT; C<idle_ms>); returns an array ref of
hashes: subject, headers (hash), body (bytes, exactly as published),
received_at_us, seq.

=back

=head2 Functions

=over

=item new_node($name, %opts)

A started PostgreSQL::Test::Cluster node with
C<shared_preload_libraries = 'statehub_events'>,
C<statehub_events.database = 'postgres'>, C<statehub_events.nats_url> (opt
C<nats_url>, default empty), short retry backoffs (100 ms base, 1 s cap) so
outages heal quickly, and C<restart_after_crash = on>.  C<conf> => "extra
postgresql.conf lines"; C<init> => { options of PostgreSQL::Test::Cluster's
init, e.g. allows_streaming => 1 }.  The extension is created in database postgres
unless C<no_extension> => 1.

=item track_table($node)

Creates table C<t (id int PRIMARY KEY, status text)> and tracks its inserts
as C<org.statehub.test.created>.

=item insert_events($node, $n, $per_transaction)

Inserts $n new rows into C<t> (ids continue from the last call), in
transactions of $per_transaction rows (default: one transaction): $n events
through the capture trigger.

=item set_gucs($node, name => value, ...)

Appends C<statehub_events.NAME = 'VALUE'> to postgresql.conf and reloads (not
ALTER SYSTEM: the TAP clusters log every statement, and secrets must only
ever reach the server through its configuration files).

=item worker_status($node)

Hash of the status view's row (pid, state, server, stream, queued, ...).

=item wait_for_worker_state($node, qr/regexp/)

Polls the status view until the worker's state matches; returns true/false.

=item wait_for_drain($node, $timeout_s)

Polls until the outbox is empty; returns true/false.

=item outbox_count($node) / dead_letter_count($node)

=item outbox_ids($node)

The event ids in the outbox, in drain order (array ref).

=item wait_until_outbox_below($node, $count)

Polls inside the server (every millisecond, bounded) until the outbox holds
fewer than $count events; returns the count it saw.  Used to act in the
middle of a drain: kill NATS, the worker or the postmaster the moment the
first batches are gone.

=item queue_then_start_drain($node, $case, $n, $nats_url)

With the worker disabled (nats_url empty), queues $n events in
transactions of 1000 rows; then sets nats_url to $nats_url and returns
once the first batches are gone (the middle of the drain).  Returns the
queued ids (array ref, in id order) and the outbox count it saw then.

=item start_load($node, $rate, @scripts)

Starts pgbench in the background: one client, C<$rate> transactions/s of
the given script files (C<FILE@WEIGHT> allowed) into database postgres, for
up to an hour.  Returns the IPC::Run harness for stop_load, or let it
fail with its server.

=item stop_load($harness)

Stops that pgbench with SIGTERM (pgbench ignores SIGINT while it runs
transactions) and waits for it.  A transaction it was in the middle of
is rolled back, or committed if its COMMIT had been sent.

=item audit_outbox($node, $table)

Test triggers that record in table C<public.audit (id, event_id,
queued_at, gone_at, attempts)> every event the tracked $table (default
C<t>) queues, with the time (a row trigger on $table that fires after the
capture triggers, whose names sort first, and reads the outbox row just
queued: capture fires no trigger on the outbox), and, when the worker
deletes the event after its ack, the time and its attempts (a trigger on
the outbox: the worker's deletes fire them).  A committed event keeps its
row, so the table is "every committed event", also on a standby, where
it is replicated.

=item audit_ids($node, $where)

The audited event ids (matching the SQL condition $where, if given), in
id order (array ref).

=item outbox_events($node)

The queued events in drain order: array ref of hashes event_id, subject,
payload (bytes, exactly as stored), attempts.

=item stream_holds_exactly($nats, $stream, \@event_ids, $name)

The exactly-once check: waits until the stream holds as many messages as
@event_ids, reads them all back and asserts (as several tests, each named
after $name) that the stream's message count equals the number of ids,
that no Nats-Msg-Id appears twice, and that the set of Nats-Msg-Ids equals
@event_ids.  Returns the messages.

=item stream_order_is($msgs, \@event_ids, $name)

Asserts that the messages (as consume returns them), taken in stream
sequence order, carry exactly @event_ids as Nats-Msg-Ids in that order:
the stream's order is the outbox's id order (pass the ids in id order).

=item wait_for_status($node, $condition, $timeout_s)

Polls until the SQL boolean $condition over the status view's columns is
true (e.g. C<"server LIKE '%:4222' AND state = 'backoff'">); returns
true/false and on failure shows the last status row.

=item make_tls_files($dir)

Generates with openssl a CA and a server certificate for 127.0.0.1 and
localhost signed by it; returns { ca => FILE, cert => FILE, key => FILE }.

=back

=head2 StatehubTest::NatsCluster

=over

=item StatehubTest::NatsCluster->new($name, size => 3)

A JetStream cluster of StatehubTest::Nats nodes (C<< ->nodes >>), not yet
started: each its own process, store, client port and route port, its own
C<server_name> (C<statehub_test_${name}_nN>), one C<cluster.name>, routes
to the others on loopback.  Every node keeps its ports across restarts.
Each node is an ordinary StatehubTest::Nats: C<kill9>, C<stop> (SIGTERM),
C<start>, C<url>, C<running>.

=item $cluster->start / stop

start starts every node and waits until each answers JetStream requests
(a meta leader was elected); stop sends SIGTERM to the running ones.

=item $cluster->url

Every node's URL, comma-separated (what nats_url takes).

=item $cluster->node_of_url($url) / node_by_server_name($name)

The node a status view's C<server> column names, or the one with this
C<server_name>.

=item $cluster->try_js_api($subject, \%request, $node)

js_api on $node (default: the first running node) with a 2 s bound;
undef when no answer came (a cluster electing a leader may not answer).

=item $cluster->stream_info($stream, $node)

The reply of C<$JS.API.STREAM.INFO.$stream>, or undef.

=item $cluster->stream_leader($stream) / wait_for_stream_leader($stream, $not)

The node that leads the stream (its C<cluster.leader>), or undef; the
second polls (bounded) until there is one (other than node $not).

=item $cluster->wait_for_jetstream / wait_healthy($stream)

Poll (bounded) until every running node answers C<$JS.API.INFO>; and
until, asked of every running node, the stream has a leader and all its
other replicas are current and online (a restarted node caught up).

=back

=cut

package StatehubTest;

use strict;
use warnings;

use Carp;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use IPC::Run;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

our $bindir = abs_path(dirname(__FILE__) . '/..');
our $consume_bin = "$bindir/nats_consume";
our $publish_raw_bin = "$bindir/nats_publish_raw";

my $json = JSON::PP->new->utf8;

sub _bound { return $_[0] // $PostgreSQL::Test::Utils::timeout_default; }

sub nats_server_bin
{
	return $ENV{NATS_SERVER} if $ENV{NATS_SERVER};
	foreach my $dir (split(/:/, $ENV{PATH} // ''), '/usr/sbin', '/usr/local/bin',
		'/usr/bin')
	{
		return "$dir/nats-server" if -x "$dir/nats-server";
	}
	BAIL_OUT('nats-server not found: install the Debian package nats-server '
		  . '(scripts/test does) or set NATS_SERVER');
}

sub new_node
{
	my ($name, %opts) = @_;

	-x $consume_bin or BAIL_OUT("$consume_bin is missing: run make first");

	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%{ $opts{init} // {} });
	my $url = $opts{nats_url} // '';
	$node->append_conf(
		'postgresql.conf', qq{
shared_preload_libraries = 'statehub_events'
statehub_events.database = 'postgres'
statehub_events.nats_url = '$url'
statehub_events.retry_backoff_base = '100ms'
statehub_events.retry_backoff_max = '1s'
restart_after_crash = on
} . ($opts{conf} // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION statehub_events')
	  unless $opts{no_extension};
	return $node;
}

sub track_table
{
	my ($node) = @_;
	$node->safe_psql(
		'postgres', q{
CREATE TABLE t (id int PRIMARY KEY, status text);
SELECT statehub_events.track_insert('t', 'org.statehub.test.created');
});
	$node->{statehub_next_id} = 1;
	return;
}

sub insert_events
{
	my ($node, $n, $per) = @_;
	my $sql = '';
	$per //= $n;
	while ($n > 0)
	{
		my $k = $n < $per ? $n : $per;
		my $first = $node->{statehub_next_id};
		my $last = $first + $k - 1;
		$sql .= "INSERT INTO t SELECT g, 'new' FROM generate_series($first, $last) g;\n";
		$node->{statehub_next_id} += $k;
		$n -= $k;
	}
	$node->safe_psql('postgres', $sql);
	return;
}

sub set_gucs
{
	my ($node, %gucs) = @_;
	my $lines = '';

	foreach my $name (sort keys %gucs)
	{
		(my $value = $gucs{$name}) =~ s/'/''/g;
		$lines .= "statehub_events.$name = '$value'\n";
	}
	$node->append_conf('postgresql.conf', $lines);
	$node->reload;
	return;
}

sub worker_status
{
	my ($node) = @_;
	my @cols = qw(pid state server stream queued retrying dead_letters
	  published failed last_error last_error_at last_publish_at dedup_window);
	my $row = $node->safe_psql('postgres',
		    'SELECT pg_catalog.json_build_object('
		  . join(', ', map { "'$_', $_" } @cols)
		  . ') FROM statehub_events.status');
	return $json->decode($row);
}

sub wait_for_worker_state
{
	my ($node, $re, $timeout) = @_;
	my $deadline = time() + _bound($timeout);
	my $st;

	while (time() < $deadline)
	{
		$st = worker_status($node);
		return 1 if defined $st->{state} && $st->{state} =~ $re;
		usleep(50_000);
	}
	diag("worker state never matched $re; last: " . $json->encode($st));
	return 0;
}

sub outbox_count
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		'SELECT count(*) FROM statehub_events.outbox');
}

sub dead_letter_count
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		'SELECT count(*) FROM statehub_events.dead_letter');
}

sub wait_for_drain
{
	my ($node, $timeout) = @_;
	my $deadline = time() + _bound($timeout);

	while (time() < $deadline)
	{
		return 1 if outbox_count($node) == 0;
		usleep(50_000);
	}
	diag('outbox still holds ' . outbox_count($node) . ' events');
	return 0;
}

sub outbox_ids
{
	my ($node) = @_;
	return [ split /\n/,
		$node->safe_psql('postgres',
			'SELECT event_id FROM statehub_events.outbox ORDER BY id') ];
}

sub wait_until_outbox_below
{
	my ($node, $count) = @_;
	my $bound = $PostgreSQL::Test::Utils::timeout_default;
	return $node->safe_psql(
		'postgres', qq{
DO \$\$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '$bound s';
BEGIN
	WHILE clock_timestamp() < deadline
		AND (SELECT count(*) FROM statehub_events.outbox) >= $count
	LOOP
		PERFORM pg_sleep(0.001);
	END LOOP;
END
\$\$;
SELECT count(*) FROM statehub_events.outbox;
});
}

sub queue_then_start_drain
{
	my ($node, $case, $n, $nats_url) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	set_gucs($node, nats_url => '');
	ok(wait_for_worker_state($node, qr/^disabled$/),
		"$case: worker disabled while the events are queued");
	insert_events($node, $n, 1000);
	my $ids = outbox_ids($node);
	is(scalar @$ids, $n, "$case: $n events queued");

	set_gucs($node, nats_url => $nats_url);
	my $left = wait_until_outbox_below($node, $n);
	return ($ids, $left);
}

sub start_load
{
	my ($node, $rate, @scripts) = @_;
	my ($out, $err) = ('', '');
	return IPC::Run::start(
		[
			'pgbench', '-n', '-h', $node->host, '-p', $node->port,
			'-R', $rate, '-T', 3600, (map { ('-f', $_) } @scripts), 'postgres'
		],
		'>', \$out, '2>', \$err);
}

sub stop_load
{
	my ($harness) = @_;
	$harness->signal('TERM');
	$harness->finish;
	return;
}

sub audit_outbox
{
	my ($node, $table) = @_;
	$table //= 't';
	$node->safe_psql(
		'postgres', qq{
CREATE TABLE public.audit (id bigint PRIMARY KEY, event_id uuid NOT NULL,
                           queued_at timestamptz NOT NULL,
                           gone_at timestamptz, attempts int);
CREATE FUNCTION public.audit_queued() RETURNS trigger LANGUAGE plpgsql AS \$\$
DECLARE
	last bigint := pg_catalog.currval('statehub_events.outbox_id_seq');
BEGIN
	INSERT INTO public.audit (id, event_id, queued_at)
	SELECT o.id, o.event_id, pg_catalog.clock_timestamp()
	  FROM statehub_events.outbox o
	 WHERE o.id OPERATOR(pg_catalog.=) last
	ON CONFLICT DO NOTHING;
	RETURN NULL;
END \$\$;
CREATE FUNCTION public.audit_gone() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
	UPDATE public.audit
	   SET gone_at = pg_catalog.clock_timestamp(), attempts = OLD.attempts
	 WHERE id OPERATOR(pg_catalog.=) OLD.id;
	RETURN NULL;
END \$\$;
CREATE TRIGGER zz_audit_queued AFTER INSERT OR UPDATE ON $table
	FOR EACH ROW EXECUTE FUNCTION public.audit_queued();
CREATE TRIGGER audit_gone AFTER DELETE ON statehub_events.outbox
	FOR EACH ROW EXECUTE FUNCTION public.audit_gone();
});
	return;
}

sub audit_ids
{
	my ($node, $where) = @_;
	$where = defined $where ? "WHERE $where" : '';
	return [ split /\n/,
		$node->safe_psql('postgres',
			"SELECT event_id FROM public.audit $where ORDER BY id") ];
}

sub outbox_events
{
	my ($node) = @_;
	my $out = $node->safe_psql('postgres',
		q{SELECT event_id, subject, attempts,
		         pg_catalog.encode(pg_catalog.convert_to(payload, 'UTF8'), 'hex')
		    FROM statehub_events.outbox ORDER BY id});
	my @events;
	foreach my $line (split /\n/, $out)
	{
		my ($id, $subject, $attempts, $hex) = split /\|/, $line;
		push @events,
		  {
			event_id => $id,
			subject  => $subject,
			attempts => $attempts,
			payload  => pack('H*', $hex)
		  };
	}
	return \@events;
}

sub stream_holds_exactly
{
	my ($nats, $stream, $ids, $name) = @_;
	my $n = scalar @$ids;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	$nats->wait_for_stream_count($stream, $n);
	my $info = $nats->stream_info($stream);
	is($info->{messages}, $n, "$name: stream holds $n messages");

	my $msgs = $nats->consume($stream);
	my %seen;
	$seen{ $_->{headers}{'Nats-Msg-Id'} // '(none)' }++ foreach @$msgs;
	my @dups = grep { $seen{$_} > 1 } sort keys %seen;
	is_deeply(\@dups, [], "$name: no Nats-Msg-Id in the stream twice");
	is_deeply([ sort keys %seen ], [ sort @$ids ],
		"$name: the stream's Nats-Msg-Ids are exactly the committed event ids");
	return $msgs;
}

sub stream_order_is
{
	my ($msgs, $ids, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my @by_seq = sort { $a->{seq} <=> $b->{seq} } @$msgs;
	my @got = map { $_->{headers}{'Nats-Msg-Id'} // '(none)' } @by_seq;
	my $first_diff = 0;
	$first_diff++
	  while $first_diff < @got
	  && $first_diff < @$ids
	  && $got[$first_diff] eq $ids->[$first_diff];
	my $ok = ok(@got == @$ids && $first_diff == @got,
		"$name: the stream holds the events in id order");
	diag("first difference at stream position $first_diff of "
		  . scalar(@got) . " (expected " . scalar(@$ids) . " ids)")
	  unless $ok;
	return $ok;
}

sub wait_for_status
{
	my ($node, $cond, $timeout) = @_;
	my $deadline = time() + _bound($timeout);

	while (time() < $deadline)
	{
		return 1
		  if $node->safe_psql('postgres',
			"SELECT ($cond) FROM statehub_events.status") eq 't';
		usleep(50_000);
	}
	diag("status never satisfied: $cond; last: "
		  . $json->encode(worker_status($node)));
	return 0;
}

sub make_tls_files
{
	my ($dir) = @_;
	my %f = (
		ca     => "$dir/ca.pem",
		ca_key => "$dir/ca-key.pem",
		cert   => "$dir/server.pem",
		key    => "$dir/server-key.pem",
		csr    => "$dir/server.csr",
		ext    => "$dir/server.ext");

	append_to_file($f{ext},
		"subjectAltName = IP:127.0.0.1, DNS:localhost\n"
		  . "extendedKeyUsage = serverAuth\n");
	my @cmds = (
		[
			'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
			'-keyout', $f{ca_key}, '-out', $f{ca}, '-days', '2',
			'-subj', '/CN=statehub test CA'
		],
		[
			'openssl', 'req', '-newkey', 'rsa:2048', '-nodes',
			'-keyout', $f{key}, '-out', $f{csr},
			'-subj', '/CN=127.0.0.1'
		],
		[
			'openssl', 'x509', '-req', '-in', $f{csr}, '-CA', $f{ca},
			'-CAkey', $f{ca_key}, '-CAcreateserial', '-out', $f{cert},
			'-days', '2', '-extfile', $f{ext}
		]);
	foreach my $cmd (@cmds)
	{
		my ($out, $err);
		IPC::Run::run($cmd, '>', \$out, '2>', \$err)
		  or BAIL_OUT("@$cmd failed: $err");
	}
	return { ca => $f{ca}, cert => $f{cert}, key => $f{key} };
}

package StatehubTest::Nats;

use strict;
use warnings;

use Carp;
use IO::Socket::INET;
use IPC::Run;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my @running;

sub new
{
	my ($class, $name, %opts) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir("nats_$name");
	my $self = bless {
		name => $name,
		dir  => $dir,
		port => PostgreSQL::Test::Cluster::get_free_port(),
		pid  => undef,
		%opts
	}, $class;
	mkdir "$dir/store";
	return $self;
}

# Handing out the port (or the URL) promises it: from then on a failed bind
# is retried on the same port rather than a new one.
sub port { $_[0]->{port_given} = 1; return $_[0]->{port}; }

sub url
{
	my ($self) = @_;
	$self->{port_given} = 1;
	my $scheme = $self->{tls} ? 'tls' : 'nats';
	return "$scheme://127.0.0.1:$self->{port}";
}

sub logfile { return "$_[0]->{dir}/nats.log"; }

sub server_name { return "statehub_test_$_[0]->{name}"; }

sub running { return defined $_[0]->{pid}; }

sub client_args
{
	my ($self) = @_;
	return @{ $self->{client_args} } if $self->{client_args};
	my @a;
	push @a, '-u', $self->{user}, '-p', $self->{password} if defined $self->{user};
	push @a, '-k', $self->{token} if defined $self->{token};
	push @a, '-C', $self->{tls}{ca} if $self->{tls};
	return @a;
}

sub _write_config
{
	my ($self) = @_;
	my $q = sub { my $v = shift; $v =~ s/(["\\])/\\$1/g; return "\"$v\""; };
	my $conf = "listen: 127.0.0.1:$self->{port}\n"
	  . "server_name: " . $q->($self->server_name) . "\n"
	  . "jetstream {\n  store_dir: " . $q->("$self->{dir}/store") . "\n}\n";
	if (my $c = $self->{cluster})
	{
		$conf .= "cluster {\n  name: " . $q->($c->{name})
		  . "\n  listen: 127.0.0.1:$self->{route_port}\n  routes: ["
		  . join(', ', map { $q->("nats-route://127.0.0.1:$_") } @{ $c->{routes} })
		  . "]\n}\n";
	}
	$conf .= "max_payload: $self->{max_payload}\n" if $self->{max_payload};
	if (defined $self->{user})
	{
		$conf .= "authorization {\n  user: " . $q->($self->{user})
		  . "\n  password: " . $q->($self->{password}) . "\n}\n";
	}
	elsif (defined $self->{token})
	{
		$conf .= "authorization {\n  token: " . $q->($self->{token}) . "\n}\n";
	}
	if ($self->{tls})
	{
		$conf .= "tls {\n  cert_file: " . $q->($self->{tls}{cert})
		  . "\n  key_file: " . $q->($self->{tls}{key})
		  . "\n  timeout: 5\n}\n";
	}
	my $file = "$self->{dir}/nats.conf";
	open my $fh, '>', $file or die "could not write $file: $!";
	print $fh $conf;
	close $fh;
	return $file;
}

# The text of file $1 from byte $2 on; a file that does not exist yet reads
# as empty (a child may not have created it).
sub _read_from
{
	my ($file, $offset) = @_;
	return '' unless -e $file;
	return slurp_file($file, $offset);
}

# Start the server and wait (bounded) until it logs that it is ready and
# accepts connections.  The log file is created here, before the fork, so a
# read never races the child's open.  A port that was free when picked but
# is taken at bind time (another process won it in between) gets a new port
# and another try, but only before the first successful start: a restart
# keeps its port, since clients were told that one.
sub start
{
	my ($self) = @_;
	croak "nats-server $self->{name} already running" if $self->{pid};

	for my $try (1 .. 5)
	{
		my $outcome = $self->_start_once;
		if ($outcome eq 'ready')
		{
			$self->{started_once} = 1;
			return;
		}
		if ($self->{started_once} || $self->{port_given})
		{
			note("nats-server $self->{name}: port $self->{port} taken at bind "
				  . "time; trying it again");
			usleep(500_000);
			next;
		}
		note("nats-server $self->{name}: port $self->{port} taken at bind time; "
			  . "trying another port");
		$self->{port} = PostgreSQL::Test::Cluster::get_free_port();
	}
	croak("nats-server $self->{name} could not start: port "
		  . "$self->{port} in use\n" . _read_from($self->logfile, 0));
}

# One start attempt: 'ready', or 'port in use' when the server exited
# because its port was taken; any other failure bails out with the log.
sub _start_once
{
	my ($self) = @_;
	my $conf = $self->_write_config;
	my $bin = StatehubTest::nats_server_bin();
	my $log = $self->logfile;
	my $offset = -s $log // 0;
	open my $touch, '>>', $log or die "could not create $log: $!";
	close $touch;

	my $pid = fork();
	die "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		open STDIN,  '<',  '/dev/null';
		open STDOUT, '>>', $log;
		open STDERR, '>&', \*STDOUT;
		exec($bin, '-c', $conf) or POSIX::_exit(127);
	}
	$self->{pid} = $pid;
	push @running, $self;
	note("started nats-server $self->{name} (pid $pid) on port $self->{port}");

	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		if (waitpid($pid, WNOHANG) == $pid)
		{
			$self->{pid} = undef;
			@running = grep { $_ != $self } @running;
			my $text = _read_from($log, $offset);
			return 'port in use' if $text =~ /address already in use/i;
			croak("nats-server $self->{name} exited at start:\n$text");
		}
		my $text = _read_from($log, $offset);
		if ($text =~ /Server is ready/)
		{
			my $sock = IO::Socket::INET->new(
				PeerAddr => '127.0.0.1',
				PeerPort => $self->{port},
				Proto    => 'tcp');
			if ($sock)
			{
				close $sock;
				return 'ready';
			}
		}
		usleep(20_000);
	}
	croak("nats-server $self->{name} did not become ready within "
		  . "$PostgreSQL::Test::Utils::timeout_default s; its log:\n"
		  . _read_from($log, $offset));
}

sub _signal_and_wait
{
	my ($self, $sig) = @_;
	my $pid = $self->{pid};
	return unless $pid;

	kill $sig, $pid;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		if (waitpid($pid, WNOHANG) == $pid)
		{
			$self->{pid} = undef;
			@running = grep { $_ != $self } @running;
			note("nats-server $self->{name} stopped with SIG$sig");
			return;
		}
		usleep(20_000);
	}
	BAIL_OUT("nats-server $self->{name} (pid $pid) did not exit on SIG$sig");
}

sub stop  { $_[0]->_signal_and_wait('TERM'); return; }
sub kill9 { $_[0]->_signal_and_wait('KILL'); return; }

# A hung server: stopped with SIGSTOP (it neither answers nor refuses),
# and let go again with SIGCONT.
sub freeze { kill 'STOP', $_[0]->{pid} if $_[0]->{pid}; return; }
sub thaw   { kill 'CONT', $_[0]->{pid} if $_[0]->{pid}; return; }

# The Nats-Msg-Ids of the messages of $stream in this server's replica, in
# sequence order, read from its message blocks on disk (plain file storage:
# a block holds its messages' headers as published, in sequence order).
# What a server has not yet written out is missing: poll.
sub replica_ids
{
	my ($self, $stream) = @_;
	my $dir = "$self->{dir}/store/jetstream/\$G/streams/$stream/msgs";
	my @ids;
	opendir(my $dh, $dir) or return [];
	my @blocks = sort { $a <=> $b } map { /^(\d+)\.blk$/ ? $1 : () } readdir($dh);
	closedir($dh);
	foreach my $blk (@blocks)
	{
		my $data = slurp_file("$dir/$blk.blk");
		push @ids, $1 while $data =~ /Nats-Msg-Id:[ \t]*([0-9a-f-]{36})\r\n/g;
	}
	return \@ids;
}

sub restart
{
	my ($self) = @_;
	$self->stop;
	$self->start;
	return;
}

sub _run_client
{
	my ($self, @args) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run(
		[ $StatehubTest::consume_bin, $self->client_args, @args ],
		'>', \$out, '2>', \$err,
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	return ($ok, $?, $out, $err);
}

sub stream_info
{
	my ($self, $stream) = @_;
	my ($ok, $rc, $out, $err) = $self->_run_client('-i', $self->url, $stream);
	croak "nats_consume -i failed: $err" unless $ok;
	return decode_json($out);
}

sub create_stream
{
	my ($self, $stream, $subjects, $dup) = @_;
	my @dup = $dup ? ('-D', $dup) : ();
	my ($ok, $rc, $out, $err) =
	  $self->_run_client('-S', $subjects, @dup, $self->url, $stream);
	croak "could not create stream $stream: $err" unless $ok;
	return decode_json($out);
}

sub js_api
{
	my ($self, $subject, $request, $timeout) = @_;
	my $body = encode_json($request);
	my $bound = $timeout // $PostgreSQL::Test::Utils::timeout_default;
	my $reply;

	croak 'js_api speaks plain NATS only'
	  if $self->{tls} || defined $self->{user} || defined $self->{token};
	local $SIG{ALRM} = sub { die "no reply to $subject within $bound s\n" };
	alarm($bound);
	eval {
		my $sock = IO::Socket::INET->new(
			PeerAddr => '127.0.0.1',
			PeerPort => $self->{port},
			Proto    => 'tcp') or die "could not connect: $!\n";
		binmode $sock;
		my $info = <$sock>;
		die "no INFO from the server\n" unless defined $info && $info =~ /^INFO /;
		print $sock qq{CONNECT {"verbose":false,"pedantic":false}\r\n}
		  . "SUB _INBOX.statehub_test 1\r\n"
		  . "PUB $subject _INBOX.statehub_test " . length($body) . "\r\n$body\r\n";
		while (my $line = <$sock>)
		{
			if ($line =~ /^MSG \S+ 1 (\d+)\r\n$/)
			{
				my $n = $1;
				my $got = '';
				while (length($got) < $n + 2)
				{
					my $r = read($sock, $got, $n + 2 - length($got), length($got));
					die "connection closed in a reply\n" unless $r;
				}
				$reply = decode_json(substr($got, 0, $n));
				last;
			}
			print $sock "PONG\r\n" if $line =~ /^PING/;
			die "server error: $line" if $line =~ /^-ERR/;
		}
		close $sock;
	};
	my $err = $@;
	alarm(0);
	croak "js_api $subject: $err" if $err;
	croak "js_api $subject: connection closed without a reply" unless $reply;
	return $reply;
}

sub wait_for_stream_count
{
	my ($self, $stream, $count, $timeout) = @_;
	my $deadline = time() + ($timeout // $PostgreSQL::Test::Utils::timeout_default);
	my $seen = 0;

	while (time() < $deadline)
	{
		my ($ok, $rc, $out, $err) = $self->_run_client('-i', $self->url, $stream);
		$seen = decode_json($out)->{messages} if $ok;
		return $seen if $seen >= $count;
		usleep(100_000);
	}
	diag("stream $stream holds $seen messages, expected $count");
	return $seen;
}

sub consume
{
	my ($self, $stream, %opts) = @_;
	my @args;
	push @args, '-n', $opts{count}   if defined $opts{count};
	push @args, '-f', $opts{filter}  if defined $opts{filter};
	push @args, '-t', $opts{idle_ms} if defined $opts{idle_ms};

	my ($ok, $rc, $out, $err) = $self->_run_client(@args, $self->url, $stream);
	diag("nats_consume: $err") unless $ok;

	my $json = JSON::PP->new->utf8;
	my @msgs;
	foreach my $line (split /\n/, $out)
	{
		my $m = $json->decode($line);
		# back to the exact published bytes
		utf8::encode($m->{body});
		push @msgs, $m;
	}
	return \@msgs;
}

END
{
	my $exit_code = $?;
	foreach my $nats (@running)
	{
		next unless $nats->{pid};
		kill 'KILL', $nats->{pid};
		waitpid($nats->{pid}, 0);
	}
	$? = $exit_code;
}

package StatehubTest::NatsCluster;

use strict;
use warnings;

use Carp;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

# Three (or $opts{size}) StatehubTest::Nats nodes, one cluster.name, each
# with its own client and route port, routes to the two others.
sub new
{
	my ($class, $name, %opts) = @_;
	my $size = $opts{size} // 3;
	my @route_ports =
	  map { PostgreSQL::Test::Cluster::get_free_port() } 1 .. $size;
	my @nodes;

	foreach my $i (0 .. $size - 1)
	{
		my $node = StatehubTest::Nats->new("${name}_n" . ($i + 1));
		$node->{route_port} = $route_ports[$i];
		$node->{cluster} = {
			name   => "statehub_test_$name",
			routes => [ grep { $_ != $route_ports[$i] } @route_ports ]
		};
		# the routes name the ports: a restart must keep them
		$node->{port_given} = 1;
		push @nodes, $node;
	}
	return bless { name => $name, nodes => \@nodes }, $class;
}

sub nodes { return @{ $_[0]->{nodes} }; }

sub url { return join(',', map { $_->url } $_[0]->nodes); }

# Start every node, then wait until JetStream answers with a meta leader.
sub start
{
	my ($self) = @_;
	$_->start foreach $self->nodes;
	$self->wait_for_jetstream;
	return;
}

sub stop
{
	my ($self) = @_;
	$_->stop foreach grep { $_->running } $self->nodes;
	return;
}

# A running node to ask (the first that is up).
sub any_node
{
	my ($self) = @_;
	my ($node) = grep { $_->running } $self->nodes;
	croak "no node of cluster $self->{name} is running" unless $node;
	return $node;
}

# The node whose client port is in $url (as the status view's server
# column shows it), or undef.
sub node_of_url
{
	my ($self, $url) = @_;
	return undef unless defined $url && $url =~ /:(\d+)\s*$/;
	my ($node) = grep { $_->{port} == $1 } $self->nodes;
	return $node;
}

sub node_by_server_name
{
	my ($self, $server_name) = @_;
	my ($node) = grep { $_->server_name eq ($server_name // '') } $self->nodes;
	return $node;
}

# One JetStream API request to a running node (or $node), with a short
# bound: a cluster in the middle of an election may not answer at all.
# Returns the decoded reply, or undef when none came.
sub try_js_api
{
	my ($self, $subject, $request, $node) = @_;
	$node //= $self->any_node;
	my $reply = eval { $node->js_api($subject, $request // {}, 2) };
	return $reply;
}

# Until $check->() is true, bounded; returns whether it became true.
sub _poll
{
	my ($what, $check, $timeout) = @_;
	my $deadline = time() + ($timeout // $PostgreSQL::Test::Utils::timeout_default);
	while (time() < $deadline)
	{
		return 1 if $check->();
		usleep(100_000);
	}
	diag("$what: not reached in time");
	return 0;
}

# Until every running node answers JetStream requests (a meta leader was
# elected and the node knows it).
sub wait_for_jetstream
{
	my ($self, $timeout) = @_;
	return _poll("JetStream of cluster $self->{name}", sub { $self->_js_up },
		$timeout);
}

sub _js_up
{
	my ($self) = @_;
	foreach my $node (grep { $_->running } $self->nodes)
	{
		my $r = $self->try_js_api('$JS.API.INFO', {}, $node);
		return 0 unless $r && !$r->{error};
	}
	return 1;
}

# $JS.API.STREAM.INFO of $stream, asked of a running node (or $node);
# undef without an answer.
sub stream_info
{
	my ($self, $stream, $node) = @_;
	my $r = $self->try_js_api("\$JS.API.STREAM.INFO.$stream", {}, $node);
	return undef unless $r && !$r->{error};
	return $r;
}

# The node that leads $stream now, or undef (no stream, or no leader).
sub stream_leader
{
	my ($self, $stream) = @_;
	my $info = $self->stream_info($stream) or return undef;
	return $self->node_by_server_name($info->{cluster}{leader});
}

# Polls (bounded) until $stream has a leader, other than $not when given.
sub wait_for_stream_leader
{
	my ($self, $stream, $not, $timeout) = @_;
	my $leader;
	_poll(
		"a leader for stream $stream",
		sub {
			$leader = $self->stream_leader($stream);
			return defined $leader && !(defined $not && $leader == $not);
		},
		$timeout);
	return $leader;
}

# Until $stream has a leader and every replica is current (a restarted
# node caught up), asked of every running node: the cluster is healthy.
sub wait_healthy
{
	my ($self, $stream, $timeout) = @_;
	return _poll(
		"cluster $self->{name} healthy for stream $stream",
		sub {
			return 0 unless $self->_js_up;
			foreach my $node (grep { $_->running } $self->nodes)
			{
				my $info = $self->stream_info($stream, $node) or return 0;
				my $c = $info->{cluster} or return 0;
				return 0 unless $c->{leader};
				my @replicas = @{ $c->{replicas} // [] };
				return 0 unless @replicas == scalar($self->nodes) - 1;
				return 0 if grep { !$_->{current} || $_->{offline} } @replicas;
			}
			return 1;
		},
		$timeout);
}

1;
