/*-------------------------------------------------------------------------
 *
 * mapping.c
 *		The DBA's mapping API: track_insert, track_transition, track_delete
 *		and untrack.
 *
 * A mapping is two things created together in the caller's transaction:
 *
 * - a capture trigger on the table, created AS THE CALLER (so PostgreSQL
 *   itself checks the caller's right to create triggers there, and nothing
 *   is escalated), whose WHEN clause lets PostgreSQL filter rows before
 *   capture runs, and whose arguments carry everything capture needs: the
 *   keys, fixed now to the columns' names of today, and the columns they
 *   are read from (see catalog_checks.h; mapping_upkeep.c keeps them true
 *   through later DDL);
 * - a row in statehub_events.mapping recording the declaration as the DBA
 *   wrote it (for the mappings view and pg_dump), written as the table's
 *   owner because callers have no rights on it.  That SQL is the only code
 *   of the extension that runs with raised rights; see execute_as_owner
 *   for how it is fenced (issue 8: an operator of the caller's, found
 *   through the caller's search_path, used to run as superuser there).
 *
 * Who may call these functions is the DBA's to grant (they are revoked
 * from PUBLIC, see docs/security.md); on top of that, the caller needs
 * what CREATE TRIGGER needs.  Temporary tables are refused, one table
 * declares an event type once (the same function again replaces it), and
 * an event trigger (forget_dropped_mappings) deletes the rows of dropped
 * tables and triggers, so no mapping row outlives its trigger.
 *
 * The trigger's SQL is generated here with every name quoted and
 * schema-qualified, values as quoted literals, the type's own equality
 * operator named by schema (OPERATOR(ns.=)), and search_path pinned to
 * pg_catalog while it is parsed: nothing can be redirected through a
 * search_path.  A DBA's condition is first parsed on its own and must be a
 * single expression, so it cannot close the WHEN clause and add SQL.
 *
 * A declaration means what it says or is refused (issue 12): to/from values
 * the column can never hold, or that name a moment relative to now, are
 * errors; an event type outside stream_subjects is a warning; replacing a
 * declaration is a NOTICE that shows the old and the new one.
 *
 * A partitioned table with a transition also carries one row-move trigger
 * (sync_row_move_trigger; capture.c's follow_row_move says why): made with
 * its first transition, dropped with its last, as the caller.
 *
 * Every check happens before anything is created, and any error aborts the
 * caller's transaction: nothing is ever half-created.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/sysattr.h"
#include "catalog/pg_enum.h"
#include "executor/executor.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_class.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parse_func.h"
#include "parser/parser.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/formatting.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "catalog_checks.h"
#include "statehub_events.h"

PG_FUNCTION_INFO_V1(track_insert);
PG_FUNCTION_INFO_V1(track_transition);
PG_FUNCTION_INFO_V1(track_delete);
PG_FUNCTION_INFO_V1(untrack);

#define TRIGGER_PREFIX "statehub_events:"

/* One declaration, as the track_* functions receive it. */
typedef struct TrackSpec
{
	Oid			relid;
	const char *event_type;
	const char *operation;		/* "insert", "update" or "delete" */
	ArrayType  *attributes;		/* NULL: all columns */
	const char *condition;		/* insert only */
	const char *column_name;	/* update only */
	const char *to_value;
	const char *from_value;
} TrackSpec;

static void
undefined_column(Relation rel, const char *name, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("column \"%s\" of table \"%s\" does not exist",
					name, RelationGetRelationName(rel)),
			 errhint("%s", hint)));
}

/*
 * Check the attribute list against the table and return its names (NIL for
 * "all columns").  A transition event carries "previous" next to the
 * attributes, so no attribute may be called that.
 */
static List *
check_attributes(Relation rel, ArrayType *attributes, bool is_transition)
{
	List	   *names = NIL;
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	if (attributes != NULL)
	{
		Datum	   *elems;
		bool	   *nulls;
		int			nelems;

		if (ARR_NDIM(attributes) > 1)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("attributes must be a one-dimensional array of column names")));
		deconstruct_array(attributes, TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &nulls, &nelems);
		for (i = 0; i < nelems; i++)
		{
			char	   *name;
			ListCell   *lc;

			if (nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("attributes must not contain null")));
			name = TextDatumGetCString(elems[i]);
			if (statehub_find_column(RelationGetDescr(rel), name) == NULL)
				undefined_column(rel, name,
								 "The attributes are columns of the tracked table; pass NULL for all of them.");
			foreach(lc, names)
			{
				if (strcmp((char *) lfirst(lc), name) == 0)
					ereport(ERROR,
							(errcode(ERRCODE_DUPLICATE_COLUMN),
							 errmsg("column \"%s\" is listed more than once in attributes",
									name)));
			}
			names = lappend(names, name);
		}
	}

	if (is_transition)
	{
		bool		has_previous = false;

		if (attributes != NULL)
		{
			ListCell   *lc;

			foreach(lc, names)
				has_previous |= strcmp((char *) lfirst(lc), "previous") == 0;
		}
		else
		{
			for (i = 0; i < desc->natts; i++)
			{
				Form_pg_attribute att = TupleDescAttr(desc, i);

				has_previous |= !att->attisdropped &&
					strcmp(NameStr(att->attname), "previous") == 0;
			}
		}
		if (has_previous)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_COLUMN),
					 errmsg("a transition event cannot carry an attribute named \"previous\""),
					 errdetail("Transition events hold the old value of the tracked column under \"previous\"."),
					 errhint("List the attributes explicitly, without column \"previous\".")));
	}
	return names;
}

