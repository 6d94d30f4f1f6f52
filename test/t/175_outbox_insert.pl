
# Copyright: statehub_events contributors
#
# Issue 9: an event goes into the outbox with the semantics of a plain
# INSERT: a CHECK constraint a DBA put on the outbox is checked (before,
# it was silently ignored), and with an expression index besides, a
# violating emit() fails with the constraint's error instead of crashing
# the backend (and with it the whole cluster).  Every index is maintained.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use StatehubTest;
use Test::More;

my $node = StatehubTest::new_node('insert');    # no NATS: events stay queued

$node->safe_psql('postgres', q{
ALTER TABLE statehub_events.outbox
  ADD CONSTRAINT payload_small CHECK (pg_catalog.length(payload) < 1000);
});

sub emit_big
{
	my ($case) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', q{
SELECT statehub_events.emit('org.statehub.test.big',
         pg_catalog.jsonb_build_object('x', pg_catalog.repeat('x', 2000)))});
	isnt($rc, 0, "$case: an oversized emit() fails");
	like($err, qr/violates check constraint "payload_small"/,
		"$case: with the constraint's error");
	unlike(slurp_file($node->logfile), qr/terminated by signal/,
		"$case: no backend crashed");
	is($node->safe_psql('postgres', 'SELECT 1'), '1', "$case: the server is up");
	return;
}

emit_big('check constraint');

$node->safe_psql('postgres', q{
CREATE INDEX outbox_subject_lower ON statehub_events.outbox (pg_catalog.lower(subject));
});
emit_big('check constraint and expression index');

# a small event goes in, and every index knows it
$node->safe_psql('postgres',
	q{SELECT statehub_events.emit('org.statehub.test.small', '{"a": 1}')});
is($node->safe_psql('postgres', q{
SET enable_seqscan = off;
SELECT pg_catalog.count(*) FROM statehub_events.outbox
 WHERE pg_catalog.lower(subject) = 'org.statehub.test.small'}),
	'1', 'a small event is queued and found through the expression index');
is($node->safe_psql('postgres', 'SELECT pg_catalog.count(*) FROM statehub_events.outbox'),
	'1', 'only the small event is queued');

$node->stop;
done_testing();
