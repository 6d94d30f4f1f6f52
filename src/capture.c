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
 * An UPDATE or MERGE that moves a row to another partition fires no UPDATE
 * trigger (see row_moved and follow_row_move): its transitions are
 * published by a second trigger of the table, the row-move trigger, and a
 * statement whose moved rows' events could not be exact is refused
 * (check_moves).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tupconvert.h"
#include "access/xact.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "rewrite/rewriteManip.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
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
	Oid			relid;			/* the source partition */
} MovedRow;

static HTAB *capture_cache = NULL;
static ExecutorFinish_hook_type prev_executor_finish = NULL;
static ProcessUtility_hook_type prev_process_utility = NULL;

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
 * Row movement (issue 12).  An UPDATE or a MERGE that moves a row to
 * another partition runs, for that row, a DELETE on the old partition and
 * an INSERT on the new one, and fires their row triggers, not the
 * UPDATE's.  Neither is an event: the row was neither deleted nor created;
 * its transitions are published by the row-move trigger (follow_row_move).
 *
 * - The DELETE half is recognised exactly: the old tuple's t_ctid is marked
 *   as moved to another partition (ItemPointerSetMovedPartitions).
 * - The INSERT half carries no mark.  PostgreSQL queues it right after the
 *   DELETE half (ExecCrossPartitionUpdate: the delete, then the insert
 *   routed from the root; what runs in between, BEFORE triggers and their
 *   SQL, queues into nested queries' own lists), and AFTER row triggers
 *   fire in queue order when their query finishes (ExecutorFinish), one
 *   event per trigger, in name order.  So the first INSERT event a
 *   statehub trigger sees after a move's DELETE half is that move's INSERT
 *   half, provided every partition the row can land in fires the row-move
 *   trigger and nothing skips the insert.  Its first trigger call claims
 *   the kept old row by the new tuple's (relation, t_self): every statehub
 *   trigger of that same event (the row-move trigger may fire before or
 *   after the insert triggers) knows it is a move, and a later INSERT event
 *   of another tuple is a real insert (a MERGE's or a WITH's).  In a plain
 *   UPDATE every INSERT event is a move's.
 * - Where pairing cannot be exact, the statement is refused (check_moves,
 *   when the query has finished, so whatever its triggers queued rolls back
 *   with it): a wrong or missing event without an error is worse than a
 *   refused call.
 *
 * An ExecutorFinish hook keeps this state per query (nested queries, a
 * trigger's SPI, finish on their own), in the query's own memory.
 */
typedef enum FinishingKind
{
	FINISHING_OTHER,			/* no row can move */
	FINISHING_PLAIN_UPDATE,		/* every INSERT event is a move's */
	FINISHING_MIXED				/* MERGE or a data-modifying WITH */
} FinishingKind;

typedef struct FinishingQuery
{
	FinishingKind kind;
	MemoryContext cxt;			/* the query's es_query_cxt */
	MovedRow   *pending;		/* a DELETE half whose INSERT is still due */
	MovedRow   *claimed;		/* the move of the INSERT event firing now */
	Oid			claimed_relid;
	ItemPointerData claimed_tid;
	bool		claimed_published;	/* its transitions are queued */
} FinishingQuery;

static FinishingQuery *finishing = NULL;

static void check_moves(QueryDesc *queryDesc, FinishingKind kind);
static void refuse_lost_move(MovedRow *row);

static FinishingKind
finishing_kind(QueryDesc *queryDesc)
{
	if (queryDesc->plannedstmt->hasModifyingCTE ||
		queryDesc->operation == CMD_MERGE)
		return FINISHING_MIXED;
	if (queryDesc->operation == CMD_UPDATE)
		return FINISHING_PLAIN_UPDATE;
	return FINISHING_OTHER;
}

static void
capture_executor_finish(QueryDesc *queryDesc)
{
	FinishingQuery *saved = finishing;
	FinishingQuery query;

	query.kind = finishing_kind(queryDesc);
	query.cxt = queryDesc->estate->es_query_cxt;
	query.pending = NULL;
	query.claimed = NULL;
	query.claimed_relid = InvalidOid;
	query.claimed_published = false;
	finishing = &query;
	PG_TRY();
	{
		if (prev_executor_finish)
			prev_executor_finish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
		if (query.pending != NULL)
			refuse_lost_move(query.pending);
		if (query.kind != FINISHING_OTHER)
			check_moves(queryDesc, query.kind);
	}
	PG_FINALLY();
	{
		finishing = saved;
	}
	PG_END_TRY();
}

/*
 * A utility statement run inside a finishing query (a COPY in a trigger
 * function of an UPDATE) fires its own AFTER triggers without going
 * through ExecutorFinish: its rows are none of that query's moves, so it
 * runs with no finishing query.
 */
static void
capture_process_utility(PlannedStmt *pstmt, const char *queryString,
						bool readOnlyTree, ProcessUtilityContext context,
						ParamListInfo params, QueryEnvironment *queryEnv,
						DestReceiver *dest, QueryCompletion *qc)
{
	FinishingQuery *saved = finishing;

	finishing = NULL;
	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, queryString, readOnlyTree, context,
								 params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		finishing = saved;
	}
	PG_END_TRY();
}

/* Install the hooks above; from _PG_init. */
void
statehub_capture_init(void)
{
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = capture_executor_finish;
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = capture_process_utility;
}

static void
forget_moved_row(MovedRow **row)
{
	if (*row == NULL)
		return;
	heap_freetuple((*row)->tuple);
	FreeTupleDesc((*row)->desc);
	pfree(*row);
	*row = NULL;
}

/*
 * Whether this INSERT event is the INSERT half of a row movement; *old is
 * then the old row its DELETE half kept, or NULL when none was kept (see
 * the section header: claimed by the event's first statehub trigger).
 */
static bool
moved_insert(TriggerData *trigdata, MovedRow **old)
{
	Oid			relid = RelationGetRelid(trigdata->tg_relation);
	ItemPointer tid = &trigdata->tg_trigtuple->t_self;

	*old = NULL;
	if (finishing == NULL || finishing->kind == FINISHING_OTHER ||
		!trigdata->tg_relation->rd_rel->relispartition)
		return false;
	if (finishing->claimed != NULL && finishing->claimed_relid == relid &&
		ItemPointerEquals(&finishing->claimed_tid, tid))
	{
		*old = finishing->claimed;
		return true;
	}
	if (finishing->pending != NULL)
	{
		forget_moved_row(&finishing->claimed);
		finishing->claimed = finishing->pending;
		finishing->pending = NULL;
		finishing->claimed_relid = relid;
		finishing->claimed_tid = *tid;
		finishing->claimed_published = false;
		*old = finishing->claimed;
		return true;
	}
	return finishing->kind == FINISHING_PLAIN_UPDATE;
}

/* Whether this row trigger call is one half of a row movement. */
static bool
row_moved(TriggerData *trigdata)
{
	MovedRow   *old;

	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		return trigdata->tg_trigtuple->t_data != NULL &&
			HeapTupleHeaderIndicatesMovedPartitions(trigdata->tg_trigtuple->t_data);
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		return moved_insert(trigdata, &old);
	return false;
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

/* What the partitions below a moving statement's target carry. */
typedef struct MoveTree
{
	const char *captured;		/* a partition whose events need pairing */
	const char *uncovered;		/* a partition without a firing row-move trigger */
	const char *skipping;		/* one whose insert may be skipped */
} MoveTree;

/*
 * Look at every leaf partition of root once: the only tables a row moved by
 * a statement on root can leave or enter.  A partition's events need the
 * move paired with its old row when it has transitions (capture() AFTER
 * UPDATE) or, in MERGE and WITH (mixed), inserts (a real insert looks the
 * same); delete events never do (the DELETE half is marked).
 */
static void
scan_move_tree(Relation root, Oid capture_oid, bool mixed, MoveTree *tree)
{
	List	   *leaves = find_all_inheritors(RelationGetRelid(root),
											 AccessShareLock, NULL);
	ListCell   *lc;

	memset(tree, 0, sizeof(MoveTree));
	foreach(lc, leaves)
	{
		Oid			relid = lfirst_oid(lc);
		Relation	rel;
		TriggerDesc *trigdesc;
		bool		captured = false;
		bool		covered = false;
		bool		skipping;

		if (get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE)
			continue;
		rel = table_open(relid, NoLock);
		trigdesc = rel->trigdesc;
		skipping = rel->rd_rel->relkind == RELKIND_FOREIGN_TABLE;
		for (int i = 0; trigdesc != NULL && i < trigdesc->numtriggers; i++)
		{
			Trigger    *trigger = &trigdesc->triggers[i];

			if (!trigger_fires(trigger))
				continue;
			if (TRIGGER_FOR_ROW(trigger->tgtype) &&
				TRIGGER_FOR_BEFORE(trigger->tgtype) &&
				TRIGGER_FOR_INSERT(trigger->tgtype))
				skipping = true;
			if (trigger->tgfoid != capture_oid)
				continue;
			if (is_row_move_trigger(trigger))
				covered = true;
			else if (TRIGGER_FOR_UPDATE(trigger->tgtype) ||
					 (mixed && TRIGGER_FOR_INSERT(trigger->tgtype)))
				captured = true;
		}
		if (captured && tree->captured == NULL)
			tree->captured = pstrdup(RelationGetRelationName(rel));
		if (!covered && tree->uncovered == NULL)
			tree->uncovered = pstrdup(RelationGetRelationName(rel));
		if (skipping && tree->skipping == NULL)
			tree->skipping = pstrdup(RelationGetRelationName(rel));
		table_close(rel, NoLock);
	}
	list_free(leaves);
}

/*
 * Whether a finished UPDATE or MERGE may have moved rows to other
 * partitions.  A move converts the row from the partition it leaves (one of
 * the statement's result relations) to the root's row type once its DELETE
 * half is done (ExecCrossPartitionUpdate): the partition's child-to-root
 * map is then set up, which nothing else the statement does to that
 * partition sets up but a transition table of a statement trigger (so that
 * errs on the side of a refusal).  A move a BEFORE DELETE trigger skipped
 * moved nothing and sets up no map.  A MERGE must also have updated rows.
 */
static bool
rows_moved(ModifyTableState *mt)
{
	if (mt->operation == CMD_MERGE && mt->mt_merge_updated == 0)
		return false;
	for (int i = 0; i < mt->mt_nrels; i++)
	{
		if (mt->resultRelInfo[i].ri_ChildToRootMapValid)
			return true;
	}
	return false;
}

/*
 * Refuse a finished statement whose moved rows' events could not be exact:
 * one ModifyTable of it (the query's, or a WITH's) updates or merges into a
 * partitioned table, moved rows between its partitions, and a partition
 * there has events that need the move paired (scan_move_tree), while
 *
 * - a partition there has no firing row-move trigger (a row moving through
 *   it would not be kept, or not claimed, so a later INSERT half would be
 *   paired with the wrong row, or none), or
 * - in MERGE and WITH, a partition can skip a moved row's insert (a BEFORE
 *   INSERT row trigger, a foreign table), so a kept row would be claimed
 *   by a real insert.  (In a plain UPDATE the next DELETE half replaces it.)
 *
 * Whether rows moved: PostgreSQL sets up tuple routing for an UPDATE at its
 * first attempt to move a row, and for a MERGE that can insert from the
 * start; rows_moved tells.  Costs nothing for a table that is not partitioned; for one that
 * is, one look at its partitions per statement that moved rows.
 */
static void
check_table_moves(PlanState *planstate, FinishingKind kind, Oid *capture_oid)
{
	ModifyTableState *mt = (ModifyTableState *) planstate;
	Relation	root;
	MoveTree	tree;
	bool		mixed = kind == FINISHING_MIXED;

	if (planstate == NULL || !IsA(planstate, ModifyTableState) ||
		(mt->operation != CMD_UPDATE && mt->operation != CMD_MERGE) ||
		mt->rootResultRelInfo == NULL ||
		mt->mt_partition_tuple_routing == NULL)
		return;
	root = mt->rootResultRelInfo->ri_RelationDesc;
	if (root->rd_rel->relkind != RELKIND_PARTITIONED_TABLE || !rows_moved(mt))
		return;
	if (!OidIsValid(*capture_oid))
	{
		List	   *name = list_make2(makeString(STATEHUB_SCHEMA),
									  makeString("capture"));

		*capture_oid = LookupFuncName(name, 0, NULL, true);
		if (!OidIsValid(*capture_oid))
			return;
	}
	scan_move_tree(root, *capture_oid, mixed, &tree);
	if (tree.captured == NULL)
		return;
	if (tree.uncovered != NULL)
	{
		const char *events = mixed ? "insert or transition events" : "transition events";
		const char *why = mixed ?
		"in MERGE or a statement with a data-modifying WITH a moved row could not be told from an inserted one" :
		"a moved row could not be paired with its old row";

		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot publish the events of rows moved between partitions of table \"%s\"",
						RelationGetRelationName(root)),
				 strcmp(tree.captured, tree.uncovered) == 0 ?
				 errdetail("Partition \"%s\" has %s but no row-move trigger (one comes with a transition declared on a partitioned table above it), so %s.",
						   tree.captured, events, why) :
				 errdetail("Partition \"%s\" has %s, and partition \"%s\" has no row-move trigger (one comes with a transition declared on a partitioned table above it), so %s.",
						   tree.captured, events, tree.uncovered, why),
				 mixed ?
				 errhint("Move the rows with a plain UPDATE of the partitioned table that declares the events.") :
				 errhint("Declare the events on the partitioned table \"%s\", or update the partitioned table that declares them.",
						 RelationGetRelationName(root))));
	}
	if (mixed && tree.skipping != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot publish the events of rows moved between partitions of table \"%s\"",
						RelationGetRelationName(root)),
				 errdetail("Partition \"%s\" can skip a moved row's insert (a BEFORE INSERT row trigger, or a foreign table), so in MERGE or a statement with a data-modifying WITH a moved row could not be told from an inserted one.",
						   tree.skipping),
				 errhint("Move the rows with a plain UPDATE.")));
}