/*
 * The DBA's condition must be exactly one expression: parse it alone as
 * "SELECT (<condition>)" and accept nothing but a bare one-column SELECT.
 * Whether it is a valid boolean over NEW is then checked by CREATE TRIGGER.
 */
#define CONDITION_PREFIX "SELECT (\n"

/*
 * Report a syntax error at its place in the condition rather than at a
 * meaningless place in the caller's query (as SQL functions do).
 */
typedef struct ConditionContext
{
	const char *condition;
	const char *what;
} ConditionContext;

static void
condition_error_context(void *arg)
{
	ConditionContext *ctx = (ConditionContext *) arg;
	int			pos = geterrposition();

	if (pos > 0)
	{
		errposition(0);
		internalerrposition(Max(pos - (int) strlen(CONDITION_PREFIX), 1));
		internalerrquery(ctx->condition);
	}
	errcontext("%s", ctx->what);
}

/*
 * Check that a condition is one expression; what names it in the error
 * context ("condition of the event declaration").  Also used by backfill().
 */
void
statehub_check_condition(const char *condition, const char *what)
{
	char	   *sql = psprintf(CONDITION_PREFIX "%s\n)", condition);
	List	   *parsed;
	SelectStmt *select = NULL;
	ErrorContextCallback errcb;
	ConditionContext ctx = {condition, what};

	errcb.callback = condition_error_context;
	errcb.arg = (void *) &ctx;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	parsed = raw_parser(sql, RAW_PARSE_DEFAULT);
	error_context_stack = errcb.previous;
	if (list_length(parsed) == 1)
	{
		Node	   *stmt = linitial_node(RawStmt, parsed)->stmt;

		if (IsA(stmt, SelectStmt))
			select = (SelectStmt *) stmt;
	}
	if (select == NULL || select->op != SETOP_NONE ||
		list_length(select->targetList) != 1 ||
		select->fromClause != NIL || select->whereClause != NULL ||
		select->groupClause != NIL || select->havingClause != NULL ||
		select->windowClause != NIL || select->sortClause != NIL ||
		select->limitCount != NULL || select->limitOffset != NULL ||
		select->lockingClause != NIL || select->withClause != NULL ||
		select->distinctClause != NIL || select->intoClause != NULL ||
		select->valuesLists != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid condition \"%s\"", condition),
				 errdetail("The condition must be a single boolean expression."),
				 errhint("Write an expression over NEW, such as 'NEW.kind = ''service'''.")));
	pfree(sql);
}

/* errcontext for a value that does not convert to the column's type */
typedef struct ValueContext
{
	const char *argname;
	const char *column;
	const char *table;
} ValueContext;

static void
value_error_context(void *arg)
{
	ValueContext *ctx = (ValueContext *) arg;

	errcontext("%s for column \"%s\" of table \"%s\"",
			   ctx->argname, ctx->column, ctx->table);
}

/*
 * Pin search_path to pg_catalog (and pg_temp last, where no function or
 * operator is ever looked up) until unpin_search_path: no SQL this file
 * runs can resolve a name through the caller's search_path.
 */
static int
pin_search_path(void)
{
	int			nestlevel = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

/*
 * Undo every setting changed since pin_search_path, not only search_path:
 * code run inside (a domain's CHECK, an equality function) must not leave
 * a set_config() behind in the caller's session, as ANALYZE undoes what
 * index expressions set.
 */
static void
unpin_search_path(int nestlevel)
{
	AtEOXact_GUC(false, nestlevel);
}

static char *equality_operator(Form_pg_attribute att, Relation rel, Oid *eqfunc);

/*
 * The column type's own code (its input function with a domain's CHECK
 * constraints, its equality operator) belongs to whoever made the type and
 * the table, not to the role declaring the event: it runs as the table's
 * owner, in a security-restricted operation with search_path pinned, the
 * way PostgreSQL's maintenance commands run index expressions.  Otherwise a
 * table owner's domain CHECK would run with a superuser's (or a delegated
 * DBA's) rights when they declare a transition on the owner's table.  An
 * ERROR in between is cleaned up by the (sub)transaction abort, which
 * restores the user and the GUC nest level.  execute_as_owner enters the
 * same kind of section as the mapping table's owner.
 */
typedef struct OwnerSection
{
	Oid			save_userid;
	int			save_sec;
	int			nestlevel;
} OwnerSection;

static void
owner_section_begin(Oid owner, OwnerSection *section)
{
	GetUserIdAndSecContext(&section->save_userid, &section->save_sec);
	SetUserIdAndSecContext(owner,
						   section->save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	section->nestlevel = pin_search_path();
}

static void
owner_section_end(OwnerSection *section)
{
	unpin_search_path(section->nestlevel);
	SetUserIdAndSecContext(section->save_userid, section->save_sec);
}

/*
 * Date/time input that names a moment relative to now: the trigger would
 * compare with the moment of the declaration, while the mappings view shows
 * the word (issue 12, item 4).  Refused in any type whose values are, or
 * contain, dates or times.
 */
static const char *const relative_words[] = {"now", "today", "yesterday", "tomorrow"};

static bool
is_datetime_type(Oid typid)
{
	Oid			base = getBaseType(typid);
	Oid			elem = get_element_type(base);

	if (OidIsValid(elem))
		base = getBaseType(elem);
	else if (type_is_range(base))
		base = getBaseType(get_range_subtype(base));
	return TypeCategory(base) == TYPCATEGORY_DATETIME;
}

static void
check_constant_input(Form_pg_attribute att, const char *argname, const char *value)
{
	char	   *lower;

	if (!is_datetime_type(att->atttypid))
		return;
	lower = asc_tolower(value, strlen(value));
	for (int i = 0; i < lengthof(relative_words); i++)
	{
		const char *p = lower;

		while ((p = strstr(p, relative_words[i])) != NULL)
		{
			size_t		len = strlen(relative_words[i]);
			bool		starts = p == lower || !isalpha((unsigned char) p[-1]);
			bool		ends = !isalpha((unsigned char) p[len]);

			if (starts && ends)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("%s \"%s\" is not a constant", argname, value),
						 errdetail("\"%s\" means a moment relative to the time it is read; the trigger would compare with the moment of the declaration.",
								   relative_words[i]),
						 errhint("Pass the date or time itself, such as '2026-01-31'.")));
			p += len;
		}
	}
}

