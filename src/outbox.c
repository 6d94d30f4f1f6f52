/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		Appending events to statehub_events.outbox.
 *
 * Capture runs as the application role, which has (and needs) no rights on
 * the outbox: the row goes in through the executor's single-row insert,
 * the way logical replication applies rows, which checks no ACL and plans
 * nothing but checks the table's constraints and maintains every index,
 * exactly as an INSERT by the table owner would (triggers aside, see
 * statehub_outbox_open).  The drain key comes from nextval on the outbox's
 * own sequence, also without an ACL check.  A backfill (backfill.c) keeps
 * one writer open for all its rows instead of opening one per event.
 *
 * The relation and sequence OIDs are looked up once and forgotten on any
 * relcache invalidation of either (DROP EXTENSION, ALTER TABLE, ...).
 * The outbox's layout is checked once per lookup (again after any
 * invalidation of it), so a hand-altered table fails loudly instead of
 * receiving misplaced columns.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "nodes/execnodes.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/uuid.h"

#include "statehub_events.h"

/* The outbox's columns, in table order. */
enum
{
	OUTBOX_ID,
	OUTBOX_EVENT_ID,
	OUTBOX_SUBJECT,
	OUTBOX_PAYLOAD,
	OUTBOX_ENQUEUED_AT,
	OUTBOX_ATTEMPTS,
	OUTBOX_NEXT_ATTEMPT_AT,
	OUTBOX_LAST_ERROR,
	OUTBOX_BACKFILL,			/* 1.2 */
	OUTBOX_NATTS
};

/* Columns of an outbox not yet updated to 1.2 (no backfill column). */
#define OUTBOX_NATTS_1_1 OUTBOX_BACKFILL

static const struct
{
	const char *name;
	Oid			type;
}			outbox_columns[OUTBOX_NATTS] =
{
	{"id", INT8OID},
	{"event_id", UUIDOID},
	{"subject", TEXTOID},
	{"payload", TEXTOID},
	{"enqueued_at", TIMESTAMPTZOID},
	{"attempts", INT4OID},
	{"next_attempt_at", TIMESTAMPTZOID},
	{"last_error", TEXTOID},
	{"backfill", BOOLOID},
};

static Oid	outbox_relid = InvalidOid;
static Oid	outbox_seqid = InvalidOid;
static bool callback_registered = false;

/* The outbox whose layout was checked; forgotten on an invalidation. */
static Oid	checked_relid = InvalidOid;
static int	checked_natts = 0;

static void
outbox_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == outbox_relid || relid == outbox_seqid)
	{
		outbox_relid = InvalidOid;
		outbox_seqid = InvalidOid;
		checked_relid = InvalidOid;
	}
}

/* Raise the error for an outbox that is not the one the extension made. */
static void
outbox_layout_error(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("table \"%s.outbox\" does not have the layout statehub_events expects",
					STATEHUB_SCHEMA),
			 errdetail("%s", detail),
			 errhint("Recreate the extension, or restore the table from \"%s--1.0.sql\".",
					 "statehub_events")));
}

/*
 * Check the outbox's columns and return how many it has: OUTBOX_NATTS, or
 * OUTBOX_NATTS_1_1 while the binaries are 1.2 and ALTER EXTENSION ...
 * UPDATE has not run yet (capture goes on; only a backfill needs the
 * column).
 */
static int
check_outbox_layout(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	if (desc->natts != OUTBOX_NATTS && desc->natts != OUTBOX_NATTS_1_1)
		outbox_layout_error("The number of columns differs.");
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped ||
			strcmp(NameStr(att->attname), outbox_columns[i].name) != 0 ||
			att->atttypid != outbox_columns[i].type)
			outbox_layout_error("A column was dropped, renamed, retyped or moved.");
	}
	return desc->natts;
}

/* Find the outbox and its sequence, once per backend and invalidation. */
static void
lookup_outbox(void)
{
	Oid			nspid;

	if (OidIsValid(outbox_relid))
		return;

	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(outbox_relcache_callback, (Datum) 0);
		callback_registered = true;
	}

	nspid = get_namespace_oid(STATEHUB_SCHEMA, true);
	if (OidIsValid(nspid))
	{
		outbox_relid = get_relname_relid("outbox", nspid);
		outbox_seqid = get_relname_relid("outbox_id_seq", nspid);
	}
	if (!OidIsValid(outbox_relid) || !OidIsValid(outbox_seqid))
	{
		outbox_relid = InvalidOid;
		outbox_seqid = InvalidOid;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table \"%s.outbox\" does not exist", STATEHUB_SCHEMA),
				 errhint("Run CREATE EXTENSION statehub_events in this database.")));
	}
}

/* An open outbox; see statehub_outbox_open. */
struct StatehubOutboxWriter
{
	Relation	rel;
	Oid			seqid;
	int			natts;			/* OUTBOX_NATTS, or OUTBOX_NATTS_1_1 */
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
};

