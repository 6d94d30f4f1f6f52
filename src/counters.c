/*-------------------------------------------------------------------------
 *
 * counters.c
 *		Per-event-type published/failed counters of the delivery worker, and
 *		the SQL functions that read and reset them (event_type_counters(),
 *		reset_counters()).
 *
 * The counters live in a shared hash table of fixed size, made at server
 * start: STATEHUB_COUNTER_TYPES entries keyed by event type, plus one
 * entry, STATEHUB_COUNTERS_OTHER, that counts every type beyond the cap
 * (and any subject too long to be an event type).  So no number of event
 * types, however a bug or a mistake produces them, can exhaust shared
 * memory or drop a count: the per-type counts always add up to the status
 * view's totals.  A real catalog has tens of event types; 1000 entries of
 * a 256-byte key take about 300 kB.
 *
 * Only the worker adds to them.  It notes a batch's outcomes in local
 * memory while its transaction runs (statehub_counters_note) and adds them
 * to the shared table after the commit (statehub_counters_flush), under
 * one exclusive lock: counts follow what was committed, as the totals do,
 * and a round that fails counts nothing (its events go out again).
 * Readers take the lock shared.  Like the totals, the counters start at
 * zero when the worker starts, and reset_counters() sets both to zero.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

#include "counters.h"
#include "shmem.h"
#include "statehub_events.h"

PG_FUNCTION_INFO_V1(event_type_counters);
PG_FUNCTION_INFO_V1(reset_counters);

#define COUNTER_KEY_LEN (STATEHUB_MAX_EVENT_TYPE_LEN + 1)
#define COUNTERS_TRANCHE "statehub_events counters"

typedef struct CounterEntry
{
	char		event_type[COUNTER_KEY_LEN];	/* hash key */
	int64		published;
	int64		failed;
} CounterEntry;

/* the shared table and its lock; NULL unless preloaded */
static HTAB *shared_counters = NULL;
static LWLock *counters_lock = NULL;

/* the worker's notes of the current batch */
static HTAB *batch_notes = NULL;
static MemoryContext notes_context = NULL;

/* Room for every entry and the overflow entry. */
void
statehub_counters_shmem_request(void)
{
	RequestAddinShmemSpace(hash_estimate_size(STATEHUB_COUNTER_TYPES + 1,
											  sizeof(CounterEntry)));
	RequestNamedLWLockTranche(COUNTERS_TRANCHE, 1);
}

/* Called by shmem.c's startup hook, holding AddinShmemInitLock. */
void
statehub_counters_shmem_startup(void)
{
	HASHCTL		ctl;

	ctl.keysize = COUNTER_KEY_LEN;
	ctl.entrysize = sizeof(CounterEntry);
	shared_counters = ShmemInitHash("statehub_events counters",
									STATEHUB_COUNTER_TYPES + 1,
									STATEHUB_COUNTER_TYPES + 1,
									&ctl,
									HASH_ELEM | HASH_STRINGS | HASH_FIXED_SIZE);
	counters_lock = &(GetNamedLWLockTranche(COUNTERS_TRANCHE))->lock;
}

/* Forget every count (worker start, reset_counters). */
void
statehub_counters_reset(void)
{
	HASH_SEQ_STATUS scan;
	CounterEntry *entry;

	if (shared_counters == NULL)
		return;
	LWLockAcquire(counters_lock, LW_EXCLUSIVE);
	hash_seq_init(&scan, shared_counters);
	while ((entry = hash_seq_search(&scan)) != NULL)
		hash_search(shared_counters, entry->event_type, HASH_REMOVE, NULL);
	LWLockRelease(counters_lock);
}

/* The worker starts a batch's transaction: no notes yet. */
void
statehub_counters_begin(void)
{
	HASHCTL		ctl;

	if (notes_context == NULL)
		notes_context = AllocSetContextCreate(TopMemoryContext,
											  "statehub_events counter notes",
											  ALLOCSET_SMALL_SIZES);
	else if (batch_notes != NULL && hash_get_num_entries(batch_notes) == 0)
		return;					/* still empty: nothing to forget */
	/* notes of a round that failed before its commit are forgotten */
	MemoryContextReset(notes_context);
	ctl.keysize = COUNTER_KEY_LEN;
	ctl.entrysize = sizeof(CounterEntry);
	ctl.hcxt = notes_context;
	batch_notes = hash_create("statehub_events counter notes", 64, &ctl,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

/* One event of the batch was published (or failed for good). */
void
statehub_counters_note(const char *event_type, bool published)
{
	CounterEntry *entry;
	bool		found;

	if (batch_notes == NULL)
		statehub_counters_begin();
	if (strlen(event_type) >= COUNTER_KEY_LEN)
		event_type = STATEHUB_COUNTERS_OTHER;
	entry = hash_search(batch_notes, event_type, HASH_ENTER, &found);
	if (!found)
	{
		entry->published = 0;
		entry->failed = 0;
	}
	if (published)
		entry->published++;
	else
		entry->failed++;
}

/* The batch's transaction committed: add its notes to the shared table. */
void
statehub_counters_flush(void)
{
	HASH_SEQ_STATUS scan;
	CounterEntry *note;

	if (batch_notes == NULL || hash_get_num_entries(batch_notes) == 0)
		return;

	LWLockAcquire(counters_lock, LW_EXCLUSIVE);
	hash_seq_init(&scan, batch_notes);
	while ((note = hash_seq_search(&scan)) != NULL)
	{
		CounterEntry *entry;
		bool		found;

		/* full (HASH_FIXED_SIZE): NULL instead of an ERROR */
		entry = hash_search(shared_counters, note->event_type,
							HASH_ENTER_NULL, &found);
		if (entry == NULL ||
			(!found && hash_get_num_entries(shared_counters) > STATEHUB_COUNTER_TYPES))
		{
			/* beyond the cap: the last entry is kept for the overflow */
			if (entry != NULL)
				hash_search(shared_counters, note->event_type, HASH_REMOVE, NULL);
			entry = hash_search(shared_counters, STATEHUB_COUNTERS_OTHER,
								HASH_ENTER, &found);
		}
		if (!found)
		{
			entry->published = 0;
			entry->failed = 0;
		}
		entry->published += note->published;
		entry->failed += note->failed;
	}
	LWLockRelease(counters_lock);

	MemoryContextReset(notes_context);
	batch_notes = NULL;
}

/*
 * event_type_counters() returns one row per event type counted since the
 * worker started (or since reset_counters()): the event type, and how many
 * events of it were published and how many failed (rejected by JetStream,
 * or dead-lettered at once).  Read it through the event_counters view.
 */
Datum
event_type_counters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS scan;
	CounterEntry *entry;

	InitMaterializedSRF(fcinfo, 0);
	/* another database's counters are not this one's (see worker_status) */
	if (shared_counters == NULL || statehub_drained_elsewhere() != NULL)
		return (Datum) 0;

	LWLockAcquire(counters_lock, LW_SHARED);
	hash_seq_init(&scan, shared_counters);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(entry->event_type);
		values[1] = Int64GetDatum(entry->published);
		values[2] = Int64GetDatum(entry->failed);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(counters_lock);
	return (Datum) 0;
}

/*
 * reset_counters() sets the per-event-type counters and the status view's
 * published and failed totals to zero, as pg_stat_statements_reset() does
 * for its statistics.
 */
Datum
reset_counters(PG_FUNCTION_ARGS)
{
	if (statehub_shared != NULL)
	{
		statehub_counters_reset();
		statehub_shmem_reset_totals();
	}
	PG_RETURN_VOID();
}