/*
 * An enum label the type does not have is an ERROR with the labels in a
 * hint (the input function would say only "invalid input value").
 */
static void
check_enum_label(Form_pg_attribute att, Relation rel, const char *argname,
				 const char *value)
{
	Oid			base = getBaseType(att->atttypid);

	if (!type_is_enum(base) || strlen(value) >= NAMEDATALEN ||
		SearchSysCacheExists2(ENUMTYPOIDNAME, ObjectIdGetDatum(base),
							  CStringGetDatum(value)))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("%s \"%s\" is not a label of type %s", argname, value,
					format_type_be(base)),
			 errdetail("Column \"%s\" of table \"%s\" can never hold it, so the event would never be published.",
					   NameStr(att->attname), RelationGetRelationName(rel)),
			 errhint("The labels are listed by: SELECT pg_catalog.enum_range(NULL::%s);",
					 format_type_be_qualified(base))));
}

/*
 * A value that a single-column CHECK constraint of the table refuses can
 * never be stored, so a transition to or from it never happens: an ERROR,
 * naming the constraint (issue 12, item 3).  The constraint is evaluated
 * as the table's owner (it is the owner's code), as ExecRelCheck would on
 * a row holding only that value.
 */
static void
check_column_constraints(Form_pg_attribute att, Relation rel,
						 const char *argname, const char *value, Datum datum)
{
	TupleConstr *constr = RelationGetDescr(rel)->constr;
	TupleTableSlot *slot = NULL;
	EState	   *estate = NULL;

	if (constr == NULL)
		return;
	for (int i = 0; i < constr->num_check; i++)
	{
		ConstrCheck *check = &constr->check[i];
		Expr	   *expr = (Expr *) stringToNode(check->ccbin);
		Bitmapset  *attrs = NULL;
		ExprState  *state;
		ExprContext *econtext;
		OwnerSection section;
		bool		ok;

		pull_varattnos((Node *) expr, 1, &attrs);
		if (bms_num_members(attrs) != 1 ||
			!bms_is_member(att->attnum - FirstLowInvalidHeapAttributeNumber, attrs))
			continue;

		if (estate == NULL)
		{
			estate = CreateExecutorState();
			slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsVirtual);
			ExecClearTuple(slot);
			for (int j = 0; j < slot->tts_tupleDescriptor->natts; j++)
				slot->tts_isnull[j] = true;
			slot->tts_values[att->attnum - 1] = datum;
			slot->tts_isnull[att->attnum - 1] = false;
			ExecStoreVirtualTuple(slot);
		}
		owner_section_begin(rel->rd_rel->relowner, &section);
		state = ExecPrepareExpr(expr, estate);
		econtext = GetPerTupleExprContext(estate);
		econtext->ecxt_scantuple = slot;
		ok = ExecCheck(state, econtext);
		owner_section_end(&section);
		if (!ok)
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("%s \"%s\" can never be stored in column \"%s\" of table \"%s\"",
							argname, value, NameStr(att->attname),
							RelationGetRelationName(rel)),
					 errdetail("It violates check constraint \"%s\", so the event would never be published.",
							   check->ccname),
					 errhint("Pass a value the column can hold.")));
	}
	if (estate != NULL)
	{
		ExecDropSingleTupleTableSlot(slot);
		FreeExecutorState(estate);
	}
}

/*
 * Convert a to_value/from_value with the column's input function, after
 * refusing what can never be compared as declared: relative dates and
 * times, labels the enum lacks, values a CHECK of the column refuses.
 */
static Datum
convert_value(Form_pg_attribute att, Relation rel, const char *argname,
			  const char *value)
{
	Oid			infunc;
	Oid			ioparam;
	Datum		result;
	ValueContext ctx;
	ErrorContextCallback errcb;
	OwnerSection section;

	check_constant_input(att, argname, value);
	check_enum_label(att, rel, argname, value);

	ctx.argname = argname;
	ctx.column = NameStr(att->attname);
	ctx.table = RelationGetRelationName(rel);
	errcb.callback = value_error_context;
	errcb.arg = &ctx;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	getTypeInputInfo(att->atttypid, &infunc, &ioparam);
	owner_section_begin(rel->rd_rel->relowner, &section);
	result = OidInputFunctionCall(infunc, (char *) value, ioparam,
								  att->atttypmod);
	if (att->atttypmod >= 0)
	{
		/*
		 * The trigger compares with the value as written, cast to the type
		 * without its modifier: one the column's precision rounds (1.55 in
		 * numeric(5,1), a fraction of a second in timestamp(0)) is never
		 * equal to what a row can hold.
		 */
		Datum		plain = OidInputFunctionCall(infunc, (char *) value, ioparam, -1);
		Oid			eqfunc;
		Oid			outfunc;
		bool		isvarlena;

		(void) equality_operator(att, rel, &eqfunc);
		if (!DatumGetBool(OidFunctionCall2Coll(eqfunc, att->attcollation,
											   plain, result)))
		{
			getTypeOutputInfo(att->atttypid, &outfunc, &isvarlena);
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s \"%s\" can never be stored in column \"%s\" of table \"%s\"",
							argname, value, NameStr(att->attname),
							RelationGetRelationName(rel)),
					 errdetail("The column's type %s stores it as \"%s\".",
							   format_type_with_typemod(att->atttypid, att->atttypmod),
							   OidOutputFunctionCall(outfunc, result)),
					 errhint("Pass the value as the column stores it.")));
		}
	}
	owner_section_end(&section);

	error_context_stack = errcb.previous;

	check_column_constraints(att, rel, argname, value, result);
	return result;
}

