/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared memory of statehub_events: allocation, and the wake-up of the
 *		delivery worker.
 *
 * The segment exists only when the library is in shared_preload_libraries
 * (that is also the only case where a worker runs).  Without it,
 * statehub_shared stays NULL and waking the worker is a no-op: events wait
 * in the outbox.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "counters.h"
#include "shmem.h"

StatehubShared *statehub_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(StatehubShared)));
	statehub_counters_shmem_request();
}

/* Attach to (or, in the postmaster, create) the shared state. */
static void
shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	statehub_shared = ShmemInitStruct("statehub_events", sizeof(StatehubShared),
									  &found);
	if (!found)
	{
		memset(statehub_shared, 0, sizeof(StatehubShared));
		pg_atomic_init_u32(&statehub_shared->wake_pending, 0);
		pg_atomic_init_u32(&statehub_shared->rescan_pending, 0);
		ConditionVariableInit(&statehub_shared->drained_cv);
		SpinLockInit(&statehub_shared->mutex);
		statehub_shared->state = STATEHUB_WORKER_NOT_RUNNING;
	}
	statehub_counters_shmem_startup();
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init when preloading. */
void
statehub_shmem_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shmem_startup;
}

/*
 * Wake the worker after a commit that queued events.  Only the backend that
 * flips the flag from 0 to 1 sets the latch; the worker clears the flag
 * before it scans, so no commit can slip between its scan and its sleep.
 */
void
statehub_shmem_wake_worker(void)
{
	Latch	   *latch;

	if (statehub_shared == NULL)
		return;
	if (pg_atomic_exchange_u32(&statehub_shared->wake_pending, 1) != 0)
		return;
	latch = statehub_shared->worker_latch;
	if (latch != NULL)
		SetLatch(latch);
}

/* The worker's next scan starts at the outbox's start (wake_worker()). */
void
statehub_shmem_request_rescan(void)
{
	if (statehub_shared != NULL)
		pg_atomic_write_u32(&statehub_shared->rescan_pending, 1);
}

/*
 * The worker announces itself: from now on commits set its latch.  The
 * counters start again at zero ("since the worker started").  The wake
 * flag is set so that the first round drains at once.
 */
void
statehub_shmem_worker_started(pid_t pid, Latch *latch)
{
	SpinLockAcquire(&statehub_shared->mutex);
	statehub_shared->worker_pid = pid;
	statehub_shared->state = STATEHUB_WORKER_CONNECTING;
	statehub_shared->server[0] = '\0';
	statehub_shared->stream[0] = '\0';
	statehub_shared->published = 0;
	statehub_shared->failed = 0;
	statehub_shared->dedup_window_us = 0;
	SpinLockRelease(&statehub_shared->mutex);
	statehub_counters_reset();

	pg_write_barrier();
	statehub_shared->worker_latch = latch;
	pg_atomic_write_u32(&statehub_shared->wake_pending, 1);
}

/*
 * The worker is going away (exit callback).  The last error stays for the
 * status view; waiters on drained_cv are woken so they notice.
 */
void
statehub_shmem_worker_stopped(void)
{
	statehub_shared->worker_latch = NULL;
	pg_write_barrier();

	SpinLockAcquire(&statehub_shared->mutex);
	statehub_shared->worker_pid = 0;
	statehub_shared->state = STATEHUB_WORKER_NOT_RUNNING;
	SpinLockRelease(&statehub_shared->mutex);

	ConditionVariableBroadcast(&statehub_shared->drained_cv);
}

/*
 * The worker is connected (delivered_from 0) or delivered a batch it
 * published at delivered_from (or has nothing left to deliver, as of
 * delivered_from): the last error, if still current, is past.
 * It stays in the status view with both times, so the DBA sees what
 * happened, and a health check can tell it is over.  Being connected does
 * not settle every error: a batch that got no answer is past only once a
 * batch published after it is delivered (a server that takes events and
 * never answers looks connected after every reconnect, and acks of a batch
 * sent before a server hung still come in after it), and an event's
 * rejection only when of_event_too says so (no rejected event is waiting
 * for its retry).
 */
