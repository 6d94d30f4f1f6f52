/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The delivery worker: a background worker that drains
 *		statehub_events.outbox into NATS JetStream.
 *
 * One worker, connected to statehub_events.database, started once
 * recovery has finished.  Its loop sleeps on its latch; a commit that
 * queued events sets the latch (shmem.c), poll_interval is the safety net.
 *
 * Batches are pipelined, so that JetStream stores one batch while the
 * database works on the next.  Each round: one transaction, in worker_spi's
 * order, scans up to batch_size events oldest first (skipping those of the
 * batch in flight and of the answered one), moves rows that can never be
 * published to the dead letters, settles the answered batch (delete what
 * was acked, reschedule what JetStream rejected with exponential backoff,
 * dead letter after max_attempts) and commits.  Then, with no transaction
 * open, the worker collects the acks of the batch in flight, which came in
 * meanwhile (it becomes the answered batch), and publishes the scanned
 * batch asynchronously (nats_client.c): it is in flight until the next
 * round.  No snapshot or lock is ever held while waiting for NATS.
 * Nothing is deleted before its ack, and a crash between publish and the
 * commit that settles only re-publishes events with their Nats-Msg-Id,
 * which the stream drops as duplicates; so the worker commits with
 * synchronous_commit off.  Connection-level failures (not connected,
 * acks timed out) burn no attempts: the events stay as they were, the
 * worker backs off; a batch in flight while the worker cannot publish is
 * settled on its own (what was acked is deleted).  (Measured with batches
 * of 1000 on 2 cores: done in sequence, a batch took about 27 ms, 3 of
 * them database work with NATS idle, 23 publishing and waiting for
 * JetStream with the database idle.)
 *
 * Order.  One connection carries the events in id order, and JetStream
 * stores them in the order they arrive, so the stream's order is the id
 * order as long as nothing goes out behind an event that may have to be
 * published again.  Hence only one batch is in flight: a batch is
 * published only once every event before it has an answer, and after a
 * connection-level failure nothing new is published until a scan from the
 * cursor, which is at or below the first unanswered event, publishes
 * again from there.  Deleting is only ever of acked events, whose place in
 * the stream is fixed; an unanswered one stays queued, in order.  For the
 * same reason cnats may not reconnect by itself (it would resend what it
 * had buffered after events lost with the old connection): a broken
 * connection is closed and replaced by a new one (nats_client.c).
 *
 * The batch in flight spans two rounds, and no lock is held between
 * them.  So each transaction checks that the outbox is still the table
 * scanned before (same relfilenode): one dropped and created again, or
 * truncated, may reuse the ids.  If it is not, the batch in flight is
 * forgotten unsettled and the cursor starts again at 0.  Forgotten also
 * when the connection is replaced (settings reloaded): nothing of it is
 * deleted, the cursor goes back to its first event, and what the stream
 * already has is dropped when it is published again.
 *
 * The scan cursor (cursor.c) says where each scan starts; its invariant,
 * stated and kept there, is that every id below it was seen and handled or
 * can never appear.  Events of the batches in flight and answered count as
 * handled; an event that ends without an answer lowers the cursor to it.
 *
 * Retries.  The scan does not filter on next_attempt_at: rows that are not
 * due yet are seen, skipped, and their due time kept (retry_due_at), and
 * the cursor moves on past them.  When the earliest one is due, the round
 * also runs the retry query, which finds the due rows below the cursor
 * through the partial index on next_attempt_at, and puts them in front of
 * the scanned rows (their ids are all below the cursor, so the batch stays
 * in id order); the cursor does not move for them, so a large set of
 * retrying rows costs each good event nothing but its share of the index.
 *
 * Errors.  A round is one unit of recovery (statehub_worker_main): an
 * ERROR aborts its transaction, the batches are forgotten (the cursor goes
 * back to their first events), the error is logged once, and the worker
 * backs off and goes on.  Only SIGTERM or postmaster death end it.
 *
 * Every SQL statement is schema-qualified and the session's search_path is
 * pg_catalog.  Locks on the outbox and dead letters are only tried, never
 * waited for, so DROP EXTENSION is never stuck behind the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "utils/wait_event.h"

#include "catalog_checks.h"
#include "cursor.h"
#include "envelope.h"
#include "nats_client.h"
#include "shmem.h"
#include "statehub_events.h"

/*
 * A published event that was the first without an answer when the
 * connection to NATS was lost this many times in a row is taken for poison
 * (something about it makes the server drop the connection) and goes to
 * the dead letters.  An outage loses the connection once, whatever event
 * was first, and failed reconnects publish nothing, so they do not count;
 * five losses in a row on the same event, each after a successful
 * reconnect, are not the network.  Small, so one bad row stalls delivery
 * for seconds (the reconnect backoff), not forever.
 */
#define POISON_LOSSES 5

/* Back-off after an ERROR in a round: doubles from the first to the last. */
#define MIN_ERROR_BACKOFF_MS 1000
#define MAX_ERROR_BACKOFF_MS 10000

/* First connection retry; doubles up to retry_backoff_max. */
#define MIN_CONNECT_BACKOFF_MS 100

/*
 * Longest wait between connection attempts (or retry_backoff_max when that
 * is shorter): an outage should end in seconds once NATS is back.
 */
#define MAX_CONNECT_BACKOFF_MS 2000

/* What became of a batch. */
typedef enum BatchResult
{
	BATCH_DONE,					/* saw every ready event from the cursor on */
	BATCH_FULL,					/* a full batch: more may be waiting */
	BATCH_FAILED,				/* connection-level failure */
	BATCH_SKIPPED				/* no extension, or the outbox is locked */
} BatchResult;

/* One published row of a batch. */
typedef struct BatchRow
{
	int64		id;
	int32		attempts;
} BatchRow;

/*
 * The events one scan took for publishing, rows[i] published as events[i],
 * in id order.  Three of these take turns: scanned, in flight and
 * answered (see below).  Everything lives in cxt, reset once the batch is
 * settled or dropped.
 */
