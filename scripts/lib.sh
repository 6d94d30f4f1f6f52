# shellcheck shell=bash
#
# Shared helpers for scripts/test, scripts/local-start and scripts/local-stop.
# Sourced, never run. The caller sets PROG (its name, for messages) first.
#
# Design decisions a reader needs:
# - PostgreSQL 15 from Debian's packages is the only target: its bin directory
#   goes first in PATH and its pg_config is the one PGXS uses, whatever else is
#   installed. Debian's own "main" cluster on 5432 is never used or touched.
#   STATEHUB_PG_BINDIR points at another (relocated) copy of that bin
#   directory, so that two checkouts can install and test side by side.
# - initdb, postgres and PostgreSQL::Test::Cluster refuse to run as root, and
#   CI runs as root: then every server runs as an unprivileged OS user
#   ($STATEHUB_OS_USER, default "statehub") that these helpers create.
# - Servers listen on 127.0.0.1 only, on ports the kernel reports free.

PG_BINDIR=${STATEHUB_PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PG_BINDIR/pg_config
PATH=$PG_BINDIR:$PATH
# UTF8 clusters with English messages, whatever the machine's locale is; the
# expected outputs depend on both. C.UTF-8 is built into Debian 12's glibc.
LANG=C.UTF-8
LC_ALL=C.UTF-8
export PG_CONFIG PATH LANG LC_ALL

STATEHUB_OS_USER=${STATEHUB_OS_USER:-statehub}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say()
{
	printf '%s: %s\n' "$PROG" "$*" >&2
}

die()
{
	say "error: $*"
	exit 1
}

is_root()
{
	[[ $(id -u) -eq 0 ]]
}

# Run a command with root rights: directly as root, through sudo otherwise.
as_root()
{
	if is_root; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo -- "$@"
	else
		die "\"$*\" needs root rights: run as root or install sudo"
	fi
}

# The OS user the servers run as: the caller itself, or the unprivileged user
# when the caller is root.
runner_user()
{
	if is_root; then
		printf '%s\n' "$STATEHUB_OS_USER"
	else
		id -un
	fi
}

# Create the unprivileged user when running as root and it is missing.
ensure_runner_user()
{
	is_root || return 0
	id -u "$STATEHUB_OS_USER" >/dev/null 2>&1 && return 0
	say "creating unprivileged OS user \"$STATEHUB_OS_USER\" to run the servers"
	useradd --system --user-group --create-home \
		--home-dir "/var/lib/$STATEHUB_OS_USER" --shell /usr/sbin/nologin \
		"$STATEHUB_OS_USER"
}

# Run a command as the runner user, with the environment the build and the
# tests need passed explicitly (runuser does not keep PATH reliably).
as_runner()
{
	if is_root; then
		local home
		home=$(getent passwd "$STATEHUB_OS_USER" | cut -d: -f6)
		runuser -u "$STATEHUB_OS_USER" -- env \
			HOME="$home" USER="$STATEHUB_OS_USER" LOGNAME="$STATEHUB_OS_USER" \
			PATH="$PATH" PG_CONFIG="$PG_CONFIG" LANG="$LANG" LC_ALL="$LC_ALL" \
			TMPDIR="${TMPDIR:-/tmp}" "$@"
	else
		"$@"
	fi
}

# Install missing Debian packages (scripts/install-deps is idempotent and
# quiet when nothing is missing).
install_deps()
{
	"$REPO_ROOT/scripts/install-deps"
}

# Print a TCP port on 127.0.0.1 that nothing listens on right now.
free_port()
{
	perl -MIO::Socket::INET -e '
		my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1",
									  LocalPort => 0, ReuseAddr => 1)
			or die "could not bind a free port: $!\n";
		print $s->sockport, "\n";'
}

# Whether something accepts TCP connections on 127.0.0.1:$1 right now.
port_accepts()
{
	perl -MIO::Socket::INET -e 'exit(IO::Socket::INET->new(
			PeerAddr => "127.0.0.1", PeerPort => $ARGV[0]) ? 0 : 1)' "$1"
}

