/*-------------------------------------------------------------------------
 *
 * mapping_upkeep.c
 *		Keeping declared events true through the tracked table's DDL.
 *
 * A declaration fixes the keys consumers receive (issue 12, item 2): the
 * capture trigger's arguments pair each key with the column it is read
 * from (layout in catalog_checks.h).  What a DBA later does to the table
 * must not change what is published, silently:
 *
 * - ALTER TABLE ... RENAME COLUMN: follow_column_renames (an event trigger
 *   at ddl_command_end) rewrites the column name in the arguments of every
 *   capture trigger of the table and its partitions; the key stays.  Names,
 *   not attribute numbers, are stored because pg_dump writes the arguments
 *   as they are and a restored table has no dropped columns: its attribute
 *   numbers may differ, its names do not.
 * - ALTER TABLE ... DROP COLUMN of a column an event publishes:
 *   refuse_dropping_attribute_columns (sql_drop) raises an ERROR naming the
 *   event (the tracked column is protected by the trigger's dependency on
 *   it already).
 * - ALTER TABLE ... ADD COLUMN where all columns are published: a column
 *   whose name is already a key, or "previous" next to a transition's old
 *   value, is refused by follow_column_renames (never a duplicate key), on
 *   every partition the column reaches.
 * - ALTER TABLE ... ALTER COLUMN ... TYPE of a published column:
 *   refuse_retyping_attribute_columns (ddl_command_start, while the old
 *   type is there to compare) refuses it when the column's JSON form would
 *   change.
 * - ALTER TYPE ... RENAME / ADD / DROP / ALTER ATTRIBUTE ... CASCADE on the
 *   type of typed tables: the same functions, on every table typed with it
 *   (reached_tables).
 *
 * Rewriting a trigger's arguments updates its pg_trigger row in place (as
 * ALTER TRIGGER ... RENAME does its name), with a relcache invalidation so
 * every backend rebuilds its capture cache.  The same rewrite converts 1.1
 * triggers (column names, UPDATE OF column) when the extension is updated.
 *
 * capture_arguments() decodes the arguments for the mappings view, and
 * transition_values() the enum labels a transition compares with as they
 * are called now (ALTER TYPE ... RENAME VALUE).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "commands/event_trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "nodes/parsenodes.h"
#include "nodes/readfuncs.h"
#include "parser/parse_func.h"
#include "parser/parse_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/rel.h"

#include "catalog_checks.h"
#include "envelope.h"
#include "statehub_events.h"

PG_FUNCTION_INFO_V1(follow_column_renames);
PG_FUNCTION_INFO_V1(refuse_dropping_attribute_columns);
PG_FUNCTION_INFO_V1(refuse_retyping_attribute_columns);
PG_FUNCTION_INFO_V1(migrate_capture_triggers);
PG_FUNCTION_INFO_V1(capture_arguments);
PG_FUNCTION_INFO_V1(transition_values);

/* A capture trigger's arguments, as they are about to be written back. */
typedef struct ArgList
{
	int			nargs;
	char	  **args;
} ArgList;

static Oid
capture_function_oid(void)
{
	List	   *name = list_make2(makeString(STATEHUB_SCHEMA),
								  makeString("capture"));

	return LookupFuncName(name, 0, NULL, false);
}

/* The arguments of a pg_trigger row, split at their NUL terminators. */
static char **
trigger_args(Relation tgrel, HeapTuple tup, int *nargs)
{
	Form_pg_trigger trig = (Form_pg_trigger) GETSTRUCT(tup);
	bool		isnull;
	Datum		d;
	bytea	   *val;
	char	   *p;
	char	  **args;

	*nargs = trig->tgnargs;
	args = palloc0(sizeof(char *) * Max(*nargs, 1));
	if (*nargs == 0)
		return args;
	d = heap_getattr(tup, Anum_pg_trigger_tgargs, RelationGetDescr(tgrel), &isnull);
	if (isnull)
		elog(ERROR, "tgargs is null in trigger %u", trig->oid);
	val = DatumGetByteaPP(d);
	p = VARDATA_ANY(val);
	for (int i = 0; i < *nargs; i++)
	{
		args[i] = pstrdup(p);
		p += strlen(p) + 1;
	}
	return args;
}