/*
 * check_table_moves for each ModifyTable of a finished query.  With
 * statehub_events.capture off nothing is published, so nothing is refused.
 */
static void
check_moves(QueryDesc *queryDesc, FinishingKind kind)
{
	Oid			capture_oid = InvalidOid;
	ListCell   *lc;

	if (!statehub_capture)
		return;
	check_table_moves(queryDesc->planstate, kind, &capture_oid);
	if (!queryDesc->plannedstmt->hasModifyingCTE)
		return;
	foreach(lc, queryDesc->estate->es_subplanstates)
		check_table_moves((PlanState *) lfirst(lc), kind, &capture_oid);
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
publish_moved_transitions(Oid capture_oid, Relation rel, MovedRow *moved,
						  HeapTuple newtuple)
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
			TupleConversionMap *map = convert_tuples_by_name(moved->desc, desc);

			oldtuple = map != NULL ?
				execute_attr_map_tuple(moved->tuple, map) : moved->tuple;
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
 * A moved row's DELETE half was kept and no INSERT half claimed it: a
 * BEFORE INSERT trigger of the partition it was moving to (or a foreign
 * table's server) skipped the insert, and the row is gone.  Neither its
 * transition nor a delete event would be true; refuse the statement.
 * Nothing is refused while capture is off (nothing would be published).
 */
static void
refuse_lost_move(MovedRow *row)
{
	char	   *name;

	if (!statehub_capture)
		return;
	name = get_rel_name(row->relid);
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("cannot publish the events of a row moved out of partition \"%s\"",
					name != NULL ? name : "?"),
			 errdetail("The partition the row was moving to did not insert it (a BEFORE INSERT row trigger returned NULL, or a foreign table's server skipped it), so the row would be gone without an event."),
			 errhint("Make the BEFORE INSERT trigger keep moved rows, or DELETE the row instead of moving it.")));
}