typedef struct Batch
{
	MemoryContext cxt;
	BatchRow   *rows;
	StatehubPubEvent *events;
	int			n;
	TimestampTz published_at;
} Batch;

/* What settling a batch found, for one transaction. */
typedef struct Settled
{
	int64	   *acked_ids;
	int			nacked;
	int			nrejected;
	int64		unanswered;		/* lowest id without an answer, or none */
} Settled;

static TimestampTz retry_due_at = DT_NOEND;
static Oid	scanned_node = InvalidOid;	/* the outbox's relfilenode */

/* Plans, prepared once and kept. */
static SPIPlanPtr scan_plan = NULL;
static SPIPlanPtr due_plan = NULL;
static SPIPlanPtr next_due_plan = NULL;
static SPIPlanPtr delete_ids_plan = NULL;
static SPIPlanPtr delete_range_plan = NULL;
static SPIPlanPtr retry_plan = NULL;
static SPIPlanPtr dead_letter_plan = NULL;

/* Connection state. */
static StatehubWorkerStateCode state = STATEHUB_WORKER_NOT_RUNNING;
static uint32 connection_settings = 0;
static uint32 stream_settings = 0;
static bool stream_checked = false;
static bool stream_missing = false;	/* warned about it */
static int	backoff_ms = 0;
static TimestampTz next_attempt_at = 0;

static MemoryContext loop_context = NULL;

static void forget_in_flight(void);

/*
 * The pipeline's batches (see the file header): scanned by this round's
 * transaction and published after its commit; in flight, published and
 * waiting for acks; answered, its acks collected, to be settled by the
 * next transaction.  Each is NULL when there is none.
 */
static Batch batches[3];
static Batch *scanned = NULL;
static Batch *in_flight = NULL;
static Batch *answered = NULL;

/* The poison guard (POISON_LOSSES): the suspect and its losses so far. */
static int64 suspect_id = -1;
static int	suspect_losses = 0;
static int64 poison_id = -1;	/* to dead-letter when settled */

/* The last scan was full: the next round must scan again. */
static bool scan_more = true;

/* Errors of rounds: back-off, and the last one logged (logged once). */
static int	error_backoff_ms = 0;
static char last_round_error[STATEHUB_ERROR_LEN];

/*
 * Register the worker; called from _PG_init while preloading.
 */
void
statehub_register_worker(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "statehub_events");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "statehub_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "statehub_events worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "statehub_events worker");
	worker.bgw_main_arg = (Datum) 0;
	worker.bgw_notify_pid = 0;
	RegisterBackgroundWorker(&worker);
}

/* ---------------------------------------------------------------------
 * Shared state
 * ---------------------------------------------------------------------
 */

/*
 * Change the published state; log each change once (not every retry).
 * error, when given, becomes the last error.
 */
static void
set_state(StatehubWorkerStateCode new_state, const char *error)
{
	StatehubWorkerStateCode old_state = state;
	char		server[STATEHUB_SERVER_LEN];

	if (new_state == STATEHUB_WORKER_CONNECTED)
		statehub_nats_server(server, sizeof(server));
	else
		statehub_nats_mask_url(statehub_nats_url, server, sizeof(server));

	SpinLockAcquire(&statehub_shared->mutex);
	statehub_shared->state = new_state;
	strlcpy(statehub_shared->server, server, sizeof(statehub_shared->server));
	if (error != NULL)
	{
		strlcpy(statehub_shared->last_error, error,
				sizeof(statehub_shared->last_error));
		statehub_shared->last_error_at = GetCurrentTimestamp();
	}
	SpinLockRelease(&statehub_shared->mutex);

	state = new_state;
	if (old_state == new_state)
		return;

	switch (new_state)
	{
		case STATEHUB_WORKER_CONNECTED:
			ereport(LOG,
					(errmsg("statehub_events worker connected to NATS server \"%s\"",
							server)));
			break;
		case STATEHUB_WORKER_BACKOFF:
			ereport(LOG,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("statehub_events worker could not deliver events to NATS, retrying"),
					 error ? errdetail_internal("%s", error) : 0,
					 errhint("Events stay queued in statehub_events.outbox meanwhile.")));
			break;
		case STATEHUB_WORKER_DISABLED:
			ereport(LOG,
					(errmsg("statehub_events worker is disabled because statehub_events.nats_url is empty"),
					 errdetail("Events stay queued in statehub_events.outbox until a URL is set.")));
			break;
		default:
			break;
	}
}

/* Record an error that does not change the state (a rejected event...). */
static void
record_error(const char *error)
{
	SpinLockAcquire(&statehub_shared->mutex);
	strlcpy(statehub_shared->last_error, error,
			sizeof(statehub_shared->last_error));
	statehub_shared->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&statehub_shared->mutex);
}

/* Exit callback: close NATS, tell everyone no worker runs. */
static void
worker_exit(int code, Datum arg)
{
	statehub_nats_close();
	statehub_shmem_worker_stopped();
}

/* ---------------------------------------------------------------------
 * Settings
 * ---------------------------------------------------------------------
 */