/* "OPERATOR(schema.=)" for the type's default equality operator. */
static char *
equality_operator(Form_pg_attribute att, Relation rel, Oid *eqfunc)
{
	TypeCacheEntry *tce = lookup_type_cache(att->atttypid, TYPECACHE_EQ_OPR);
	HeapTuple	tup;
	Form_pg_operator oper;
	char	   *result;

	if (!OidIsValid(tce->eq_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("cannot track transitions of column \"%s\" of table \"%s\"",
						NameStr(att->attname), RelationGetRelationName(rel)),
				 errdetail("Type %s has no default equality operator.",
						   format_type_be(att->atttypid)),
				 errhint("Track a column whose type can be compared with \"=\".")));

	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(tce->eq_opr));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", tce->eq_opr);
	oper = (Form_pg_operator) GETSTRUCT(tup);
	result = psprintf("OPERATOR(%s.%s)",
					  quote_identifier(get_namespace_name(oper->oprnamespace)),
					  NameStr(oper->oprname));
	*eqfunc = oper->oprcode;
	ReleaseSysCache(tup);
	return result;
}

/*
 * The trigger's name: readable when the event type fits, otherwise cut and
 * made unique with a hash of the full type.  One table carries one trigger
 * per event type.
 */
static char *
trigger_name_for(const char *event_type)
{
	size_t		room = NAMEDATALEN - 1 - strlen(TRIGGER_PREFIX);

	if (strlen(event_type) <= room)
		return psprintf(TRIGGER_PREFIX "%s", event_type);
	return psprintf(TRIGGER_PREFIX "%.*s~%08x", (int) (room - 9), event_type,
					DatumGetUInt32(hash_any((const unsigned char *) event_type,
											strlen(event_type))));
}

/*
 * Run SPI SQL on statehub_events.mapping as the table's owner (callers have
 * no rights on it).  This is the only place the extension raises rights,
 * so it is fenced three ways: the SQL is fixed text in this file with every
 * relation qualified and every operator written OPERATOR(pg_catalog.=), the
 * search_path is pinned while it is parsed and run, and it is a security
 * restricted operation.  Caller-supplied values are only ever parameters.
 */
static int
execute_as_owner(const char *sql, int nargs, Oid *argtypes, Datum *args,
				 const char *nulls)
{
	Oid			nspid = get_namespace_oid(STATEHUB_SCHEMA, false);
	Oid			mapid = get_relname_relid("mapping", nspid);
	HeapTuple	tup;
	Oid			owner;
	OwnerSection section;
	int			ret;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(mapid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", mapid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	owner_section_begin(owner, &section);
	ret = SPI_execute_with_args(sql, nargs, argtypes, args, nulls, false, 0);
	owner_section_end(&section);
	if (ret < 0)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	return ret;
}

/* Run DDL as the caller, with search_path pinned to pg_catalog. */
static void
execute_ddl(const char *sql)
{
	int			nestlevel = pin_search_path();
	int			ret;

	ret = SPI_execute(sql, false, 0);
	if (ret < 0)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(ret));
	unpin_search_path(nestlevel);
}

/*
 * The mapping in force of (table, event type), false when there is none;
 * for the track_* functions and backfill() (backfill.c).  The caller is
 * connected to SPI; the strings live in its SPI context.
 */
