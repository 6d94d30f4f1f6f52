/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The delivery worker: a background worker that drains
 *		statehub_events.outbox into NATS JetStream.
 *
 * One worker, connected to statehub_events.database, started once
 * recovery has finished.  Its loop sleeps on its latch; a commit that
 * queued events sets the latch (shmem.c), poll_interval is the safety net.
 * This file is the process: signals, settings, the connection to NATS
 * and its back-off, the shared state, error recovery.  The data flows
 * through pipeline.c (scan, publish, collect acks, settle), whose steps a
 * round calls in order; cursor.c keeps where the scans start.
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

#include "access/xact.h"
#include "access/xlog.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "cursor.h"
#include "nats_client.h"
#include "pipeline.h"
#include "shmem.h"
#include "statehub_events.h"

/* Back-off after an ERROR in a round: doubles from the first to the last. */
#define MIN_ERROR_BACKOFF_MS 1000

/*
 * How long the answered batch may wait to be settled (its acked events
 * deleted) by the transaction of the next commit's round, rather than by a
 * transaction of its own.  Short: until then a restart would publish those
 * events again (the stream drops them as duplicates).
 */
#define SETTLE_DELAY_MS 20

/*
 * Coalescing under load.  Each round costs the worker (and nats-server) the
 * same whether it carries one event or fifty, and a steady stream of small
 * commits wakes the worker for every few.  So when events arrive faster than
 * COALESCE_RATE per second (measured over windows of RATE_WINDOW_MS), a
 * round that follows a partial scan starts no sooner than COALESCE_MS after
 * the previous scan: the events wait up to that long more, and the rounds
 * carry more of them.  Below that rate every commit is published at once.
 */
#define COALESCE_RATE 2000
#define COALESCE_MS 2
#define RATE_WINDOW_MS 100
#define MAX_ERROR_BACKOFF_MS 10000

/* First connection retry; doubles up to retry_backoff_max. */
#define MIN_CONNECT_BACKOFF_MS 100

/*
 * Longest wait between connection attempts (or retry_backoff_max when that
 * is shorter): an outage should end in seconds once NATS is back.
 */
#define MAX_CONNECT_BACKOFF_MS 2000

/* Connection state. */
static StatehubWorkerStateCode state = STATEHUB_WORKER_NOT_RUNNING;
static uint32 connection_settings = 0;
static uint32 stream_settings = 0;
static bool stream_checked = false;
static bool stream_missing = false;	/* warned about it */
static int	backoff_ms = 0;
static TimestampTz next_attempt_at = 0;

static MemoryContext loop_context = NULL;

/* The last scan was full: the next round must scan again. */
static bool scan_more = true;

/* Errors of rounds: back-off, and the last one logged (logged once). */
static int	error_backoff_ms = 0;

/* coalescing (see COALESCE_RATE) */
static bool coalescing = false;
static TimestampTz last_scan_at = 0;
static TimestampTz rate_window_start = 0;
static int64 rate_window_events = 0;
static char last_round_error[STATEHUB_ERROR_LEN];

/*
 * A batch that got no answer on a live connection, and whether the same
 * failure came again with nothing delivered between: then the reconnect
 * and back-off it causes are logged at DEBUG1, not LOG (a server that
 * takes events and never answers would otherwise put four lines in the log
 * every publish_timeout for as long as it lasts).
 */
