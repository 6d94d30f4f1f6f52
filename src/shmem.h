/*-------------------------------------------------------------------------
 *
 * shmem.h
 *		The shared state of statehub_events: what other processes read of
 *		the delivery worker, and the flag that wakes it.
 *
 * Only the worker writes the state fields (under the spinlock); backends
 * read them for the status view.  The wake flag is a pg_atomic_uint32 so a
 * committing backend can set it without any lock: the 0->1 flip is the one
 * that sets the worker's latch, later commits before the worker runs again
 * cost one atomic exchange.
 *
 *-------------------------------------------------------------------------
 */
#ifndef STATEHUB_SHMEM_H
#define STATEHUB_SHMEM_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"

typedef enum StatehubWorkerStateCode
{
	STATEHUB_WORKER_NOT_RUNNING = 0,
	STATEHUB_WORKER_DISABLED,	/* no nats_url set */
	STATEHUB_WORKER_CONNECTING,
	STATEHUB_WORKER_CONNECTED,
	STATEHUB_WORKER_BACKOFF,
	STATEHUB_WORKER_STANDBY		/* none runs: the server is in recovery */
} StatehubWorkerStateCode;

#define STATEHUB_SERVER_LEN 256
#define STATEHUB_ERROR_LEN 512

typedef struct StatehubShared
{
	/* set by committing backends, cleared by the worker before each scan */
	pg_atomic_uint32 wake_pending;

	/*
	 * set at the commit of a wake_worker() call, cleared by the worker, which
	 * then scans the outbox from its start (rows put in by hand may have ids
	 * below its scan cursor)
	 */
	pg_atomic_uint32 rescan_pending;

	/* the worker's latch and pid; NULL / 0 while no worker runs */
	Latch	   *worker_latch;

	/* signalled by the worker after each batch (wait_for_drain sleeps on it) */
	ConditionVariable drained_cv;

	slock_t		mutex;			/* protects the fields below */
	pid_t		worker_pid;
	StatehubWorkerStateCode state;
	char		server[STATEHUB_SERVER_LEN];	/* URL, password masked */
	char		stream[NAMEDATALEN];
	int64		published;		/* since the worker started */
	int64		failed;
	char		last_error[STATEHUB_ERROR_LEN];
	TimestampTz last_error_at;
	TimestampTz last_error_resolved_at; /* 0 while last_error is current */
	bool		last_error_of_event;	/* an event's rejection, not the worker's */
	bool		last_error_of_delivery; /* a batch that got no answer */
	TimestampTz last_publish_at;
	int64		dedup_window_us;	/* the stream's duplicate window, 0 unknown */
} StatehubShared;

/* NULL when the library was not preloaded (no shared memory, no worker) */
extern StatehubShared *statehub_shared;

extern void statehub_shmem_install_hooks(void);
extern void statehub_shmem_wake_worker(void);
extern void statehub_shmem_request_rescan(void);
extern void statehub_shmem_worker_started(pid_t pid, Latch *latch);
extern void statehub_shmem_worker_stopped(void);
extern void statehub_shmem_record_error(const char *error, bool of_event);
extern void statehub_shmem_record_settled_error(const char *error);
extern void statehub_shmem_error_resolved(TimestampTz delivered_from,
										  bool of_event_too);
extern void statehub_shmem_event_error_over(void);
extern void statehub_shmem_error_undelivered(void);
extern void statehub_shmem_reset_totals(void);
extern const char *statehub_worker_state_name(StatehubWorkerStateCode state);

#endif							/* STATEHUB_SHMEM_H */
