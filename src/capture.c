/*-------------------------------------------------------------------------
 *
 * capture.c
 *		The capture trigger, emit(), and the commit-time wake-up.
 *
 * statehub_events.capture() is an AFTER ... FOR EACH ROW trigger created by
 * the track_* functions (mapping.c).  Everything it needs is in the trigger
 * itself, so capture never reads the mapping table: the event type, the
 * key each attribute is published under and the column it is read from,
 * and for a transition the tracked column (see StatehubCaptureArgs in
 * catalog_checks.h for the layout).  Keys are fixed at declaration; the
 * column names follow RENAMEs (mapping_upkeep.c rewrites them).
 *
 * Which rows become events is decided before the trigger fires, by the
 * trigger's WHEN clause: an UPDATE that does not transition never enters
 * this file.  (There is no UPDATE OF list: it would hide a change that a
 * BEFORE trigger makes to the tracked column.)
 *
 * Per trigger, the resolved columns (attribute numbers, JSON keys, output
 * functions) are cached in a hash keyed by the trigger's OID (a partition's
 * clone trigger has its own OID and its own attribute numbers).  A relcache
 * invalidation of the table (ALTER TABLE, CREATE/DROP TRIGGER, ...) drops
 * the table's entries.  An attribute column that no longer exists (only a
 * trigger made by hand or under 1.1 can name one: since 1.2 dropping it is
 * refused) is left out of the event and logged once per rebuild: capture
 * never fails a write for a mapping it has already accepted.
 *
 * A transaction that queued events wakes the worker once, at commit.
 *
 * An UPDATE that moves a row to another partition fires no UPDATE trigger
 * (see row_moved and follow_row_move): its transitions are published by a
 * second trigger of the table, the row-move trigger.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/tupconvert.h"
#include "access/xact.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "nodes/makefuncs.h"
#include "rewrite/rewriteManip.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "catalog_checks.h"
#include "envelope.h"
#include "shmem.h"
#include "statehub_events.h"

PG_FUNCTION_INFO_V1(capture);
PG_FUNCTION_INFO_V1(emit);

typedef struct CaptureEntry
{
	Oid			tgoid;			/* hash key */
	Oid			relid;
	bool		valid;
	MemoryContext mcxt;			/* owns everything below */
	char	   *event_type;
	int			ncolumns;
	StatehubColumn *columns;	/* the attributes, in declared order */
	StatehubColumn *tracked;	/* the transition column, or NULL */
} CaptureEntry;

/* The old row of a row movement, until its INSERT half (follow_row_move) */
typedef struct MovedRow
{
	HeapTuple	tuple;
	TupleDesc	desc;			/* the source partition's */
} MovedRow;

static HTAB *capture_cache = NULL;
static ExecutorFinish_hook_type prev_executor_finish = NULL;

/* the query whose AFTER triggers are firing: see row_moved */
static bool finishing_plain_update = false;
static bool finishing_moves_covered = false;	/* see moves_covered */
static MemoryContext finishing_cxt = NULL;	/* its es_query_cxt */
static MovedRow *moved_row = NULL;
static bool cache_has_invalid = false;	/* entries to free before the next use */
static bool wakeup_armed = false;
static bool rescan_armed = false;	/* wake_worker(): scan from the start */
static bool xact_callback_registered = false;

/*
 * Mark the entries of an invalidated table (all of them for InvalidOid)
 * invalid.  Only marked: the callback may run while an entry is being
 * built; the next get_entry frees them (a dropped trigger's entry is never
 * looked up again, so it must not wait for that).
 */
static void
capture_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	CaptureEntry *entry;

	if (capture_cache == NULL)
		return;
	hash_seq_init(&status, capture_cache);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (relid == InvalidOid || entry->relid == relid)
		{
			entry->valid = false;
			cache_has_invalid = true;
		}
	}
}

/* Free every invalid entry; live triggers' entries are built again on use. */
static void
free_invalid_entries(void)
{
	HASH_SEQ_STATUS status;
	CaptureEntry *entry;

	cache_has_invalid = false;
	hash_seq_init(&status, capture_cache);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (entry->valid)
			continue;
		if (entry->mcxt != NULL)
			MemoryContextDelete(entry->mcxt);
		(void) hash_search(capture_cache, &entry->tgoid, HASH_REMOVE, NULL);
	}
}

