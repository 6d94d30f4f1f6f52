
# Copyright: statehub_events contributors
#
# Delivery cases 10 and 11: authentication (user/password, a password
# inside the URL, token), right and wrong, and TLS with a CA and a server
# certificate generated here with openssl.  A wrong setting shows its
# error in the status view while the events wait; nothing is lost, and once
# the setting is fixed (reload) they are delivered exactly once.  Secrets
# never reach a non-superuser, the status view or the log.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $password = 's3cret-PW-7731';
my $wrong_password = 'wr0ng-PW-4410';
my $token = 'tok-SECRET-9912';
my $wrong_token = 'tok-WRONG-2287';

my $node = StatehubTest::new_node('auth');
StatehubTest::track_table($node);

sub insert_events { StatehubTest::insert_events($node, @_); return; }

# The server's clock now: an error recorded after it is the worker's answer
# to the settings reloaded after it, not one left from before.
sub server_now
{
	return $node->safe_psql('postgres', 'SELECT pg_catalog.clock_timestamp()');
}

# The worker is refused: once it uses the new settings (the status view
# names the server on $port, with an error recorded since $since), the
# error says why ($error_re), the events wait, no attempts are burnt.
# Returns the queued ids.
sub refused
{
	my ($case, $n, $port, $since, $error_re) = @_;
	insert_events($n);
	ok(StatehubTest::wait_for_status($node,
			"state IN ('connecting', 'backoff') AND server LIKE '%:$port'"
			  . " AND last_error_at > '$since'"),
		"$case: the status view shows the worker cannot connect to the new server, with a new error");
	my $error = StatehubTest::worker_status($node)->{last_error} // '';
	note("last_error: $error");
	like($error, $error_re, "$case: the error says why");
	is($node->safe_psql('postgres', q{SELECT statehub_events.wait_for_drain('1 s')}),
		'f', "$case: nothing drains");
	my $ids = StatehubTest::outbox_ids($node);
	is(scalar @$ids, $n, "$case: the $n events wait in the outbox");
	is($node->safe_psql('postgres',
			'SELECT coalesce(max(attempts), 0) FROM statehub_events.outbox'),
		0, "$case: no attempts burnt");
	return $ids;
}

sub delivered
{
	my ($case, $nats, $ids) = @_;
	ok(StatehubTest::wait_for_drain($node), "$case: the outbox drains");
	StatehubTest::stream_holds_exactly($nats, 'STATEHUB', $ids, $case);
	return;
}

# --- case 10: user and password ---------------------------------------------

my $up = StatehubTest::Nats->new('userpass',
	user => 'statehub', password => $password);
$up->start;

my $since = server_now();
StatehubTest::set_gucs($node,
	nats_url      => $up->url,
	nats_user     => 'statehub',
	nats_password => $wrong_password);
