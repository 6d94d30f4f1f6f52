/*-------------------------------------------------------------------------
 *
 * pipeline.c
 *		The delivery worker's batch pipeline: scan statehub_events.outbox,
 *		publish to JetStream, collect the acks, settle.  worker.c calls each
 *		step and owns the process around it (signals, connection, errors).
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
 * forgotten unsettled and the cursor goes back to the start.  Forgotten also
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
 * Errors.  Any ERROR in a step propagates to worker.c, which aborts the
 * transaction and calls statehub_pipeline_reset(): the batches are
 * forgotten (the cursor goes back to their first events), so their events
 * go out again and the stream drops what it holds.
 *
 * Every SQL statement is schema-qualified and the session's search_path is
 * pg_catalog (worker.c pins it).  Locks on the outbox and dead letters are
 * only tried, never waited for, so DROP EXTENSION is never stuck behind the
 * worker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "catalog_checks.h"
#include "counters.h"
#include "cursor.h"
#include "envelope.h"
#include "json_check.h"
#include "nats_client.h"
#include "pipeline.h"
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
 * for seconds (the reconnect backoff), not forever.  After its first loss
 * the suspect goes out alone (a batch of one): a loss that took several
 * events with it says nothing about which of them the server choked on,
 * and an innocent event that happened to be first then gets its answer,
 * is cleared, and the next unanswered one becomes the suspect.  Only a
 * loss within POISON_WINDOW_MS of the suspect going out counts: a server
 * that chokes on an event drops the connection as soon as it reads it,
 * while one that hung and was killed (a watchdog restarting a frozen
 * nats-server) loses the connection whenever that happens; such a loss
 * clears the count.
 */
#define POISON_LOSSES 5

/*
 * A scan takes rows until their payloads reach this many bytes (and always
 * at least one): batch_size counts events, and a thousand events near
 * max_payload would hold gigabytes in each of the pipeline's batches and in
 * cnats' copies of the batch in flight.
 */
#define BATCH_MAX_BYTES ((int64) 16 * 1024 * 1024)

/* Rows per fetch of the scan's cursor. */
#define SCAN_FETCH 128

#define POISON_WINDOW_MS 250

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
	TimestampTz published_at;	/* when the settled batch went out */
} Settled;

/* When the earliest rescheduled event is due (DT_NOEND: none known). */
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
static int64 poison_id = -1;	/* to dead-letter when next scanned */

/*
 * At most this many events per batch (0: batch_size) after a batch that
 * the server did not answer within publish_timeout: halved each time, so a
 * publish_timeout too short for a batch_size (or a server slowed down)
 * cannot keep the drain from moving; doubled back with each round that
 * delivers.
 */
static int	batch_limit = 0;

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

	/*
	 * The next rows from the cursor, the first $2 by id.  Read through an
	 * SPI cursor, SCAN_FETCH rows at a time, so a scan stops at
	 * BATCH_MAX_BYTES of payload without having read what lies beyond
	 * (payloads are detoasted only when taken).
	 */
	scan_plan = prepare("SELECT id, event_id, subject, payload, attempts, next_attempt_at, backfill"
						" FROM statehub_events.outbox"
						" WHERE id OPERATOR(pg_catalog.>=) $1 ORDER BY id LIMIT $2",
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
					   " SELECT id, event_id, subject, payload, attempts, next_attempt_at, backfill"
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
							   "            o.enqueued_at, r.attempts, r.failed_at, r.reason,"
							   "            o.backfill"
							   ")"
							   " INSERT INTO statehub_events.dead_letter"
							   "   (id, event_id, subject, payload, enqueued_at,"
							   "    attempts, failed_at, reason, backfill)"
							   " SELECT id, event_id, subject, payload, enqueued_at,"
							   "        attempts, failed_at, reason, backfill FROM gone",
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
	return (int) statehub_ms_until(deadline);
}

/*
 * Give up on the batch in flight without settling it.  For when it cannot
 * be settled safely: the outbox is not the table it was scanned from, or
 * the connection it went out on is being replaced.
 */
void
statehub_pipeline_forget_in_flight(void)
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
 * must do: delete the acked, reschedule or dead-letter the rejected; the
 * lowest unanswered id keeps the cursor at or below it (a poison suspect
 * among them is dead-lettered by the scan that sees it next).
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
				statehub_counters_note(ev->subject, true);
				break;
			case STATEHUB_PUB_REJECTED:
				out->nrejected++;
				statehub_counters_note(ev->subject, false);
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
				/* no answer: stays as it is, and the cursor stays below it */
				out->unanswered = Min(out->unanswered, row->id);
				break;
		}
	}
}