static void
init_capture_cache(void)
{
	HASHCTL		ctl;

	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(CaptureEntry);
	ctl.hcxt = CacheMemoryContext;
	capture_cache = hash_create("statehub_events capture cache", 64, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	CacheRegisterRelcacheCallback(capture_relcache_callback, (Datum) 0);
}

/* Whether name is one of the first n keys. */
static bool
key_taken(StatehubCaptureArgs *args, int n, const char *name)
{
	for (int i = 0; i < n; i++)
	{
		if (strcmp(args->keys[i], name) == 0)
			return true;
	}
	return false;
}

/*
 * (Re)build a cache entry from the trigger and the table's current shape:
 * every column is looked up here, once, and capture itself only reads
 * attribute numbers and ready-made keys.
 */
static void
build_entry(CaptureEntry *entry, Trigger *trigger, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	StatehubCaptureArgs args;
	MemoryContext old;
	bool	   *listed;
	int			i;

	if (!statehub_parse_capture_args(trigger->tgnargs, trigger->tgargs, &args))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on table \"%s\" has invalid arguments",
						trigger->tgname, RelationGetRelationName(rel)),
				 errhint("Create capture triggers with statehub_events.track_insert, track_transition or track_delete.")));

	/* the type goes into the JSON unescaped: only a valid one may */
	statehub_check_event_type(args.event_type);

	if (entry->mcxt != NULL)
		MemoryContextDelete(entry->mcxt);
	entry->mcxt = AllocSetContextCreate(CacheMemoryContext,
										"statehub_events capture entry",
										ALLOCSET_SMALL_SIZES);
	entry->relid = RelationGetRelid(rel);
	entry->tracked = NULL;
	entry->ncolumns = 0;

	old = MemoryContextSwitchTo(entry->mcxt);

	entry->event_type = pstrdup(args.event_type);
	entry->columns = palloc0(sizeof(StatehubColumn) * Max(desc->natts, 1));
	listed = palloc0(sizeof(bool) * (desc->natts + 1));

	/* the tracked column: named in a 1.2 trigger, UPDATE OF in older ones */
	if (args.keyed && args.tracked_column != NULL)
	{
		Form_pg_attribute att = statehub_find_column(desc, args.tracked_column);

		if (att != NULL)
		{
			entry->tracked = palloc0(sizeof(StatehubColumn));
			statehub_column_init(entry->tracked, att, args.tracked_key,
								 entry->mcxt);
		}
	}
	else if (!args.keyed && trigger->tgnattr == 1 && trigger->tgattr[0] > 0 &&
			 trigger->tgattr[0] <= desc->natts)
	{
		Form_pg_attribute att = TupleDescAttr(desc, trigger->tgattr[0] - 1);

		if (!att->attisdropped)
		{
			entry->tracked = palloc0(sizeof(StatehubColumn));
			statehub_column_init(entry->tracked, att, NULL, entry->mcxt);
		}
	}

	/* the declared columns, under their declared keys */
	for (i = 0; i < args.npairs; i++)
	{
		Form_pg_attribute att = statehub_find_column(desc, args.columns[i]);

		if (att == NULL)
		{
			ereport(LOG,
					(errmsg("statehub_events: attribute column \"%s\" of table \"%s\" no longer exists; event \"%s\" is queued without it",
							args.columns[i], RelationGetRelationName(rel),
							entry->event_type),
					 errhint("Declare the event again with the table's current columns.")));
			continue;
		}
		if (listed[att->attnum] || entry->ncolumns >= desc->natts)
			continue;
		listed[att->attnum] = true;
		statehub_column_init(&entry->columns[entry->ncolumns++], att,
							 args.keys[i], entry->mcxt);
	}

	/*
	 * All columns: those added after the declaration follow under their
	 * own name, unless that name is already a key (or "previous" next to
	 * a transition's old value): the envelope never repeats a key, and the
	 * declared one wins.  mapping.c refuses such a column at ALTER TABLE.
	 */
	if (args.all_columns)
	{
		for (i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);
			const char *name = NameStr(att->attname);

			if (att->attisdropped || listed[att->attnum])
				continue;
			if (key_taken(&args, args.npairs, name) ||
				(entry->tracked != NULL && strcmp(name, "previous") == 0))
			{
				ereport(LOG,
						(errmsg("statehub_events: column \"%s\" of table \"%s\" is left out of event \"%s\": its key is taken",
								name, RelationGetRelationName(rel),
								entry->event_type)));
				continue;
			}
			statehub_column_init(&entry->columns[entry->ncolumns++], att,
								 NULL, entry->mcxt);
		}
	}

	pfree(listed);
	MemoryContextSwitchTo(old);
}

