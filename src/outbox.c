/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		Appending events to statehub_events.outbox.
 *
 * Capture runs as the application role, which has (and needs) no rights on
 * the outbox: the row is inserted directly through the executor's simple
 * relation insert, the way logical replication applies rows, which checks
 * no ACL and plans nothing.  The drain key comes from nextval on the
 * outbox's own sequence, also without an ACL check.
 *
 * The relation and sequence OIDs are looked up once and forgotten on any
 * relcache invalidation of either (DROP EXTENSION, ALTER TABLE, ...).
 * The outbox's layout is checked when it is looked up, so a hand-altered
 * table fails loudly instead of receiving misplaced columns.
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

static void
outbox_relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == outbox_relid || relid == outbox_seqid)
	{
		outbox_relid = InvalidOid;
		outbox_seqid = InvalidOid;
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
 * Append one event to the outbox in the current transaction (and current
 * subtransaction: a rolled-back savepoint takes the event with it).
 */
void
statehub_outbox_append(const unsigned char *event_id, const char *subject,
					   const char *payload, int payload_len,
					   TimestampTz occurred_at)
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	Datum	   *values;
	bool	   *nulls;
	pg_uuid_t  *uuid;

	lookup_outbox();

	rel = table_open(outbox_relid, RowExclusiveLock);
	check_outbox_layout(rel);

	estate = CreateExecutorState();
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	/* nothing but the outbox's own indexes; never a DBA's trigger */
	rri->ri_TrigDesc = NULL;
	ExecOpenIndices(rri, false);

	slot = ExecInitExtraTupleSlot(estate, RelationGetDescr(rel),
								  &TTSOpsVirtual);
	ExecClearTuple(slot);
	values = slot->tts_values;
	nulls = slot->tts_isnull;

	uuid = palloc(sizeof(pg_uuid_t));
	memcpy(uuid->data, event_id, UUID_LEN);

	/*
	 * Take an xid before the drain key: the worker's scan cursor relies on
	 * every transaction that holds a key having an xid (see worker.c).  A
	 * capturing transaction has one already; emit() may not.
	 */
	(void) GetCurrentTransactionId();
	values[OUTBOX_ID] = Int64GetDatum(nextval_internal(outbox_seqid, false));
	nulls[OUTBOX_ID] = false;
	values[OUTBOX_EVENT_ID] = UUIDPGetDatum(uuid);
	nulls[OUTBOX_EVENT_ID] = false;
	values[OUTBOX_SUBJECT] = CStringGetTextDatum(subject);
	nulls[OUTBOX_SUBJECT] = false;
	values[OUTBOX_PAYLOAD] = PointerGetDatum(cstring_to_text_with_len(payload,
																	  payload_len));
	nulls[OUTBOX_PAYLOAD] = false;
	values[OUTBOX_ENQUEUED_AT] = TimestampTzGetDatum(occurred_at);
	nulls[OUTBOX_ENQUEUED_AT] = false;
	values[OUTBOX_ATTEMPTS] = Int32GetDatum(0);
	nulls[OUTBOX_ATTEMPTS] = false;
	nulls[OUTBOX_NEXT_ATTEMPT_AT] = true;
	nulls[OUTBOX_LAST_ERROR] = true;
	ExecStoreVirtualTuple(slot);

	ExecSimpleRelationInsert(rri, estate, slot);

	ExecCloseIndices(rri);
	ExecResetTupleTable(estate->es_tupleTable, false);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
}
