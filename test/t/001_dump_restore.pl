# pg_dump -> restore into a fresh database keeps the DBA's mappings and the
# queued (undelivered) events, byte for byte, and capture works in the
# restored database with drain keys that continue after the restored ones.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
# no NATS URL: nothing is delivered, the outbox keeps what capture queued
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'statehub_events'");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE src');
$node->safe_psql('src', q{
    CREATE EXTENSION statehub_events;
    CREATE TYPE ws_status AS ENUM ('open', 'completed');
    CREATE TABLE repos (id integer PRIMARY KEY, name text, kind text);
    CREATE TABLE workstreams (id integer PRIMARY KEY, status ws_status NOT NULL);
    SELECT statehub_events.track_insert('repos', 'org.statehub.repo.registered',
                                        '{id,name}', $$NEW.kind = 'service'$$);
    SELECT statehub_events.track_delete('repos', 'org.statehub.repo.removed', '{id}');
    SELECT statehub_events.track_transition('workstreams', 'status', 'completed',
                                            'org.statehub.workstream.completed',
                                            from_value => 'open');
    INSERT INTO repos VALUES (1, 'hub', 'service'), (2, 'lib', 'library');
    INSERT INTO workstreams VALUES (1, 'open');
    UPDATE workstreams SET status = 'completed';
    SELECT statehub_events.emit('org.statehub.task.stale', '{"task_id": 7}');
});

my $mappings_sql = q{
    SELECT table_name, event_type, operation, column_name, from_value, to_value,
           attributes, condition
      FROM statehub_events.mappings ORDER BY 1, 2};
my $outbox_sql = q{
    SELECT id, event_id, subject, payload, enqueued_at, attempts
      FROM statehub_events.outbox ORDER BY id};

my $src_mappings = $node->safe_psql('src', $mappings_sql);
my $src_outbox = $node->safe_psql('src', $outbox_sql);
is(scalar(split /\n/, $src_mappings), 3, 'three mappings declared');
is(scalar(split /\n/, $src_outbox), 3, 'three events queued');

my $tmp = PostgreSQL::Test::Utils::tempdir;
my @conn = ('-h', $node->host, '-p', $node->port);

# custom format with pg_restore, and plain SQL with psql
$node->command_ok([ 'pg_dump', @conn, '-Fc', '-f', "$tmp/src.dump", 'src' ],
    'pg_dump -Fc');
$node->command_ok([ 'pg_dump', @conn, '-f', "$tmp/src.sql", 'src' ],
    'pg_dump plain');

for my $case ([ 'restored_c', [ 'pg_restore', @conn, '--exit-on-error', '-d', 'restored_c', "$tmp/src.dump" ] ],
              [ 'restored_p', [ 'psql', @conn, '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', 'restored_p', '-f', "$tmp/src.sql" ] ])
{
    my ($db, $cmd) = @$case;

    $node->safe_psql('postgres', "CREATE DATABASE $db");
    $node->command_ok($cmd, "$db: restore succeeds");

    is($node->safe_psql($db, $mappings_sql), $src_mappings,
        "$db: mappings are listed as declared");
    is($node->safe_psql($db, $outbox_sql), $src_outbox,
        "$db: queued events are kept byte for byte, with their drain keys");

    # capture works in the restored database, in the declared way
    $node->safe_psql($db, q{
        INSERT INTO repos VALUES (3, 'api', 'service'), (4, 'docs', 'library');
        DELETE FROM repos WHERE id = 2;
        INSERT INTO workstreams VALUES (2, 'open');
        UPDATE workstreams SET status = 'completed' WHERE id = 2;
    });
    my $new = $node->safe_psql($db, q{
        SELECT o.subject || ' ' || (o.payload::json -> 'attributes' ->> 'id')
          FROM statehub_events.outbox o
         WHERE o.id > (SELECT pg_catalog.max(id) FROM statehub_events.outbox
                        WHERE subject = 'org.statehub.task.stale')
         ORDER BY o.id});
    is($new,
        "org.statehub.repo.registered 3\norg.statehub.repo.removed 2\norg.statehub.workstream.completed 2",
        "$db: capture queues new events after the restored ones");
    is($node->safe_psql($db, q{SELECT pg_catalog.count(*) FROM statehub_events.outbox}),
        '6', "$db: restored and new events are all queued");
}

$node->stop;
done_testing();
