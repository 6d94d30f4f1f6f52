
# Copyright: statehub_events contributors
#
# Issue 10: a primary and a streaming standby (PostgreSQL::Test::Cluster),
# both with the library preloaded and the same NATS settings.
#
#   1. On a standby the worker never runs (BgWorkerStart_RecoveryFinished)
#      and never publishes, whatever is queued; the status view says
#      "standby" with no pid.
#   2. Under a steady load on the primary, tens of thousands of events
#      queued, the primary is stopped in immediate mode in the middle of
#      the drain and the standby promoted: its worker starts, and every
#      event committed on the old primary that reached the standby is in
#      the stream exactly once (what the old primary had published is
#      published again and dropped by the stream as a duplicate); the
#      stream keeps their id order.  With asynchronous replication events
#      the old primary published may never have reached the standby: they
#      are counted and reported, not an error.
#   3. A standby rebuilt from the new primary (as the old primary would
#      be) never publishes either.
#   4. With synchronous replication (synchronous_commit = remote_apply),
#      after the same crash and promotion no committed event is missing.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $rate = $ENV{STATEHUB_CLUSTER_RATE} // 200;
my $queued = 30_000;

my $nats = StatehubTest::Nats->new('standby');
$nats->start;
my $primary = StatehubTest::new_node(
	'primary',
	nats_url => $nats->url,
	init     => { allows_streaming => 1 });
StatehubTest::track_table($primary);
StatehubTest::audit_outbox($primary);

# A standby of $root from a fresh base backup, started, caught up; its
# configuration is $root's (the library preloaded, the same NATS settings).
sub new_standby
{
	my ($name, $root) = @_;
	$root->backup("${name}_backup");
	my $standby = PostgreSQL::Test::Cluster->new($name);
	$standby->init_from_backup($root, "${name}_backup", has_streaming => 1);
	$standby->start;
	$root->wait_for_catchup($standby, 'replay');
	return $standby;
}

# On a standby with $n events queued: no worker, nothing published.
sub standby_never_publishes
{
	my ($standby, $root, $n, $stream_count, $what) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	$root->wait_for_catchup($standby, 'replay');
	is(StatehubTest::outbox_count($standby), $n,
		"$what: the standby holds the $n queued events");
	my $st = StatehubTest::worker_status($standby);
	is($st->{state}, 'standby', "$what: the status view says standby");
	ok(!defined $st->{pid}, "$what: and shows no worker pid");
	is( $standby->safe_psql('postgres',
			q{SELECT count(*) FROM pg_catalog.pg_stat_activity
			   WHERE backend_type = 'statehub_events worker'}),
		'0', "$what: no statehub_events worker process");
	unlike(slurp_file($standby->logfile),
		qr/statehub_events worker (started|connected)/,
		"$what: the standby's log has no worker start");
	is($nats->stream_info('STATEHUB')->{messages}, $stream_count,
		"$what: nothing more was published");
	return;
}