static CaptureEntry *
get_entry(Trigger *trigger, Relation rel)
{
	CaptureEntry *entry;
	bool		found;

	if (capture_cache == NULL)
		init_capture_cache();

	if (cache_has_invalid)
		free_invalid_entries();

	entry = hash_search(capture_cache, &trigger->tgoid, HASH_ENTER, &found);
	if (!found)
		entry->mcxt = NULL;
	if (!found || !entry->valid)
	{
		/*
		 * Valid from before the build on: an invalidation that arrives while
		 * it runs (its catalog lookups process them) marks it invalid again,
		 * and the next call builds it anew.  This call uses what it got.
		 */
		entry->relid = RelationGetRelid(rel);
		entry->valid = true;
		PG_TRY();
		{
			build_entry(entry, trigger, rel);
		}
		PG_CATCH();
		{
			entry->valid = false;
			cache_has_invalid = true;
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	return entry;
}

/* Append {"col": value, ...} for the given columns of a tuple. */
static void
append_columns(StringInfo buf, StatehubColumn *columns, int ncolumns,
			   HeapTuple tuple, TupleDesc desc)
{
	int			i;

	appendStringInfoChar(buf, '{');
	for (i = 0; i < ncolumns; i++)
	{
		StatehubColumn *col = &columns[i];
		bool		isnull;
		Datum		value = heap_getattr(tuple, col->attnum, desc, &isnull);

		if (i > 0)
			appendBinaryStringInfo(buf, ", ", 2);
		appendBinaryStringInfo(buf, col->key, col->keylen);
		statehub_append_value(buf, col, value, isnull);
	}
}

/* Queue one finished envelope and arrange the wake-up at commit. */
static void
queue_event(const unsigned char *id, const char *event_type, StringInfo buf,
			TimestampTz occurred_at)
{
	statehub_outbox_append(id, event_type, buf->data, buf->len, occurred_at,
						   false);
	statehub_capture_arm_wakeup();
}

/*
 * Queue the event a capture trigger makes of one row: attributes from
 * tuple, "previous" from previous (NULL for an insert or a delete).
 */
static void
queue_row_event(Trigger *trigger, Relation rel, HeapTuple tuple,
				HeapTuple previous)
{
	StringInfoData buf;
	unsigned char id[STATEHUB_UUID_LEN];
	TimestampTz now = GetCurrentTimestamp();
	const char *event_type;

	statehub_new_event_id(id);
	initStringInfo(&buf);
	event_type = statehub_capture_envelope(&buf, trigger, rel, tuple, previous,
										   id, now);
	queue_event(id, event_type, &buf, now);
}

/*
 * Row movement (issue 12, item 1).  An UPDATE that moves a row to another
 * partition runs, for that row, a DELETE on the old partition and an INSERT
 * on the new one, and fires their row triggers, not the UPDATE's.  Neither
 * is an event: the row was neither deleted nor created.
 *
 * - The DELETE is recognised exactly: the old tuple's t_ctid is marked as
 *   moved to another partition (ItemPointerSetMovedPartitions).
 * - The INSERT carries no mark.  AFTER row triggers fire when their query
 *   finishes (ExecutorFinish, AfterTriggerEndQuery), so an ExecutorFinish
 *   hook notes whether the query being finished is an UPDATE; an INSERT
 *   event fired then comes from row movement, unless the query also has a
 *   data-modifying WITH (which could insert for real: then, and in MERGE,
 *   the INSERT is published as before).  Nested queries (a trigger's SPI)
 *   finish on their own and note their own kind.
 *
 * The hook also keeps, per query, the memory the row-move trigger holds a
 * moved row in (the query's own: freed with it, whatever happens).
 */
static bool moves_covered(QueryDesc *queryDesc);

static void
capture_executor_finish(QueryDesc *queryDesc)
{
	bool		saved = finishing_plain_update;
	bool		saved_covered = finishing_moves_covered;
	MemoryContext saved_cxt = finishing_cxt;
	MovedRow   *saved_row = moved_row;

	finishing_plain_update = queryDesc->operation == CMD_UPDATE &&
		!queryDesc->plannedstmt->hasModifyingCTE;
	finishing_moves_covered = finishing_plain_update && moves_covered(queryDesc);
	finishing_cxt = queryDesc->estate->es_query_cxt;
	moved_row = NULL;
	PG_TRY();
	{
		if (prev_executor_finish)
			prev_executor_finish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		finishing_plain_update = saved;
		finishing_moves_covered = saved_covered;
		finishing_cxt = saved_cxt;
		moved_row = saved_row;
	}
	PG_END_TRY();
}

/* Install the hook above; from _PG_init. */
void
statehub_capture_init(void)
{
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = capture_executor_finish;
}

/* Whether this row trigger call is one half of a row movement. */
static bool
row_moved(TriggerData *trigdata)
{
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		return trigdata->tg_trigtuple->t_data != NULL &&
			HeapTupleHeaderIndicatesMovedPartitions(trigdata->tg_trigtuple->t_data);
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		return finishing_plain_update &&
			trigdata->tg_relation->rd_rel->relispartition;
	return false;
}

static void
forget_moved_row(void)
{
	if (moved_row == NULL)
		return;
	heap_freetuple(moved_row->tuple);
	FreeTupleDesc(moved_row->desc);
	pfree(moved_row);
	moved_row = NULL;
}

/* Whether the trigger fires under session_replication_role, as PG decides. */
static bool
trigger_fires(Trigger *trigger)
{
	if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
		return trigger->tgenabled != TRIGGER_FIRES_ON_ORIGIN &&
			trigger->tgenabled != TRIGGER_DISABLED;
	return trigger->tgenabled != TRIGGER_FIRES_ON_REPLICA &&
		trigger->tgenabled != TRIGGER_DISABLED;
}

/* Whether this is a row-move trigger (mapping.c makes them). */
static bool
is_row_move_trigger(Trigger *trigger)
{
	return trigger->tgnargs == 1 &&
		strcmp(trigger->tgargs[0], STATEHUB_ROW_MOVE_ARG) == 0 &&
		TRIGGER_FOR_ROW(trigger->tgtype) && TRIGGER_FOR_AFTER(trigger->tgtype) &&
		TRIGGER_FOR_INSERT(trigger->tgtype) && TRIGGER_FOR_DELETE(trigger->tgtype);
}

/*
 * Whether every row this UPDATE moves fires both halves of a row-move
 * trigger: its target is a partitioned table that carries one (its own, or
 * a clone of an ancestor's), so every partition below it, the only ones a
 * row can move between, carries it too.  Otherwise a row moving out of a
 * sub-partition that declares a transition would leave its old row kept,
 * and a row moving in would be paired with it: rather nothing than that.
 */
static bool
moves_covered(QueryDesc *queryDesc)
{
	ModifyTableState *mt;
	Relation	rel;

	if (queryDesc->planstate == NULL ||
		!IsA(queryDesc->planstate, ModifyTableState))
		return false;
	mt = (ModifyTableState *) queryDesc->planstate;
	if (mt->rootResultRelInfo == NULL)
		return false;
	rel = mt->rootResultRelInfo->ri_RelationDesc;
	if (rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE || rel->trigdesc == NULL)
		return false;
	for (int i = 0; i < rel->trigdesc->numtriggers; i++)
	{
		Trigger    *trigger = &rel->trigdesc->triggers[i];

		if (is_row_move_trigger(trigger) && trigger_fires(trigger))
			return true;
	}
	return false;
}

/* Whether an UPDATE trigger's WHEN clause holds for (old, new). */
static bool
when_holds(Trigger *trigger, EState *estate, TupleTableSlot *oldslot,
		   TupleTableSlot *newslot)
{
	MemoryContext old = MemoryContextSwitchTo(estate->es_query_cxt);
	Node	   *qual;
	ExprState  *state;
	ExprContext *econtext;
	bool		holds;

	if (trigger->tgqual == NULL)
	{
		MemoryContextSwitchTo(old);
		return true;
	}
	/* OLD and NEW become the inner and outer tuple, as for the trigger */
	qual = stringToNode(trigger->tgqual);
	ChangeVarNodes(qual, PRS2_OLD_VARNO, INNER_VAR, 0);
	ChangeVarNodes(qual, PRS2_NEW_VARNO, OUTER_VAR, 0);
	state = ExecPrepareQual(make_ands_implicit((Expr *) qual), estate);
	econtext = GetPerTupleExprContext(estate);
	econtext->ecxt_innertuple = oldslot;
	econtext->ecxt_outertuple = newslot;
	holds = ExecQual(state, econtext);
	ResetExprContext(econtext);
	MemoryContextSwitchTo(old);
	return holds;
}

/*
 * The INSERT half of a row movement, with the old row kept by its DELETE
 * half: publish what the UPDATE triggers of the destination partition
 * would have published had the row stayed.  Each transition trigger
 * (capture() fired AFTER UPDATE FOR EACH ROW, enabled) is taken in name
 * order, the order PostgreSQL fires them in, and its own WHEN clause is
 * evaluated over the old row (in the destination's row type) and the new:
 * the condition is exactly the one an unmoved row meets.  capture_oid is
 * capture()'s: only its triggers are events.
 */
static void
publish_moved_transitions(Oid capture_oid, Relation rel, HeapTuple newtuple)
{
	TriggerDesc *trigdesc = rel->trigdesc;
	TupleDesc	desc = RelationGetDescr(rel);
	EState	   *estate = NULL;
	TupleTableSlot *oldslot = NULL;
	TupleTableSlot *newslot = NULL;
	HeapTuple	oldtuple = NULL;

	for (int i = 0; trigdesc != NULL && i < trigdesc->numtriggers; i++)
	{
		Trigger    *trigger = &trigdesc->triggers[i];

		if (trigger->tgfoid != capture_oid ||
			!TRIGGER_TYPE_MATCHES(trigger->tgtype, TRIGGER_TYPE_ROW,
								  TRIGGER_TYPE_AFTER, TRIGGER_TYPE_UPDATE) ||
			!trigger_fires(trigger))
			continue;
		if (estate == NULL)
		{
			TupleConversionMap *map = convert_tuples_by_name(moved_row->desc, desc);

			oldtuple = map != NULL ?
				execute_attr_map_tuple(moved_row->tuple, map) : moved_row->tuple;
			estate = CreateExecutorState();
			oldslot = MakeSingleTupleTableSlot(desc, &TTSOpsHeapTuple);
			newslot = MakeSingleTupleTableSlot(desc, &TTSOpsHeapTuple);
			ExecStoreHeapTuple(oldtuple, oldslot, false);
			ExecStoreHeapTuple(newtuple, newslot, false);
		}
		if (when_holds(trigger, estate, oldslot, newslot))
			queue_row_event(trigger, rel, newtuple, oldtuple);
	}
	if (estate != NULL)
	{
		ExecDropSingleTupleTableSlot(oldslot);
		ExecDropSingleTupleTableSlot(newslot);
		FreeExecutorState(estate);
	}
}

/*
 * The row-move trigger (issue 12, item 1): AFTER INSERT OR DELETE FOR EACH
 * ROW on a partitioned table with transitions (mapping.c keeps it).  A row
 * movement fires, for its row, the DELETE triggers of the old partition and
 * then at once the INSERT triggers of the new one (AFTER trigger events
 * fire in the order they were queued); none of the UPDATE's (PostgreSQL 15
 * queues the root's UPDATE event of a row movement for foreign keys only).
 * So the DELETE half keeps a copy of the old row, in the finishing query's
 * memory, and the INSERT half that comes next publishes the transitions
 * with it.  Each DELETE half replaces what an earlier one kept, and only an
 * INSERT of a plain UPDATE (row_moved) pairs with it; only in an UPDATE
 * whose every moved row fires both halves (moves_covered), so a row whose
 * INSERT a BEFORE trigger skipped is forgotten at the next row.  Every
 * other row costs one test.
 */
static void
follow_row_move(FunctionCallInfo fcinfo, TriggerData *trigdata)
{
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		MemoryContext old;

		forget_moved_row();
		if (!row_moved(trigdata) || !finishing_moves_covered ||
			finishing_cxt == NULL)
			return;
		old = MemoryContextSwitchTo(finishing_cxt);
		moved_row = palloc(sizeof(MovedRow));
		moved_row->tuple = heap_copytuple(trigdata->tg_trigtuple);
		moved_row->desc = CreateTupleDescCopy(RelationGetDescr(trigdata->tg_relation));
		MemoryContextSwitchTo(old);
	}
	else if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) && moved_row != NULL)
	{
		if (statehub_capture && row_moved(trigdata))
			publish_moved_transitions(fcinfo->flinfo->fn_oid,
									  trigdata->tg_relation,
									  trigdata->tg_trigtuple);
		forget_moved_row();
	}
}

