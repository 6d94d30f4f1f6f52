/*-------------------------------------------------------------------------
 *
 * admin.c
 *		SQL-callable functions for DBAs: the worker's status, waiting for
 *		the outbox to drain, waking the worker, and the install-time
 *		warning when no worker can run.
 *
 * These run in ordinary backends and only read shared memory (shmem.c);
 * without shared_preload_libraries there is none, and they say so rather
 * than fail.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "shmem.h"
#include "statehub_events.h"

PG_FUNCTION_INFO_V1(worker_status);
PG_FUNCTION_INFO_V1(wait_for_drain);
PG_FUNCTION_INFO_V1(wake_worker);
PG_FUNCTION_INFO_V1(warn_if_no_worker);

/* Longest single sleep of wait_for_drain between two looks at the outbox. */
#define DRAIN_POLL_MS 100

#define WORKER_STATUS_COLS 12

/*
 * worker_status() returns the worker's shared state, one row.  The server
 * URL (password already masked by the worker) is shown only to superusers,
 * like the nats_url setting it comes from: its host and user name are
 * not for pg_monitor.  In a database the worker does not drain, the state
 * says so, with the database it drains, and nothing of the worker's is
 * shown (its counters and errors are about another database's events).
 */
Datum
worker_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[WORKER_STATUS_COLS];
	bool		nulls[WORKER_STATUS_COLS];
	StatehubShared copy;
	bool		show_server;
	const char *elsewhere = statehub_drained_elsewhere();

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	memset(nulls, true, sizeof(nulls));
	if (elsewhere != NULL)
	{
		values[1] = CStringGetTextDatum("not draining this database");
		nulls[1] = false;
		values[2] = CStringGetTextDatum(elsewhere);
		nulls[2] = false;
		PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
	}

	memset(&copy, 0, sizeof(copy));
	if (statehub_shared != NULL)
	{
		SpinLockAcquire(&statehub_shared->mutex);
		copy.worker_pid = statehub_shared->worker_pid;
		copy.state = statehub_shared->state;
		memcpy(copy.server, statehub_shared->server, sizeof(copy.server));
		memcpy(copy.stream, statehub_shared->stream, sizeof(copy.stream));
		copy.published = statehub_shared->published;
		copy.failed = statehub_shared->failed;
		memcpy(copy.last_error, statehub_shared->last_error,
			   sizeof(copy.last_error));
		copy.last_error_at = statehub_shared->last_error_at;
		copy.last_error_resolved_at = statehub_shared->last_error_resolved_at;
		copy.last_publish_at = statehub_shared->last_publish_at;
		copy.dedup_window_us = statehub_shared->dedup_window_us;
		SpinLockRelease(&statehub_shared->mutex);
	}
	/*
	 * No worker: on a standby none may run before promotion
	 * (BgWorkerStart_RecoveryFinished), which the DBA should see as such.
	 */
	if (copy.worker_pid == 0)
		copy.state = RecoveryInProgress() ? STATEHUB_WORKER_STANDBY :
			STATEHUB_WORKER_NOT_RUNNING;

	show_server = superuser();

	if (copy.worker_pid != 0)
	{
		values[0] = Int32GetDatum((int32) copy.worker_pid);
		nulls[0] = false;
	}
	values[1] = CStringGetTextDatum(statehub_worker_state_name(copy.state));
	nulls[1] = false;
	if (statehub_preloaded && statehub_database != NULL)
	{
		values[2] = CStringGetTextDatum(statehub_database);
		nulls[2] = false;
	}
	if (show_server && copy.server[0] != '\0')
	{
		values[3] = CStringGetTextDatum(copy.server);
		nulls[3] = false;
	}
	if (copy.stream[0] != '\0')
	{
		values[4] = CStringGetTextDatum(copy.stream);
		nulls[4] = false;
	}
	if (statehub_shared != NULL)
	{
		values[5] = Int64GetDatum(copy.published);
		nulls[5] = false;
		values[6] = Int64GetDatum(copy.failed);
		nulls[6] = false;
	}
	if (copy.last_error[0] != '\0')
	{
		values[7] = CStringGetTextDatum(copy.last_error);
		nulls[7] = false;
		values[8] = TimestampTzGetDatum(copy.last_error_at);
		nulls[8] = false;
		if (copy.last_error_resolved_at != 0)
		{
			values[9] = TimestampTzGetDatum(copy.last_error_resolved_at);
			nulls[9] = false;
		}
	}
	if (copy.last_publish_at != 0)
	{
		values[10] = TimestampTzGetDatum(copy.last_publish_at);
		nulls[10] = false;
	}
	if (copy.dedup_window_us > 0)
	{
		Interval   *window = palloc0(sizeof(Interval));

		window->day = (int32) (copy.dedup_window_us / USECS_PER_DAY);
		window->time = copy.dedup_window_us % USECS_PER_DAY;
		values[11] = IntervalPGetDatum(window);
		nulls[11] = false;
	}

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * True if statehub_events.outbox holds no row visible to a fresh snapshot.
 * The scan goes straight through the table access method: no SQL, and no
 * ACL check on the outbox (the caller was granted wait_for_drain, not the
 * table).
 */