/* Pin the session settings the worker's SQL relies on. */
static void
set_session_options(void)
{
	/* a lost DELETE only re-publishes, and the stream drops the duplicate */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("search_path", "pg_catalog", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_isolation", "read committed",
					PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off",
					PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The worker bounds its own waits: it only tries table locks, and a row
	 * lock a DBA holds on a queued event gets lock_timeout.  The round then
	 * fails, is logged, and is tried again after a back-off, so the timeout
	 * can be short: the worker never queues for long behind a DBA, and the
	 * status view shows why it stalls.  A database's statement_timeout
	 * must not apply to it.
	 */
	SetConfigOption("lock_timeout", "2s", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
}

static uint32
stream_settings_hash(void)
{
	char		buf[1024];

	snprintf(buf, sizeof(buf), "%s|%s|%d|%d|%d", statehub_stream_name,
			 statehub_stream_subjects, (int) statehub_stream_create,
			 statehub_stream_replicas, statehub_dedup_window);
	return hash_bytes((const unsigned char *) buf, strlen(buf));
}

/*
 * Reread the configuration file; reconnect only if a connection setting
 * changed, look at the stream again if a stream setting changed.
 */
static void
reload_settings(void)
{
	uint32		h;

	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);

	h = statehub_nats_settings_hash();
	if (h != connection_settings)
	{
		connection_settings = h;
		/* its acks would come on the connection we are closing */
		forget_in_flight();
		statehub_nats_close();
		stream_checked = false;
		backoff_ms = 0;
		next_attempt_at = 0;
		if (state != STATEHUB_WORKER_NOT_RUNNING &&
			statehub_nats_url != NULL && statehub_nats_url[0] != '\0')
			ereport(LOG,
					(errmsg("statehub_events worker reconnects to NATS because its connection settings changed")));
	}
	h = stream_settings_hash();
	if (h != stream_settings)
	{
		stream_settings = h;
		stream_checked = false;
	}
}

/* ---------------------------------------------------------------------
 * Connection
 * ---------------------------------------------------------------------
 */

/* Back off after a connection-level failure; returns the wait in ms. */
static long
back_off(const char *error)
{
	if (backoff_ms == 0)
		backoff_ms = MIN_CONNECT_BACKOFF_MS;
	else
		backoff_ms = Min((int64) backoff_ms * 2,
						 Min((int64) statehub_retry_backoff_max, MAX_CONNECT_BACKOFF_MS));
	next_attempt_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), backoff_ms);
	set_state(STATEHUB_WORKER_BACKOFF, error);
	return backoff_ms;
}

/* Milliseconds until ts, at least 1. */
static long
ms_until(TimestampTz ts)
{
	TimestampTz now = GetCurrentTimestamp();

	if (ts <= now)
		return 1;
	return (long) Min((ts - now) / 1000 + 1, (int64) 3600 * 1000);
}

/*
 * Get to a connected state with the stream checked.  Returns 0 when ready
 * to publish, else how long to wait before trying again (ms).
 */
static long
ensure_connected(void)
{
	char		error[STATEHUB_ERROR_LEN];
	int64		dedup_window_us;
	bool		missing;
	bool		fresh = false;

	if (statehub_nats_url == NULL || statehub_nats_url[0] == '\0')
	{
		statehub_nats_close();
		set_state(STATEHUB_WORKER_DISABLED, NULL);
		return statehub_poll_interval;
	}

	if (statehub_nats_reconnecting())
	{
		/* the connection is going down; its closed callback sets our latch */
		set_state(STATEHUB_WORKER_BACKOFF, "connection to NATS lost, reconnecting");
		return statehub_poll_interval;
	}

	if (!statehub_nats_connected())
	{
		if (GetCurrentTimestamp() < next_attempt_at)
			return ms_until(next_attempt_at);
		/* retries keep the state "backoff": it is logged once */
		if (state != STATEHUB_WORKER_BACKOFF)
			set_state(STATEHUB_WORKER_CONNECTING, NULL);
		pgstat_report_activity(STATE_RUNNING, "connecting to NATS");
		if (statehub_nats_connect(error, sizeof(error)) != STATEHUB_NATS_OK)
		{
			pgstat_report_activity(STATE_IDLE, NULL);
			return back_off(error);
		}
		pgstat_report_activity(STATE_IDLE, NULL);
		stream_checked = false;
		fresh = true;
	}

	if (!stream_checked)
	{
		if (statehub_nats_check_stream(error, sizeof(error), &dedup_window_us,
									   &missing) != STATEHUB_NATS_OK)
			return back_off(error);
		SpinLockAcquire(&statehub_shared->mutex);
		strlcpy(statehub_shared->stream, statehub_stream_name,
				sizeof(statehub_shared->stream));
		statehub_shared->dedup_window_us = dedup_window_us;
		SpinLockRelease(&statehub_shared->mutex);
		if (missing && !stream_missing)
			ereport(WARNING,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("NATS JetStream stream \"%s\" does not exist",
							statehub_stream_name),
					 errdetail("Events on its subjects wait in statehub_events.outbox until it exists."),
					 errhint("Create the stream, or set statehub_events.stream_create to on.")));
		if (missing)
			record_error(error);
		stream_missing = missing;
		stream_checked = true;
	}

	if (GetCurrentTimestamp() < next_attempt_at)
		return ms_until(next_attempt_at);

	/*
	 * After a failed batch on a live connection the state stays "backoff"
	 * until a batch succeeds; a new connection is "connected" at once.
	 */
	if (state != STATEHUB_WORKER_CONNECTED &&
		(state != STATEHUB_WORKER_BACKOFF || fresh))
		set_state(STATEHUB_WORKER_CONNECTED, NULL);
	return 0;
}

/* ---------------------------------------------------------------------
 * Batches
 * ---------------------------------------------------------------------
 */