/*
 * Build the envelope the capture trigger queues for tuple (a row of rel,
 * in rel's row type), with "previous" from previous when it is given and
 * the trigger tracks a column.  Returns the event type.  Shared by the
 * trigger and by backfill() (backfill.c), so a backfilled event carries
 * exactly the attributes a live one would.
 */
const char *
statehub_capture_envelope(StringInfo buf, Trigger *trigger, Relation rel,
						  HeapTuple tuple, HeapTuple previous,
						  const unsigned char *id, TimestampTz now)
{
	TupleDesc	desc = RelationGetDescr(rel);
	CaptureEntry *entry = get_entry(trigger, rel);

	statehub_envelope_begin(buf, id, entry->event_type, now);
	append_columns(buf, entry->columns, entry->ncolumns, tuple, desc);

	if (previous != NULL && entry->tracked != NULL)
	{
		/* "previous": {"<tracked column>": <its old value>} */
		if (entry->ncolumns > 0)
			appendBinaryStringInfo(buf, ", ", 2);
		appendStringInfoString(buf, "\"previous\": ");
		append_columns(buf, entry->tracked, 1, previous, desc);
		appendStringInfoChar(buf, '}');
	}
	appendStringInfoChar(buf, '}');
	statehub_envelope_end(buf);
	return entry->event_type;
}