static bool
outbox_is_empty(Oid relid)
{
	Relation	rel;
	Snapshot	snapshot;
	TableScanDesc scan;
	TupleTableSlot *slot;
	bool		empty;

	rel = table_open(relid, AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	slot = table_slot_create(rel, NULL);
	scan = table_beginscan(rel, snapshot, 0, NULL);
	empty = !table_scan_getnextslot(scan, ForwardScanDirection, slot);
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	return empty;
}

/*
 * wait_for_drain(timeout interval) blocks until the outbox is empty (true)
 * or the timeout passed (false).
 *
 * Each look takes the latest snapshot, so it sees what other sessions
 * committed since, whatever the caller's isolation level.  Rows the
 * caller's own transaction queued are visible to it until it commits and
 * cannot be delivered before: called in that transaction, it can only
 * time out.  Between looks it sleeps on the worker's drained condition
 * variable (broadcast after every batch), at most DRAIN_POLL_MS, so rows
 * removed by anything else are noticed too; without shared memory it polls
 * on its latch.
 */
Datum
wait_for_drain(PG_FUNCTION_ARGS)
{
	Interval   *timeout = PG_GETARG_INTERVAL_P(0);
	int64		timeout_us;
	TimestampTz deadline;
	Oid			relid;
	bool		empty = false;

	timeout_us = timeout->time +
		(int64) timeout->day * USECS_PER_DAY +
		(int64) timeout->month * DAYS_PER_MONTH * USECS_PER_DAY;
	deadline = GetCurrentTimestamp() + Max(timeout_us, 0);

	relid = get_relname_relid("outbox", get_namespace_oid(STATEHUB_SCHEMA, false));
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table \"%s.outbox\" does not exist", STATEHUB_SCHEMA)));

	/* no worker drains this database: waiting would only take the timeout */
	if (statehub_drained_elsewhere() != NULL && !outbox_is_empty(relid))
	{
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the statehub_events delivery worker drains database \"%s\", not this one",
						statehub_drained_elsewhere()),
				 errdetail("Nothing delivers the events queued in this database.")));
		PG_RETURN_BOOL(false);
	}

	for (;;)
	{
		TimestampTz now;
		long		sleep_ms;

		CHECK_FOR_INTERRUPTS();
		if (outbox_is_empty(relid))
		{
			empty = true;
			break;
		}
		now = GetCurrentTimestamp();
		if (now >= deadline)
			break;
		sleep_ms = Min((deadline - now) / 1000 + 1, DRAIN_POLL_MS);

		if (statehub_shared != NULL)
		{
			ConditionVariablePrepareToSleep(&statehub_shared->drained_cv);
			(void) ConditionVariableTimedSleep(&statehub_shared->drained_cv,
											   sleep_ms, PG_WAIT_EXTENSION);
		}
		else
		{
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 sleep_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
	if (statehub_shared != NULL)
		ConditionVariableCancelSleep();

	PG_RETURN_BOOL(empty);
}

/*
 * wake_worker() wakes the worker when the current transaction commits,
 * for rows put into the outbox by hand (or by retry_dead_letters), and has
 * its next scan start at the outbox's start: such rows may carry ids below
 * its scan cursor.
 */
Datum
wake_worker(PG_FUNCTION_ARGS)
{
	statehub_capture_arm_rescan();
	PG_RETURN_VOID();
}

/*
 * warn_if_no_worker() is called once by the install script: CREATE
 * EXTENSION succeeds either way, but a DBA should hear at once when no
 * worker will deliver the events of this database.
 */
Datum
warn_if_no_worker(PG_FUNCTION_ARGS)
{
	if (!statehub_preloaded)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("statehub_events is not in shared_preload_libraries, so no delivery worker runs"),
				 errdetail("Row changes are captured, but their events wait in statehub_events.outbox until a worker delivers them."),
				 errhint("Add statehub_events to shared_preload_libraries and restart the server.")));
	else if (statehub_drained_elsewhere() != NULL)
	{
		char	   *dbname = get_database_name(MyDatabaseId);

		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the statehub_events delivery worker drains database \"%s\", not database \"%s\"",
						statehub_database, dbname),
				 errdetail("Events captured in this database wait in statehub_events.outbox."),
				 errhint("Set statehub_events.database to \"%s\" and restart the server.",
						 dbname)));
	}
	PG_RETURN_VOID();
}
