/*-------------------------------------------------------------------------
 *
 * cursor.c
 *		The delivery worker's scan cursor: where in statehub_events.outbox
 *		the next scan starts.
 *
 * A queue table that churns is full of dead index entries whenever a long
 * transaction holds vacuum back; a scan from the start of the primary key
 * would wade through all of them on every batch.  So the worker scans
 * "WHERE id >= cursor" and keeps the cursor in memory with this invariant:
 *
 *		every id below the cursor was seen by an earlier scan (and is handled:
 *		published, settled, or in a batch of the pipeline) or can never appear.
 *
 * Everything in this file keeps it; nothing else changes the cursor.
 *
 * Ids come from nextval in the writing transaction, so a lower id than one
 * already seen may still commit later.  After a scan with snapshot S that
 * saw ids up to M, (M + 1, X) is remembered as a pending cursor, where X is
 * the next transaction id read just after S was taken: every transaction
 * that held an id below M + 1 at S had its xid by then (outbox.c takes one
 * before the id), so its xid is below X.  (Not S->xmax: that is only
 * latestCompletedXid + 1, and a transaction running at S may have an xid
 * above it.)  Once a later scan's snapshot has xmin >= X, all those
 * transactions have ended and their rows were visible to that later scan,
 * so the cursor may move up to M + 1 (or as far as that scan actually saw
 * and handled, if less).  Xids are 64-bit (FullTransactionId): a pending
 * cursor may wait across any number of xids (a long outage), and 32-bit
 * comparisons wrap after 2^31.
 *
 * Events of the batches in flight and answered count as seen and handled:
 * the scans skip them, and if their batch ends without an answer for some,
 * the cursor goes back down to the first of those (statehub_cursor_lower).
 * Lowering the cursor never breaks the invariant, and every later scan
 * starts from it.  Ids a writer holds before it has an xid escape the
 * argument above, so the cursor also goes back to the start once a minute
 * (FULL_SCAN_INTERVAL_MS); that scan, and the one at start, find anything
 * left behind.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"

#include "cursor.h"

/* Back to the start of the outbox at least this often. */
#define FULL_SCAN_INTERVAL_MS 60000

/* Pending cursors kept; more are merged into the last one. */
#define MAX_PENDING_CURSORS 64

typedef struct PendingCursor
{
	int64		value;
	FullTransactionId next_xid;
} PendingCursor;

static int64 cursor = STATEHUB_CURSOR_START;
static PendingCursor pending[MAX_PENDING_CURSORS];
static int	npending = 0;
static TimestampTz last_full_scan_at = 0;

/* Where the next scan starts: the cursor, or the start once a minute. */
int64
statehub_cursor_get(TimestampTz now)
{
	if (now - last_full_scan_at >= (int64) FULL_SCAN_INTERVAL_MS * 1000)
		cursor = STATEHUB_CURSOR_START;
	if (cursor == STATEHUB_CURSOR_START)
		last_full_scan_at = now;
	return cursor;
}

/*
 * The xids of a scan in snapshot snap; call right after the snapshot was
 * taken.  The snapshot's xmin is at or before the next xid (and within
 * 2^31 of it), which gives its epoch.
 */
void
statehub_cursor_scan_xids(Snapshot snap, StatehubScanXids *xids)
{
	uint32		behind;

	xids->next_xid = ReadNextFullTransactionId();
	behind = XidFromFullTransactionId(xids->next_xid) - snap->xmin;
	xids->xmin = FullTransactionIdFromU64(U64FromFullTransactionId(xids->next_xid) -
										  behind);
}

/*
 * Move the cursor after a scan that started at the cursor with these xids,
 * saw rows up to max_id (-1: none) and handled every row below covered.
 */
void
statehub_cursor_advance(const StatehubScanXids *xids, int64 max_id,
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
		pending[npending].next_xid = xids->next_xid;
		npending++;
	}

	while (done < npending &&
		   FullTransactionIdPrecedesOrEquals(pending[done].next_xid, xids->xmin))
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

/* An event at id must be scanned again: the cursor goes to it or below. */
void
statehub_cursor_lower(int64 id)
{
	cursor = Min(cursor, id);
}

/* A new outbox (ids may start over): scan it from its start. */
void
statehub_cursor_restart(void)
{
	cursor = STATEHUB_CURSOR_START;
	npending = 0;
}

/*
 * Scan from the start next time, as once a minute: rows put in by hand
 * (wake_worker()) may carry ids below the cursor.  Lowering it keeps the
 * invariant; the pending cursors stay valid.
 */
void
statehub_cursor_rescan(void)
{
	cursor = STATEHUB_CURSOR_START;
}