/* The 1.2 arguments from decoded ones, with room for one more pair. */
static ArgList
keyed_args(StatehubCaptureArgs *parsed)
{
	ArgList		out;

	out.args = palloc(sizeof(char *) *
					  (STATEHUB_ARGS_FIRST_PAIR + 2 * parsed->npairs + 2));
	out.args[0] = pstrdup(parsed->event_type);
	out.args[1] = pstrdup(parsed->all_columns ? STATEHUB_ARGS_ALL_KEYS : STATEHUB_ARGS_KEYS);
	out.args[2] = pstrdup(parsed->tracked_key ? parsed->tracked_key : "");
	out.args[3] = pstrdup(parsed->tracked_column ? parsed->tracked_column : "");
	out.nargs = STATEHUB_ARGS_FIRST_PAIR;
	for (int i = 0; i < parsed->npairs; i++)
	{
		out.args[out.nargs++] = pstrdup(parsed->keys[i]);
		out.args[out.nargs++] = pstrdup(parsed->columns[i]);
	}
	return out;
}

/*
 * Write new arguments into a trigger's pg_trigger row; clear_columns also
 * empties its UPDATE OF list (a 1.1 transition's).
 */
static void
write_trigger_args(Relation tgrel, HeapTuple tup, ArgList *args,
				   bool clear_columns)
{
	Form_pg_trigger trig = (Form_pg_trigger) GETSTRUCT(tup);
	Datum		values[Natts_pg_trigger] = {0};
	bool		nulls[Natts_pg_trigger] = {0};
	bool		replace[Natts_pg_trigger] = {0};
	StringInfoData buf;
	bytea	   *bytes;
	HeapTuple	newtup;

	initStringInfo(&buf);
	for (int i = 0; i < args->nargs; i++)
		appendBinaryStringInfo(&buf, args->args[i], strlen(args->args[i]) + 1);
	bytes = palloc(VARHDRSZ + buf.len);
	SET_VARSIZE(bytes, VARHDRSZ + buf.len);
	memcpy(VARDATA(bytes), buf.data, buf.len);

	values[Anum_pg_trigger_tgnargs - 1] = Int16GetDatum(args->nargs);
	replace[Anum_pg_trigger_tgnargs - 1] = true;
	values[Anum_pg_trigger_tgargs - 1] = PointerGetDatum(bytes);
	replace[Anum_pg_trigger_tgargs - 1] = true;
	if (clear_columns)
	{
		values[Anum_pg_trigger_tgattr - 1] = PointerGetDatum(buildint2vector(NULL, 0));
		replace[Anum_pg_trigger_tgattr - 1] = true;
	}
	newtup = heap_modify_tuple(tup, RelationGetDescr(tgrel), values, nulls, replace);
	CatalogTupleUpdate(tgrel, &newtup->t_self, newtup);
	CacheInvalidateRelcacheByRelid(trig->tgrelid);
	heap_freetuple(newtup);
}

/*
 * Decode a trigger's arguments in the 1.2 form.  A 1.0/1.1 trigger (column
 * names; the tracked column its UPDATE OF column) is read with the table's
 * columns as they are now; renamed, when not NULL, is the (old, new) name
 * of a column just renamed, whose key is its old name.  False for
 * arguments no declaration makes (a trigger made by hand: capture refuses
 * to run it, and DDL on its table is none of this file's business).
 */
static bool
decode_trigger(Relation tgrel, HeapTuple tup, StatehubCaptureArgs *parsed,
			   const char **renamed)
{
	Form_pg_trigger trig = (Form_pg_trigger) GETSTRUCT(tup);
	int			nargs;
	char	  **args = trigger_args(tgrel, tup, &nargs);

	if (!statehub_parse_capture_args(nargs, args, parsed))
		return false;
	if (parsed->keyed)
		return true;

	if (trig->tgattr.dim1 == 1)
	{
		char	   *name = get_attname(trig->tgrelid, trig->tgattr.values[0], true);

		if (name != NULL)
			parsed->tracked_key = parsed->tracked_column = name;
	}
	if (parsed->all_columns)
	{
		Relation	rel = table_open(trig->tgrelid, AccessShareLock);
		TupleDesc	desc = RelationGetDescr(rel);

		parsed->keys = palloc(sizeof(char *) * Max(desc->natts, 1));
		parsed->columns = palloc(sizeof(char *) * Max(desc->natts, 1));
		parsed->npairs = 0;
		for (int i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);
			char	   *name = pstrdup(NameStr(att->attname));

			if (att->attisdropped)
				continue;
			parsed->columns[parsed->npairs] = name;
			parsed->keys[parsed->npairs++] =
				renamed != NULL && strcmp(name, renamed[1]) == 0 ? pstrdup(renamed[0]) : name;
		}
		table_close(rel, AccessShareLock);
	}
	if (renamed != NULL && parsed->tracked_column != NULL &&
		strcmp(parsed->tracked_column, renamed[1]) == 0)
		parsed->tracked_key = pstrdup(renamed[0]);
	parsed->keyed = true;
	return true;
}