bool
statehub_mapping_lookup(Relation rel, const char *event_type,
						StatehubMapping *mapping)
{
	Oid			argtypes[2] = {OIDOID, TEXTOID};
	Datum		args[2];
	HeapTuple	tup;
	TupleDesc	desc;

	args[0] = ObjectIdGetDatum(RelationGetRelid(rel));
	args[1] = CStringGetTextDatum(event_type);
	execute_as_owner("SELECT m.operation, m.trigger_name"
					 "  FROM statehub_events.mapping m"
					 "  JOIN pg_catalog.pg_trigger t"
					 "    ON t.tgrelid OPERATOR(pg_catalog.=) m.table_name::pg_catalog.oid"
					 "   AND t.tgname OPERATOR(pg_catalog.=) m.trigger_name"
					 " WHERE m.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1"
					 "   AND m.event_type OPERATOR(pg_catalog.=) $2",
					 2, argtypes, args, NULL);
	if (SPI_processed == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	mapping->operation = SPI_getvalue(tup, desc, 1);
	mapping->trigger_name = SPI_getvalue(tup, desc, 2);
	return true;
}

/*
 * The operation ("insert", "update" or "delete") of the mapping of (table,
 * event type) in force, or NULL when there is none.
 */
static char *
mapping_in_force(Relation rel, const char *event_type, char **tgname)
{
	StatehubMapping mapping;

	if (!statehub_mapping_lookup(rel, event_type, &mapping))
		return NULL;
	if (tgname != NULL)
		*tgname = mapping.trigger_name;
	return mapping.operation;
}

/*
 * How a transition compares the tracked column: as its type, or for a
 * domain as the domain's base type, the way PostgreSQL resolves "=" over a
 * domain (a domain over an enum has no "=" of its own: the enum's takes
 * anyenum, which a domain does not match).  Returns "" or "::base" (the
 * base type without a modifier, so the cast is a relabelling the trigger's
 * readers see through, as they see through the domain's own coercion).
 */
static char *
comparison_cast(Form_pg_attribute att)
{
	Oid			base = getBaseType(att->atttypid);

	if (base == att->atttypid)
		return "";
	return psprintf("::%s", format_type_be_qualified(base));
}

/*
 * For backfill(): what follows the tracked column in a comparison with the
 * transition's value, as the trigger's WHEN clause compares them: the cast
 * to the base type of a domain, then "OPERATOR(schema.=)".  The value is
 * the trigger's constant, of the base type for a domain.
 */
char *
statehub_transition_filter(Relation rel, AttrNumber attnum)
{
	Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	Oid			eqfunc;

	return psprintf("%s %s", comparison_cast(att),
					equality_operator(att, rel, &eqfunc));
}

/*
 * Remove the mapping of (table, event type), and its trigger when it still
 * exists; also forget mappings of this table whose trigger is gone (dropped
 * by hand or with a column).  Returns whether a mapping was in force.
 */
static bool
remove_mapping(Relation rel, const char *event_type)
{
	Oid			argtypes[2] = {OIDOID, TEXTOID};
	Datum		args[2];
	char	   *tgname = NULL;
	bool		in_force = false;

	if (mapping_in_force(rel, event_type, &tgname) != NULL)
	{
		execute_ddl(psprintf("DROP TRIGGER %s ON %s",
							 quote_identifier(tgname),
							 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
														RelationGetRelationName(rel))));
		in_force = true;
	}

	args[0] = ObjectIdGetDatum(RelationGetRelid(rel));
	args[1] = CStringGetTextDatum(event_type);
	execute_as_owner("DELETE FROM statehub_events.mapping m"
					 " WHERE m.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1"
					 "   AND (m.event_type OPERATOR(pg_catalog.=) $2"
					 "        OR NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t"
					 "                        WHERE t.tgrelid OPERATOR(pg_catalog.=) m.table_name::pg_catalog.oid"
					 "                          AND t.tgname OPERATOR(pg_catalog.=) m.trigger_name))",
					 2, argtypes, args, NULL);
	return in_force;
}

/*
 * Keep the row-move trigger of a partitioned table (capture.c says what it
 * does): there while the table declares a transition, gone with the last.
 * It is known by what it runs, not by its name (which a table RENAME leaves
 * behind).  Called in SPI once the mapping rows are as they will be; the
 * trigger is made and dropped by the caller, as the capture triggers are.
 */
static void
sync_row_move_trigger(Relation rel)
{
	Oid			argtypes[2] = {OIDOID, BYTEAOID};
	Datum		args[2];
	size_t		arglen = strlen(STATEHUB_ROW_MOVE_ARG) + 1;
	bytea	   *tgargs = palloc(VARHDRSZ + arglen);
	bool		isnull;
	bool		wanted;
	char	   *present;
	char	   *qualified;

	if (rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		return;
	/* pg_trigger.tgargs: each argument NUL-terminated */
	SET_VARSIZE(tgargs, VARHDRSZ + arglen);
	memcpy(VARDATA(tgargs), STATEHUB_ROW_MOVE_ARG, arglen);
	args[0] = ObjectIdGetDatum(RelationGetRelid(rel));
	args[1] = PointerGetDatum(tgargs);
	execute_as_owner("SELECT EXISTS (SELECT FROM statehub_events.mapping m"
					 "                WHERE m.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1"
					 "                  AND m.operation OPERATOR(pg_catalog.=) 'update'),"
					 "       (SELECT t.tgname FROM pg_catalog.pg_trigger t"
					 "         WHERE t.tgrelid OPERATOR(pg_catalog.=) $1"
					 "           AND t.tgparentid OPERATOR(pg_catalog.=) 0"
					 "           AND t.tgfoid OPERATOR(pg_catalog.=) 'statehub_events.capture()'::pg_catalog.regprocedure"
					 "           AND t.tgargs OPERATOR(pg_catalog.=) $2"
					 "         LIMIT 1)",
					 2, argtypes, args, NULL);
	wanted = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	present = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	if (wanted == (present != NULL))
		return;
	qualified = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
										   RelationGetRelationName(rel));
	if (wanted)
	{
		/* unique among the table's ancestors, whose clones it inherits */
		char	   *name = psprintf(STATEHUB_ROW_MOVE_PREFIX "%s",
									RelationGetRelationName(rel));

		name[pg_mbcliplen(name, strlen(name), NAMEDATALEN - 1)] = '\0';
		execute_ddl(psprintf("CREATE TRIGGER %s AFTER INSERT OR DELETE ON %s"
							 " FOR EACH ROW EXECUTE FUNCTION %s.capture(%s)",
							 quote_identifier(name), qualified,
							 STATEHUB_SCHEMA, quote_literal_cstr(STATEHUB_ROW_MOVE_ARG)));
	}
	else
		execute_ddl(psprintf("DROP TRIGGER %s ON %s", quote_identifier(present),
							 qualified));
}

/*
 * Open the table to track, checking what it is and the caller's rights:
 * what CREATE TRIGGER needs on the table, and EXECUTE on capture() (which
 * CREATE TRIGGER checks too; checked first here for a clearer error).
 */
void
statehub_check_declare_rights(Oid relid, bool declaring)
{
	char		relkind = get_rel_relkind(relid);

	if (relkind == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table with OID %u does not exist", relid)));

	if (pg_class_aclcheck(relid, GetUserId(), ACL_TRIGGER) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", get_rel_name(relid)),
				 errhint("Declaring events on a table needs the TRIGGER privilege on it, as CREATE TRIGGER does.")));
	if (declaring)
	{
		List	   *name = list_make2(makeString(STATEHUB_SCHEMA),
									  makeString("capture"));
		Oid			capture_oid = LookupFuncName(name, 0, NULL, false);

		if (pg_proc_aclcheck(capture_oid, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for function capture"),
					 errhint("A role that declares events needs EXECUTE on %s.capture(); see docs/security.md.",
							 STATEHUB_SCHEMA)));
	}
}

