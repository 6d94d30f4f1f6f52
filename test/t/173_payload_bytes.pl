
# Copyright: statehub_events contributors
#
# Payloads as bytes (hostile review, issue 13).
#
# 1. A hand-inserted payload far above max_payload but stored in a few MB
#    (300 MB of one byte) was detoasted whole by the worker before it was
#    refused for its size: the worker's memory peaked at the payload's
#    size.  Its size is now read from its header.
# 2. In a database whose encoding is not UTF8, envelopes were published in
#    that encoding: a LATIN1 "café" reached consumers as the byte 0xE9,
#    which is not JSON text (RFC 8259 wants UTF-8).  The worker converts
#    payloads to UTF-8.
# 3. In SQL_ASCII, whose bytes above 0x7F mean nothing in particular, a
#    payload that is not UTF-8 is a dead letter; one that is, is published
#    as it is.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $nats = StatehubTest::Nats->new('bytes');
$nats->start;
my $node = StatehubTest::new_node('bytes', nats_url => $nats->url);

sub worker_peak_kb
{
	my $pid = $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'statehub_events worker'});
	my ($kb) = slurp_file("/proc/$pid/status") =~ /^VmHWM:\s+(\d+) kB/m;
	return ($pid, $kb);
}

sub drained
{
	my ($db) = @_;
	ok($node->poll_query_until($db, 'SELECT count(*) = 0 FROM statehub_events.outbox'),
		"$db: the outbox drains");
	return;
}

# 1. 300 MB of one byte
$node->safe_psql('postgres', q{SELECT statehub_events.emit('org.statehub.test.warm')});
drained('postgres');
my ($pid0, $peak0) = worker_peak_kb();
$node->safe_psql('postgres', q{
INSERT INTO statehub_events.outbox (event_id, subject, payload)
VALUES (gen_random_uuid(), 'org.statehub.test.huge', '"' || repeat('a', 300000000) || '"');
SELECT statehub_events.wake_worker();
});
drained('postgres');
like(
	$node->safe_psql('postgres', 'SELECT reason FROM statehub_events.dead_letter'),
	qr/^the event is 300000002 bytes, which exceeds the NATS server's max_payload/,
	'huge: a dead letter for its size');
my ($pid1, $peak1) = worker_peak_kb();
is($pid1, $pid0, 'huge: the same worker process');
note("worker peak RSS $peak0 kB before, $peak1 kB after");
cmp_ok($peak1 - $peak0, '<', 100_000, 'huge: the worker did not read it whole');

# 2. LATIN1
$node->safe_psql('postgres', q{
CREATE DATABASE lat ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
CREATE DATABASE ascii_db ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
});
$node->safe_psql('lat', q{
CREATE EXTENSION statehub_events;
CREATE TABLE t (id int PRIMARY KEY, name text);
SELECT statehub_events.track_insert('t', 'org.statehub.test.latin');
});
$node->append_conf('postgresql.conf', "statehub_events.database = 'lat'\n");
$node->restart;
# é, whatever the client's encoding
$node->safe_psql('lat', q{
INSERT INTO t VALUES (1, 'caf' || convert_from('\xe9', 'LATIN1'));
SELECT statehub_events.emit('org.statehub.test.latin',
                            jsonb_build_object('name', 'caf' || convert_from('\xe9', 'LATIN1')));
INSERT INTO statehub_events.outbox (event_id, subject, payload)
VALUES (gen_random_uuid(), 'org.statehub.test.latin',
        '{"name": "caf' || convert_from('\xe9', 'LATIN1') || '"}');
SELECT statehub_events.wake_worker();
});
drained('lat');
is($node->safe_psql('lat', 'SELECT count(*) FROM statehub_events.dead_letter'),
	'0', 'latin1: no dead letters');
my @latin = grep { $_->{subject} eq 'org.statehub.test.latin' }
  @{ $nats->consume('STATEHUB') };
is(scalar @latin, 3, 'latin1: capture, emit and the hand-inserted row are published');
foreach my $m (@latin)
{
	my $body = $m->{body};
	ok(utf8::decode(my $copy = $body), 'latin1: the body is UTF-8');
	like($body, qr/"name": ?"caf\xc3\xa9"/, 'latin1: é is the two UTF-8 bytes C3 A9');
}

# 3. SQL_ASCII
$node->safe_psql('ascii_db', 'CREATE EXTENSION statehub_events');
$node->append_conf('postgresql.conf', "statehub_events.database = 'ascii_db'\n");
$node->restart;
my $good = $node->safe_psql('ascii_db', q{
INSERT INTO statehub_events.outbox (event_id, subject, payload)
VALUES (gen_random_uuid(), 'org.statehub.test.ascii', E'{"name": "caf\xc3\xa9"}')
RETURNING event_id;
});
$node->safe_psql('ascii_db', q{
INSERT INTO statehub_events.outbox (event_id, subject, payload)
VALUES (gen_random_uuid(), 'org.statehub.test.ascii', E'{"name": "caf\xe9"}');
SELECT statehub_events.wake_worker();
});
drained('ascii_db');
like(
	$node->safe_psql('ascii_db', 'SELECT reason FROM statehub_events.dead_letter'),
	qr/^the payload is not valid UTF-8/,
	'sql_ascii: a payload that is not UTF-8 is a dead letter');
my @ascii = grep { $_->{subject} eq 'org.statehub.test.ascii' }
  @{ $nats->consume('STATEHUB') };
is(scalar @ascii, 1, 'sql_ascii: one published');
is($ascii[0]->{headers}{'Nats-Msg-Id'}, $good, 'sql_ascii: the UTF-8 one');
is($ascii[0]->{body}, qq{{"name": "caf\xc3\xa9"}}, 'sql_ascii: as it is');

$node->stop;
$nats->stop;
done_testing();