/* The capture triggers of a table, read under RowExclusiveLock on pg_trigger. */
typedef void (*TriggerVisitor) (Relation tgrel, HeapTuple tup, void *arg);

static void
visit_capture_triggers(Oid relid, TriggerVisitor visit, void *arg)
{
	Oid			capture_oid = capture_function_oid();
	Relation	tgrel = table_open(TriggerRelationId, RowExclusiveLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	ScanKeyInit(&key, Anum_pg_trigger_tgrelid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		if (((Form_pg_trigger) GETSTRUCT(tup))->tgfoid == capture_oid)
			visit(tgrel, tup, arg);
	}
	systable_endscan(scan);
	table_close(tgrel, RowExclusiveLock);
}

/* Whether a trigger's arguments are in the 1.2 layout. */
static bool
args_are_keyed(int nargs, char **args)
{
	return nargs > 1 && (strcmp(args[1], STATEHUB_ARGS_KEYS) == 0 ||
						 strcmp(args[1], STATEHUB_ARGS_ALL_KEYS) == 0);
}

/* Rename column renamed[0] to renamed[1] in one trigger's arguments. */
static void
rename_in_trigger(Relation tgrel, HeapTuple tup, void *arg)
{
	const char **renamed = (const char **) arg;
	int			nraw;
	char	  **raw = trigger_args(tgrel, tup, &nraw);
	bool		changed = !args_are_keyed(nraw, raw);
	StatehubCaptureArgs parsed;
	ArgList		args;
	bool		listed = false;

	if (!decode_trigger(tgrel, tup, &parsed, renamed))
		return;
	args = keyed_args(&parsed);
	if (strcmp(args.args[3], renamed[0]) == 0)
	{
		args.args[3] = pstrdup(renamed[1]);
		changed = true;
	}
	for (int i = STATEHUB_ARGS_FIRST_PAIR + 1; i < args.nargs; i += 2)
	{
		if (strcmp(args.args[i], renamed[0]) == 0)
		{
			args.args[i] = pstrdup(renamed[1]);
			changed = true;
		}
		listed |= strcmp(args.args[i], renamed[1]) == 0;
	}
	/* a column added after an all-columns declaration keeps its key too */
	if (parsed.all_columns && !listed)
	{
		args.args[args.nargs++] = pstrdup(renamed[0]);
		args.args[args.nargs++] = pstrdup(renamed[1]);
		changed = true;
	}
	if (changed)
		write_trigger_args(tgrel, tup, &args, !args_are_keyed(nraw, raw));
}

/*
 * Refuse a column of an all-columns table whose name is a key already, or
 * "previous" next to a transition's old value: the envelope would carry
 * the key twice.
 */
static void
check_new_columns(Relation tgrel, HeapTuple tup, void *arg)
{
	Relation	rel = (Relation) arg;
	TupleDesc	desc = RelationGetDescr(rel);
	StatehubCaptureArgs parsed;

	if (!decode_trigger(tgrel, tup, &parsed, NULL) || !parsed.all_columns)
		return;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		bool		listed = false;
		const char *taken = NULL;

		if (att->attisdropped)
			continue;
		for (int j = 0; j < parsed.npairs; j++)
		{
			listed |= strcmp(parsed.columns[j], name) == 0;
			if (strcmp(parsed.keys[j], name) == 0)
				taken = parsed.columns[j];
		}
		if (listed)
			continue;
		if (taken != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_COLUMN),
					 errmsg("column \"%s\" of table \"%s\" would repeat a key of event \"%s\"",
							name, RelationGetRelationName(rel), parsed.event_type),
					 errdetail("The event publishes column \"%s\" under the key \"%s\", fixed when it was declared.",
							   taken, name),
					 errhint("Choose another column name, or declare the event again.")));
		if (parsed.tracked_column != NULL && strcmp(name, "previous") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_COLUMN),
					 errmsg("column \"previous\" of table \"%s\" would repeat a key of event \"%s\"",
							RelationGetRelationName(rel), parsed.event_type),
					 errdetail("Transition events hold the old value of the tracked column under \"previous\"."),
					 errhint("Choose another column name, or declare the event again with an attribute list.")));
	}
}