/*
 * The payload (a varlena, detoasted) as UTF-8, which is what JSON between
 * systems is (RFC 8259): *body and *len, the stored bytes themselves in a
 * UTF8 database.  In another database the envelope was built in its
 * encoding and is converted here; in SQL_ASCII, whose bytes above 0x7F
 * mean nothing in particular, they must already be UTF-8.  Returns why the
 * payload cannot be UTF-8, or NULL.  Never raises an ERROR for the
 * payload's sake: one bad row must not fail the round.
 */
static char *
payload_utf8(text *payload, const char **body, size_t *len)
{
	static Oid	to_utf8 = InvalidOid;	/* the database's default conversion */
	int			encoding = GetDatabaseEncoding();
	const char *src = VARDATA_ANY(payload);
	size_t		srclen = VARSIZE_ANY_EXHDR(payload);
	char	   *dest;
	int			converted;

	*body = src;
	*len = srclen;
	if (encoding == PG_UTF8)
		return NULL;
	if (encoding == PG_SQL_ASCII)
	{
		if (!pg_verify_mbstr(PG_UTF8, src, srclen, true))
			return pstrdup("the payload is not valid UTF-8 (the database's encoding is SQL_ASCII, which does not say what bytes above 0x7F mean)");
		return NULL;
	}
	if (!OidIsValid(to_utf8))
		to_utf8 = FindDefaultConversionProc(encoding, PG_UTF8);
	if (!OidIsValid(to_utf8) || srclen > (MaxAllocSize - 1) / MAX_CONVERSION_GROWTH)
		return psprintf("the payload cannot be converted from %s to UTF-8",
						GetDatabaseEncodingName());
	dest = palloc(srclen * MAX_CONVERSION_GROWTH + 1);
	converted = pg_do_encoding_conversion_buf(to_utf8, encoding, PG_UTF8,
											  (unsigned char *) src, srclen,
											  (unsigned char *) dest,
											  srclen * MAX_CONVERSION_GROWTH + 1,
											  true);
	if (converted < srclen)
		return psprintf("the payload has a character (at byte %d) with no equivalent in UTF-8",
						converted);
	*body = dest;
	*len = strlen(dest);
	return NULL;
}

/* The reason for a payload of n bytes, more than max_body. */
static char *
too_large(size_t n, int64 max_body)
{
	return psprintf("the event is %zu bytes, which exceeds the NATS server's max_payload (%lld bytes left after the headers)",
					n, (long long) max_body);
}

/*
 * Why an event can never be published, or NULL: checked at scan time, so
 * a bad row goes to the dead letters at once and never reaches NATS (a
 * subject with a blank makes nats-server drop the connection, and the
 * event would stall everything behind it).  The subject must be a valid
 * event type, the payload UTF-8, valid JSON and small enough for the
 * server.  raw is the payload as stored: one far too large is refused from
 * its header, never read (a hand-inserted gigabyte of one repeated byte is
 * stored in a few megabytes).  Otherwise *payload is the payload read (a
 * copy when raw was toasted) and *body and *len are what to publish
 * (payload_utf8), in the current memory context.
 */