/*
 * Open the outbox for appending, in the current memory context.  Rows go
 * in through the executor's single-row insert, as logical replication's
 * apply worker does: an EState with a range table holding the outbox, so
 * the table's CHECK and NOT NULL constraints are checked (with the usual
 * error, which names the failing row) and every index is maintained,
 * whatever kind of index a DBA added.  Triggers on the outbox are left out:
 * capture runs as the application role, and a DBA's trigger on the queue
 * must not run with that role's rights on every event.  One writer serves
 * one event (statehub_outbox_append) or a backfill's many.
 */
StatehubOutboxWriter *
statehub_outbox_open(void)
{
	StatehubOutboxWriter *w = palloc0(sizeof(StatehubOutboxWriter));
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	Oid			relid;

	/*
	 * Keep the OIDs in locals: opening the table processes invalidations,
	 * which may reset the cached ones (and then the checks run again).
	 */
	lookup_outbox();
	relid = outbox_relid;
	w->seqid = outbox_seqid;
	w->rel = table_open(relid, RowExclusiveLock);
	if (checked_relid != relid)
	{
		checked_natts = check_outbox_layout(w->rel);
		checked_relid = relid;
	}
	w->natts = checked_natts;

	w->estate = CreateExecutorState();
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = w->rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(w->estate, list_make1(rte));
	w->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(w->rri, w->rel, 1, NULL, 0);
	w->rri->ri_TrigDesc = NULL;
	w->estate->es_output_cid = GetCurrentCommandId(true);
	ExecOpenIndices(w->rri, false);
	w->slot = ExecInitExtraTupleSlot(w->estate, RelationGetDescr(w->rel),
									 &TTSOpsVirtual);
	return w;
}

/*
 * Append one event in the current transaction (and current subtransaction:
 * a rolled-back savepoint takes the event with it).  backfill marks an
 * event of statehub_events.backfill() (backfill.c).  The row's values are
 * allocated in the current memory context.
 */
void
statehub_outbox_write(StatehubOutboxWriter *w, const unsigned char *event_id,
					  const char *subject, const char *payload,
					  int payload_len, TimestampTz occurred_at, bool backfill)
{
	TupleTableSlot *slot = w->slot;
	Datum	   *values = slot->tts_values;
	bool	   *nulls = slot->tts_isnull;
	pg_uuid_t  *uuid;

	if (backfill && w->natts < OUTBOX_NATTS)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s.outbox\" has no column \"backfill\"",
						STATEHUB_SCHEMA),
				 errhint("Run ALTER EXTENSION statehub_events UPDATE first.")));

	uuid = palloc(sizeof(pg_uuid_t));
	memcpy(uuid->data, event_id, UUID_LEN);

	ExecClearTuple(slot);

	/*
	 * Take an xid before the drain key: the worker's scan cursor relies on
	 * every transaction that holds a key having an xid (see worker.c).  A
	 * capturing transaction has one already; emit() may not.
	 */
	(void) GetCurrentTransactionId();
	values[OUTBOX_ID] = Int64GetDatum(nextval_internal(w->seqid, false));
	values[OUTBOX_EVENT_ID] = UUIDPGetDatum(uuid);
	values[OUTBOX_SUBJECT] = CStringGetTextDatum(subject);
	values[OUTBOX_PAYLOAD] = PointerGetDatum(cstring_to_text_with_len(payload,
																	  payload_len));
	values[OUTBOX_ENQUEUED_AT] = TimestampTzGetDatum(occurred_at);
	values[OUTBOX_ATTEMPTS] = Int32GetDatum(0);
	values[OUTBOX_NEXT_ATTEMPT_AT] = (Datum) 0;
	values[OUTBOX_LAST_ERROR] = (Datum) 0;
	memset(nulls, false, sizeof(bool) * w->natts);
	nulls[OUTBOX_NEXT_ATTEMPT_AT] = true;
	nulls[OUTBOX_LAST_ERROR] = true;
	if (w->natts > OUTBOX_BACKFILL)
		values[OUTBOX_BACKFILL] = BoolGetDatum(backfill);
	ExecStoreVirtualTuple(slot);

	ExecSimpleRelationInsert(w->rri, w->estate, slot);
	ResetPerTupleExprContext(w->estate);
}

void
statehub_outbox_close(StatehubOutboxWriter *w)
{
	ExecCloseIndices(w->rri);
	ExecResetTupleTable(w->estate->es_tupleTable, false);
	FreeExecutorState(w->estate);
	table_close(w->rel, NoLock);
	pfree(w);
}

/* Append one event (see statehub_outbox_write). */
void
statehub_outbox_append(const unsigned char *event_id, const char *subject,
					   const char *payload, int payload_len,
					   TimestampTz occurred_at, bool backfill)
{
	StatehubOutboxWriter *w = statehub_outbox_open();

	statehub_outbox_write(w, event_id, subject, payload, payload_len,
						  occurred_at, backfill);
	statehub_outbox_close(w);
}