/*
 * The tables a column change of relid reaches: a table and its partitions
 * (and inheritance children), or, for a composite type changed with
 * ALTER TYPE ... CASCADE, every table typed with it and their partitions.
 * Each may carry declarations of its own.
 */
static List *
reached_tables(Oid relid)
{
	Relation	classrel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *result = NIL;

	if (get_rel_relkind(relid) != RELKIND_COMPOSITE_TYPE)
		return find_all_inheritors(relid, NoLock, NULL);

	/* pg_class has no index on reloftype (tablecmds.c scans it too) */
	classrel = table_open(RelationRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_class_reloftype, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(get_rel_type_id(relid)));
	scan = systable_beginscan(classrel, InvalidOid, false, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
		result = list_concat_unique_oid(result,
										find_all_inheritors(((Form_pg_class) GETSTRUCT(tup))->oid,
															NoLock, NULL));
	systable_endscan(scan);
	table_close(classrel, AccessShareLock);
	return result;
}

/* check_new_columns on every table a command on relid reached. */
static void
check_new_columns_reached(Oid relid)
{
	ListCell   *lc;

	foreach(lc, reached_tables(relid))
	{
		/* the command holds its lock on each */
		Relation	rel = relation_open(lfirst_oid(lc), NoLock);

		visit_capture_triggers(RelationGetRelid(rel), check_new_columns, rel);
		relation_close(rel, NoLock);
	}
}

/*
 * Event trigger at ddl_command_end of ALTER TABLE and ALTER TYPE: a
 * renamed column (or attribute of a type tables are typed with) is renamed
 * in the capture triggers of every table the command reached; a column
 * added where all columns are published must not repeat a key, on any of
 * them (a declaration on a partition included).
 */
Datum
follow_column_renames(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata = (EventTriggerData *) fcinfo->context;
	Node	   *parsetree;
	RangeVar   *relation = NULL;
	Oid			relid;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"follow_column_renames\" was not called by event trigger manager")));
	parsetree = trigdata->parsetree;
	if (IsA(parsetree, RenameStmt) &&
		(((RenameStmt *) parsetree)->renameType == OBJECT_COLUMN ||
		 ((RenameStmt *) parsetree)->renameType == OBJECT_ATTRIBUTE))
		relation = ((RenameStmt *) parsetree)->relation;
	else if (IsA(parsetree, AlterTableStmt))
		relation = ((AlterTableStmt *) parsetree)->relation;
	if (relation == NULL)
		PG_RETURN_VOID();
	/* the command holds its lock; IF EXISTS may have found nothing */
	relid = RangeVarGetRelid(relation, NoLock, true);
	if (!OidIsValid(relid))
		PG_RETURN_VOID();

	if (IsA(parsetree, RenameStmt))
	{
		RenameStmt *stmt = (RenameStmt *) parsetree;
		const char *renamed[2] = {stmt->subname, stmt->newname};
		ListCell   *lc;

		foreach(lc, reached_tables(relid))
			visit_capture_triggers(lfirst_oid(lc), rename_in_trigger, renamed);
	}
	else
		check_new_columns_reached(relid);
	CommandCounterIncrement();
	PG_RETURN_VOID();
}

/*
 * A column about to be dropped (newtype NULL) or to change its type to
 * newtype, on table.
 */
typedef struct ChangedColumn
{
	const char *table;
	const char *column;
	const char *newtype;
} ChangedColumn;

/* Raise the ERROR when a trigger publishes the changed column. */
static void
check_changed_column(Relation tgrel, HeapTuple tup, void *arg)
{
	ChangedColumn *changed = (ChangedColumn *) arg;
	StatehubCaptureArgs parsed;

	if (!decode_trigger(tgrel, tup, &parsed, NULL))
		return;
	for (int i = 0; i < parsed.npairs; i++)
	{
		if (strcmp(parsed.columns[i], changed->column) != 0)
			continue;
		if (changed->newtype == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("cannot drop column \"%s\" of table \"%s\" because event \"%s\" publishes it",
							changed->column, changed->table, parsed.event_type),
					 errdetail("The event carries the column under the key \"%s\".",
							   parsed.keys[i]),
					 errhint("Declare the event again without it (or untrack it) first.")));
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot alter type of column \"%s\" of table \"%s\" because event \"%s\" publishes it",
						changed->column, changed->table, parsed.event_type),
				 errdetail("The event carries the column under the key \"%s\"; as %s its value would change its JSON form.",
						   parsed.keys[i], changed->newtype),
				 errhint("Declare the event again without it (or untrack it) first.")));
	}
}

