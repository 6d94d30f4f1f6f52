
# Copyright: statehub_events contributors
#
# The demo's scenario (make demo) as a test, on a real PostgreSQL and a real
# nats-server: the reference hub schema, the v1.0 catalog (declared twice:
# re-running it must replace, not add), catalog/demo_lifecycle.sql.  The
# stream must then hold exactly the expected (type, key attribute) multiset,
# nothing from the rolled-back transaction or savepoint or from the updates
# that do not transition, and every message must be valid against
# docs/event-envelope.schema.json (Draft 2020-12, with format checks).
#
# The hub lives in a schema whose name needs quoting, to prove the catalog
# scripts take any schema name.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use Cwd qw(abs_path);
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $root = abs_path("$FindBin::RealBin/../..");
my $catalog = "$root/catalog";
my $envelope_schema = "$root/docs/event-envelope.schema.json";
my $hub = 'State Hub';
my $json = JSON::PP->new->utf8->canonical;

# The attribute that names the row, per type (what a person reads first).
my %key_attr = (
	'org.statehub.repo.registered'       => 'name',
	'org.statehub.workstream.completed'  => 'title',
	'org.statehub.decision.resolved'     => 'title',
	'org.statehub.domain.goal.activated' => 'title',
	'org.statehub.task.stale'            => 'title');

# What catalog/demo_lifecycle.sql commits, and nothing else.
my @expected = (
	'org.statehub.repo.registered | the-custodian/state-hub',
	'org.statehub.repo.registered | the-custodian/activity-core',
	'org.statehub.repo.registered | the-custodian/custodian-sync',
	'org.statehub.workstream.completed | NATS integration',
	'org.statehub.decision.resolved | Where do events come from?',
	'org.statehub.domain.goal.activated | Automation is declarative',
	'org.statehub.task.stale | Triage open pull requests',
	'org.statehub.task.stale | Write release notes for 0.9');

# The attributes each type carries: catalog/v1_events.sql's lists, plus
# "previous" on transitions.  Checked exactly, so that "all columns" by
# accident (or a lost column) shows up.
my %attributes = (
	'org.statehub.repo.registered' =>
	  [qw(default_branch id name registered_at url)],
	'org.statehub.workstream.completed' =>
	  [qw(completed_at id previous repo_id title)],
	'org.statehub.decision.resolved' =>
	  [qw(id outcome previous repo_id resolved_at resolved_by title workstream_id)],
	'org.statehub.domain.goal.activated' =>
	  [qw(activated_at domain id previous target_date title)],
	'org.statehub.task.stale' =>
	  [qw(assignee id last_activity_at previous repo_id title workstream_id)]);

my $nats = StatehubTest::Nats->new('demo');
$nats->start;
my $node = StatehubTest::new_node('demo', nats_url => $nats->url);

sub psql_file
{
	my ($file, $name, %vars) = @_;
	$node->command_ok(
		[
			'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
			(map { ('-v', "$_=$vars{$_}") } sort keys %vars),
			'-d', 'postgres', '-f', "$catalog/$file"
		],
		$name);
	return;
}

# --- the hub and its catalog ---

psql_file('statehub_schema.sql', 'reference hub schema created', hub_schema => $hub);
psql_file('v1_events.sql', 'v1.0 catalog declared', hub_schema => $hub);
psql_file('v1_events.sql', 'v1.0 catalog declared again (replaces)', hub_schema => $hub);

is( $node->safe_psql(
		'postgres', q{
SELECT event_type || ' ' || table_name || ' ' || operation
       || coalesce(' ' || column_name || '=' || to_value, '')
       || coalesce(' from ' || from_value, '')
  FROM statehub_events.mappings ORDER BY event_type}),
	join("\n",
		qq{org.statehub.decision.resolved "State Hub".decisions update status=resolved},
		qq{org.statehub.domain.goal.activated "State Hub".domain_goals update status=active},
		qq{org.statehub.repo.registered "State Hub".repos insert},
		qq{org.statehub.task.stale "State Hub".tasks update status=stale},
		qq{org.statehub.workstream.completed "State Hub".workstreams update status=completed}),
	'mappings list the five v1.0 events once each');

