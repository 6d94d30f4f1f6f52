
# Copyright: statehub_events contributors
#
# Issue 10, bad input around a cluster's settings:
#
#   - A server list with one node that never answers (nothing listens on
#     its port), and one with a node that demands TLS the worker is not set
#     up for: the worker connects to the other, events drain; with every
#     node down the error is in last_error and the log, naming no password.
#   - stream_replicas = 3 against a single server: JetStream refuses to
#     create the stream; the error is in last_error and the log, events
#     wait (no attempt burnt, nothing dead-lettered); setting
#     stream_replicas = 1 and reloading drains them.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $password = 'pw-Secret-4711';
my $nats = StatehubTest::Nats->new('list', user => 'hub', password => $password);
$nats->start;
my $dead_port = PostgreSQL::Test::Cluster::get_free_port();
(my $live = $nats->url) =~ s{://}{://hub:$password@};
my $dead = "nats://hub:$password\@127.0.0.1:$dead_port";

# a node that demands TLS, which the worker is not set up for
my $tls = StatehubTest::Nats->new('tls',
	tls => StatehubTest::make_tls_files(PostgreSQL::Test::Utils::tempdir('tls')));
$tls->start;
(my $wrong_tls = $tls->url) =~ s{^tls://}{nats://hub:$password\@};

# -- an unreachable and a wrong-TLS node in the list --------------------------
# (set at start, never reloaded: a reload has PostgreSQL itself log the new
# nats_url, password included)

my $node = StatehubTest::new_node('list', nats_url => "$dead,$wrong_tls,$live");
StatehubTest::track_table($node);
StatehubTest::insert_events($node, 20, 1);
ok(StatehubTest::wait_for_drain($node),
	'with one node unreachable and one demanding TLS the worker publishes '
	  . 'through the third');
my $st = StatehubTest::worker_status($node);
is($st->{state}, 'connected', 'the status view says connected');
is($st->{server}, 'nats://hub:***@127.0.0.1:' . $nats->port,
	'to the live node, password masked');

# no node left that the worker can use
$nats->stop;
ok( StatehubTest::wait_for_status($node,
		q{state = 'backoff' AND last_error LIKE '%could not connect to NATS%'}),
	'with no node left the worker backs off and says why');
$st = StatehubTest::worker_status($node);
unlike($st->{last_error}, qr/\Q$password\E/, 'last_error names no password');
StatehubTest::insert_events($node, 20, 1);
$nats->start;
ok(StatehubTest::wait_for_drain($node), 'once the node is back the events drain');
is($nats->stream_info('STATEHUB')->{messages}, 40, 'the stream holds all 40');
$tls->stop;
unlike(slurp_file($node->logfile), qr/\Q$password\E/,
	'the server log names no password');
$node->stop;
$nats->stop;

# -- stream_replicas = 3 against a single server ------------------------------

my $single = StatehubTest::Nats->new('single');
$single->start;
$node = StatehubTest::new_node(
	'replicas',
	nats_url => $single->url,
	conf     => "statehub_events.stream_replicas = 3\n");
StatehubTest::track_table($node);
my $log_offset = -s $node->logfile;
StatehubTest::insert_events($node, 50, 1);
ok( StatehubTest::wait_for_status($node,
		q{state = 'backoff' AND last_error LIKE '%could not create the stream%'}),
	'R3 on a single server: the worker backs off and says why');
$st = StatehubTest::worker_status($node);
like($st->{last_error}, qr/replicas|clustered/i,
	'last_error tells that the server cannot hold the replicas')
  or diag($st->{last_error});
ok($node->wait_for_log(qr/could not create the stream/, $log_offset),
	'the log says it too');
is($node->safe_psql('postgres',
		'SELECT count(*) FILTER (WHERE attempts > 0) FROM statehub_events.outbox'),
	'0', 'no attempt was burnt');
is(StatehubTest::outbox_count($node), 50, 'the events wait in the outbox');
is(StatehubTest::dead_letter_count($node), 0, 'nothing was dead-lettered');
ok(!$single->stream_info('STATEHUB')->{exists}, 'no stream was created');

my $ids = StatehubTest::outbox_ids($node);
StatehubTest::set_gucs($node, stream_replicas => 1);
ok(StatehubTest::wait_for_drain($node), 'stream_replicas = 1 and a reload drain them');
my $msgs = StatehubTest::stream_holds_exactly($single, 'STATEHUB', $ids, 'R1');
StatehubTest::stream_order_is($msgs, $ids, 'R1');
ok(StatehubTest::wait_for_worker_state($node, qr/^connected$/), 'connected');

$node->stop;
$single->stop;
done_testing();