/*
 * check_changed_column on the table a column was dropped from, or, for an
 * attribute of a composite type (ALTER TYPE ... DROP ATTRIBUTE ...
 * CASCADE), on every table typed with it.
 */
static void
check_dropped_column_reached(Oid relid, ChangedColumn *dropped)
{
	ListCell   *lc;

	if (get_rel_relkind(relid) != RELKIND_COMPOSITE_TYPE)
	{
		visit_capture_triggers(relid, check_changed_column, dropped);
		return;
	}
	foreach(lc, reached_tables(relid))
	{
		ChangedColumn typed = *dropped;

		typed.table = get_rel_name(lfirst_oid(lc));
		visit_capture_triggers(lfirst_oid(lc), check_changed_column, &typed);
	}
}

/*
 * Event trigger at sql_drop: refuse to drop a column that a declared event
 * publishes.  (The tracked column is the trigger's dependency: without
 * CASCADE PostgreSQL refuses, with it the trigger goes and is not seen
 * here.)
 */
Datum
refuse_dropping_attribute_columns(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"refuse_dropping_attribute_columns\" was not called by event trigger manager")));

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT o.objid, o.address_names[3]"
					"  FROM pg_catalog.pg_event_trigger_dropped_objects() o"
					" WHERE o.object_type OPERATOR(pg_catalog.=) 'table column'",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the dropped objects");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Oid			relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
														   SPI_tuptable->tupdesc,
														   1, &isnull));
		ChangedColumn dropped = {0};

		dropped.table = get_rel_name(relid);
		dropped.column = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		if (dropped.table != NULL && dropped.column != NULL)
			check_dropped_column_reached(relid, &dropped);
	}
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * Whether values of type oldtype and newtype are published alike: the
 * same type (a typmod or domain change), or both numbers, both strings or
 * both booleans in JSON.  Anything else (a number that becomes a string,
 * a date that becomes text, arrays and composites of another element)
 * changes what consumers receive.
 */
static bool
json_rendering_kept(Oid oldtype, Oid newtype)
{
	Oid			oldbase = getBaseType(oldtype);
	Oid			newbase = getBaseType(newtype);
	Oid			funcoid;
	StatehubJsonKind kind;

	if (oldbase == newbase)
		return true;
	kind = statehub_json_kind(oldbase, &funcoid);
	if (kind != statehub_json_kind(newbase, &funcoid))
		return false;
	return kind == STATEHUB_JSON_NUMBER || kind == STATEHUB_JSON_STRING ||
		kind == STATEHUB_JSON_BOOL;
}

/*
 * Check one ALTER COLUMN ... TYPE (or ALTER ATTRIBUTE ... TYPE) against
 * the declarations of every table it reaches.
 */
static void
check_retyped_reached(Oid relid, AlterTableCmd *cmd)
{
	ColumnDef  *def = (ColumnDef *) cmd->def;
	Type		newtype;
	Oid			newtypoid;
	int32		typmod;
	ListCell   *lc;

	/* an unknown type: the command fails on its own */
	newtype = LookupTypeName(NULL, def->typeName, &typmod, true);
	if (newtype == NULL)
		return;
	newtypoid = typeTypeId(newtype);
	ReleaseSysCache(newtype);
	/* without CASCADE, ALTER TYPE refuses typed tables itself */
	if (get_rel_relkind(relid) == RELKIND_COMPOSITE_TYPE &&
		cmd->behavior != DROP_CASCADE)
		return;

	foreach(lc, reached_tables(relid))
	{
		Oid			tableoid = lfirst_oid(lc);
		AttrNumber	attnum = get_attnum(tableoid, cmd->name);
		ChangedColumn retyped;

		if (attnum == InvalidAttrNumber ||
			json_rendering_kept(get_atttype(tableoid, attnum), newtypoid))
			continue;
		retyped.table = get_rel_name(tableoid);
		retyped.column = cmd->name;
		retyped.newtype = format_type_be(newtypoid);
		visit_capture_triggers(tableoid, check_changed_column, &retyped);
	}
}