my $ids = refused('wrong password', 10, $up->port, $since, qr/authori[sz]ation violation/i);
my $st = StatehubTest::worker_status($node);
unlike($st->{server} // '', qr/\Q$wrong_password\E/, 'wrong password: not in the status view');
unlike($st->{last_error} // '', qr/\Q$wrong_password\E/, 'wrong password: not in the last error');

StatehubTest::set_gucs($node, nats_password => $password);
delivered('right password', $up, $ids);

# a password inside the URL works, and the status view masks it
StatehubTest::set_gucs($node, nats_url => '', nats_user => '', nats_password => '');
ok(StatehubTest::wait_for_worker_state($node, qr/^disabled$/),
	'password in the URL: worker disabled while the events are queued');
insert_events(5);
push @$ids, @{ StatehubTest::outbox_ids($node) };
StatehubTest::set_gucs($node,
	nats_url => 'nats://statehub:' . $password . '@127.0.0.1:' . $up->port);
delivered('password in the URL', $up, $ids);
$st = StatehubTest::worker_status($node);
like($st->{server}, qr/127\.0\.0\.1:${\$up->port}/, 'password in the URL: the status view shows the server');
unlike($st->{server}, qr/\Q$password\E/, 'password in the URL: the password is masked in the status view');

# --- case 10: token ---------------------------------------------------------

my $tk = StatehubTest::Nats->new('token', token => $token);
$tk->start;
$since = server_now();
StatehubTest::set_gucs($node, nats_url => $tk->url, nats_token => $wrong_token);
$ids = refused('wrong token', 10, $tk->port, $since, qr/authori[sz]ation violation/i);
StatehubTest::set_gucs($node, nats_token => $token);
delivered('right token', $tk, $ids);

# --- case 11: a non-superuser cannot see the URL, password or token ---------

StatehubTest::set_gucs($node,
	nats_url      => 'nats://statehub:' . $password . '@127.0.0.1:' . $up->port,
	nats_password => $password,
	nats_token    => $token);
$node->safe_psql(
	'postgres', q{
CREATE ROLE app LOGIN;
CREATE ROLE mon LOGIN IN ROLE pg_monitor;
});

# An ordinary role gets an error for the secrets; a pg_monitor member (who
# may read all settings) gets the mask.  Either way the statement must have
# run as expected, or a "cannot match" proves nothing.
foreach my $guc (qw(nats_url nats_password nats_token))
{
	my ($rc, $out, $err) = $node->psql('postgres',
		"SET ROLE mon; SHOW statehub_events.$guc");
	is($rc, 0, "case 11: SHOW statehub_events.$guc succeeds for a pg_monitor member");
	is($out, '********', "case 11: ... and shows the mask");
	($rc, $out, $err) = $node->psql('postgres',
		"SET ROLE mon; SELECT current_setting('statehub_events.$guc')");
	is($rc, 0, "case 11: current_setting('statehub_events.$guc') succeeds for a pg_monitor member");
	is($out, '********', "case 11: ... and returns the mask");

	foreach my $sql ("SHOW statehub_events.$guc",
		"SELECT current_setting('statehub_events.$guc')")
	{
		($rc, $out, $err) = $node->psql('postgres', "SET ROLE app; $sql");
		isnt($rc, 0, "case 11: $sql is an error for an ordinary role");
		like($err, qr/permission denied|must be superuser/,
			"case 11: ... a privilege error");
		unlike("$out\n$err", qr/\Q$password\E|\Q$token\E|127\.0\.0\.1/,
			"case 11: ... that shows no secret");
	}
}
foreach my $role (qw(app mon))
{
	my ($rc, $out, $err) = $node->psql('postgres',
		"SET ROLE $role; SELECT string_agg(name || '=' || coalesce(setting, ''), ' ') FROM pg_settings");
	is($rc, 0, "case 11: $role reads pg_settings");
	like($out, qr/\bmax_connections=\d+/, "case 11: ... and sees the settings it may see");
	unlike($out, qr/\Q$password\E|\Q$token\E/, "case 11: $role finds no secret in pg_settings");
	($rc, $out, $err) = $node->psql('postgres', "SET ROLE $role; SHOW ALL");
	is($rc, 0, "case 11: SHOW ALL succeeds for $role");
	like($out, qr/^max_connections\|/m, "case 11: ... and lists the settings");
	unlike($out, qr/\Q$password\E|\Q$token\E/, "case 11: $role finds no secret in SHOW ALL");
}

my ($rc, $out, $err) = $node->psql('postgres',
	'SET ROLE app; SHOW statehub_events.nats_password');
isnt($rc, 0, 'case 11: SHOW of the password is an error for an ordinary role');
like($err, qr/permission denied|must be superuser/, 'case 11: ... a privilege error');
($rc, $out, $err) = $node->psql('postgres',
	'SET ROLE app; SELECT server FROM statehub_events.status');
isnt($rc, 0, 'case 11: an ordinary role cannot read the status view');

($rc, $out, $err) = $node->psql('postgres',
	q{SET ROLE mon; SELECT coalesce(server, '(null)') FROM statehub_events.status});
is($rc, 0, 'case 11: a pg_monitor member reads the status view');
is($out, '(null)', 'case 11: ... and sees no server URL');
($rc, $out, $err) = $node->psql('postgres',
	q{SET ROLE mon; SELECT coalesce(server, '(null)') FROM statehub_events.worker_status()});
is($out, '(null)', 'case 11: ... nor in worker_status()');

# --- case 10: TLS -----------------------------------------------------------

my $tls_files = StatehubTest::make_tls_files(PostgreSQL::Test::Utils::tempdir('tls'));
my $tls = StatehubTest::Nats->new('tls', tls => $tls_files);
$tls->start;

# without the CA the server's certificate cannot be verified
$since = server_now();
StatehubTest::set_gucs($node,
	nats_url      => $tls->url,
	nats_password => '',
	nats_token    => '',
	tls_ca_file   => '');
$ids = refused('TLS without the CA', 10, $tls->port, $since,
	qr/ssl.*(certificate|issuer)/i);
StatehubTest::set_gucs($node, tls_ca_file => $tls_files->{ca});
delivered('TLS with the CA', $tls, $ids);

# tls:// asks for TLS: a server that offers none is refused, never spoken to
# in plain text (cnats alone would connect without TLS)
my $plain = StatehubTest::Nats->new('plain');
$plain->start;
$since = server_now();
StatehubTest::set_gucs($node,
	nats_url    => 'tls://127.0.0.1:' . $plain->port,
	tls_ca_file => '');
$ids = refused('tls:// to a server without TLS', 10, $plain->port, $since, qr/secure/i);
StatehubTest::set_gucs($node, nats_url => $plain->url);
delivered('the same server by nats://', $plain, $ids);

# --- secrets never reach the log --------------------------------------------

# PostgreSQL itself reports every reloaded setting ("parameter ... changed
# to ...") in the postmaster; that line is core's, the documented
# reason to keep secrets in a .creds file.  Nothing else may hold them.
my @leaks = grep { !/parameter "statehub_events\.[a-z_]+" changed to/ }
  grep { /\Q$password\E|\Q$wrong_password\E|\Q$token\E|\Q$wrong_token\E/ }
  split /\n/, slurp_file($node->logfile);
is_deeply(\@leaks, [],
	'no password or token in the server log outside PostgreSQL\'s own "parameter changed to" lines');

done_testing();
