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
 * A batch is one transaction, in worker_spi's order: scan up to batch_size
 * events oldest first, publish them all asynchronously (nats_client.c),
 * wait for the acks, then in the same transaction delete what was acked,
 * reschedule what JetStream rejected (exponential backoff; dead letter
 * after max_attempts) and commit.  A crash between publish and commit only
 * re-publishes events with their Nats-Msg-Id, which the stream drops as
 * duplicates; so the worker commits with synchronous_commit off.
 * Connection-level failures (not connected, acks timed out) burn no
 * attempts: the events stay as they were, the worker backs off.
 *
 * The scan cursor.  A queue table that churns is full of dead index
 * entries whenever a long transaction holds vacuum back; a scan from the
 * start of the primary key would wade through all of them on every batch.
 * So the worker scans "WHERE id >= cursor" and keeps the cursor in memory
 * with this invariant: every id below it was seen by an earlier scan or
 * can never appear.  Ids come from nextval in the writing transaction, so
 * a lower id than one already seen may still commit later.  After a scan
 * with snapshot S that saw ids up to M, (M + 1, X) is remembered as a
 * pending cursor, where X is the next transaction id read just after S was
 * taken: every transaction that held an id below M + 1 at S had its xid
 * by then, so its xid is below X.  (Not S->xmax: that is only
 * latestCompletedXid + 1, and a transaction running at S may have an xid
 * above it.)  Once a later scan's snapshot has xmin >= X, all those
 * transactions have ended and their rows were visible to that later scan,
 * so the cursor may move up to M + 1 (or as far as that scan actually saw
 * and handled, if less).
 * Ids a writer holds before it has an xid escape that argument, so the
 * cursor also goes back to 0 once a minute (FULL_SCAN_INTERVAL_MS); that
 * scan, and the one at start, find anything left behind.
 *
 * Retries.  The scan does not filter on next_attempt_at: rows that are not
 * due yet are seen, skipped, and their due time kept (retry_due_at).  When
 * the earliest one is due the cursor goes back to 0 for one pass.
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
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/hashfn.h"
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

#include "nats_client.h"
#include "shmem.h"
#include "statehub_events.h"

/* Back to the start of the outbox at least this often. */
#define FULL_SCAN_INTERVAL_MS 60000

/* Pending cursors kept; more are merged into the last one. */
#define MAX_PENDING_CURSORS 64

/* First connection retry; doubles up to retry_backoff_max. */
#define MIN_CONNECT_BACKOFF_MS 100

/* What became of a batch. */
typedef enum BatchResult
{
	BATCH_DONE,					/* saw every ready event from the cursor on */
	BATCH_FULL,					/* a full batch: more may be waiting */
	BATCH_FAILED,				/* connection-level failure */
	BATCH_SKIPPED				/* no extension, or the outbox is locked */
} BatchResult;

typedef struct PendingCursor
{
	int64		value;
	TransactionId next_xid;
} PendingCursor;

/* One scanned row on its way through the batch. */
typedef struct BatchRow
{
	int64		id;
	int32		attempts;
	int			event;			/* index into the publish array, or -1 */
} BatchRow;

/* The cursor (see the header comment). */
static int64 cursor = 0;
static PendingCursor pending[MAX_PENDING_CURSORS];
static int	npending = 0;
static TimestampTz last_full_scan_at = 0;
static TimestampTz retry_due_at = DT_NOEND;

/* Plans, prepared once and kept. */
static SPIPlanPtr scan_plan = NULL;
static SPIPlanPtr delete_ids_plan = NULL;
static SPIPlanPtr delete_range_plan = NULL;
static SPIPlanPtr retry_plan = NULL;
static SPIPlanPtr dead_letter_plan = NULL;

/* Connection state. */
static StatehubWorkerStateCode state = STATEHUB_WORKER_NOT_RUNNING;
static uint32 connection_settings = 0;
static uint32 stream_settings = 0;
static bool stream_checked = false;
static int	backoff_ms = 0;
static TimestampTz next_attempt_at = 0;

static MemoryContext loop_context = NULL;

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
	 * lock a DBA holds on a queued event gets lock_timeout.  A database's
	 * statement_timeout must not apply to it.
	 */
	SetConfigOption("lock_timeout", "10s", PGC_SUSET, PGC_S_OVERRIDE);
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
		backoff_ms = Min((int64) backoff_ms * 2, (int64) statehub_retry_backoff_max);
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
		/* cnats is at it; its reconnected callback sets our latch */
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
		if (statehub_nats_connect(error, sizeof(error)) != STATEHUB_NATS_OK)
			return back_off(error);
		stream_checked = false;
		fresh = true;
	}

	if (statehub_nats_take_reconnected())
	{
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
		if (missing)
		{
			ereport(WARNING,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("NATS JetStream stream \"%s\" does not exist",
							statehub_stream_name),
					 errdetail("Events are retried and then become dead letters while no stream listens on their subjects."),
					 errhint("Create the stream, or set statehub_events.stream_create to on.")));
			record_error(error);
		}
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
 * done without waiting.  False when the extension is not there (not yet
 * created, being dropped) or someone holds a conflicting lock.
 */