void
statehub_shmem_error_resolved(TimestampTz delivered_from, bool of_event_too)
{
	SpinLockAcquire(&statehub_shared->mutex);
	if (statehub_shared->last_error[0] != '\0' &&
		statehub_shared->last_error_resolved_at == 0 &&
		(!statehub_shared->last_error_of_delivery ||
		 (delivered_from != 0 &&
		  delivered_from >= statehub_shared->last_error_at)) &&
		(of_event_too || !statehub_shared->last_error_of_event))
		statehub_shared->last_error_resolved_at = GetCurrentTimestamp();
	SpinLockRelease(&statehub_shared->mutex);
}

/*
 * No rejected event waits for its retry any more (the last one was deleted
 * by hand, say): a current rejection is past.  Any other error stays.
 */
void
statehub_shmem_event_error_over(void)
{
	SpinLockAcquire(&statehub_shared->mutex);
	if (statehub_shared->last_error[0] != '\0' &&
		statehub_shared->last_error_resolved_at == 0 &&
		statehub_shared->last_error_of_event)
		statehub_shared->last_error_resolved_at = GetCurrentTimestamp();
	SpinLockRelease(&statehub_shared->mutex);
}

/*
 * The last error is a batch that got no answer: settled by a delivery, not
 * by a reconnect (statehub_shmem_error_resolved).
 */
void
statehub_shmem_error_undelivered(void)
{
	SpinLockAcquire(&statehub_shared->mutex);
	statehub_shared->last_error_of_delivery = true;
	SpinLockRelease(&statehub_shared->mutex);
}

/* reset_counters(): the totals of the status view start again at zero. */
void
statehub_shmem_reset_totals(void)
{
	SpinLockAcquire(&statehub_shared->mutex);
	statehub_shared->published = 0;
	statehub_shared->failed = 0;
	SpinLockRelease(&statehub_shared->mutex);
}

const char *
statehub_worker_state_name(StatehubWorkerStateCode state)
{
	switch (state)
	{
		case STATEHUB_WORKER_NOT_RUNNING:
			return "not running";
		case STATEHUB_WORKER_STANDBY:
			return "standby";
		case STATEHUB_WORKER_DISABLED:
			return "disabled";
		case STATEHUB_WORKER_CONNECTING:
			return "connecting";
		case STATEHUB_WORKER_CONNECTED:
			return "connected";
		case STATEHUB_WORKER_BACKOFF:
			return "backoff";
	}
	return "unknown";
}

/*
 * Events became dead letters, and no rejected event waits for its retry:
 * their error is over as it is recorded (they are counted in dead_letters).
 * A current error of the worker's own (no connection, a batch without an
 * answer) is not replaced by it: that problem is not over.
 */
void
statehub_shmem_record_settled_error(const char *error)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&statehub_shared->mutex);
	if (statehub_shared->last_error[0] == '\0' ||
		statehub_shared->last_error_resolved_at != 0 ||
		statehub_shared->last_error_of_event)
	{
		strlcpy(statehub_shared->last_error, error,
				sizeof(statehub_shared->last_error));
		statehub_shared->last_error_at = now;
		statehub_shared->last_error_resolved_at = now;
		statehub_shared->last_error_of_event = true;
		statehub_shared->last_error_of_delivery = false;
	}
	SpinLockRelease(&statehub_shared->mutex);
}

/*
 * Record an error that does not change the worker's state: of_event for
 * an event's rejection, else the worker's own (a round that failed, a
 * missing stream).  It is current until statehub_shmem_error_resolved.
 */
void
statehub_shmem_record_error(const char *error, bool of_event)
{
	SpinLockAcquire(&statehub_shared->mutex);
	strlcpy(statehub_shared->last_error, error,
			sizeof(statehub_shared->last_error));
	statehub_shared->last_error_at = GetCurrentTimestamp();
	statehub_shared->last_error_resolved_at = 0;
	statehub_shared->last_error_of_event = of_event;
	statehub_shared->last_error_of_delivery = false;
	SpinLockRelease(&statehub_shared->mutex);
}