static SPIPlanPtr
prepare(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

static void
prepare_plans(void)
{
	Oid			scan_types[2] = {INT8OID, INT8OID};
	Oid			due_types[3] = {INT8OID, INT8OID, TIMESTAMPTZOID};
	Oid			next_due_types[1] = {TIMESTAMPTZOID};
	Oid			ids_types[1] = {INT8ARRAYOID};
	Oid			range_types[2] = {INT8OID, INT8OID};
	Oid			retry_types[4] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID,
	TIMESTAMPTZARRAYOID};
	Oid			dead_types[4] = {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID,
	TIMESTAMPTZARRAYOID};

	if (scan_plan != NULL)
		return;

	scan_plan = prepare("SELECT id, event_id, subject, payload, attempts, next_attempt_at"
						" FROM statehub_events.outbox"
						" WHERE id >= $1 ORDER BY id LIMIT $2",
						2, scan_types);

	/*
	 * Due retries below the cursor, through the partial index on
	 * next_attempt_at (the materialized CTE keeps the planner from walking
	 * the primary key in id order instead), the first $2 by id.
	 */
	due_plan = prepare("WITH due AS MATERIALIZED ("
					   "  SELECT id FROM statehub_events.outbox"
					   "   WHERE next_attempt_at OPERATOR(pg_catalog.<=) $3"
					   "     AND id OPERATOR(pg_catalog.<) $1)"
					   " SELECT id, event_id, subject, payload, attempts, next_attempt_at"
					   " FROM statehub_events.outbox"
					   " WHERE id IN (SELECT id FROM due ORDER BY id LIMIT $2)"
					   " ORDER BY id",
					   3, due_types);
	next_due_plan = prepare("SELECT pg_catalog.min(next_attempt_at)"
							" FROM statehub_events.outbox"
							" WHERE next_attempt_at OPERATOR(pg_catalog.>) $1",
							1, next_due_types);
	delete_ids_plan = prepare("DELETE FROM statehub_events.outbox"
							  " WHERE id = ANY ($1)",
							  1, ids_types);
	delete_range_plan = prepare("DELETE FROM statehub_events.outbox"
								" WHERE id BETWEEN $1 AND $2",
								2, range_types);
	retry_plan = prepare("UPDATE statehub_events.outbox o"
						 "   SET attempts = r.attempts, last_error = r.error,"
						 "       next_attempt_at = r.next_attempt_at"
						 "  FROM unnest($1, $2, $3, $4)"
						 "       AS r(id, attempts, error, next_attempt_at)"
						 " WHERE o.id = r.id",
						 4, retry_types);
	dead_letter_plan = prepare("WITH r AS ("
							   "  SELECT * FROM unnest($1, $2, $3, $4)"
							   "         AS r(id, attempts, reason, failed_at)"
							   "), gone AS ("
							   "  DELETE FROM statehub_events.outbox o USING r"
							   "   WHERE o.id = r.id"
							   "  RETURNING o.id, o.event_id, o.subject, o.payload,"
							   "            o.enqueued_at, r.attempts, r.failed_at, r.reason"
							   ")"
							   " INSERT INTO statehub_events.dead_letter"
							   "   (id, event_id, subject, payload, enqueued_at,"
							   "    attempts, failed_at, reason)"
							   " SELECT id, event_id, subject, payload, enqueued_at,"
							   "        attempts, failed_at, reason FROM gone",
							   4, dead_types);
}

/*
 * Lock the outbox and the dead letters for this transaction if that can be
 * done without waiting, and report the outbox's relfilenode.  False when
 * the extension is not there (not yet created, being dropped) or someone
 * holds a conflicting lock.
 */
static bool
lock_tables(Oid *outbox_node)
{
	Oid			nspid;
	Oid			relids[2];
	int			i;

	if (!OidIsValid(get_extension_oid("statehub_events", true)))
		return false;
	nspid = get_namespace_oid(STATEHUB_SCHEMA, true);
	if (!OidIsValid(nspid))
		return false;
	relids[0] = get_relname_relid("outbox", nspid);
	relids[1] = get_relname_relid("dead_letter", nspid);
	for (i = 0; i < 2; i++)
	{
		HeapTuple	tup;

		if (!OidIsValid(relids[i]) ||
			!ConditionalLockRelationOid(relids[i], RowExclusiveLock))
			return false;
		/* dropped while we got the lock? (locks are held to commit) */
		tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relids[i]));
		if (!HeapTupleIsValid(tup))
			return false;
		if (i == 0)
			*outbox_node = ((Form_pg_class) GETSTRUCT(tup))->relfilenode;
		ReleaseSysCache(tup);
	}
	return true;
}

static void
execute(SPIPlanPtr plan, Datum *values)
{
	int			rc = SPI_execute_plan(plan, values, NULL, false, 0);

	if (rc < 0)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
}

/*
 * Rows to reschedule or to move to the dead letters, as the array
 * parameters of retry_plan / dead_letter_plan: id, attempts, the reason,
 * and (retries only) when to try again.
 */
typedef struct RowUpdates
{
	Datum	   *ids;
	Datum	   *attempts;
	Datum	   *reasons;
	Datum	   *due;
	int			n;
	char	   *first_reason;
} RowUpdates;

static void
init_updates(RowUpdates *u, int size)
{
	size = Max(size, 1);
	u->ids = palloc(sizeof(Datum) * size);
	u->attempts = palloc(sizeof(Datum) * size);
	u->reasons = palloc(sizeof(Datum) * size);
	u->due = palloc(sizeof(Datum) * size);
	u->n = 0;
	u->first_reason = NULL;
}

static void
add_update(RowUpdates *u, int64 id, int32 attempts, char *reason,
		   TimestampTz due)
{
	u->ids[u->n] = Int64GetDatum(id);
	u->attempts[u->n] = Int32GetDatum(attempts);
	u->reasons[u->n] = CStringGetTextDatum(reason);
	u->due[u->n] = TimestampTzGetDatum(due);
	if (u->n == 0)
		u->first_reason = reason;
	u->n++;
}

static Datum
make_array(Datum *elems, int n, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(elems, n, elemtype, typlen,
										   typbyval, typalign));
}

/* Run retry_plan or dead_letter_plan over the collected rows. */
static void
apply_updates(SPIPlanPtr plan, RowUpdates *u)
{
	Datum		values[4];

	if (u->n == 0)
		return;
	values[0] = make_array(u->ids, u->n, INT8OID);
	values[1] = make_array(u->attempts, u->n, INT4OID);
	values[2] = make_array(u->reasons, u->n, TEXTOID);
	values[3] = make_array(u->due, u->n, TIMESTAMPTZOID);
	execute(plan, values);
}

static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * Delete acked events.  Once the ids are sorted, a contiguous run makes a
 * range delete exact (ids are unique, so every id inside the range is an
 * acked one) and cheaper than = ANY.  They come sorted per batch, but two
 * batches settled together may interleave.
 */
