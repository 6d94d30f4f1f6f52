# shellcheck shell=bash
#
# Shared setup for the delivery benchmarks (bench/drain, bench/latency,
# bench/memory, bench/queue_health).  Sourced, never run; the caller sets
# PROG first.
#
# Each benchmark starts its own nats-server -js and its own PostgreSQL 15
# cluster on free loopback ports under a fresh temporary directory, runs,
# prints its figures, and stops and removes everything on exit (set
# BENCH_KEEP=1 to keep the directory and its logs).  As root, the servers
# run as the unprivileged user of scripts/lib.sh (initdb refuses root).
#
# The extension must be installed (make && make install) and the test
# helpers built (make builds test/nats_consume and test/nats_publish_raw).

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

CONSUME=$REPO_ROOT/test/nats_consume
PUBLISH_RAW=$REPO_ROOT/test/nats_publish_raw
BENCH_DIR=
NATS_PORT=
NATS_URL=
NATS_WORKER_URL=
PG_PORT=
REPLICAS=1

bench_cleanup()
{
	[[ -n $BENCH_DIR ]] || return 0
	local pidfile
	pg_stop_cluster "$BENCH_DIR/pg"
	for pidfile in "$BENCH_DIR"/nats.pid "$BENCH_DIR"/nats[123].pid; do
		if [[ -s $pidfile ]] && pid_runs "$(cat "$pidfile")" nats-server; then
			stop_pid "$(cat "$pidfile")" TERM
		fi
	done
	if [[ -n ${BENCH_KEEP:-} ]]; then
		say "kept $BENCH_DIR"
	else
		rm -rf "$BENCH_DIR"
	fi
}

# Wait (bounded) until JetStream answers on $NATS_URL: a new cluster first
# elects its meta leader.
wait_for_jetstream()
{
	local i
	for ((i = 0; i < 300; i++)); do
		as_runner "$CONSUME" -i "$NATS_URL" BENCH_PROBE >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "JetStream did not answer on $NATS_URL within 30 s"
}

# Start nats-server and PostgreSQL with the extension created in database
# postgres.  The worker starts disabled (nats_url empty) unless $1 is
# "enabled".  Extra postgresql.conf lines come on stdin.  With
# BENCH_CLUSTER=1, NATS is a 3-node JetStream cluster on loopback instead:
# NATS_WORKER_URL lists all three for the worker, which creates its stream
# R3; NATS_URL (the test helpers') is node 1; REPLICAS=3 is for the
# benchmark's own streams.
bench_start()
{
	local worker=${1:-disabled} url='' conf
	conf=$(cat)

	[[ -x $CONSUME && -x $PUBLISH_RAW ]] ||
		die "test helpers missing: run make in $REPO_ROOT first"
	[[ -f $("$PG_CONFIG" --pkglibdir)/statehub_events.so ]] ||
		die "statehub_events is not installed: run make install first"
	ensure_runner_user

	BENCH_DIR=$(mktemp -d "${TMPDIR:-/tmp}/statehub-bench.XXXXXX")
	trap bench_cleanup EXIT
	mkdir -p "$BENCH_DIR/pg" "$BENCH_DIR/nats" "$BENCH_DIR"/nats{1,2,3}/store
	is_root && chown -R "$(runner_user):" "$BENCH_DIR"

	if [[ ${BENCH_CLUSTER:-0} == 1 ]]; then
		REPLICAS=3
		nats_start_cluster "$BENCH_DIR" statehub_bench
		# the test helpers speak to node 1; the worker gets the whole list
		NATS_URL=nats://127.0.0.1:$(cat "$BENCH_DIR/nats1.port")
		NATS_WORKER_URL=$(nats_cluster_url "$BENCH_DIR")
		conf+=$'\nstatehub_events.stream_replicas = 3'
		wait_for_jetstream
	else
		REPLICAS=1
		start_free NATS_PORT nats_start "$BENCH_DIR/nats" "$BENCH_DIR/nats.pid" "$BENCH_DIR/nats.log"
		NATS_URL=nats://127.0.0.1:$NATS_PORT
		NATS_WORKER_URL=$NATS_URL
	fi

	[[ $worker == enabled ]] && url=$NATS_WORKER_URL
	pg_init_cluster "$BENCH_DIR/pg" <<-EOT
		statehub_events.nats_url = '$url'
		$conf
	EOT
	start_free PG_PORT pg_start_cluster "$BENCH_DIR/pg"
	q "CREATE EXTENSION statehub_events" >/dev/null
	say "PostgreSQL on 127.0.0.1:$PG_PORT, nats-server on $NATS_WORKER_URL, files in $BENCH_DIR"
}

# Run SQL in database postgres; prints the result unaligned, tuples only.
q()
{
	as_runner psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$BENCH_DIR/pg" -p "$PG_PORT" \
		-d postgres -c "$1"
}

# Run pgbench against the benchmark cluster (arguments as pgbench's).
bench_pgbench()
{
	as_runner pgbench -h "$BENCH_DIR/pg" -p "$PG_PORT" "$@" postgres
}

# Set statehub_events.$1 = '$2' in postgresql.conf and reload.
set_guc()
{
	printf "statehub_events.%s = '%s'\n" "$1" "$2" |
		as_runner tee -a "$BENCH_DIR/pg/data/postgresql.conf" >/dev/null
	q "SELECT pg_reload_conf()" >/dev/null
}

# Messages in JetStream stream $1 (0 when it does not exist).
stream_count()
{
	as_runner "$CONSUME" -i "$NATS_URL" "$1" |
		perl -MJSON::PP -ne 'print decode_json($_)->{messages}'
}

# Wait (bounded, $2 seconds) until stream $1 holds at least $3 messages.
wait_stream_count()
{
	local stream=$1 timeout=$2 want=$3 deadline have=0
	deadline=$((SECONDS + timeout))
	while ((SECONDS < deadline)); do
		have=$(stream_count "$stream")
		((have >= want)) && return 0
		sleep 0.05
	done
	die "stream $stream holds $have messages, expected $want"
}

# A tracked table: every insert into t queues one event of type $1, an
# envelope of about 370 bytes like the state hub's lifecycle events.
make_tracked_table()
{
	q "CREATE TABLE t (id bigserial PRIMARY KEY, status text NOT NULL DEFAULT 'new',
	                   repo text NOT NULL DEFAULT 'the-custodian/state-hub',
	                   title text NOT NULL DEFAULT 'Migrate the nightly stale-task sweep to activity-core events',
	                   created_at timestamptz NOT NULL DEFAULT now());
	   SELECT statehub_events.track_insert('t', '$1')" >/dev/null
}

# Queue $1 events through the capture trigger, in transactions of $2 rows.
queue_events()
{
	local n=$1 per=$2 k sql=''
	while ((n > 0)); do
		k=$((n < per ? n : per))
		sql+="INSERT INTO t (status) SELECT 'new' FROM generate_series(1, $k);"
		n=$((n - k))
	done
	q "$sql" >/dev/null
}

# Seconds since the epoch with microseconds.
now()
{
	printf '%s\n' "$EPOCHREALTIME"
}

# Whether a floating point comparison holds: is_true '1.5 > 1'.
is_true()
{
	perl -e "exit(($1) ? 0 : 1)"
}

# Floating point arithmetic: calc '1 / 3'.
calc()
{
	perl -e "printf('%.2f', $1)"
}