static char last_undelivered[STATEHUB_ERROR_LEN];
static bool undelivered_again = false;

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
	bool		quiet;

	if (new_state == STATEHUB_WORKER_CONNECTED)
		statehub_nats_server(server, sizeof(server));
	else
		statehub_nats_mask_url(statehub_nats_url, server, sizeof(server));

	SpinLockAcquire(&statehub_shared->mutex);
	statehub_shared->state = new_state;
	strlcpy(statehub_shared->server, server, sizeof(statehub_shared->server));
	SpinLockRelease(&statehub_shared->mutex);
	if (error != NULL)
		statehub_shmem_record_error(error, false);
	if (new_state == STATEHUB_WORKER_CONNECTED)
		statehub_shmem_error_resolved(0, false);
	quiet = undelivered_again &&
		(error == NULL || strcmp(error, last_undelivered) == 0);

	state = new_state;
	if (old_state == new_state)
		return;

	switch (new_state)
	{
		case STATEHUB_WORKER_CONNECTED:
			ereport(quiet ? DEBUG1 : LOG,
					(errmsg("statehub_events worker connected to NATS server \"%s\"",
							server)));
			break;
		case STATEHUB_WORKER_BACKOFF:
			ereport(quiet ? DEBUG1 : LOG,
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
		statehub_pipeline_forget_in_flight();
		statehub_nats_close();
		/* closed on purpose: not a lost connection (ensure_connected) */
		if (state == STATEHUB_WORKER_CONNECTED)
			set_state(STATEHUB_WORKER_CONNECTING, NULL);
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
		/*
		 * A connection that was in use is gone (its server died or closed
		 * it): say so, in the log and in last_error, even when the next
		 * server of the list takes over at once.
		 */
		if (state == STATEHUB_WORKER_CONNECTED)
			set_state(STATEHUB_WORKER_BACKOFF, "connection to NATS lost, reconnecting");
		if (GetCurrentTimestamp() < next_attempt_at)
			return statehub_ms_until(next_attempt_at);
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
			statehub_shmem_record_error(error, false);
		stream_missing = missing;
		stream_checked = true;
	}

	if (GetCurrentTimestamp() < next_attempt_at)
		return statehub_ms_until(next_attempt_at);

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
 * Main loop
 * ---------------------------------------------------------------------
 */

/* A scan took n events at now: measure the rate, decide on coalescing. */
static void
note_scan(int n, TimestampTz now)
{
	int64		elapsed_us;

	if (rate_window_start == 0 || now < rate_window_start)
	{
		rate_window_start = now;
		rate_window_events = 0;
	}
	rate_window_events += n;
	elapsed_us = now - rate_window_start;
	if (elapsed_us >= RATE_WINDOW_MS * INT64CONST(1000))
	{
		coalescing = rate_window_events * INT64CONST(1000000) >=
			(int64) COALESCE_RATE * elapsed_us;
		rate_window_start = now;
		rate_window_events = 0;
	}
	last_scan_at = now;
}

/*
 * Under load (coalescing), wait until COALESCE_MS after the last scan
 * before the next one.  Commits do not end the wait (they are what it
 * gathers); SIGTERM and postmaster death do.
 */
static void
coalesce(void)
{
	long		ms;

	if (!coalescing || scan_more)
		return;
	ms = statehub_ms_until(TimestampTzPlusMilliseconds(last_scan_at, COALESCE_MS));
	if (ms <= 0)
		return;
	(void) WaitLatch(NULL, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms, PG_WAIT_EXTENSION);
	CHECK_FOR_INTERRUPTS();
}

/*
 * One round: connect if needed, then one transaction (scan, settle), then
 * outside it collect the acks of the batch in flight and publish the
 * scanned one.  Returns how long to sleep (ms); 0 means go again at once.
 */
static long
worker_round(void)
{
	long		wait;
	StatehubBatchResult result;
	char		error[STATEHUB_ERROR_LEN];
	bool		ok;
	bool		progress = false;
	bool		stream_trouble;
	TimestampTz retry_due_at;

	if (RecoveryInProgress())
		return statehub_poll_interval;

	wait = ensure_connected();
	if (wait > 0)
	{
		/* no new batch now; settle what was answered, keep what was not */
		(void) statehub_pipeline_collect(error, sizeof(error), &stream_trouble);
		if (statehub_pipeline_answered())
			(void) statehub_pipeline_transaction(false, &progress);
		return wait;
	}

	if (statehub_pipeline_in_flight() && !statehub_pipeline_answered() &&
		!scan_more &&
		pg_atomic_read_u32(&statehub_shared->wake_pending) == 0 &&
		GetCurrentTimestamp() < statehub_pipeline_retry_due_at())
	{
		/*
		 * Only acks to wait for: the last scan saw everything, nothing was
		 * committed since, no retry is due and nothing is answered.  No
		 * transaction: collect them at once, and settle them next round.
		 */
		result = STATEHUB_BATCH_DONE;
	}
	else
	{
		coalesce();
		/* cleared before the scan: a commit after this wakes us again */
		pg_atomic_write_u32(&statehub_shared->wake_pending, 0);
		if (pg_atomic_exchange_u32(&statehub_shared->rescan_pending, 0) != 0)
			statehub_cursor_rescan();

		result = statehub_pipeline_transaction(true, &progress);
		if (result == STATEHUB_BATCH_SKIPPED)
			return statehub_poll_interval;
		scan_more = (result == STATEHUB_BATCH_FULL);
		note_scan(statehub_pipeline_scanned_count(), GetCurrentTimestamp());
		if (progress)
		{
			/* delivery moved on: the next error of a round is news again */
			last_round_error[0] = '\0';
			error_backoff_ms = 0;
		}
	}

	/* the acks of the batch in flight came in while we scanned and settled */
	pgstat_report_activity(STATE_RUNNING, "waiting for NATS JetStream");
	ok = statehub_pipeline_collect(error, sizeof(error), &stream_trouble);
	if (stream_trouble || statehub_nats_subjects_suspect())
		stream_checked = false; /* look the stream up before publishing */
	if (!ok)
		statehub_pipeline_drop_scanned();
	else
		ok = statehub_pipeline_publish(result == STATEHUB_BATCH_FULL,
									   error, sizeof(error));
	pgstat_report_activity(STATE_IDLE, NULL);
	if (!ok)
	{
		/*
		 * No answer within publish_timeout on a connection that still looks
		 * open: the server hangs (stopped, or a stalled node of a cluster).
		 * Connect anew, to another server of the list when there is one,
		 * rather than wait on it for good; the unanswered events go out
		 * again in order (their batch is settled without them).  Trouble of
		 * the stream itself (no leader yet) is not the server's.
		 */
		undelivered_again = strcmp(error, last_undelivered) == 0;
		strlcpy(last_undelivered, error, sizeof(last_undelivered));
		if (!stream_trouble && statehub_nats_connected())
		{
			char		server[STATEHUB_SERVER_LEN];

			statehub_nats_server(server, sizeof(server));
			ereport(undelivered_again ? DEBUG1 : LOG,
					(errmsg("statehub_events worker drops its connection to NATS server \"%s\", which did not answer",
							server),
					 errdetail_internal("%s", error)));
			statehub_nats_close();
			stream_checked = false;
			/* and if the batch was too big for publish_timeout, halve it */
			statehub_pipeline_shrink_batches();
		}
		back_off(error);
		statehub_shmem_error_undelivered();
		return statehub_ms_until(next_attempt_at);
	}
	/*
	 * Out of back-off only once delivery moved on (acks settled, or nothing
	 * to do): a publish that goes out and is refused by the stream every
	 * time (full, no leader) must keep backing off longer, and must not log
	 * "connected" and "could not deliver" once a second.
	 */
	if (progress)
	{
		undelivered_again = false;
		last_undelivered[0] = '\0';
		statehub_pipeline_grow_batches();
		backoff_ms = 0;
		if (state == STATEHUB_WORKER_BACKOFF)
			set_state(STATEHUB_WORKER_CONNECTED, NULL);
	}

	/* more to scan, or acks to collect: at once */
	if (result == STATEHUB_BATCH_FULL || statehub_pipeline_in_flight())
		return 0;
	/* a nested wait may have reset the latch a commit set */
	if (pg_atomic_read_u32(&statehub_shared->wake_pending) != 0)
		return 0;
	/*
	 * Only an answered batch to settle: with the next commit's scan, in one
	 * transaction, or on its own SETTLE_DELAY_MS from now.  Under a steady
	 * stream of single commits this halves the worker's transactions.
	 */
	if (statehub_pipeline_answered())
		return SETTLE_DELAY_MS;
	retry_due_at = statehub_pipeline_retry_due_at();
	if (retry_due_at != DT_NOEND)
		return Min((long) statehub_poll_interval, statehub_ms_until(retry_due_at));
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
	statehub_pipeline_reset();
	scan_more = true;

	if (strcmp(edata->message, last_round_error) != 0)
	{
		ereport(LOG,
				(errcode(edata->sqlerrcode),
				 errmsg("statehub_events worker could not drain statehub_events.outbox, retrying"),
				 errdetail_internal("%s", edata->message),
				 errhint("Events stay queued in statehub_events.outbox meanwhile.")));
		strlcpy(last_round_error, edata->message, sizeof(last_round_error));
	}
	statehub_shmem_record_error(edata->message, false);

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
		if (ConfigReloadPending)
			reload_settings();

		/*
		 * A round is the unit of recovery: an ERROR ends it, not the worker.
		 * Interrupts are processed inside, so a query cancel
		 * (pg_cancel_backend) that arrived while the worker slept ends a
		 * round too; SIGTERM still exits (die() makes it FATAL).
		 */
		PG_TRY();
		{
			CHECK_FOR_INTERRUPTS();
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