static Relation
open_tracked_table(Oid relid, bool declaring)
{
	Relation	rel;

	/* check rights before taking a lock others would wait on */
	statehub_check_declare_rights(relid, declaring);

	/* the lock CREATE TRIGGER takes; it also serializes concurrent tracks */
	rel = relation_open(relid, ShareRowExclusiveLock);

	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel)),
				 errhint("Events can be declared on ordinary and partitioned tables.")));

	/*
	 * A temporary table is private to one session and gone with it: its
	 * events would announce nothing other sessions could see, and its
	 * mapping row would outlive it.
	 */
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot track temporary table \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("Events announce committed changes that other sessions can see.")));

	if (strcmp(get_namespace_name(RelationGetNamespace(rel)), STATEHUB_SCHEMA) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot track table \"%s\" of extension statehub_events",
						RelationGetRelationName(rel))));
	return rel;
}

/* The track_* function that declares a mapping of this operation. */
static const char *
declaring_function(const char *operation)
{
	if (strcmp(operation, "insert") == 0)
		return "track_insert";
	if (strcmp(operation, "update") == 0)
		return "track_transition";
	return "track_delete";
}

static void
declaration_error_context(void *arg)
{
	errcontext("condition of event \"%s\"", (const char *) arg);
}

/* Append one quoted trigger argument. */
static void
append_arg(StringInfo buf, const char *arg)
{
	appendStringInfo(buf, ", %s", quote_literal_cstr(arg));
}

/*
 * " EXECUTE FUNCTION statehub_events.capture(...)" with the arguments
 * described in catalog_checks.h: every key is the column's name now, at
 * declaration.  All columns are listed as they are now, so their keys stay
 * fixed too.
 */
static void
append_capture_call(StringInfo ddl, Relation rel, TrackSpec *spec,
					List *attributes)
{
	TupleDesc	desc = RelationGetDescr(rel);
	ListCell   *lc;

	appendStringInfo(ddl, " EXECUTE FUNCTION %s.capture(%s", STATEHUB_SCHEMA,
					 quote_literal_cstr(spec->event_type));
	append_arg(ddl, spec->attributes == NULL ? STATEHUB_ARGS_ALL_KEYS : STATEHUB_ARGS_KEYS);
	append_arg(ddl, spec->column_name != NULL ? spec->column_name : "");
	append_arg(ddl, spec->column_name != NULL ? spec->column_name : "");
	if (spec->attributes == NULL)
	{
		for (int i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (att->attisdropped)
				continue;
			append_arg(ddl, NameStr(att->attname));
			append_arg(ddl, NameStr(att->attname));
		}
	}
	foreach(lc, attributes)
	{
		append_arg(ddl, (char *) lfirst(lc));
		append_arg(ddl, (char *) lfirst(lc));
	}
	appendStringInfoChar(ddl, ')');
}

/*
 * A declaration in words, for the NOTICE of a replaced one: "column
 * \"status\" from 'open' to 'stale', attributes {id,title}".  keys, when
 * not NULL, are the keys an all-columns declaration publishes.
 */
static char *
describe_declaration(const char *column, const char *from_value,
					 const char *to_value, const char *attributes,
					 const char *keys, const char *condition)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (column != NULL)
		appendStringInfo(&buf, "column %s %s%s to %s, ", quote_identifier(column),
						 from_value ? "from " : "from any value",
						 from_value ? quote_literal_cstr(from_value) : "",
						 quote_literal_cstr(to_value));
	if (attributes != NULL)
		appendStringInfo(&buf, "attributes %s", attributes);
	else if (keys != NULL)
		appendStringInfo(&buf, "all columns, keys %s", keys);
	else
		appendStringInfoString(&buf, "all columns");
	if (condition != NULL)
		appendStringInfo(&buf, ", condition %s", condition);
	return buf.data;
}

/*
 * The keys a declaration of spec publishes, as text[] prints them: the
 * attribute names, or every column of the table now.
 */
static char *
declared_keys(Relation rel, TrackSpec *spec, List *names)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum	   *keys = palloc(sizeof(Datum) * Max(desc->natts + list_length(names), 1));
	int			nkeys = 0;
	ListCell   *lc;

	if (spec->attributes == NULL)
	{
		for (int i = 0; i < desc->natts; i++)
		{
			if (!TupleDescAttr(desc, i)->attisdropped)
				keys[nkeys++] = CStringGetTextDatum(NameStr(TupleDescAttr(desc, i)->attname));
		}
	}
	foreach(lc, names)
		keys[nkeys++] = CStringGetTextDatum((char *) lfirst(lc));
	return OidOutputFunctionCall(F_ARRAY_OUT,
								 PointerGetDatum(construct_array(keys, nkeys, TEXTOID, -1,
																 false, TYPALIGN_INT)));
}

/*
 * NOTICE that the declaration in force of (table, event type) is replaced.
 * When the keys published change with it (an all-columns event declared
 * again after a rename), both lists are shown: that is the contract change.
 */