is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM pg_trigger
 WHERE tgrelid IN (SELECT table_name FROM statehub_events.mappings)
   AND tgfoid = 'statehub_events.capture()'::regprocedure}),
	'5', 'one capture trigger per mapping after re-declaring');

# --- the lifecycle ---

psql_file('demo_lifecycle.sql', 'lifecycle played', hub_schema => $hub);

my ($rc, $stdout, $stderr) = $node->psql('postgres',
	qq{UPDATE "$hub".tasks SET status = 'abandoned' WHERE title = 'Rotate NATS credentials'});
like($stderr, qr/violates check constraint "tasks_status_check"/,
	'the hub schema rejects an unknown task status');

ok(StatehubTest::wait_for_drain($node), 'the outbox drains');
is($node->safe_psql('postgres', q{SELECT statehub_events.wait_for_drain('10 s')}),
	't', 'wait_for_drain() agrees');

is($nats->wait_for_stream_count('STATEHUB', scalar @expected),
	scalar @expected, 'the stream holds as many messages as the scenario commits');
my $msgs = $nats->consume('STATEHUB');

my $st = StatehubTest::worker_status($node);
is($st->{published},    scalar @expected, 'the worker published exactly the expected number of events');
is($st->{queued},       0,                'nothing left queued');
is($st->{dead_letters}, 0,                'no dead letters');

# --- what is in the stream ---

