
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

# The worker is refused: the status view shows an error, the events wait,
# no attempts are burnt.  Returns the queued ids.
sub refused
{
	my ($case, $n) = @_;
	insert_events($n);
	ok($node->poll_query_until('postgres',
			q{SELECT state IN ('connecting', 'backoff') AND last_error IS NOT NULL
			    FROM statehub_events.status}),
		"$case: the status view shows the worker cannot connect, with an error");
	note('last_error: ' . StatehubTest::worker_status($node)->{last_error});
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

StatehubTest::set_gucs($node,
	nats_url      => $up->url,
	nats_user     => 'statehub',
	nats_password => $wrong_password);
my $ids = refused('wrong password', 10);
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
StatehubTest::set_gucs($node, nats_url => $tk->url, nats_token => $wrong_token);
$ids = refused('wrong token', 10);
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

foreach my $role (qw(app mon))
{
	foreach my $guc (qw(nats_url nats_password nats_token))
	{
		my ($rc, $out, $err) = $node->psql('postgres',
			"SET ROLE $role; SHOW statehub_events.$guc");
		unlike($out, qr/\Q$password\E|\Q$token\E|127\.0\.0\.1/,
			"case 11: $role cannot read statehub_events.$guc with SHOW");
		($rc, $out, $err) = $node->psql('postgres',
			"SET ROLE $role; SELECT current_setting('statehub_events.$guc')");
		unlike($out, qr/\Q$password\E|\Q$token\E|127\.0\.0\.1/,
			"case 11: $role cannot read statehub_events.$guc with current_setting()");
	}
	my ($rc, $out, $err) = $node->psql('postgres',
		"SET ROLE $role; SELECT string_agg(name || '=' || coalesce(setting, ''), ' ') FROM pg_settings");
	unlike($out, qr/\Q$password\E|\Q$token\E/, "case 11: $role finds no secret in pg_settings");
	($rc, $out, $err) = $node->psql('postgres', "SET ROLE $role; SHOW ALL");
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
StatehubTest::set_gucs($node,
	nats_url      => $tls->url,
	nats_password => '',
	nats_token    => '',
	tls_ca_file   => '');
$ids = refused('TLS without the CA', 10);
StatehubTest::set_gucs($node, tls_ca_file => $tls_files->{ca});
delivered('TLS with the CA', $tls, $ids);

# --- secrets never reach the log --------------------------------------------

# PostgreSQL itself reports every reloaded setting ("parameter ... changed
# to ...") in the postmaster; that line is core's, the documented
# reason to keep secrets in a .creds file.  Nothing else may hold them.
my @leaks = grep { !/parameter "statehub_events\.[a-z_]+" changed to/ }
  grep { /\Q$password\E|\Q$wrong_password\E|\Q$token\E|\Q$wrong_token\E/ }
  split /\n/, slurp_file($node->logfile);
is_deeply(\@leaks, [], 'no password or token in the server log');

done_testing();