/* The column a transition trigger tracks, or InvalidAttrNumber. */
AttrNumber
statehub_capture_tracked_column(Trigger *trigger, Relation rel)
{
	CaptureEntry *entry = get_entry(trigger, rel);

	return entry->tracked != NULL ? entry->tracked->attnum : InvalidAttrNumber;
}

/*
 * The capture trigger.  It must be AFTER ... FOR EACH ROW: before the row
 * is final there is nothing to announce, and only a row trigger sees rows.
 */
Datum
capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"capture\" was not called by trigger manager")));
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"capture\" must be fired AFTER ... FOR EACH ROW")));

	trigger = trigdata->tg_trigger;
	if (is_row_move_trigger(trigger))
	{
		follow_row_move(fcinfo, trigdata);
		return PointerGetDatum(NULL);
	}
	if (!statehub_capture || row_moved(trigdata))
		return PointerGetDatum(NULL);

	/* attributes come from the row as it is now (OLD for a delete) */
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		queue_row_event(trigger, trigdata->tg_relation, trigdata->tg_newtuple,
						trigdata->tg_trigtuple);
	else
		queue_row_event(trigger, trigdata->tg_relation, trigdata->tg_trigtuple,
						NULL);

	return PointerGetDatum(NULL);
}

/*
 * emit(event_type, attributes jsonb) — queue an event from SQL, in the
 * current transaction, with the same validation and envelope as capture.
 * It is not subject to statehub_events.capture: it is an explicit call.
 */