my (@got, %seen_ids, @envelopes);
foreach my $m (@$msgs)
{
	my $env = eval { $json->decode($m->{body}) };
	ok($env, "message $m->{seq} is JSON") or next;
	push @envelopes, $env;
	my $type = $env->{type} // '(none)';
	my $key = $key_attr{$type} // 'title';
	push @got, "$type | " . ($env->{attributes}{$key} // '(none)');
	$seen_ids{ $m->{headers}{'Nats-Msg-Id'} // '' }++;

	is($m->{subject}, $type, "$type: subject is the envelope type");
	is($m->{headers}{'Nats-Msg-Id'}, $env->{id}, "$type: Nats-Msg-Id is the envelope id");
	like(
		$m->{body},
		qr/^\{"id": "[^"]+", "type": "[^"]+", "version": "1\.0", "timestamp": "[^"]+", "publisher": "the-custodian\/state-hub", "attributes": \{.*\}\}$/s,
		"$type: keys in contract order with the contract's separators");
	is_deeply([ sort keys %{ $env->{attributes} } ],
		$attributes{$type} // [], "$type: exactly the catalog's attributes");
}
is_deeply([ sort @got ], [ sort @expected ],
	'the stream holds exactly the expected (type, key attribute) multiset');
is(scalar(grep { $_ > 1 } values %seen_ids), 0, 'no event id twice');

my @leaked = grep {
	$_->{attributes}{name} && $_->{attributes}{name} eq 'scratch/never-registered'
	  or ($_->{attributes}{title} // '') =~
	  /^(ActivityDefinitions for maintenance|Every repo has an owner|Rotate NATS credentials|Archive the old cron host)$/
} @envelopes;
is(scalar @leaked, 0,
	'nothing from the rolled-back transaction or savepoint, nor from rows that did not transition');

my %previous = map {
	my $a = $_->{attributes};
	$a->{previous} ? ("$_->{type} | $a->{title}" => $a->{previous}{status}) : ()
} @envelopes;
is_deeply(
	\%previous,
	{
		'org.statehub.workstream.completed | NATS integration'            => 'active',
		'org.statehub.decision.resolved | Where do events come from?'     => 'open',
		'org.statehub.domain.goal.activated | Automation is declarative'  => 'proposed',
		'org.statehub.task.stale | Triage open pull requests'             => 'open',
		'org.statehub.task.stale | Write release notes for 0.9'           => 'in_progress'
	},
	'transition events carry the previous status');

my ($ws) = grep { $_->{type} eq 'org.statehub.workstream.completed' } @envelopes;
like($ws->{attributes}{completed_at} // '', qr/^\d{4}-\d\d-\d\dT/,
	'the lifecycle timestamp stamped in the same UPDATE is in the event');

# --- the envelope schema ---

my $validator = <<'PY';
import json, sys
from jsonschema import Draft202012Validator, FormatChecker
schema = json.load(open(sys.argv[1], encoding="utf-8"))
Draft202012Validator.check_schema(schema)
validator = Draft202012Validator(schema, format_checker=FormatChecker())
valid = invalid = 0
for n, line in enumerate(sys.stdin, 1):
    errors = sorted(validator.iter_errors(json.loads(line)), key=str)
    for e in errors:
        print("message %d: %s at %s" % (n, e.message, "/".join(map(str, e.absolute_path))))
    if errors:
        invalid += 1
    else:
        valid += 1
print("%d valid, %d invalid" % (valid, invalid))
sys.exit(1 if invalid else 0)
PY

# Debian's python3-jsonschema belongs to Debian's python3, whatever else
# PATH holds.
my $python = -x '/usr/bin/python3' ? '/usr/bin/python3' : 'python3';

sub validate
{
	my ($bodies) = @_;
	my $in = join('', map { "$_\n" } @$bodies);
	my ($out, $err) = ('', '');
	IPC::Run::run([ $python, '-c', $validator, $envelope_schema ],
		'<', \$in, '>', \$out, '2>', \$err);
	BAIL_OUT("could not run the JSON Schema validator ($python with python3-jsonschema): $err")
	  if $err =~ /ModuleNotFoundError|ImportError|SchemaError/;
	return ($? >> 8, $out);
}

my ($vrc, $vout) = validate([ map { $_->{body} } @$msgs ]);
is($vrc, 0, 'every published message is valid against docs/event-envelope.schema.json')
  or diag($vout);
like($vout, qr/^${\ scalar @$msgs} valid, 0 invalid$/m, 'the validator saw every message');

# The schema is not vacuous: a contract breach in any key is caught.
my $sample = $json->decode($msgs->[0]{body});
my @broken = (
	{ %$sample, extra => 1 },
	{ %$sample, version => '1.1' },
	{ %$sample, id => 'not-a-uuid' },
	{ %$sample, timestamp => '2026-11-27T15:33:45Z' },
	{ %$sample, type => 'org.statehub.>' },
	{ %$sample, attributes => [] },
	{ %$sample, attributes => { %{ $sample->{attributes} }, id => undef } });
($vrc, $vout) = validate([ map { $json->encode($_) } @broken ]);
like($vout, qr/^0 valid, ${\ scalar @broken} invalid$/m,
	'the schema rejects each broken envelope') or diag($vout);

# --- the sweep publishes nothing more when nothing is left to mark ---

# The worker drains in milliseconds, so an empty outbox proves nothing:
# look at the stream.  A marker emitted after the sweep is published after
# anything the sweep queued; once it is in, the sweep's events would be too.
my $published_before = StatehubTest::worker_status($node)->{published};
psql_file('stale_sweep.sql', 'stale sweep runs again', hub_schema => $hub);
my $marker = $node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.marker', '{}')});
is($nats->wait_for_stream_count('STATEHUB', @expected + 1),
	@expected + 1, 'a sweep with nothing to mark adds nothing to the stream but the marker after it');
my $after = $nats->consume('STATEHUB');
is($after->[-1]{headers}{'Nats-Msg-Id'}, $marker, 'the marker is the last message');
is(StatehubTest::worker_status($node)->{published} - $published_before, 1,
	'the worker published one event since the sweep: the marker');

done_testing();