/*
 * Event trigger at ddl_command_start of ALTER TABLE and ALTER TYPE: refuse
 * to change the type of a column a declared event publishes when its JSON
 * form would change (issue 12: "12.50" would become 12.50 in the events).
 * It runs before the command, while the old type is still there to compare;
 * the command takes its locks after it, so a concurrent declaration may
 * slip by (as with any check made at ddl_command_start).
 */
Datum
refuse_retyping_attribute_columns(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata = (EventTriggerData *) fcinfo->context;
	AlterTableStmt *stmt;
	Oid			relid;
	ListCell   *lc;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"refuse_retyping_attribute_columns\" was not called by event trigger manager")));
	if (!IsA(trigdata->parsetree, AlterTableStmt))
		PG_RETURN_VOID();
	stmt = (AlterTableStmt *) trigdata->parsetree;
	relid = RangeVarGetRelid(stmt->relation, NoLock, true);
	if (!OidIsValid(relid))
		PG_RETURN_VOID();
	foreach(lc, stmt->cmds)
	{
		AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);

		if (cmd->subtype == AT_AlterColumnType)
			check_retyped_reached(relid, cmd);
	}
	PG_RETURN_VOID();
}

/* Convert one 1.0/1.1 trigger to the 1.2 arguments. */
static void
migrate_trigger(Relation tgrel, HeapTuple tup, void *arg)
{
	StatehubCaptureArgs parsed;
	int			nargs;
	char	  **raw = trigger_args(tgrel, tup, &nargs);
	ArgList		args;

	/* 1.2 arguments, or a row-move trigger (made by a 1.2 library) */
	if (args_are_keyed(nargs, raw) ||
		(nargs == 1 && strcmp(raw[0], STATEHUB_ROW_MOVE_ARG) == 0))
		return;
	if (!decode_trigger(tgrel, tup, &parsed, NULL))
	{
		ereport(WARNING,
				(errmsg("capture trigger \"%s\" on table %s has arguments no declaration makes; it is left as it is",
						NameStr(((Form_pg_trigger) GETSTRUCT(tup))->tgname),
						get_rel_name(((Form_pg_trigger) GETSTRUCT(tup))->tgrelid))));
		return;
	}
	args = keyed_args(&parsed);
	write_trigger_args(tgrel, tup, &args, true);
}

/*
 * migrate_capture_triggers(): run once by the 1.1--1.2 update.  Every
 * capture trigger gets the 1.2 arguments (keys fixed to the column names
 * of today) and loses its UPDATE OF list, so updated databases behave as
 * fresh ones.
 */
Datum
migrate_capture_triggers(PG_FUNCTION_ARGS)
{
	Oid			capture_oid = capture_function_oid();
	Relation	tgrel = table_open(TriggerRelationId, AccessShareLock);
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *relids = NIL;
	ListCell   *lc;

	scan = systable_beginscan(tgrel, InvalidOid, false, NULL, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_trigger trig = (Form_pg_trigger) GETSTRUCT(tup);

		if (trig->tgfoid == capture_oid)
			relids = list_append_unique_oid(relids, trig->tgrelid);
	}
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);

	foreach(lc, relids)
	{
		/* the lock CREATE TRIGGER takes */
		Relation	rel = table_open(lfirst_oid(lc), ShareRowExclusiveLock);

		visit_capture_triggers(lfirst_oid(lc), migrate_trigger, NULL);
		table_close(rel, NoLock);
	}
	CommandCounterIncrement();
	PG_RETURN_VOID();
}

/* One row of a function's result, being filled. */
typedef struct ResultRow
{
	Datum	   *values;
	bool	   *nulls;
} ResultRow;

/*
 * The result row of a function of a trigger oid (its first argument):
 * fill is called on the trigger's pg_trigger row when it is a capture
 * trigger; the columns it leaves are NULL.
 */
static Datum
capture_trigger_row(FunctionCallInfo fcinfo, TriggerVisitor fill)
{
	Oid			tgoid = PG_GETARG_OID(0);
	TupleDesc	tupdesc;
	ResultRow	row;
	Relation	tgrel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	row.values = palloc0(sizeof(Datum) * tupdesc->natts);
	row.nulls = palloc(sizeof(bool) * tupdesc->natts);
	memset(row.nulls, true, sizeof(bool) * tupdesc->natts);

	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_trigger_oid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(tgoid));
	scan = systable_beginscan(tgrel, TriggerOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup) &&
		((Form_pg_trigger) GETSTRUCT(tup))->tgfoid == capture_function_oid())
		fill(tgrel, tup, &row);
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);

	return HeapTupleGetDatum(heap_form_tuple(tupdesc, row.values, row.nulls));
}

