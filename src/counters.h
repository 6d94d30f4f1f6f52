/*-------------------------------------------------------------------------
 *
 * counters.h
 *		Per-event-type counters of the delivery worker: how many events of
 *		each type were published and how many failed, in shared memory.
 *
 *-------------------------------------------------------------------------
 */
#ifndef STATEHUB_COUNTERS_H
#define STATEHUB_COUNTERS_H

#include "postgres.h"

/*
 * At most this many event types are counted one by one; events of further
 * types are counted together under STATEHUB_COUNTERS_OTHER.
 */
#define STATEHUB_COUNTER_TYPES 1000
#define STATEHUB_COUNTERS_OTHER "(other)"

extern void statehub_counters_shmem_request(void);
extern void statehub_counters_shmem_startup(void);
extern void statehub_counters_reset(void);
extern void statehub_counters_begin(void);
extern void statehub_counters_note(const char *event_type, bool published);
extern void statehub_counters_flush(void);

#endif							/* STATEHUB_COUNTERS_H */