static void
notice_replaced(Relation rel, TrackSpec *spec, List *names)
{
	Oid			argtypes[2] = {OIDOID, TEXTOID};
	Datum		args[2];
	HeapTuple	row;
	TupleDesc	desc;
	char	   *before;
	char	   *now;
	char	   *attributes = NULL;
	char	   *before_keys;
	char	   *now_keys;

	args[0] = ObjectIdGetDatum(RelationGetRelid(rel));
	args[1] = CStringGetTextDatum(spec->event_type);
	execute_as_owner("SELECT m.column_name::pg_catalog.text, m.from_value, m.to_value,"
					 "       m.attributes::pg_catalog.text, m.condition,"
					 "       (SELECT a.attribute_keys::pg_catalog.text"
					 "          FROM pg_catalog.pg_trigger t,"
					 "               statehub_events.capture_arguments(t.oid) a"
					 "         WHERE t.tgrelid OPERATOR(pg_catalog.=) m.table_name::pg_catalog.oid"
					 "           AND t.tgname OPERATOR(pg_catalog.=) m.trigger_name)"
					 "  FROM statehub_events.mapping m"
					 " WHERE m.table_name::pg_catalog.oid OPERATOR(pg_catalog.=) $1"
					 "   AND m.event_type OPERATOR(pg_catalog.=) $2",
					 2, argtypes, args, NULL);
	if (SPI_processed == 0)
		return;
	row = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	before_keys = SPI_getvalue(row, desc, 6);
	now_keys = declared_keys(rel, spec, names);
	if (before_keys != NULL && strcmp(before_keys, now_keys) == 0)
		before_keys = now_keys = NULL;
	before = describe_declaration(SPI_getvalue(row, desc, 1), SPI_getvalue(row, desc, 2),
								  SPI_getvalue(row, desc, 3), SPI_getvalue(row, desc, 4),
								  before_keys, SPI_getvalue(row, desc, 5));
	if (spec->attributes != NULL)
	{
		StringInfoData buf;
		ListCell   *lc;

		initStringInfo(&buf);
		appendStringInfoChar(&buf, '{');
		foreach(lc, names)
			appendStringInfo(&buf, "%s%s", foreach_current_index(lc) > 0 ? "," : "",
							 (char *) lfirst(lc));
		appendStringInfoChar(&buf, '}');
		attributes = buf.data;
	}
	now = describe_declaration(spec->column_name, spec->from_value, spec->to_value,
							   attributes, now_keys, spec->condition);
	ereport(NOTICE,
			(errmsg("event \"%s\" on table \"%s\" is declared again: the declaration in force is replaced",
					spec->event_type, RelationGetRelationName(rel)),
			 errdetail("It was: %s.  It is now: %s.", before, now)));
}

/* Create (or replace) one mapping; see the file header. */
static void
track(TrackSpec *spec)
{
	Relation	rel;
	List	   *attributes;
	char	   *tgname;
	char	   *qualified;
	StringInfoData ddl;
	Oid			argtypes[9] = {OIDOID, TEXTOID, TEXTOID, NAMEOID, TEXTOID,
	TEXTOID, TEXTARRAYOID, TEXTOID, NAMEOID};
	Datum		args[9];
	char		nulls[9];
	bool		is_update = strcmp(spec->operation, "update") == 0;
	char	   *existing;

	statehub_check_event_type(spec->event_type);
	rel = open_tracked_table(spec->relid, true);
	/* a warning: the DBA may be about to widen the stream */
	statehub_check_stream_covers(spec->event_type, WARNING);
	attributes = check_attributes(rel, spec->attributes, is_update);
	qualified = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
										   RelationGetRelationName(rel));
	tgname = trigger_name_for(spec->event_type);

	initStringInfo(&ddl);
	appendStringInfo(&ddl, "CREATE TRIGGER %s AFTER ", quote_identifier(tgname));

	if (is_update)
	{
		Form_pg_attribute att = statehub_find_column(RelationGetDescr(rel), spec->column_name);
		char	   *opr;
		char	   *type;
		char	   *col;
		Oid			eqfunc;
		Datum		to;

		if (att == NULL)
			undefined_column(rel, spec->column_name,
							 "The tracked column is a column of the table whose value changes.");
		opr = equality_operator(att, rel, &eqfunc);
		to = convert_value(att, rel, "to_value", spec->to_value);
		/* a domain's value is checked by the domain, then compared as its base */
		type = psprintf("%s%s", format_type_be_qualified(att->atttypid),
						comparison_cast(att));
		col = psprintf("%s%s", quote_identifier(NameStr(att->attname)),
					   comparison_cast(att));

		/* no UPDATE OF: a BEFORE trigger may change the column too */
		appendStringInfo(&ddl, "UPDATE ON %s FOR EACH ROW WHEN (NEW.%s %s %s::%s AND ",
						 qualified, col, opr,
						 quote_literal_cstr(spec->to_value), type);
		if (spec->from_value != NULL)
		{
			Datum		from = convert_value(att, rel, "from_value", spec->from_value);
			OwnerSection section;
			bool		equal;

			owner_section_begin(rel->rd_rel->relowner, &section);
			equal = DatumGetBool(OidFunctionCall2Coll(eqfunc, att->attcollation, from, to));
			owner_section_end(&section);
			if (equal)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("from_value and to_value are equal"),
						 errdetail("A row whose column \"%s\" keeps its value does not transition.",
								   NameStr(att->attname)),
						 errhint("Pass a different from_value, or NULL for any previous value.")));
			appendStringInfo(&ddl, "OLD.%s %s %s::%s)",
							 col, opr, quote_literal_cstr(spec->from_value), type);
		}
		else
			appendStringInfo(&ddl, "(OLD.%s IS NULL OR NOT (OLD.%s %s %s::%s)))",
							 col, col, opr, quote_literal_cstr(spec->to_value), type);
	}
	else if (strcmp(spec->operation, "insert") == 0)
	{
		appendStringInfo(&ddl, "INSERT ON %s FOR EACH ROW ", qualified);
		if (spec->condition != NULL)
		{
			statehub_check_condition(spec->condition,
									 "condition of the event declaration");
			appendStringInfo(&ddl, "WHEN (\n%s\n) ", spec->condition);
		}
	}
	else
		appendStringInfo(&ddl, "DELETE ON %s FOR EACH ROW ", qualified);

	append_capture_call(&ddl, rel, spec, attributes);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* a type is declared once per table: same operation replaces, no other */
	existing = mapping_in_force(rel, spec->event_type, NULL);
	if (existing != NULL && strcmp(existing, spec->operation) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("event type \"%s\" is already declared on table \"%s\" by %s",
						spec->event_type, RelationGetRelationName(rel),
						declaring_function(existing)),
				 errdetail("A table declares each event type once; declaring it again with the same function replaces it."),
				 errhint("Call statehub_events.untrack first, or use another event type.")));
	if (existing != NULL)
		notice_replaced(rel, spec, attributes);
	(void) remove_mapping(rel, spec->event_type);
	if (spec->condition != NULL)
	{
		/* CREATE TRIGGER is what checks the condition against NEW */
		ErrorContextCallback errcb;

		errcb.callback = declaration_error_context;
		errcb.arg = (void *) spec->event_type;
		errcb.previous = error_context_stack;
		error_context_stack = &errcb;
		execute_ddl(ddl.data);
		error_context_stack = errcb.previous;
	}
	else
		execute_ddl(ddl.data);

	args[0] = ObjectIdGetDatum(spec->relid);
	args[1] = CStringGetTextDatum(spec->event_type);
	args[2] = CStringGetTextDatum(spec->operation);
	memset(nulls, ' ', sizeof(nulls));
	if (is_update)
		args[3] = DirectFunctionCall1(namein, CStringGetDatum(spec->column_name));
	else
		nulls[3] = 'n';
	if (spec->from_value != NULL)
		args[4] = CStringGetTextDatum(spec->from_value);
	else
		nulls[4] = 'n';
	if (spec->to_value != NULL)
		args[5] = CStringGetTextDatum(spec->to_value);
	else
		nulls[5] = 'n';
	if (spec->attributes != NULL)
		args[6] = PointerGetDatum(spec->attributes);
	else
		nulls[6] = 'n';
	if (spec->condition != NULL)
		args[7] = CStringGetTextDatum(spec->condition);
	else
		nulls[7] = 'n';
	args[8] = DirectFunctionCall1(namein, CStringGetDatum(tgname));

	execute_as_owner("INSERT INTO statehub_events.mapping"
					 " (table_name, event_type, operation, column_name, from_value,"
					 "  to_value, attributes, condition, trigger_name)"
					 " VALUES ($1::pg_catalog.regclass, $2, $3, $4, $5, $6, $7, $8, $9)",
					 9, argtypes, args, nulls);
	sync_row_move_trigger(rel);

	SPI_finish();
	relation_close(rel, NoLock);
}

