/*-------------------------------------------------------------------------
 *
 * backfill.c
 *		statehub_events.backfill(): queue one event per existing row of a
 *		declared mapping, for the rows that were there before it.
 *
 * A backfilled event is built by the capture trigger's own code
 * (statehub_capture_envelope in capture.c, from the mapping's capture
 * trigger), so its attributes are exactly those a live event of the same
 * row would carry; a transition backfill carries no "previous".  It goes
 * into the outbox with backfill = true, which the worker publishes as the
 * header Statehub-Backfill: true.
 *
 * Which rows: the table is read by one SELECT, run AS THE CALLER through a
 * cursor (so the caller's SELECT right, column rights and row security
 * apply, and nothing runs with raised rights), whose WHERE clause is
 *
 *   - for a transition, the tracked column equal to the constant the
 *     capture trigger's WHEN clause compares it with, with the type's own
 *     equality operator: the value as converted when the event was
 *     declared, not its text converted again under the caller's settings;
 *   - for an insert mapping with a condition, the trigger's WHEN clause as
 *     PostgreSQL writes it out now (it follows column renames), refused if
 *     it calls a function of neither the caller nor a superuser (it runs
 *     with the caller's rights);
 *   - and the caller's condition, when given (checked as the declaration
 *     checks conditions);
 *
 * with search_path pinned to pg_catalog by the function's SET clause.
 *
 * Locks and order: a plain snapshot read.  The table is locked as SELECT
 * locks it (AccessShareLock) and no row is locked, so no writer waits for a
 * backfill at all, however many rows it reads.  Each event carries the row
 * as the backfill's snapshot saw it.  Live events of a row keep their
 * commit order (the backfill does not touch them); a live change that the
 * snapshot does not see may reach the stream before or after that row's
 * backfill event (docs/nats-event-subjects.md says what consumers make of
 * it; docs/operations.md how to split a large backfill).
 *
 * Memory and speed: the cursor fetches BACKFILL_FETCH rows at a time, and
 * each row's envelope is built in a context reset for the next row, so a
 * backfill of millions of rows uses the memory of one batch; one outbox
 * writer (outbox.c) serves all the rows.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "nodes/nodeFuncs.h"
#include "rewrite/prs2lock.h"
#include "utils/acl.h"
#include "utils/syscache.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "catalog_checks.h"
#include "envelope.h"
#include "statehub_events.h"

PG_FUNCTION_INFO_V1(backfill);

/*
 * Rows fetched from the cursor at a time: its memory is this many whole
 * rows (wide rows of hundreds of kB each included), so it stays small.
 */
#define BACKFILL_FETCH 64

/*
 * More events than this in one transaction hold live events back for
 * seconds once it commits (they drain after it): advise splitting.
 */
#define BACKFILL_ADVISE_SPLIT 100000

typedef struct BackfillContext
{
	const char *event_type;
	const char *table;
} BackfillContext;

static void
backfill_error_context(void *arg)
{
	BackfillContext *ctx = (BackfillContext *) arg;

	errcontext("backfill of event \"%s\" from table \"%s\"",
			   ctx->event_type, ctx->table);
}

/*
 * The capture trigger named by the mapping, copied from the relcache: a
 * concurrent CREATE TRIGGER on the table (which does not wait for a
 * SELECT's lock) may rebuild the relcache entry while the backfill runs.
 */
static Trigger *
find_trigger(Relation rel, const char *tgname)
{
	TriggerDesc *trigdesc = rel->trigdesc ? CopyTriggerDesc(rel->trigdesc) : NULL;
	int			i;

	for (i = 0; trigdesc != NULL && i < trigdesc->numtriggers; i++)
	{
		if (strcmp(trigdesc->triggers[i].tgname, tgname) == 0)
			return &trigdesc->triggers[i];
	}
	/* the mapping lookup joins pg_trigger: it was there a moment ago */
	elog(ERROR, "capture trigger \"%s\" of table \"%s\" not found",
		 tgname, RelationGetRelationName(rel));
	return NULL;				/* keep compiler quiet */
}

/* The expression below any relabeling or domain coercion. */
static Node *
strip_coercions(Node *node)
{
	for (;;)
	{
		if (node != NULL && IsA(node, RelabelType))
			node = (Node *) ((RelabelType *) node)->arg;
		else if (node != NULL && IsA(node, CoerceToDomain))
			node = (Node *) ((CoerceToDomain *) node)->arg;
		else
			return node;
	}
}

/*
 * The constant the transition trigger's WHEN clause compares NEW's (varno
 * PRS2_NEW_VARNO) or OLD's column attnum with, at its top level
 * ("NEW.col = 'to_value'::type AND OLD.col = 'from_value'::type"), as the
 * trigger stores it: converted once, when the event was declared.
 * Converting the mapping's text again would depend on the caller's
 * DateStyle, TimeZone and the enum's labels now, and would run the type's
 * code.  (Without from_value, OLD is compared only inside an OR: NULL.)
 */