Datum
emit(PG_FUNCTION_ARGS)
{
	char	   *event_type;
	Jsonb	   *attributes;
	StringInfoData buf;
	pg_uuid_t  *result;
	TimestampTz now;

	/* not STRICT: a NULL must be refused, not turn the call into a no-op */
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event type must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event attributes must not be null"),
				 errhint("Pass '{}' for an event without attributes.")));
	event_type = text_to_cstring(PG_GETARG_TEXT_PP(0));
	attributes = PG_GETARG_JSONB_P(1);

	statehub_check_event_type(event_type);
	statehub_check_stream_covers(event_type, ERROR);
	if (!JB_ROOT_IS_OBJECT(attributes) || JB_ROOT_IS_SCALAR(attributes))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event attributes must be a JSON object"),
				 errhint("Pass a jsonb object such as '{\"id\": 42}'.")));

	result = palloc(sizeof(pg_uuid_t));
	statehub_new_event_id(result->data);
	now = GetCurrentTimestamp();

	initStringInfo(&buf);
	statehub_envelope_begin(&buf, result->data, event_type, now);
	(void) JsonbToCString(&buf, &attributes->root, VARSIZE(attributes));
	statehub_envelope_end(&buf);

	queue_event(result->data, event_type, &buf, now);

	PG_RETURN_UUID_P(result);
}

static void
capture_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			/* before the wake-up: the scan it starts must see the request */
			if (rescan_armed)
				statehub_shmem_request_rescan();
			if (wakeup_armed)
				statehub_shmem_wake_worker();
			wakeup_armed = false;
			rescan_armed = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			/* COMMIT PREPARED is left to the worker's poll interval */
			wakeup_armed = false;
			rescan_armed = false;
			break;
		default:
			break;
	}
}

/* Wake the worker when the current transaction commits. */
void
statehub_capture_arm_wakeup(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(capture_xact_callback, NULL);
		xact_callback_registered = true;
	}
	wakeup_armed = true;
}

/* At commit, the worker scans the whole outbox (wake_worker()). */
void
statehub_capture_arm_rescan(void)
{
	statehub_capture_arm_wakeup();
	rescan_armed = true;
}