/*
 * The row-move trigger: AFTER INSERT OR DELETE FOR EACH ROW on a
 * partitioned table with transitions (mapping.c keeps it), cloned onto
 * every partition.  None of the UPDATE's triggers fire for a moved row
 * (PostgreSQL 15 queues the root's UPDATE event of a row movement for
 * foreign keys only).  So the DELETE half keeps a copy of the old row, in
 * the finishing query's memory, and the INSERT half that claims it
 * (moved_insert) publishes the transitions with it.  Each DELETE half
 * replaces a kept row no INSERT claimed (its insert was skipped by a
 * BEFORE trigger: the row is gone).  Every other row costs one test.
 */
static void
follow_row_move(FunctionCallInfo fcinfo, TriggerData *trigdata)
{
	MovedRow   *old;

	if (finishing == NULL || finishing->kind == FINISHING_OTHER)
		return;
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		MemoryContext oldcxt;

		if (finishing->pending != NULL)
		{
			/* the same DELETE event, through another row-move trigger */
			if (finishing->pending->relid == RelationGetRelid(trigdata->tg_relation) &&
				ItemPointerEquals(&finishing->pending->tuple->t_self,
								  &trigdata->tg_trigtuple->t_self))
				return;
			refuse_lost_move(finishing->pending);
		}
		if (!row_moved(trigdata))
			return;
		oldcxt = MemoryContextSwitchTo(finishing->cxt);
		finishing->pending = palloc(sizeof(MovedRow));
		finishing->pending->tuple = heap_copytuple(trigdata->tg_trigtuple);
		finishing->pending->desc = CreateTupleDescCopy(RelationGetDescr(trigdata->tg_relation));
		finishing->pending->relid = RelationGetRelid(trigdata->tg_relation);
		MemoryContextSwitchTo(oldcxt);
	}
	else if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) &&
			 moved_insert(trigdata, &old) && old != NULL &&
			 !finishing->claimed_published)
	{
		/* once: a sub-partition's own row-move trigger fires beside its parent's */
		finishing->claimed_published = true;
		if (statehub_capture)
			publish_moved_transitions(fcinfo->flinfo->fn_oid,
									  trigdata->tg_relation, old,
									  trigdata->tg_trigtuple);
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