Const *
statehub_transition_constant(Node *node, int varno, AttrNumber attnum)
{
	ListCell   *lc;

	if (node == NULL)
		return NULL;
	if (IsA(node, List) ||
		(IsA(node, BoolExpr) && ((BoolExpr *) node)->boolop == AND_EXPR))
	{
		List	   *args = IsA(node, List) ? (List *) node : ((BoolExpr *) node)->args;

		foreach(lc, args)
		{
			Const	   *c = statehub_transition_constant(lfirst(lc), varno, attnum);

			if (c != NULL)
				return c;
		}
		return NULL;
	}
	if (IsA(node, OpExpr) && list_length(((OpExpr *) node)->args) == 2)
	{
		Node	   *left = strip_coercions(linitial(((OpExpr *) node)->args));
		Node	   *right = strip_coercions(lsecond(((OpExpr *) node)->args));

		if (IsA(left, Var) && ((Var *) left)->varno == varno &&
			((Var *) left)->varattno == attnum && IsA(right, Const) &&
			!((Const *) right)->constisnull)
			return (Const *) right;
	}
	return NULL;
}

/* check_functions_in_node callback: a function the caller should not run. */
static bool
untrusted_function(Oid funcid, void *context)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		return true;
	owner = ((Form_pg_proc) GETSTRUCT(tup))->proowner;
	ReleaseSysCache(tup);
	if (owner == GetUserId() || superuser_arg(owner))
		return false;
	*(Oid *) context = funcid;
	return true;
}

/*
 * The insert trigger's WHEN clause as SQL over the alias "new": deparsed
 * from the trigger, so it names the columns as they are called now (the
 * trigger follows renames) and its constants are exactly the trigger's,
 * written out and read back under the same settings.  The mapping's
 * condition text is what was declared, and may name other columns by now.
 * Its functions run with the caller's rights, so a declaration written by
 * another role (a delegated DBA's function in it) is refused unless every
 * function it calls belongs to the caller or a superuser.
 */
static char *
insert_condition(Trigger *trigger)
{
	Node	   *qual = stringToNode(trigger->tgqual);
	Oid			funcid = InvalidOid;
	char	   *def;
	char	   *start;
	char	   *end;
	char	   *p;

	if (check_functions_in_node(qual, untrusted_function, &funcid))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the declared condition calls function %s, which belongs to neither you nor a superuser",
						OidIsValid(funcid) ? format_procedure(funcid) : "(unknown)"),
				 errdetail("backfill() evaluates the declaration's condition with your rights."),
				 errhint("Run backfill() as the function's owner, or declare the event again without that function.")));

	def = TextDatumGetCString(DirectFunctionCall1(pg_get_triggerdef,
												  ObjectIdGetDatum(trigger->tgoid)));
	start = strstr(def, " FOR EACH ROW WHEN (");
	end = NULL;
	for (p = def; (p = strstr(p, ") EXECUTE FUNCTION ")) != NULL; p++)
		end = p;
	if (start == NULL || end == NULL || end < start)
		elog(ERROR, "could not read the WHEN clause of trigger \"%s\"",
			 trigger->tgname);
	start += strlen(" FOR EACH ROW WHEN (");
	return pnstrdup(start, end - start);
}

/*
 * The SELECT that reads the rows to announce: the whole row of each, as
 * one composite value of the table's row type (so columns have the
 * relation's attribute numbers, dropped ones included, as in a trigger's
 * tuple).  ROW(new.*) names the relation even when a column is called
 * "new" (a bare new would be that column).  A partitioned table is read
 * with its partitions (their capture triggers are clones of its trigger),
 * any other without inheritance children (a trigger does not fire for
 * them).  *nargs is 1 with a transition's constant as $1, else 0.
 */
static char *
backfill_query(Relation rel, Trigger *trigger, StatehubMapping *mapping,
			   const char *condition, Datum *to, Oid *totype, int *nargs)
{
	StringInfoData sql;
	char	   *qualified = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
													   RelationGetRelationName(rel));

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT ROW(new.*)::%s FROM %s%s AS new WHERE true",
					 qualified,
					 rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE ? "" : "ONLY ",
					 qualified);
	*nargs = 0;
	if (strcmp(mapping->operation, "update") == 0)
	{
		AttrNumber	attnum = statehub_capture_tracked_column(trigger, rel);
		Form_pg_attribute att;
		Const	   *c = NULL;

		if (attnum != InvalidAttrNumber && trigger->tgqual != NULL)
			c = statehub_transition_constant(stringToNode(trigger->tgqual),
											 PRS2_NEW_VARNO, attnum);
		if (c == NULL)
			elog(ERROR, "capture trigger \"%s\" of table \"%s\" compares no column with a value",
				 trigger->tgname, RelationGetRelationName(rel));
		att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
		*to = c->constvalue;
		/* the trigger's constant: a domain's base type for a domain column */
		*totype = c->consttype;
		*nargs = 1;
		appendStringInfo(&sql, " AND new.%s%s $1",
						 quote_identifier(NameStr(att->attname)),
						 statehub_transition_filter(rel, attnum));
	}
	/*
	 * Two parentheses: a checked condition is one expression inside one
	 * pair, but may open with ")" ('a) OR (b'); inside two it stays whole.
	 */
	else if (trigger->tgqual != NULL)
		appendStringInfo(&sql, " AND ((\n%s\n))", insert_condition(trigger));
	if (condition != NULL)
		appendStringInfo(&sql, " AND ((\n%s\n))", condition);
	return sql.data;
}

