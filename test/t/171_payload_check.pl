
# Copyright: statehub_events contributors
#
# The worker's check that a payload is JSON (issue 13 replaced
# PostgreSQL's recursive JSON parser with json_check.c).
#
# 1. A payload nested 200,000 levels deep, put into the outbox by hand,
#    made PostgreSQL's parser raise "stack depth limit exceeded" in every
#    round: that one row stalled delivery for good.  Now it is published
#    (it is JSON), an unclosed one as deep goes to the dead letters, and
#    the event queued behind them arrives.
# 2. The check accepts exactly what the json type accepts: 3,000 mangled
#    variants of JSON texts, put into the outbox by hand, are each
#    published if and only if PostgreSQL's json input takes them, and
#    dead-lettered as "not valid JSON" otherwise.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;
use Time::HiRes qw(time);

my $nats = StatehubTest::Nats->new('payload');
$nats->start;
my $node = StatehubTest::new_node('payload', nats_url => $nats->url);
StatehubTest::track_table($node);

StatehubTest::insert_events($node, 1);
ok(StatehubTest::wait_for_drain($node), 'the first event drains');
my @expected = map { $_->{headers}{'Nats-Msg-Id'} } @{ $nats->consume('STATEHUB') };

# 1. deep nesting
push @expected, split /\n/, $node->safe_psql('postgres', <<'SQL');
INSERT INTO statehub_events.outbox (event_id, subject, payload) VALUES
  (gen_random_uuid(), 'org.statehub.test.deep',
   repeat('[', 200000) || repeat(']', 200000))
RETURNING event_id;
SQL
$node->safe_psql('postgres', <<'SQL');
INSERT INTO statehub_events.outbox (event_id, subject, payload) VALUES
  (gen_random_uuid(), 'org.statehub.test.deep', repeat('[', 200000));
SELECT statehub_events.wake_worker();
SQL
my $t0 = time();
push @expected,
  $node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.created', '{"after": "the deep rows"}')});
ok(StatehubTest::wait_for_drain($node, 30), 'the outbox drains past the deep rows');
note(sprintf('the event behind them drained %.3f s after its commit', time() - $t0));
is( $node->safe_psql(
		'postgres',
		q{SELECT attempts || ' | ' || reason FROM statehub_events.dead_letter}),
	'0 | the payload is not valid JSON',
	'the unclosed one is a dead letter, at once');
my $msgs = StatehubTest::stream_holds_exactly($nats, 'STATEHUB', \@expected, 'deep');
my ($deep) = grep { $_->{subject} eq 'org.statehub.test.deep' } @$msgs;
is($deep->{body}, ('[' x 200000) . (']' x 200000),
	'the deep one is published byte for byte');
unlike(slurp_file($node->logfile), qr/stack depth limit exceeded/,
	'no round failed on the stack depth');

# 2. the same verdict as the json type, on mangled JSON texts
my @seeds = (
	'{"a": 1, "b": [true, false, null, -0.5e+3, "x\\u00e9\\n"]}',
	'[]', '{}', '[1,2,{"k":"v"}]', '"str"', '0', '-12.34E-5', 'null',
	' { "id" : "1c9b", "attributes": {"n": [1, [2, [3]]], "t": "\\/\\b\\f\\r\\t"}} ',
	'"\\ud800"', "\"\x{e9}\x{2713}\"", '[[[[]]]]', '{"a":{"b":{"c":{}}}}',
	'1E400', '[-0, 0.0, 1e-7]',
	# long strings: the scanner skips plain bytes 8 at a time
	'{"title": "Migrate the nightly stale-task sweep to \\"activity-core\\" events", "repo": "the-custodian/state-hub"}',
	'["0123456789abcdefghijklmnopqrstuvwxyz\\u00e90123456789abcdef\\\\ghijklmnop"]');