static void
delete_acked(int64 *ids, int n)
{
	Datum		values[2];

	if (n == 0)
		return;
	qsort(ids, n, sizeof(int64), cmp_int64);
	if (ids[n - 1] - ids[0] + 1 == n)
	{
		values[0] = Int64GetDatum(ids[0]);
		values[1] = Int64GetDatum(ids[n - 1]);
		execute(delete_range_plan, values);
	}
	else
	{
		Datum	   *elems = palloc(sizeof(Datum) * n);
		int			i;

		for (i = 0; i < n; i++)
			elems[i] = Int64GetDatum(ids[i]);
		values[0] = make_array(elems, n, INT8OID);
		execute(delete_ids_plan, values);
	}
}

/* Delay before the retry that follows the attempts-th rejection. */
static int64
retry_delay_ms(int attempts)
{
	int64		delay = statehub_retry_backoff_base;
	int			i;

	for (i = 1; i < attempts && delay < statehub_retry_backoff_max; i++)
		delay *= 2;
	return Min(delay, (int64) statehub_retry_backoff_max);
}

/* A batch that is none of the pipeline's, emptied for the next scan. */
static Batch *
spare_batch(void)
{
	Batch	   *b = NULL;
	int			i;

	for (i = 0; i < lengthof(batches); i++)
	{
		b = &batches[i];
		if (b != in_flight && b != answered && b != scanned)
			break;
	}
	if (b->cxt == NULL)
		b->cxt = AllocSetContextCreate(TopMemoryContext,
									   "statehub_events worker batch",
									   ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(b->cxt);
	b->rows = NULL;
	b->events = NULL;
	b->n = 0;
	return b;
}

/*
 * Drop a batch of the pipeline without settling it: nothing of it is
 * deleted, and the cursor goes back to its first event, so all of it is
 * published again (the stream drops what it already holds).
 */
static void
drop_batch(Batch **b)
{
	if (*b == NULL)
		return;
	if ((*b)->n > 0)
		statehub_cursor_lower((*b)->rows[0].id);
	MemoryContextReset((*b)->cxt);
	*b = NULL;
}

/* Milliseconds left of publish_timeout for the batch in flight, at least 1. */
static int
in_flight_wait_ms(void)
{
	TimestampTz deadline;

	if (!statehub_nats_connected())
		return 1;				/* no ack can come any more */
	deadline = TimestampTzPlusMilliseconds(in_flight->published_at,
										   statehub_publish_timeout);
	return (int) ms_until(deadline);
}

/*
 * Give up on the batch in flight without settling it.  For when it cannot
 * be settled safely: the outbox is not the table it was scanned from, or
 * the connection it went out on is being replaced.
 */
static void
forget_in_flight(void)
{
	char		error[STATEHUB_ERROR_LEN];

	if (in_flight == NULL)
		return;
	/* detaches it from the ack handler */
	(void) statehub_nats_publish_wait(in_flight->events, in_flight->n, 1,
									  error, sizeof(error));
	drop_batch(&in_flight);
}

/*
 * Sort the answered events of a finished batch into what the transaction
 * must do: delete the acked, reschedule or dead-letter the rejected, and
 * dead-letter the poison suspect; the lowest unanswered id keeps the
 * cursor at or below it.
 */
static void
settle_batch(Batch *b, TimestampTz now, Settled *out, RowUpdates *retry,
			 RowUpdates *dead)
{
	int			i;

	for (i = 0; i < b->n; i++)
	{
		BatchRow   *row = &b->rows[i];
		StatehubPubEvent *ev = &b->events[i];

		switch ((StatehubPubOutcome) ev->outcome)
		{
			case STATEHUB_PUB_ACKED:
				out->acked_ids[out->nacked++] = row->id;
				break;
			case STATEHUB_PUB_REJECTED:
				out->nrejected++;
				if (row->attempts + 1 >= statehub_max_attempts)
					add_update(dead, row->id, row->attempts + 1,
							   pstrdup(ev->error), now);
				else
				{
					int64		delay = retry_delay_ms(row->attempts + 1);
					TimestampTz due = TimestampTzPlusMilliseconds(now, delay);

					add_update(retry, row->id, row->attempts + 1,
							   pstrdup(ev->error), due);
					retry_due_at = Min(retry_due_at, due);
				}
				break;
			case STATEHUB_PUB_PENDING:
				if (row->id == poison_id)
				{
					out->nrejected++;
					add_update(dead, row->id, row->attempts + 1,
							   psprintf("suspected poison: the connection to NATS was lost %d times in a row with this event the first without an answer",
										POISON_LOSSES),
							   now);
					poison_id = -1;
					suspect_id = -1;
					suspect_losses = 0;
					break;
				}
				/* no answer: stays as it is, and the cursor stays below it */
				out->unanswered = Min(out->unanswered, row->id);
				break;
		}
	}
}

/*
 * Why an event can never be published, or NULL: checked at scan time, so
 * a bad row goes to the dead letters at once and never reaches NATS (a
 * subject with a blank makes nats-server drop the connection, and the
 * event would stall everything behind it).  The subject must be a valid
 * event type, the payload valid JSON and small enough for the server.
 */
static char *
unpublishable(const char *subject, text *payload, int64 max_body)
{
	size_t		len = VARSIZE_ANY_EXHDR(payload);
	const char *problem;
	JsonLexContext *lex;
	JsonParseErrorType jerr;

	if (len > max_body)
		return psprintf("the event is %zu bytes, which exceeds the NATS server's max_payload (%lld bytes left after the headers)",
						len, (long long) max_body);

	problem = statehub_event_type_problem(subject);
	if (problem != NULL)
		return psprintf("invalid event type \"%s\": %s", subject, problem);

	lex = makeJsonLexContextCstringLen(VARDATA_ANY(payload), len,
									   GetDatabaseEncoding(), false);
	jerr = pg_parse_json(lex, &nullSemAction);
	if (jerr != JSON_SUCCESS)
		return psprintf("the payload is not valid JSON: %s",
						json_errdetail(jerr, lex));
	return NULL;
}

/* When the earliest retry after now is due (DT_NOEND: none). */
static TimestampTz
next_retry_due(TimestampTz now)
{
	Datum		values[1];
	bool		isnull;
	Datum		d;

	values[0] = TimestampTzGetDatum(now);
	if (SPI_execute_plan(next_due_plan, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for retries in statehub_events.outbox");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? DT_NOEND : DatumGetTimestampTz(d);
}

/*
 * Whether the event at id is in the batch in flight or the answered one:
 * seen, and settled by this round or the next.  The ids asked about come
 * in ascending order, and *pos_flight / *pos_answered (start at 0) follow
 * them through the two batches, which are each in id order.
 */
static bool
in_pipeline(int64 id, int *pos_flight, int *pos_answered)
{
	while (in_flight != NULL && *pos_flight < in_flight->n &&
		   in_flight->rows[*pos_flight].id < id)
		(*pos_flight)++;
	while (answered != NULL && *pos_answered < answered->n &&
		   answered->rows[*pos_answered].id < id)
		(*pos_answered)++;
	return (in_flight != NULL && *pos_flight < in_flight->n &&
			in_flight->rows[*pos_flight].id == id) ||
		(answered != NULL && *pos_answered < answered->n &&
		 answered->rows[*pos_answered].id == id);
}

/*
 * Scan the next batch into scanned: the due retries below from (when
 * retry_pass), then up to batch_size rows from from on, oldest first,
 * skipping the pipeline's rows and those not due yet, and putting rows that
 * can never be published into dead (counted in *npoison).  *max_id is the
 * highest id the scan from from saw (-1: none); BATCH_FULL when rows may be
 * left that it did not see.  Inside the round's transaction, in its
 * snapshot.
 */
static BatchResult
scan_batch(int64 from, bool retry_pass, int nskip, TimestampTz now,
		   RowUpdates *dead, int *npoison, int64 *max_id)
{
	BatchResult result = BATCH_DONE;
	Datum		values[3];
	int			limit = statehub_batch_size + nskip;
	SPITupleTable *due_rows = NULL;
	int			ndue = 0;
	int			nrows;
	int			taken = 0;
	int			pos_flight = 0;
	int			pos_answered = 0;
	int64		max_body = statehub_nats_max_body();
	Batch	   *next;
	int			i;

	/* rows of the batches in flight and answered are seen and skipped */
	values[0] = Int64GetDatum(from);
	values[1] = Int64GetDatum((int64) limit);
	if (retry_pass)
	{
		values[2] = TimestampTzGetDatum(now);
		if (SPI_execute_plan(due_plan, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look for due retries in statehub_events.outbox");
		due_rows = SPI_tuptable;
		ndue = (int) SPI_processed;
		retry_due_at = (ndue == limit) ? now : next_retry_due(now);
	}
	if (SPI_execute_plan(scan_plan, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not scan statehub_events.outbox");
	nrows = (int) SPI_processed;
	if (nrows == limit)
		result = BATCH_FULL;

	next = spare_batch();
	next->rows = MemoryContextAlloc(next->cxt,
									sizeof(BatchRow) * Max(ndue + nrows, 1));
	next->events = MemoryContextAllocZero(next->cxt,
										  sizeof(StatehubPubEvent) * Max(ndue + nrows, 1));
	scanned = next;

	/* the due retries first: all below from, so in id order */
	for (i = 0; i < ndue + nrows; i++)
	{
		SPITupleTable *tt = i < ndue ? due_rows : SPI_tuptable;
		HeapTuple	tup = tt->vals[i < ndue ? i : i - ndue];
		TupleDesc	desc = tt->tupdesc;
		bool		isnull;
		int64		id;
		int32		attempts;
		text	   *payload;
		char	   *subject;
		char	   *reason;
		Datum		due;
		StatehubPubEvent *ev;

		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		if (in_pipeline(id, &pos_flight, &pos_answered))
		{
			if (i >= ndue)
				*max_id = id;
			continue;
		}

		/* a full batch already: what follows was not seen */
		if (taken == statehub_batch_size)
		{
			result = BATCH_FULL;
			if (i < ndue)
				retry_due_at = now;
			break;
		}
		taken++;
		if (i >= ndue)
			*max_id = id;
		attempts = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));

		due = SPI_getbinval(tup, desc, 6, &isnull);
		if (!isnull && DatumGetTimestampTz(due) > now)
		{
			/* not due: seen, and remembered for the retry query */
			retry_due_at = Min(retry_due_at, DatumGetTimestampTz(due));
			continue;
		}

		payload = DatumGetTextPP(SPI_getbinval(tup, desc, 4, &isnull));
		subject = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		reason = unpublishable(subject, payload, max_body);
		if (reason != NULL)
		{
			add_update(dead, id, attempts, reason, now);
			(*npoison)++;
			continue;
		}

		next->rows[next->n].id = id;
		next->rows[next->n].attempts = attempts;
		ev = &next->events[next->n];
		/* cnats copies the payload, but it is read after SPI_finish */
		ev->payload_len = VARSIZE_ANY_EXHDR(payload);
		ev->payload = MemoryContextAlloc(next->cxt, Max(ev->payload_len, 1));
		memcpy((char *) ev->payload, VARDATA_ANY(payload), ev->payload_len);
		ev->subject = MemoryContextStrdup(next->cxt, subject);
		statehub_format_uuid(DatumGetUUIDP(SPI_getbinval(tup, desc, 2, &isnull))->data,
							 ev->msg_id);
		next->n++;
	}
	return result;
}

/*
 * One transaction of the pipeline (see the file header): scan the next
 * batch (unless scan is false) into scanned, settle the answered batch,
 * and commit.  Publishing and waiting for acks happen outside, after the
 * commit.
 */
static BatchResult
run_batch(bool scan)
{
	BatchResult result = BATCH_DONE;
	StatehubScanXids xids;
	int64		from = 0;
	int			nskip;
	Oid			outbox_node = InvalidOid;
	int64		max_id = -1;
	int64		covered = PG_INT64_MAX;
	Settled		done;
	RowUpdates	retry;
	RowUpdates	dead;
	int			npoison = 0;
	char		event_error[STATEHUB_ERROR_LEN];
	TimestampTz now;
	bool		retry_pass = false;

	now = GetCurrentTimestamp();
	if (scan)
		from = statehub_cursor_get(now);
	if (scan && now >= retry_due_at)
	{
		/* a scan from 0 sees every due retry itself */
		retry_pass = from > 0;
		retry_due_at = DT_NOEND;
	}

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "draining statehub_events.outbox");

	if (!lock_tables(&outbox_node))
	{
		/* the answered batch waits: it is checked against the next outbox */
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(loop_context);
		pgstat_report_activity(STATE_IDLE, NULL);
		return BATCH_SKIPPED;
	}
	if (outbox_node != scanned_node)
	{
		/*
		 * Not the outbox we scanned before (created again, truncated or
		 * rewritten): its ids may start over, so neither the cursor nor a
		 * batch of the pipeline means anything in it.
		 */
		forget_in_flight();
		drop_batch(&answered);
		statehub_cursor_restart();
		from = 0;
		retry_pass = false;
		scanned_node = outbox_node;
	}
	prepare_plans();

	nskip = (in_flight ? in_flight->n : 0) + (answered ? answered->n : 0);
	/* room for the answered batch and the next one's poison rows */
	init_updates(&retry, nskip + statehub_batch_size);
	init_updates(&dead, nskip + statehub_batch_size);
	done.acked_ids = palloc(sizeof(int64) * Max(answered ? answered->n : 0, 1));
	done.nacked = 0;
	done.nrejected = 0;
	done.unanswered = PG_INT64_MAX;

	if (scan)
	{
		/* the scan runs read-only in exactly this snapshot */
		statehub_cursor_scan_xids(GetActiveSnapshot(), &xids);
		result = scan_batch(from, retry_pass, nskip, now, &dead, &npoison,
							&max_id);
	}

	/* the answered batch: its acks were collected after the last commit */
	if (answered != NULL)
		settle_batch(answered, now, &done, &retry, &dead);

	if (result == BATCH_FULL)
		covered = max_id + 1;
	covered = Min(covered, done.unanswered);

	/* SPI memory goes at SPI_finish; keep one reason for the log */
	event_error[0] = '\0';
	if (dead.n > 0)
		strlcpy(event_error, dead.first_reason, sizeof(event_error));
	else if (retry.n > 0)
		strlcpy(event_error, retry.first_reason, sizeof(event_error));

	delete_acked(done.acked_ids, done.nacked);
	apply_updates(retry_plan, &retry);
	apply_updates(dead_letter_plan, &dead);

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(loop_context);

	if (answered != NULL)
	{
		MemoryContextReset(answered->cxt);
		answered = NULL;
	}
	if (scanned != NULL && scanned->n == 0)
	{
		MemoryContextReset(scanned->cxt);
		scanned = NULL;
	}

	if (scan)
		statehub_cursor_advance(&xids, max_id, covered);
	/* a batch that had moved the cursor past it and got no answer */
	statehub_cursor_lower(done.unanswered);

	/* what other processes see */
	SpinLockAcquire(&statehub_shared->mutex);
	statehub_shared->published += done.nacked;
	statehub_shared->failed += done.nrejected + npoison;
	if (done.nacked > 0)
		statehub_shared->last_publish_at = GetCurrentTimestamp();
	SpinLockRelease(&statehub_shared->mutex);
	if (dead.n > 0)
		ereport(WARNING,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg_plural("%d event moved to statehub_events.dead_letter",
							   "%d events moved to statehub_events.dead_letter",
							   dead.n, dead.n),
				 errdetail_internal("%s", event_error)));
	if (event_error[0] != '\0')
		record_error(event_error);

	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	ConditionVariableBroadcast(&statehub_shared->drained_cv);

	/*
	 * Delivery moved on (or there was nothing to do): the next error of a
	 * round is news again.  Not merely a transaction that went through: a
	 * round that fails every other time must not log every time.
	 */
	if (done.nacked > 0 || (scan && max_id < 0))
	{
		last_round_error[0] = '\0';
		error_backoff_ms = 0;
	}
	return result;
}

/*
 * Wait (outside any transaction) for the acks of the batch in flight; it
 * becomes the answered batch, settled by the next transaction.  False on a
 * connection-level failure (error says why); a connection lost with events
 * unanswered counts towards the poison guard.
 */
static bool
collect_in_flight(char *error, size_t errlen)
{
	bool		ok;
	int64		first = PG_INT64_MAX;
	int			i;

	if (in_flight == NULL)
		return true;
	ok = statehub_nats_publish_wait(in_flight->events, in_flight->n,
									in_flight_wait_ms(),
									error, errlen) == STATEHUB_NATS_OK;

	/*
	 * Trouble of the stream, not of the event: like no answer at all.  The
	 * stream is looked up again before anything more goes out.
	 */
	for (i = 0; i < in_flight->n; i++)
	{
		StatehubPubEvent *ev = &in_flight->events[i];

		if (statehub_nats_stream_trouble(ev))
		{
			if (ok)
				snprintf(error, errlen, "stream \"%s\" did not take an event: %s",
						 statehub_stream_name, ev->error);
			ok = false;
			stream_checked = false;
			ev->outcome = STATEHUB_PUB_PENDING;
		}
	}

	for (i = 0; i < in_flight->n; i++)
	{
		if (in_flight->events[i].outcome == STATEHUB_PUB_PENDING)
		{
			first = in_flight->rows[i].id;
			break;
		}
	}
	if (first == PG_INT64_MAX)
	{
		suspect_id = -1;
		suspect_losses = 0;
	}
	else
	{
		/* below the cursor at once: everything after it goes out again */
		statehub_cursor_lower(first);
		if (!ok && !statehub_nats_connected())
		{
			if (first == suspect_id)
				suspect_losses++;
			else
			{
				suspect_id = first;
				suspect_losses = 1;
			}
			if (suspect_losses >= POISON_LOSSES)
				poison_id = first;
		}
	}
	answered = in_flight;
	in_flight = NULL;
	return ok;
}

/*
 * Publish the scanned batch (outside any transaction), once everything
 * before it was answered, so nothing goes out behind an event that may
 * have to be published again.  When it cannot go out it is dropped and
 * scanned again later.  False on a connection-level failure.
 */
static bool
publish_scanned(bool full, char *error, size_t errlen)
{
	if (scanned == NULL)
		return true;
	if (statehub_nats_publish_async(scanned->events, scanned->n, !full,
									statehub_publish_timeout,
									error, errlen) != STATEHUB_NATS_OK)
	{
		drop_batch(&scanned);
		return false;
	}
	scanned->published_at = GetCurrentTimestamp();
	in_flight = scanned;
	scanned = NULL;
	return true;
}

/* ---------------------------------------------------------------------
 * Main loop
 * ---------------------------------------------------------------------
 */

/*
 * One round: connect if needed, then one transaction (scan, settle), then
 * outside it collect the acks of the batch in flight and publish the
 * scanned one.  Returns how long to sleep (ms); 0 means go again at once.
 */
static long
worker_round(void)
{
	long		wait;
	BatchResult result;
	char		error[STATEHUB_ERROR_LEN];
	bool		ok;

	if (RecoveryInProgress())
		return statehub_poll_interval;

	wait = ensure_connected();
	if (wait > 0)
	{
		/* no new batch now; settle what was answered, keep what was not */
		(void) collect_in_flight(error, sizeof(error));
		if (answered != NULL)
			(void) run_batch(false);
		return wait;
	}

	if (in_flight != NULL && answered == NULL && !scan_more &&
		pg_atomic_read_u32(&statehub_shared->wake_pending) == 0 &&
		GetCurrentTimestamp() < retry_due_at)
	{
		/*
		 * Only acks to wait for: the last scan saw everything, nothing was
		 * committed since, no retry is due and nothing is answered.  No
		 * transaction: collect them at once, and settle them next round.
		 */
		result = BATCH_DONE;
	}
	else
	{
		/* cleared before the scan: a commit after this wakes us again */
		pg_atomic_write_u32(&statehub_shared->wake_pending, 0);

		result = run_batch(true);
		if (result == BATCH_SKIPPED)
			return statehub_poll_interval;
		scan_more = (result == BATCH_FULL);
	}

	/* the acks of the batch in flight came in while we scanned and settled */
	pgstat_report_activity(STATE_RUNNING, "waiting for NATS JetStream");
	ok = collect_in_flight(error, sizeof(error));
	if (!ok)
		drop_batch(&scanned);
	else
		ok = publish_scanned(result == BATCH_FULL, error, sizeof(error));
	pgstat_report_activity(STATE_IDLE, NULL);
	if (!ok)
	{
		back_off(error);
		return ms_until(next_attempt_at);
	}
	backoff_ms = 0;
	if (state == STATEHUB_WORKER_BACKOFF)
		set_state(STATEHUB_WORKER_CONNECTED, NULL);

	/* more to scan, or batches to settle: at once */
	if (result == BATCH_FULL || in_flight != NULL || answered != NULL)
		return 0;
	/* a nested wait may have reset the latch a commit set */
	if (pg_atomic_read_u32(&statehub_shared->wake_pending) != 0)
		return 0;
	if (retry_due_at != DT_NOEND)
		return Min((long) statehub_poll_interval, ms_until(retry_due_at));
	return statehub_poll_interval;
}

/*
 * After an ERROR in a round (the transaction is aborted already): forget
 * the pipeline's batches (their events go out again, and the stream drops
 * what it holds), log the error unless it is the one logged last, show it
 * in the status view, and return the back-off (ms).
 */
static long
round_failed(ErrorData *edata)
{
	statehub_nats_abandon_batch();
	scan_more = true;
	drop_batch(&scanned);
	drop_batch(&in_flight);
	drop_batch(&answered);

	if (strcmp(edata->message, last_round_error) != 0)
	{
		ereport(LOG,
				(errcode(edata->sqlerrcode),
				 errmsg("statehub_events worker could not drain statehub_events.outbox, retrying"),
				 errdetail_internal("%s", edata->message),
				 errhint("Events stay queued in statehub_events.outbox meanwhile.")));
		strlcpy(last_round_error, edata->message, sizeof(last_round_error));
	}
	record_error(edata->message);

	if (error_backoff_ms == 0)
		error_backoff_ms = MIN_ERROR_BACKOFF_MS;
	else
		error_backoff_ms = Min(error_backoff_ms * 2, MAX_ERROR_BACKOFF_MS);
	return error_backoff_ms;
}

void
statehub_worker_main(Datum main_arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(statehub_database, NULL, 0);
	pgstat_report_appname("statehub_events worker");
	set_session_options();

	loop_context = AllocSetContextCreate(TopMemoryContext,
										 "statehub_events worker loop",
										 ALLOCSET_DEFAULT_SIZES);

	connection_settings = statehub_nats_settings_hash();
	stream_settings = stream_settings_hash();

	before_shmem_exit(worker_exit, (Datum) 0);
	statehub_shmem_worker_started(MyProcPid, MyLatch);

	ereport(LOG,
			(errmsg("statehub_events worker started for database \"%s\"",
					statehub_database)));

	for (;;)
	{
		volatile long wait = 0;

		MemoryContextReset(loop_context);
		MemoryContextSwitchTo(loop_context);
		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
			reload_settings();

		/* a round is the unit of recovery: an ERROR ends it, not the worker */
		PG_TRY();
		{
			wait = worker_round();
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			/* as after longjmp to PostgresMain's sigsetjmp */
			HOLD_INTERRUPTS();
			BackgroundWorkerUnblockSignals();
			MemoryContextSwitchTo(loop_context);
			edata = CopyErrorData();
			FlushErrorState();
			AbortCurrentTransaction();
			MemoryContextSwitchTo(loop_context);
			pgstat_report_activity(STATE_IDLE, NULL);
			RESUME_INTERRUPTS();
			wait = round_failed(edata);
		}
		PG_END_TRY();

		if (wait > 0)
		{
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 wait, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}