# Wait (bounded) until something accepts TCP connections on 127.0.0.1:$1.
wait_for_port()
{
	local port=$1 what=$2 i
	for ((i = 0; i < 300; i++)); do
		port_accepts "$port" && return 0
		sleep 0.1
	done
	die "$what did not accept connections on 127.0.0.1:$port within 30 s"
}

# Start nats-server with JetStream on 127.0.0.1:$2 as the runner user, in a
# session of its own, its store in $1, its pid in $3 and its log in $4; wait
# (bounded) until it wrote its pid and accepts connections. Returns 2 when the
# server exited because the port was taken (picked free, bound by another
# process in between), so the caller can try another port; dies on any other
# failure, showing the log. Arguments after $4 go to nats-server as they are
# (a cluster node's --name, --cluster_name, --cluster and --routes).
nats_start()
{
	local store=$1 port=$2 pidfile=$3 log=$4 launcher i offset new
	shift 4
	rm -f "$pidfile"
	: >>"$log"
	offset=$(stat -c %s "$log")
	is_root && chown "$(runner_user):" "$log"
	as_runner setsid nats-server -js -a 127.0.0.1 -p "$port" -sd "$store" \
		-P "$pidfile" -l "$log" "$@" </dev/null >/dev/null 2>&1 &
	launcher=$!
	# Ready means this server said so and still runs: a port that accepts
	# connections alone may be another process's.
	for ((i = 0; i < 300; i++)); do
		new=$(tail -c +$((offset + 1)) "$log")
		[[ $new == *'address already in use'* ]] && return 2
		kill -0 "$launcher" 2>/dev/null || break
		if [[ -s $pidfile && $new == *'Server is ready'* ]] && port_accepts "$port"; then
			return 0
		fi
		sleep 0.1
	done
	tail -n 20 "$log" >&2
	die "nats-server did not start on 127.0.0.1:$port within 30 s (log: $log)"
}

# Start a 3-node nats-server -js cluster on loopback, as nats_start does one
# server: node N (1..3) has its store in $1/natsN/store (the caller creates
# it), its log in $1/natsN/nats.log, its pid in $1/natsN.pid and its client
# port in $1/natsN.port; server names $2_N, cluster name $2, routes between
# all three on free ports.
nats_start_cluster()
{
	local dir=$1 name=$2 i j port routes
	local -a route_ports
	route_ports=("$(free_port)" "$(free_port)" "$(free_port)")
	for ((i = 1; i <= 3; i++)); do
		routes=()
		for ((j = 1; j <= 3; j++)); do
			((j == i)) || routes+=("nats-route://127.0.0.1:${route_ports[j - 1]}")
		done
		start_free port nats_start "$dir/nats$i/store" "$dir/nats$i.pid" \
			"$dir/nats$i/nats.log" --name "${name}_$i" --cluster_name "$name" \
			--cluster "nats://127.0.0.1:${route_ports[i - 1]}" \
			--routes "$(IFS=,; echo "${routes[*]}")"
		echo "$port" >"$dir/nats$i.port"
	done
}

# The client URLs of the cluster nats_start_cluster started in $1.
nats_cluster_url()
{
	local i urls=()
	for ((i = 1; i <= 3; i++)); do
		urls+=("nats://127.0.0.1:$(cat "$1/nats$i.port")")
	done
	(
		IFS=,
		echo "${urls[*]}"
	)
}

# Start a server on a free port: run "$2 $3 PORT $4..." (nats_start or
# pg_start_cluster) with a port picked free, and again with another one while
# it reports the port taken at bind time; the port used is left in the
# variable named $1.
start_free()
{
	local -n port_var=$1
	local start=$2 first=$3 try rc
	shift 3
	for try in 1 2 3 4 5; do
		port_var=$(free_port)
		rc=0
		"$start" "$first" "$port_var" "$@" || rc=$?
		((rc == 0)) && return 0
		say "port $port_var was taken before the server bound it; trying another"
	done
	die "$start: no free port in 5 tries"
}