/* Required arguments of the non-strict track_* functions. */
static void
require_arg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

static char *
opt_text(FunctionCallInfo fcinfo, int argno)
{
	return PG_ARGISNULL(argno) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

static ArrayType *
opt_array(FunctionCallInfo fcinfo, int argno)
{
	return PG_ARGISNULL(argno) ? NULL : PG_GETARG_ARRAYTYPE_P(argno);
}

/* track_insert(tbl, event_type, attributes, condition) */
Datum
track_insert(PG_FUNCTION_ARGS)
{
	TrackSpec	spec = {0};

	require_arg(fcinfo, 0, "tbl");
	require_arg(fcinfo, 1, "event_type");
	spec.relid = PG_GETARG_OID(0);
	spec.event_type = opt_text(fcinfo, 1);
	spec.operation = "insert";
	spec.attributes = opt_array(fcinfo, 2);
	spec.condition = opt_text(fcinfo, 3);
	track(&spec);
	PG_RETURN_VOID();
}

/* track_transition(tbl, column_name, to_value, event_type, from_value, attributes) */
Datum
track_transition(PG_FUNCTION_ARGS)
{
	TrackSpec	spec = {0};

	require_arg(fcinfo, 0, "tbl");
	require_arg(fcinfo, 1, "column_name");
	require_arg(fcinfo, 2, "to_value");
	require_arg(fcinfo, 3, "event_type");
	spec.relid = PG_GETARG_OID(0);
	spec.column_name = NameStr(*PG_GETARG_NAME(1));
	spec.to_value = opt_text(fcinfo, 2);
	spec.event_type = opt_text(fcinfo, 3);
	spec.operation = "update";
	spec.from_value = opt_text(fcinfo, 4);
	spec.attributes = opt_array(fcinfo, 5);
	track(&spec);
	PG_RETURN_VOID();
}

/* track_delete(tbl, event_type, attributes) */
Datum
track_delete(PG_FUNCTION_ARGS)
{
	TrackSpec	spec = {0};

	require_arg(fcinfo, 0, "tbl");
	require_arg(fcinfo, 1, "event_type");
	spec.relid = PG_GETARG_OID(0);
	spec.event_type = opt_text(fcinfo, 1);
	spec.operation = "delete";
	spec.attributes = opt_array(fcinfo, 2);
	track(&spec);
	PG_RETURN_VOID();
}

/* untrack(tbl, event_type): drop the mapping; whether one was in force */
Datum
untrack(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *event_type = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Relation	rel;
	bool		removed;

	rel = open_tracked_table(relid, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	removed = remove_mapping(rel, event_type);
	sync_row_move_trigger(rel);
	SPI_finish();
	relation_close(rel, NoLock);
	PG_RETURN_BOOL(removed);
}