my @alphabet = (split(//, '{}[]",:. -+eE019abcdefnrtuxlsTFN\\/'),
	"\t", "\n", "\r", "\x01", "\x1f", "\x7f", "\x{e9}");
srand(13);
my %cases;
while (keys %cases < 3000)
{
	my $s = $seeds[ int(rand(@seeds)) ];
	for (1 .. int(rand(5)))
	{
		my $op  = rand();
		my $pos = int(rand(length($s) + 1));
		if ($op < 0.3 && length $s)
		{
			substr($s, $pos, 1, '');
		}
		elsif ($op < 0.6)
		{
			substr($s, $pos, 0, $alphabet[ int(rand(@alphabet)) ]);
		}
		elsif ($op < 0.8 && length $s)
		{
			substr($s, $pos, 1, $alphabet[ int(rand(@alphabet)) ]);
		}
		else
		{
			my $from = int(rand(length($s) + 1));
			my $len = int(rand(length($s) - $from + 1));
			substr($s, $pos, 0, substr($s, $from, $len));
		}
	}
	$cases{$s} = 1 if length $s;
}
my $copy = join('', map {
	my $hex = $_;
	utf8::encode($hex);
	unpack('H*', $hex) . "\n"
} sort keys %cases);

$node->safe_psql('postgres', 'TRUNCATE statehub_events.dead_letter');
my $verdicts = $node->safe_psql('postgres', <<"SQL");
CREATE TABLE cases (payload text, valid boolean);
CREATE FUNCTION is_json(t text) RETURNS boolean LANGUAGE plpgsql AS \$\$
BEGIN
	PERFORM t::json;
	RETURN true;
EXCEPTION WHEN others THEN
	RETURN false;
END \$\$;
CREATE TEMP TABLE hex (h text);
COPY hex FROM STDIN;
${copy}\\.
INSERT INTO cases SELECT convert_from(decode(h, 'hex'), 'UTF8') FROM hex;
UPDATE cases SET valid = is_json(payload);
INSERT INTO statehub_events.outbox (event_id, subject, payload)
SELECT gen_random_uuid(), 'org.statehub.test.case', payload FROM cases;
SELECT statehub_events.wake_worker();
SELECT count(*) FILTER (WHERE valid) || ' ' || count(*) FILTER (WHERE NOT valid) FROM cases;
SQL
my ($valid, $invalid) = split ' ', (split /\n/, $verdicts)[-1];
note("$valid cases are JSON, $invalid are not");
cmp_ok($valid,   '>', 200, 'enough cases are JSON');
cmp_ok($invalid, '>', 500, 'enough cases are not');
ok(StatehubTest::wait_for_drain($node, 60), 'the cases drain');
is( $node->safe_psql(
		'postgres', <<'SQL'),
SELECT count(*) FROM statehub_events.dead_letter d
  LEFT JOIN cases c ON c.payload = d.payload
 WHERE c.valid IS DISTINCT FROM false
    OR d.reason <> 'the payload is not valid JSON'
SQL
	'0', 'every dead letter is a case the json type refuses, for that reason');
is($node->safe_psql('postgres', 'SELECT count(*) FROM statehub_events.dead_letter'),
	$invalid, 'and every case it refuses is a dead letter');
$nats->wait_for_stream_count('STATEHUB', scalar(@expected) + $valid);
my %published = map { $_->{body} => 1 }
  grep { $_->{subject} eq 'org.statehub.test.case' } @{ $nats->consume('STATEHUB') };
my @valid_cases = split /\n/,
  $node->safe_psql('postgres',
	q{SELECT encode(convert_to(payload, 'UTF8'), 'hex') FROM cases WHERE valid});
my @missing = grep { !$published{ pack('H*', $_) } } @valid_cases;
is(scalar(keys %published), $valid, 'as many published as the json type takes');
is_deeply(\@missing, [], 'every case the json type takes is published as it is');

$node->stop;
$nats->stop;
done_testing();