static char *
unpublishable(const char *subject, Datum raw, int64 max_body,
			  text **payload, const char **body, size_t *len)
{
	size_t		stored = toast_raw_datum_size(raw) - VARHDRSZ;
	int			encoding = GetDatabaseEncoding();
	const char *problem;
	char	   *reason;

	/*
	 * Converted to UTF-8, no server encoding's text shrinks to less than
	 * half its bytes (EUC_TW's 4-byte characters become 3).
	 */
	if (stored > max_body &&
		(encoding == PG_UTF8 || encoding == PG_SQL_ASCII || stored / 2 > max_body))
		return too_large(stored, max_body);

	problem = statehub_event_type_problem(subject);
	if (problem != NULL)
		return psprintf("invalid event type \"%s\": %s", subject, problem);

	*payload = DatumGetTextPP(raw);
	reason = payload_utf8(*payload, body, len);
	if (reason != NULL)
		return reason;
	if (*len > max_body)
		return too_large(*len, max_body);

	/* no detail: it would quote the payload, and reasons are for pg_monitor */
	if (!statehub_json_valid(*body, *len))
		return pstrdup("the payload is not valid JSON");
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

/* What scan_batch keeps while it takes rows, one at a time (take_row). */
typedef struct ScanProgress
{
	Batch	   *next;
	int			capacity;		/* of next->rows and next->events */
	int			batch_size;
	int			taken;
	int			pos_flight;
	int			pos_answered;
	int64		bytes;			/* payload bytes of the scan's rows so far */
	int64		max_body;
	TimestampTz now;
	RowUpdates *dead;
	int		   *npoison;
	int64	   *max_id;
} ScanProgress;

/*
 * Take one row of the scan (due: of the retry query) into the batch, skip
 * it, or move it to the dead letters.  False when the batch is full before
 * this row: it and what follows are not taken (and their payload is not
 * read).  A row of the scan that starts past BATCH_MAX_BYTES fills the
 * batch, so a batch is at most that much and one row more.
 */
static bool
take_row(ScanProgress *st, HeapTuple tup, TupleDesc desc, bool due)
{
	Batch	   *next = st->next;
	bool		isnull;
	bool		within = true;
	int64		id;
	int32		attempts;
	Datum		raw;			/* the payload as stored: maybe toasted */
	Datum		datum;
	text	   *payload = NULL; /* the payload read (unpublishable) */
	const char *body = NULL;	/* ... and to publish */
	size_t		body_len = 0;
	char	   *subject;
	char	   *reason;
	StatehubPubEvent *ev;

	raw = SPI_getbinval(tup, desc, 4, &isnull);
	if (!due)
	{
		within = st->bytes < BATCH_MAX_BYTES;
		st->bytes += (int64) toast_raw_datum_size(raw) - VARHDRSZ;
	}
	id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	if (in_pipeline(id, &st->pos_flight, &st->pos_answered))
	{
		if (!due)
			*st->max_id = id;
		return true;
	}

	/* a full batch already: what follows was not seen */
	if (st->taken == st->batch_size || !within)
	{
		if (due)
			retry_due_at = st->now;
		return false;
	}
	st->taken++;
	if (!due)
		*st->max_id = id;
	attempts = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));

	datum = SPI_getbinval(tup, desc, 6, &isnull);
	if (!isnull && DatumGetTimestampTz(datum) > st->now)
	{
		/* not due: seen, and remembered for the retry query */
		retry_due_at = Min(retry_due_at, DatumGetTimestampTz(datum));
		return true;
	}

	subject = TextDatumGetCString(SPI_getbinval(tup, desc, 3, &isnull));
	reason = unpublishable(subject, raw, st->max_body, &payload, &body, &body_len);
	if (reason == NULL && id == poison_id)
	{
		/* the poison guard's verdict: its last loss was an attempt */
		reason = psprintf("suspected poison: the connection to NATS was lost %d times in a row with this event the first without an answer",
						  POISON_LOSSES);
		attempts++;
		poison_id = suspect_id = -1;
		suspect_losses = 0;
	}
	if (reason != NULL)
	{
		add_update(st->dead, id, attempts, reason, st->now);
		(*st->npoison)++;
		statehub_counters_note(subject, false);
		return true;
	}

	if (next->n == st->capacity)
	{
		int			grown = st->capacity * 2;

		next->rows = repalloc(next->rows, sizeof(BatchRow) * grown);
		next->events = repalloc(next->events, sizeof(StatehubPubEvent) * grown);
		memset(&next->events[st->capacity], 0,
			   sizeof(StatehubPubEvent) * (grown - st->capacity));
		st->capacity = grown;
	}
	next->rows[next->n].id = id;
	next->rows[next->n].attempts = attempts;
	ev = &next->events[next->n];
	/* cnats copies the payload, but it is read after SPI_finish */
	ev->payload_len = body_len;
	ev->payload = MemoryContextAlloc(next->cxt, Max(ev->payload_len, 1));
	memcpy((char *) ev->payload, body, ev->payload_len);
	ev->subject = MemoryContextStrdup(next->cxt, subject);
	statehub_format_uuid(DatumGetUUIDP(SPI_getbinval(tup, desc, 2, &isnull))->data,
						 ev->msg_id);
	ev->backfill = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	next->n++;
	/* a batch holds up to 16 MB: drop the copies as soon as they are copied */
	if (body != VARDATA_ANY(payload))
		pfree(unconstify(char *, body));	/* converted to UTF-8 */
	if ((Pointer) payload != DatumGetPointer(raw))
		pfree(payload);			/* detoasted */
	return true;
}

