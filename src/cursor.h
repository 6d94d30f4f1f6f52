/*-------------------------------------------------------------------------
 *
 * cursor.h
 *		The delivery worker's scan cursor over statehub_events.outbox (see
 *		cursor.c for its invariant).
 *
 *-------------------------------------------------------------------------
 */
#ifndef STATEHUB_CURSOR_H
#define STATEHUB_CURSOR_H

#include "postgres.h"

#include "access/transam.h"
#include "datatype/timestamp.h"
#include "utils/snapshot.h"

/*
 * The start of the outbox: below every id, also a row put in by hand with
 * an id of its own below the sequence's (zero or negative).
 */
#define STATEHUB_CURSOR_START PG_INT64_MIN

/* What a scan needs to move the cursor afterwards. */
typedef struct StatehubScanXids
{
	FullTransactionId xmin;		/* the scan snapshot's xmin */
	FullTransactionId next_xid; /* read just after the snapshot was taken */
} StatehubScanXids;

extern int64 statehub_cursor_get(TimestampTz now);
extern void statehub_cursor_scan_xids(Snapshot snap, StatehubScanXids *xids);
extern void statehub_cursor_advance(const StatehubScanXids *xids,
									int64 max_id, int64 covered);
extern void statehub_cursor_lower(int64 id);
extern void statehub_cursor_restart(void);
extern void statehub_cursor_rescan(void);

#endif							/* STATEHUB_CURSOR_H */