# Whether "make install" can write PostgreSQL's library and extension dirs.
pg_install_dirs_writable()
{
	[[ -w $("$PG_CONFIG" --pkglibdir) && -w $("$PG_CONFIG" --sharedir)/extension ]]
}

# Build in directory $1 (as the runner user when $2 is "runner", else as the
# caller), then install from there, as root when PostgreSQL's directories
# need it.
build_and_install()
{
	local dir=$1 builder=${2:-self} jobs run=()
	jobs=$(nproc 2>/dev/null || echo 2)
	[[ $builder == runner ]] && run=(as_runner)
	say "building in $dir"
	"${run[@]}" make -C "$dir" -j"$jobs" PG_CONFIG="$PG_CONFIG" >/dev/null \
		|| die "build failed (make in $dir)"
	say "installing into $("$PG_CONFIG" --pkglibdir)"
	if pg_install_dirs_writable; then
		make -C "$dir" PG_CONFIG="$PG_CONFIG" install >/dev/null
	else
		as_root make -C "$dir" PG_CONFIG="$PG_CONFIG" install >/dev/null
	fi || die "make install failed"
}

# initdb a UTF8 cluster into $1/data (as the runner user) with the extension
# preloaded, listening on 127.0.0.1 only, its socket in $1. Extra
# postgresql.conf lines come on stdin.
pg_init_cluster()
{
	local dir=$1
	as_runner initdb --pgdata="$dir/data" --auth=trust --encoding=UTF8 \
		--locale=C.UTF-8 --no-sync --no-instructions >"$dir/initdb.log" 2>&1 \
		|| { cat "$dir/initdb.log" >&2; die "initdb failed in $dir/data"; }
	{
		printf '%s\n' \
			"# added by $PROG" \
			"listen_addresses = '127.0.0.1'" \
			"unix_socket_directories = '$dir'" \
			"shared_preload_libraries = 'statehub_events'" \
			"statehub_events.database = 'postgres'"
		cat
	} | as_runner tee -a "$dir/data/postgresql.conf" >/dev/null
}

# Start the cluster in $1/data on port $2, logging to $1/postgres.log; wait
# until it accepts connections. Returns 2 when the port was taken at bind time
# (see nats_start); dies on any other failure, showing the log.
pg_start_cluster()
{
	local dir=$1 port=$2 offset
	# unix socket paths are limited to 107 bytes
	((${#dir} < 90)) || die "socket directory path too long: $dir"
	offset=$(stat -c %s "$dir/postgres.log" 2>/dev/null || echo 0)
	as_runner pg_ctl --pgdata="$dir/data" --log="$dir/postgres.log" \
		--options="-p $port" --wait --timeout=60 start >/dev/null 2>&1 && return 0
	tail -c +$((offset + 1)) "$dir/postgres.log" 2>/dev/null |
		grep -qi 'could not bind.*address already in use' && return 2
	tail -n 30 "$dir/postgres.log" >&2
	die "PostgreSQL did not start (log: $dir/postgres.log)"
}

# Fast-stop the cluster in $1/data if it runs.
pg_stop_cluster()
{
	local dir=$1
	[[ -f $dir/data/postmaster.pid ]] || return 0
	as_runner pg_ctl --pgdata="$dir/data" --mode=fast --wait --timeout=60 stop \
		>/dev/null 2>&1 || say "warning: could not stop PostgreSQL in $dir/data"
}

# Whether pid $1 is alive and runs the program $2 (guards against a pid that
# was recycled since it was recorded).
pid_runs()
{
	local pid=$1 comm=$2
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/comm ]] || return 1
	[[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]
}

# Whether pid $1 still runs (a zombie waiting to be reaped does not).
pid_alive()
{
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat%% *} != Z ]]
}

# Send signal $2 to pid $1 and wait (bounded) until it is gone.
stop_pid()
{
	local pid=$1 sig=$2 comm i
	comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 0
	kill -s "$sig" "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 600; i++)); do
		pid_alive "$pid" || return 0
		sleep 0.1
	done
	say "warning: pid $pid ($comm) ignored SIG$sig for 60 s; killing it"
	kill -s KILL "$pid" 2>/dev/null || true
}