/*
 * Scan the next batch into scanned: the due retries below from (when
 * retry_pass), then up to batch_size rows from from on, oldest first,
 * skipping the pipeline's rows and those not due yet, and putting rows that
 * can never be published into dead (counted in *npoison).  *max_id is the
 * highest id the scan from from saw (-1: none); STATEHUB_BATCH_FULL when rows may be
 * left that it did not see.  Inside the round's transaction, in its
 * snapshot.
 */
static StatehubBatchResult
scan_batch(int64 from, bool retry_pass, int nskip, TimestampTz now,
		   RowUpdates *dead, int *npoison, int64 *max_id)
{
	Datum		values[3];
	/* a poison suspect goes out alone (POISON_LOSSES) */
	int			batch_size = suspect_losses > 0 ? 1 :
		(batch_limit > 0 ? Min(batch_limit, statehub_batch_size) : statehub_batch_size);
	int			limit = batch_size + nskip;
	int			nrows = 0;
	bool		full = false;
	ScanProgress	st;
	Portal		portal;

	memset(&st, 0, sizeof(st));
	st.batch_size = batch_size;
	st.max_body = statehub_nats_max_body();
	st.now = now;
	st.dead = dead;
	st.npoison = npoison;
	st.max_id = max_id;
	st.capacity = Min(limit, SCAN_FETCH);
	st.next = spare_batch();
	st.next->rows = MemoryContextAlloc(st.next->cxt, sizeof(BatchRow) * st.capacity);
	st.next->events = MemoryContextAllocZero(st.next->cxt,
											 sizeof(StatehubPubEvent) * st.capacity);
	scanned = st.next;

	/* rows of the batches in flight and answered are seen and skipped */
	values[0] = Int64GetDatum(from);
	values[1] = Int64GetDatum((int64) limit);
	if (retry_pass)
	{
		SPITupleTable *due_rows;
		int			ndue;

		values[2] = TimestampTzGetDatum(now);
		if (SPI_execute_plan(due_plan, values, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look for due retries in statehub_events.outbox");
		due_rows = SPI_tuptable;
		ndue = (int) SPI_processed;
		retry_due_at = (ndue == limit) ? now : next_retry_due(now);
		/* the due retries first: all below from, so in id order */
		for (int i = 0; i < ndue && !full; i++)
			full = !take_row(&st, due_rows->vals[i], due_rows->tupdesc, true);
		SPI_freetuptable(due_rows);
		if (full)
			return STATEHUB_BATCH_FULL;
	}

	portal = SPI_cursor_open(NULL, scan_plan, values, NULL, true);
	while (!full)
	{
		SPI_cursor_fetch(portal, true, SCAN_FETCH);
		if (SPI_processed == 0)
			break;
		nrows += (int) SPI_processed;
		for (uint64 i = 0; i < SPI_processed && !full; i++)
			full = !take_row(&st, SPI_tuptable->vals[i], SPI_tuptable->tupdesc, false);
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	return (full || nrows == limit) ? STATEHUB_BATCH_FULL : STATEHUB_BATCH_DONE;
}

/*
 * Open the round's transaction, with the outbox and the dead letters
 * locked (tried, not waited for).  False, with the transaction closed
 * again, when they cannot be had.  An outbox that is not the one scanned
 * before (created again, truncated or rewritten) may start its ids over,
 * so neither the cursor nor a batch of the pipeline means anything in it:
 * both start again, and *restarted says so.
 */
static bool
begin_transaction(bool *restarted)
{
	Oid			outbox_node = InvalidOid;

	statehub_counters_begin();
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "draining statehub_events.outbox");

	*restarted = false;
	if (!lock_tables(&outbox_node))
	{
		/* the answered batch waits: it is checked against the next outbox */
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_activity(STATE_IDLE, NULL);
		return false;
	}
	if (outbox_node != scanned_node)
	{
		statehub_pipeline_forget_in_flight();
		drop_batch(&answered);
		statehub_cursor_restart();
		scanned_node = outbox_node;
		*restarted = true;
	}
	prepare_plans();
	return true;
}

/* Whether batch b publishes an event again after a rejection. */
static bool
holds_retry(const Batch *b)
{
	if (b == NULL)
		return false;
	for (int i = 0; i < b->n; i++)
		if (b->rows[i].attempts > 0)
			return true;
	return false;
}

/*
 * After the commit: what other processes see (counters, the last error,
 * the dead letters warned about, waiters of wait_for_drain() woken).
 */
static void
report_settled(const Settled *done, int npoison, const RowUpdates *dead,
			   int nretry, bool all_seen, bool drained, const char *event_error)
{
	bool		nothing_waits;

	SpinLockAcquire(&statehub_shared->mutex);
	statehub_shared->published += done->nacked;
	statehub_shared->failed += done->nrejected + npoison;
	if (done->nacked > 0)
		statehub_shared->last_publish_at = GetCurrentTimestamp();
	SpinLockRelease(&statehub_shared->mutex);
	statehub_counters_flush();
	if (dead->n > 0)
		ereport(WARNING,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg_plural("%d event moved to statehub_events.dead_letter",
							   "%d events moved to statehub_events.dead_letter",
							   dead->n, dead->n),
				 errdetail_internal("%s", event_error)));
	/*
	 * No rejected event waits for its retry: a rejection is over now, not
	 * at the next delivery, which on a quiet system may be long in coming.
	 * A rejected event going out again (scanned or in flight) still waits
	 * for its answer.  Without a delivery this is known only when the round
	 * saw every queued event (all_seen).
	 */
	nothing_waits = nretry == 0 && retry_due_at == DT_NOEND &&
		!holds_retry(scanned) && !holds_retry(in_flight);
	if (event_error[0] != '\0' && nothing_waits && all_seen)
		statehub_shmem_record_settled_error(event_error);	/* dead letters */
	else if (event_error[0] != '\0')
		statehub_shmem_record_error(event_error, true);
	else if (done->nacked > 0)
		statehub_shmem_error_resolved(done->published_at, nothing_waits);
	else if (drained)			/* nothing left to deliver: as good as delivered */
		statehub_shmem_error_resolved(GetCurrentTimestamp(), nothing_waits);
	else if (nothing_waits && all_seen)
		statehub_shmem_event_error_over();

	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	ConditionVariableBroadcast(&statehub_shared->drained_cv);
}

/*
 * One transaction of the pipeline (see the file header): scan the next
 * batch (unless scan is false) into scanned, settle the answered batch,
 * and commit.  Publishing and waiting for acks happen outside, after the
 * commit.  *progress: delivery moved on, or there was nothing to do.
 */
StatehubBatchResult
statehub_pipeline_transaction(bool scan, bool *progress)
{
	MemoryContext caller_cxt = CurrentMemoryContext;
	StatehubBatchResult result = STATEHUB_BATCH_DONE;
	StatehubScanXids xids;
	int64		from = STATEHUB_CURSOR_START;
	int64		max_id = -1;
	int64		covered = PG_INT64_MAX;
	Settled		done;
	RowUpdates	retry;
	RowUpdates	dead;
	int			nskip;
	int			npoison = 0;
	char		event_error[STATEHUB_ERROR_LEN];
	TimestampTz now = GetCurrentTimestamp();
	bool		retry_pass = false;
	bool		restarted;

	*progress = false;
	if (scan && now >= retry_due_at)
	{
		/* a scan from the start sees every due retry itself */
		retry_pass = true;
		retry_due_at = DT_NOEND;
	}

	if (!begin_transaction(&restarted))
	{
		MemoryContextSwitchTo(caller_cxt);
		return STATEHUB_BATCH_SKIPPED;
	}
	if (scan)
		from = statehub_cursor_get(now);
	retry_pass = retry_pass && from > STATEHUB_CURSOR_START;

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
	done.published_at = 0;
	if (answered != NULL)
	{
		settle_batch(answered, now, &done, &retry, &dead);
		done.published_at = answered->published_at;
	}

	if (result == STATEHUB_BATCH_FULL)
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
	MemoryContextSwitchTo(caller_cxt);

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

	report_settled(&done, npoison, &dead, retry.n,
				   scan && result != STATEHUB_BATCH_FULL, scan && max_id < 0,
				   event_error);

	/*
	 * Not merely a transaction that went through: a round that fails every
	 * other time must not count as progress every time.
	 */
	*progress = done.nacked > 0 || (scan && max_id < 0);
	return result;
}

/*
 * The connection was lost with the event at id the first without an
 * answer (while its batch went out, or while it waited for acks): one more
 * loss for the poison guard (POISON_LOSSES).
 */
static void
count_loss(int64 id, TimestampTz sent_at)
{
	TimestampTz lost_at = statehub_nats_lost_at();

	/*
	 * The disconnect callback runs on a cnats thread and may not have run
	 * yet: the loss was seen now, so it happened by now at the latest.
	 */
	if (lost_at < sent_at)
		lost_at = GetCurrentTimestamp();
	if (lost_at > TimestampTzPlusMilliseconds(sent_at, POISON_WINDOW_MS))
	{
		/* not at once (or not seen): the network or a hung server */
		suspect_id = -1;
		suspect_losses = 0;
		return;
	}
	if (id == suspect_id)
		suspect_losses++;
	else
	{
		suspect_id = id;
		suspect_losses = 1;
	}
	if (suspect_losses >= POISON_LOSSES)
		poison_id = id;
}

/*
 * Wait (outside any transaction) for the acks of the batch in flight; it
 * becomes the answered batch, settled by the next transaction.  False on a
 * connection-level failure (error says why); a connection lost with events
 * unanswered counts towards the poison guard.  *stream_trouble: JetStream
 * answered about the stream, not the event (look the stream up again).
 */
bool
statehub_pipeline_collect(char *error, size_t errlen, bool *stream_trouble)
{
	bool		ok;
	int64		first = PG_INT64_MAX;
	int			i;

	*stream_trouble = false;
	if (in_flight == NULL)
		return true;
	ok = statehub_nats_publish_wait(in_flight->events, in_flight->n,
									in_flight_wait_ms(),
									error, errlen) == STATEHUB_NATS_OK;

	/* trouble of the stream, not of the event: like no answer at all */
	for (i = 0; i < in_flight->n; i++)
	{
		StatehubPubEvent *ev = &in_flight->events[i];

		if (statehub_nats_stream_trouble(ev))
		{
			if (ok)
				snprintf(error, errlen, "stream \"%s\" did not take an event: %s",
						 statehub_stream_name, ev->error);
			ok = false;
			*stream_trouble = true;
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
			count_loss(first, in_flight->published_at);
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
bool
statehub_pipeline_publish(bool full, char *error, size_t errlen)
{
	TimestampTz sent_at = GetCurrentTimestamp();

	if (scanned == NULL)
		return true;
	if (statehub_nats_publish_async(scanned->events, scanned->n, !full,
									statehub_publish_timeout,
									error, errlen) != STATEHUB_NATS_OK)
	{
		/* everything before it has its answer: its first event is first */
		if (!statehub_nats_connected())
			count_loss(scanned->rows[0].id, sent_at);
		drop_batch(&scanned);
		return false;
	}
	scanned->published_at = sent_at;
	in_flight = scanned;
	scanned = NULL;
	return true;
}

/* Drop the scanned batch unpublished: it is scanned again later. */
void
statehub_pipeline_drop_scanned(void)
{
	drop_batch(&scanned);
}

/* A batch was not answered within publish_timeout: smaller ones next. */
void
statehub_pipeline_shrink_batches(void)
{
	int			current = batch_limit > 0 ? batch_limit : statehub_batch_size;

	if (current <= 1)
		return;
	batch_limit = current / 2;
	ereport(LOG,
			(errmsg("statehub_events worker publishes batches of at most %d events until one is delivered",
					batch_limit),
			 errdetail("The last batch was not answered within statehub_events.publish_timeout.")));
}

/* A round delivered: grow the batches back towards batch_size. */
void
statehub_pipeline_grow_batches(void)
{
	if (batch_limit == 0)
		return;
	batch_limit = batch_limit * 2;
	if (batch_limit >= statehub_batch_size)
		batch_limit = 0;
}

/*
 * After an ERROR in a step (the transaction is aborted already): forget
 * every batch of the pipeline.  Their events go out again, and the stream
 * drops what it holds.
 */
void
statehub_pipeline_reset(void)
{
	statehub_nats_abandon_batch();
	drop_batch(&scanned);
	drop_batch(&in_flight);
	drop_batch(&answered);
}

/* A batch is published and waits for its acks. */
/* How many events the last scan took (0 once they went out). */
int
statehub_pipeline_scanned_count(void)
{
	return scanned != NULL ? scanned->n : 0;
}

bool
statehub_pipeline_in_flight(void)
{
	return in_flight != NULL;
}

/* A batch has its acks and waits to be settled. */
bool
statehub_pipeline_answered(void)
{
	return answered != NULL;
}

/* When the earliest rescheduled event is due (DT_NOEND: none known). */
TimestampTz
statehub_pipeline_retry_due_at(void)
{
	return retry_due_at;
}

/* Milliseconds until ts, at least 1. */
long
statehub_ms_until(TimestampTz ts)
{
	TimestampTz now = GetCurrentTimestamp();

	if (ts <= now)
		return 1;
	return (long) Min((ts - now) / 1000 + 1, (int64) 3600 * 1000);
}