/* capture_arguments' columns, from a capture trigger. */
static void
fill_capture_arguments(Relation tgrel, HeapTuple tup, void *arg)
{
	ResultRow  *row = (ResultRow *) arg;
	StatehubCaptureArgs parsed;
	Datum	   *keys;
	Datum	   *columns;

	if (!decode_trigger(tgrel, tup, &parsed, NULL))
		memset(&parsed, 0, sizeof(parsed));
	if (parsed.tracked_column != NULL)
	{
		row->values[0] = CStringGetTextDatum(parsed.tracked_key);
		row->values[1] = CStringGetTextDatum(parsed.tracked_column);
		row->nulls[0] = row->nulls[1] = false;
	}
	keys = palloc(sizeof(Datum) * Max(parsed.npairs, 1));
	columns = palloc(sizeof(Datum) * Max(parsed.npairs, 1));
	for (int i = 0; i < parsed.npairs; i++)
	{
		keys[i] = CStringGetTextDatum(parsed.keys[i]);
		columns[i] = CStringGetTextDatum(parsed.columns[i]);
	}
	row->values[2] = PointerGetDatum(construct_array(keys, parsed.npairs, TEXTOID,
													 -1, false, TYPALIGN_INT));
	row->values[3] = PointerGetDatum(construct_array(columns, parsed.npairs, TEXTOID,
													 -1, false, TYPALIGN_INT));
	row->nulls[2] = row->nulls[3] = false;
}

/*
 * capture_arguments(trigger oid): what a capture trigger publishes, for the
 * mappings view: the tracked column's key and column, and the attribute
 * keys and the column each is read from now.  NULLs for other triggers.
 */
Datum
capture_arguments(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(capture_trigger_row(fcinfo, fill_capture_arguments));
}

/* The enum label a transition trigger compares with, or NULL. */
static char *
compared_label(Node *qual, int varno, AttrNumber attnum)
{
	Const	   *c = statehub_transition_constant(qual, varno, attnum);
	Oid			outfunc;
	bool		isvarlena;

	if (c == NULL || !type_is_enum(getBaseType(c->consttype)))
		return NULL;
	getTypeOutputInfo(c->consttype, &outfunc, &isvarlena);
	return OidOutputFunctionCall(outfunc, c->constvalue);
}

/* transition_values' columns, from a capture trigger. */
static void
fill_transition_values(Relation tgrel, HeapTuple tup, void *arg)
{
	ResultRow  *row = (ResultRow *) arg;
	StatehubCaptureArgs parsed;
	bool		isnull;
	Datum		qual = heap_getattr(tup, Anum_pg_trigger_tgqual,
									RelationGetDescr(tgrel), &isnull);
	AttrNumber	attnum;
	Node	   *expr;
	char	   *label[2];

	if (isnull || !decode_trigger(tgrel, tup, &parsed, NULL) ||
		parsed.tracked_column == NULL)
		return;
	attnum = get_attnum(((Form_pg_trigger) GETSTRUCT(tup))->tgrelid,
						parsed.tracked_column);
	expr = stringToNode(TextDatumGetCString(qual));
	label[0] = compared_label(expr, PRS2_OLD_VARNO, attnum);
	label[1] = compared_label(expr, PRS2_NEW_VARNO, attnum);
	for (int i = 0; i < 2; i++)
	{
		if (label[i] != NULL)
		{
			row->values[i] = CStringGetTextDatum(label[i]);
			row->nulls[i] = false;
		}
	}
}

/*
 * transition_values(trigger oid): the from_value and to_value a transition
 * trigger's WHEN clause compares with, when they are enum labels, as they
 * read now.  The clause holds the label's oid: after ALTER TYPE ... RENAME
 * VALUE the trigger fires on the new label while the mapping keeps the
 * declared text.  Other types read as declared (the clause holds the value
 * converted at declaration, and the declared text shows it without the
 * caller's DateStyle): NULLs, and the mappings view shows the declaration.
 */
Datum
transition_values(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(capture_trigger_row(fcinfo, fill_transition_values));
}
