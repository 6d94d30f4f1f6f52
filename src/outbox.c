/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		Appending events to statehub_events.outbox.
 *
 * Capture runs as the application role, which has (and needs) no rights on
 * the outbox: the row goes straight into the heap and the primary key
 * index, which checks no ACL, plans nothing and builds no executor state
 * per event.  (Should a DBA add an index with expressions or a predicate,
 * inserts take the executor's simple relation insert instead, the way
 * logical replication applies rows.)  The drain key comes from nextval on
 * the outbox's own sequence, also without an ACL check.
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

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_index.h"
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
	OUTBOX_NATTS
};

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
};

static Oid	outbox_relid = InvalidOid;
static Oid	outbox_seqid = InvalidOid;
static bool callback_registered = false;

/*
 * The outbox whose layout was checked, and whether the direct insert path
 * applies to it; forgotten with the OIDs on an invalidation.
 */
static Oid	checked_relid = InvalidOid;
static bool outbox_plain = false;

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

static void
check_outbox_layout(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	if (desc->natts != OUTBOX_NATTS)
		outbox_layout_error("The number of columns differs.");
	for (i = 0; i < OUTBOX_NATTS; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped ||
			strcmp(NameStr(att->attname), outbox_columns[i].name) != 0 ||
			att->atttypid != outbox_columns[i].type)
			outbox_layout_error("A column was dropped, renamed, retyped or moved.");
	}
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

/*
 * Whether every index of the outbox is a plain, immediate index on columns
 * (no expressions, no predicate, no exclusion constraint): then the row is
 * inserted directly into the heap and each index, which is all the
 * executor would do for such a table, without building executor state for
 * every event.  The extension creates only such an index; a DBA's other
 * kind of index sends inserts through the executor's general path.
 */
static bool
outbox_indexes_plain(Relation rel)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	bool		plain = true;

	foreach(lc, indexes)
	{
		Relation	idx = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index form = idx->rd_index;

		if (!form->indimmediate || form->indisexclusion ||
			!heap_attisnull(idx->rd_indextuple, Anum_pg_index_indexprs, NULL) ||
			!heap_attisnull(idx->rd_indextuple, Anum_pg_index_indpred, NULL))
			plain = false;
		index_close(idx, AccessShareLock);
	}
	list_free(indexes);
	return plain;
}

/* Insert the row into the heap and each (plain) index of the outbox. */
static void
insert_direct(Relation rel, Datum *values, bool *nulls)
{
	HeapTuple	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;

	heap_insert(rel, tuple, GetCurrentCommandId(true), 0, NULL);

	foreach(lc, indexes)
	{
		Relation	idx = index_open(lfirst_oid(lc), RowExclusiveLock);
		IndexInfo  *info;
		Datum		ivalues[INDEX_MAX_KEYS];
		bool		inulls[INDEX_MAX_KEYS];
		int			i;

		/* an index still being built concurrently takes no inserts yet */
		if (!idx->rd_index->indisready)
		{
			index_close(idx, NoLock);
			continue;
		}
		info = BuildIndexInfo(idx);
		for (i = 0; i < info->ii_NumIndexAttrs; i++)
		{
			AttrNumber	attno = info->ii_IndexAttrNumbers[i];

			ivalues[i] = values[attno - 1];
			inulls[i] = nulls[attno - 1];
		}
		index_insert(idx, ivalues, inulls, &tuple->t_self, rel,
					 idx->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
					 false, info);
		index_close(idx, NoLock);
	}
	list_free(indexes);
}

/* Insert the row through the executor, for an outbox with other indexes. */
static void
insert_general(Relation rel, Datum *values, bool *nulls)
{
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	TupleTableSlot *slot;

	InitResultRelInfo(rri, rel, 1, NULL, 0);
	/* nothing but the outbox's indexes; never a DBA's trigger */
	rri->ri_TrigDesc = NULL;
	ExecOpenIndices(rri, false);
	slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel), &TTSOpsVirtual);
	ExecClearTuple(slot);
	memcpy(slot->tts_values, values, sizeof(Datum) * OUTBOX_NATTS);
	memcpy(slot->tts_isnull, nulls, sizeof(bool) * OUTBOX_NATTS);
	ExecStoreVirtualTuple(slot);

	ExecSimpleRelationInsert(rri, estate, slot);

	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
}

/*
 * Append one event to the outbox in the current transaction (and current
 * subtransaction: a rolled-back savepoint takes the event with it).
 */
void
statehub_outbox_append(const unsigned char *event_id, const char *subject,
					   const char *payload, int payload_len,
					   TimestampTz occurred_at)
{
	Oid			relid;
	Oid			seqid;
	Relation	rel;
	Datum		values[OUTBOX_NATTS];
	bool		nulls[OUTBOX_NATTS];
	pg_uuid_t  *uuid;

	/*
	 * Keep the OIDs in locals: opening the table processes invalidations,
	 * which may reset the cached ones (and then the checks run again).
	 */
	lookup_outbox();
	relid = outbox_relid;
	seqid = outbox_seqid;
	rel = table_open(relid, RowExclusiveLock);
	if (checked_relid != relid)
	{
		check_outbox_layout(rel);
		outbox_plain = outbox_indexes_plain(rel);
		checked_relid = relid;
	}

	uuid = palloc(sizeof(pg_uuid_t));
	memcpy(uuid->data, event_id, UUID_LEN);

	/*
	 * Take an xid before the drain key: the worker's scan cursor relies on
	 * every transaction that holds a key having an xid (see worker.c).  A
	 * capturing transaction has one already; emit() may not.
	 */
	(void) GetCurrentTransactionId();
	values[OUTBOX_ID] = Int64GetDatum(nextval_internal(seqid, false));
	values[OUTBOX_EVENT_ID] = UUIDPGetDatum(uuid);
	values[OUTBOX_SUBJECT] = CStringGetTextDatum(subject);
	values[OUTBOX_PAYLOAD] = PointerGetDatum(cstring_to_text_with_len(payload,
																	  payload_len));
	values[OUTBOX_ENQUEUED_AT] = TimestampTzGetDatum(occurred_at);
	values[OUTBOX_ATTEMPTS] = Int32GetDatum(0);
	values[OUTBOX_NEXT_ATTEMPT_AT] = (Datum) 0;
	values[OUTBOX_LAST_ERROR] = (Datum) 0;
	memset(nulls, false, sizeof(nulls));
	nulls[OUTBOX_NEXT_ATTEMPT_AT] = true;
	nulls[OUTBOX_LAST_ERROR] = true;

	if (outbox_plain)
		insert_direct(rel, values, nulls);
	else
		insert_general(rel, values, nulls);

	table_close(rel, NoLock);
}