/*
 * backfill(tbl regclass, event_type text, condition text DEFAULT NULL)
 * returns the number of events queued; see the file header.
 */
Datum
backfill(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *event_type;
	char	   *condition;
	Relation	rel;
	StatehubMapping mapping;
	Trigger    *trigger;
	char	   *sql;
	Datum		to = (Datum) 0;
	Oid			totype = InvalidOid;
	int			nargs;
	SPIPlanPtr	plan;
	Portal		portal;
	MemoryContext rowcxt;
	MemoryContext old;
	StatehubOutboxWriter *outbox;
	BackfillContext ctx;
	ErrorContextCallback errcb;
	int64		queued = 0;

	/* not STRICT: a NULL table or type must be refused, not return NULL */
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tbl must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event_type must not be null")));
	relid = PG_GETARG_OID(0);
	event_type = text_to_cstring(PG_GETARG_TEXT_PP(1));
	condition = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));

	statehub_check_event_type(event_type);

	/* the rights to declare events on the table, before any lock */
	statehub_check_declare_rights(relid, true);
	if (condition != NULL)
		statehub_check_condition(condition, "condition of the backfill");

	/* the lock the SELECT takes anyway: no writer waits for it */
	rel = relation_open(relid, AccessShareLock);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext,
								   "statehub_events backfill row",
								   ALLOCSET_DEFAULT_SIZES);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	if (!statehub_mapping_lookup(rel, event_type, &mapping))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("event type \"%s\" is not declared on table \"%s\"",
						event_type, RelationGetRelationName(rel)),
				 errhint("Declare it with statehub_events.track_insert or track_transition first; the mappings view lists the declarations.")));
	if (strcmp(mapping.operation, "delete") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot backfill event \"%s\" of table \"%s\"",
						event_type, RelationGetRelationName(rel)),
				 errdetail("It is declared by track_delete: it announces rows that are gone, and no existing row is one.")));

	trigger = find_trigger(rel, mapping.trigger_name);

	ctx.event_type = event_type;
	ctx.table = RelationGetRelationName(rel);
	errcb.callback = backfill_error_context;
	errcb.arg = &ctx;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	sql = backfill_query(rel, trigger, &mapping, condition, &to, &totype,
						 &nargs);
	plan = SPI_prepare(sql, nargs, &totype);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	portal = SPI_cursor_open(NULL, plan, &to, NULL, false);
	outbox = statehub_outbox_open();

	for (;;)
	{
		uint64		i;

		SPI_cursor_fetch(portal, true, BACKFILL_FETCH);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed; i++)
		{
			HeapTupleData tuple;
			HeapTupleHeader row;
			bool		isnull;
			Datum		value;
			unsigned char id[STATEHUB_UUID_LEN];
			TimestampTz now;
			StringInfoData buf;

			value = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
								  1, &isnull);
			Assert(!isnull);

			old = MemoryContextSwitchTo(rowcxt);
			row = DatumGetHeapTupleHeader(value);
			tuple.t_len = HeapTupleHeaderGetDatumLength(row);
			ItemPointerSetInvalid(&tuple.t_self);
			tuple.t_tableOid = relid;
			tuple.t_data = row;

			now = GetCurrentTimestamp();
			statehub_new_event_id(id);
			initStringInfo(&buf);
			(void) statehub_capture_envelope(&buf, trigger, rel, &tuple, NULL,
											 id, now);
			statehub_outbox_write(outbox, id, event_type, buf.data, buf.len,
								  now, true);
			MemoryContextSwitchTo(old);
			MemoryContextReset(rowcxt);
			queued++;
		}
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	statehub_outbox_close(outbox);
	SPI_cursor_close(portal);
	error_context_stack = errcb.previous;

	SPI_finish();
	MemoryContextDelete(rowcxt);
	relation_close(rel, NoLock);

	if (queued > 0)
		statehub_capture_arm_wakeup();
	if (queued > BACKFILL_ADVISE_SPLIT)
		ereport(NOTICE,
				(errmsg("backfill queued %lld events of \"%s\" in one transaction",
						(long long) queued, event_type),
				 errdetail("Events committed after it are delivered after all of them."),
				 errhint("Split large backfills by key range with condition, each range in its own transaction; see docs/operations.md.")));
	PG_RETURN_INT64(queued);
}