# The stream holds every id of @$ids once, in their order; returns how many
# messages it holds beyond them.
sub stream_has_all
{
	my ($ids, $what) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	$nats->wait_for_stream_count('STATEHUB', scalar @$ids);
	my $msgs = $nats->consume('STATEHUB');
	my %pos;
	my @dups;
	foreach my $m (sort { $a->{seq} <=> $b->{seq} } @$msgs)
	{
		my $id = $m->{headers}{'Nats-Msg-Id'} // '(none)';
		push @dups, $id if exists $pos{$id};
		$pos{$id} //= $m->{seq};
	}
	is(scalar @dups, 0, "$what: no Nats-Msg-Id in the stream twice");
	my @missing = grep { !exists $pos{$_} } @$ids;
	is(scalar @missing, 0,
		"$what: every committed event that reached the server is in the stream")
	  or diag(scalar(@missing) . ' missing, e.g. ' . $missing[0]);
	my @seqs = map { $pos{$_} // 0 } @$ids;
	my $i = 0;
	$i++ while $i < $#seqs && $seqs[$i] < $seqs[ $i + 1 ];
	ok($i >= $#seqs, "$what: the stream holds them in id order");
	return scalar(@$msgs) - scalar(keys %{ { map { $_ => 1 } @$ids } });
}

# -- 1. a standby never publishes --------------------------------------------

StatehubTest::insert_events($primary, 10, 1);
ok(StatehubTest::wait_for_drain($primary), 'the primary drains');
is($nats->stream_info('STATEHUB')->{messages}, 10, 'the stream holds 10');

my $standby = new_standby('standby', $primary);
StatehubTest::set_gucs($primary, nats_url => '');
ok(StatehubTest::wait_for_worker_state($primary, qr/^disabled$/),
	'the primary\'s worker is disabled while events queue');
StatehubTest::insert_events($primary, 1000, 100);
standby_never_publishes($standby, $primary, 1000, 10, 'standby');

# -- 2. immediate stop of the primary mid-drain, promotion --------------------

StatehubTest::insert_events($primary, $queued, 1000);
my $backlog = 1000 + $queued;
my $script = $primary->basedir . '/load.sql';
append_to_file($script,
	"INSERT INTO t SELECT max(id) + 1, 'load' FROM t;\n");
my $load = StatehubTest::start_load($primary, $rate, $script);
StatehubTest::set_gucs($primary, nats_url => $nats->url);
my $left = StatehubTest::wait_until_outbox_below($primary, $backlog - 2000);
cmp_ok($left, '>', 10_000, "mid-drain: $left events still queued");
$primary->stop('immediate');
StatehubTest::stop_load($load);    # it fails anyway, its server gone
note("the old primary stopped with $left queued; the stream holds "
	  . $nats->stream_info('STATEHUB')->{messages});

$standby->promote;
ok( StatehubTest::wait_for_status($standby,
		"state = 'connected' AND pid IS NOT NULL"),
	'after promotion the worker starts and connects');
ok(StatehubTest::wait_for_drain($standby), 'the promoted standby drains');
is(StatehubTest::dead_letter_count($standby), 0, 'no dead letters');
my $reached = StatehubTest::audit_ids($standby);
my $lost = stream_has_all($reached, 'promoted (async)');
note(scalar(@$reached) . " events reached the standby; $lost published "
	  . 'events had not (asynchronous replication)');

# -- 3. the old primary, rebuilt as a standby, never publishes ----------------

my $new_primary = $standby;
my $count = $nats->stream_info('STATEHUB')->{messages};
my $rebuilt = new_standby('rebuilt', $new_primary);
StatehubTest::set_gucs($new_primary, nats_url => '');
ok(StatehubTest::wait_for_worker_state($new_primary, qr/^disabled$/),
	'the new primary\'s worker is disabled while events queue');
$new_primary->{statehub_next_id} = 1 + $new_primary->safe_psql('postgres',
	'SELECT max(id) FROM t');
StatehubTest::insert_events($new_primary, 500, 100);
standby_never_publishes($rebuilt, $new_primary, 500, $count, 'rebuilt');

# -- 4. synchronous replication: nothing committed is missing ----------------

$new_primary->append_conf(
	'postgresql.conf', q{
synchronous_standby_names = '*'
synchronous_commit = remote_apply
});
$new_primary->reload;
ok( $new_primary->poll_query_until('postgres',
		q{SELECT sync_state = 'sync' FROM pg_catalog.pg_stat_replication}),
	'the rebuilt standby is synchronous');
StatehubTest::insert_events($new_primary, $queued, 1000);
my $committed = StatehubTest::audit_ids($new_primary);
$backlog = StatehubTest::outbox_count($new_primary);
StatehubTest::set_gucs($new_primary, nats_url => $nats->url);
$left = StatehubTest::wait_until_outbox_below($new_primary, $backlog - 2000);
cmp_ok($left, '>', 10_000, "sync mid-drain: $left events still queued");
$new_primary->stop('immediate');

$rebuilt->promote;
ok( StatehubTest::wait_for_status($rebuilt,
		"state = 'connected' AND pid IS NOT NULL"),
	'sync: after promotion the worker starts and connects');
ok(StatehubTest::wait_for_drain($rebuilt), 'sync: the promoted standby drains');
is_deeply(StatehubTest::audit_ids($rebuilt), $committed,
	'sync: every committed event reached the standby');
is(stream_has_all($committed, 'promoted (sync)'), $lost,
	'sync: the stream holds no event that was not committed');
is(StatehubTest::dead_letter_count($rebuilt), 0, 'sync: no dead letters');

$rebuilt->stop;
$nats->stop;
done_testing();