static bool
lock_tables(void)
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
		if (!OidIsValid(relids[i]) ||
			!ConditionalLockRelationOid(relids[i], RowExclusiveLock))
			return false;
		/* dropped while we got the lock? (locks are held to commit) */
		if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relids[i])))
			return false;
	}
	return true;
}

static void
uuid_to_text(const pg_uuid_t *uuid, char *out)
{
	static const char hex[] = "0123456789abcdef";
	int			i;
	char	   *p = out;

	for (i = 0; i < UUID_LEN; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*p++ = '-';
		*p++ = hex[uuid->data[i] >> 4];
		*p++ = hex[uuid->data[i] & 0x0f];
	}
	*p = '\0';
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

/*
 * Delete acked events.  Ids are sorted; when they are contiguous a range
 * delete is exact (no other row can hold an id inside the range) and
 * cheaper than = ANY.
 */
static void
delete_acked(int64 *ids, int n)
{
	Datum		values[2];

	if (n == 0)
		return;
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

/*
 * Move the cursor after a scan that started at the cursor with a snapshot
 * of this xmin, read next_xid just after it, saw rows up to max_id (-1:
 * none) and handled every row below covered.  See the file header for why
 * this is safe.
 */
static void
advance_cursor(TransactionId xmin, TransactionId next_xid, int64 max_id,
			   int64 covered)
{
	int			done = 0;

	/* remember what this scan saw; with no writer running it is final */
	if (max_id >= 0 && max_id + 1 > cursor &&
		(npending == 0 || pending[npending - 1].value < max_id + 1))
	{
		if (npending == MAX_PENDING_CURSORS)
			npending--;			/* merge: a later xid only waits longer */
		pending[npending].value = max_id + 1;
		pending[npending].next_xid = next_xid;
		npending++;
	}

	while (done < npending &&
		   TransactionIdPrecedesOrEquals(pending[done].next_xid, xmin))
	{
		int64		to = Min(pending[done].value, covered);

		if (to > cursor)
			cursor = to;
		if (pending[done].value > covered)
			break;
		done++;
	}
	if (done > 0)
	{
		memmove(pending, pending + done, sizeof(PendingCursor) * (npending - done));
		npending -= done;
	}
}

/*
 * One batch, one transaction.  The caller made sure we are connected.
 */
static BatchResult
run_batch(void)
{
	BatchResult result = BATCH_DONE;
	Snapshot	snap;
	TransactionId xmin;
	TransactionId next_xid;
	Datum		values[4];
	int			nrows;
	int			i;
	BatchRow   *rows;
	StatehubPubEvent *events;
	int			nevents = 0;
	int64		max_body;
	int64		max_id = -1;
	int64		covered = PG_INT64_MAX;
	int64	   *acked_ids;
	int			nacked = 0;
	RowUpdates	retry;
	RowUpdates	dead;
	int			nrejected = 0;
	int			noversized = 0;
	char		error[STATEHUB_ERROR_LEN];
	char		event_error[STATEHUB_ERROR_LEN];
	bool		failed = false;
	TimestampTz now;

	now = GetCurrentTimestamp();
	if (now >= retry_due_at ||
		now - last_full_scan_at >= (int64) FULL_SCAN_INTERVAL_MS * 1000)
	{
		cursor = 0;
		retry_due_at = DT_NOEND;
	}
	if (cursor == 0)
		last_full_scan_at = now;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "draining statehub_events.outbox");

	if (!lock_tables())
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(loop_context);
		pgstat_report_activity(STATE_IDLE, NULL);
		return BATCH_SKIPPED;
	}
	prepare_plans();

	/* the scan runs read-only in exactly this snapshot */
	snap = GetActiveSnapshot();
	xmin = snap->xmin;
	/* an upper bound of every xid assigned before the snapshot */
	next_xid = ReadNextTransactionId();
	values[0] = Int64GetDatum(cursor);
	values[1] = Int64GetDatum((int64) statehub_batch_size);
	if (SPI_execute_plan(scan_plan, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not scan statehub_events.outbox");
	nrows = (int) SPI_processed;

	rows = palloc(sizeof(BatchRow) * Max(nrows, 1));
	events = palloc0(sizeof(StatehubPubEvent) * Max(nrows, 1));
	acked_ids = palloc(sizeof(int64) * Max(nrows, 1));
	init_updates(&retry, nrows);
	init_updates(&dead, nrows);
	max_body = statehub_nats_max_body();

	for (i = 0; i < nrows; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		text	   *payload;
		Datum		due;

		rows[i].id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		rows[i].attempts = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		rows[i].event = -1;
		max_id = rows[i].id;

		due = SPI_getbinval(tup, desc, 6, &isnull);
		if (!isnull && DatumGetTimestampTz(due) > now)
		{
			/* not due: seen, and remembered for the retry pass */
			retry_due_at = Min(retry_due_at, DatumGetTimestampTz(due));
			continue;
		}

		payload = DatumGetTextPP(SPI_getbinval(tup, desc, 4, &isnull));
		if (VARSIZE_ANY_EXHDR(payload) > max_body)
		{
			add_update(&dead, rows[i].id, rows[i].attempts,
					   psprintf("the event is %zu bytes, which exceeds the NATS server's max_payload (%lld bytes left after the headers)",
								VARSIZE_ANY_EXHDR(payload),
								(long long) max_body),
					   now);
			noversized++;
			continue;
		}

		rows[i].event = nevents;
		events[nevents].payload = VARDATA_ANY(payload);
		events[nevents].payload_len = VARSIZE_ANY_EXHDR(payload);
		events[nevents].subject = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
		uuid_to_text(DatumGetUUIDP(SPI_getbinval(tup, desc, 2, &isnull)),
					 events[nevents].msg_id);
		nevents++;
	}
	if (nrows == statehub_batch_size)
		result = BATCH_FULL;

	if (nevents > 0 &&
		statehub_nats_publish_batch(events, nevents, statehub_publish_timeout,
									error, sizeof(error)) != STATEHUB_NATS_OK)
		failed = true;

	for (i = 0; i < nrows; i++)
	{
		StatehubPubEvent *ev;

		if (rows[i].event < 0)
			continue;
		ev = &events[rows[i].event];
		switch ((StatehubPubOutcome) ev->outcome)
		{
			case STATEHUB_PUB_ACKED:
				acked_ids[nacked++] = rows[i].id;
				break;
			case STATEHUB_PUB_REJECTED:
				nrejected++;
				if (rows[i].attempts + 1 >= statehub_max_attempts)
				{
					add_update(&dead, rows[i].id, rows[i].attempts + 1,
							   ev->error, now);
				}
				else
				{
					int64		delay = retry_delay_ms(rows[i].attempts + 1);

					TimestampTz due = TimestampTzPlusMilliseconds(now, delay);

					add_update(&retry, rows[i].id, rows[i].attempts + 1,
							   ev->error, due);
					retry_due_at = Min(retry_due_at, due);
				}
				break;
			case STATEHUB_PUB_PENDING:
				/* no answer: stays as it is, and the cursor stays below it */
				covered = Min(covered, rows[i].id);
				break;
		}
	}
	if (result == BATCH_FULL && covered == PG_INT64_MAX)
		covered = max_id + 1;

	/* SPI memory goes at SPI_finish; keep one reason for the log */
	event_error[0] = '\0';
	if (dead.n > 0)
		strlcpy(event_error, dead.first_reason, sizeof(event_error));
	else if (retry.n > 0)
		strlcpy(event_error, retry.first_reason, sizeof(event_error));

	delete_acked(acked_ids, nacked);
	apply_updates(retry_plan, &retry);
	apply_updates(dead_letter_plan, &dead);

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(loop_context);

	advance_cursor(xmin, next_xid, max_id, covered);

	/* what other processes see */
	SpinLockAcquire(&statehub_shared->mutex);
	statehub_shared->published += nacked;
	statehub_shared->failed += nrejected + noversized;
	if (nacked > 0)
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

	if (failed)
	{
		back_off(error);
		return BATCH_FAILED;
	}
	backoff_ms = 0;
	if (state == STATEHUB_WORKER_BACKOFF)
		set_state(STATEHUB_WORKER_CONNECTED, NULL);
	return result;
}

/* ---------------------------------------------------------------------
 * Main loop
 * ---------------------------------------------------------------------
 */

/*
 * One round: connect if needed, then drain.  Returns how long to sleep
 * (ms); 0 means go again at once.
 */
static long
worker_round(void)
{
	long		wait;

	if (RecoveryInProgress())
		return statehub_poll_interval;

	wait = ensure_connected();
	if (wait > 0)
		return wait;

	/* cleared before the scan: a commit after this wakes us again */
	pg_atomic_write_u32(&statehub_shared->wake_pending, 0);

	switch (run_batch())
	{
		case BATCH_FULL:
			return 0;
		case BATCH_DONE:
			break;
		case BATCH_FAILED:
			return ms_until(next_attempt_at);
		case BATCH_SKIPPED:
			return statehub_poll_interval;
	}
	if (retry_due_at != DT_NOEND)
		return Min((long) statehub_poll_interval, ms_until(retry_due_at));
	return statehub_poll_interval;
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
		long		wait;

		MemoryContextReset(loop_context);
		MemoryContextSwitchTo(loop_context);
		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
			reload_settings();

		wait = worker_round();
		if (wait > 0)
		{
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 wait, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}
