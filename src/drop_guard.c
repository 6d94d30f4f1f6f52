/*-------------------------------------------------------------------------
 *
 * drop_guard.c
 *		The event trigger that refuses DROP EXTENSION statehub_events (and a
 *		DROP OWNED that would take it) while events are queued or
 *		dead-lettered: losing them must be a decision, not a side effect.
 *
 * It fires at ddl_command_start, before anything is dropped, and reads the
 * statement's parse tree to tell whether this extension is the one going
 * (which a PL/pgSQL event trigger cannot see).  The way out is the one the
 * hint names: let the worker drain (wait_for_drain()), or delete the rows
 * on purpose.  A superuser with a broken installation can still get out:
 * event triggers do not fire with session_replication_role = replica, nor
 * in single-user mode, and ALTER EVENT TRIGGER ... DISABLE turns this one
 * off (docs/operations.md).  DROP DATABASE fires no event trigger, and
 * pg_dump, pg_restore and pg_upgrade drop no extension of their own accord
 * (pg_restore --clean into a database with queued events is refused like
 * the DBA's own DROP).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "commands/event_trigger.h"
#include "access/table.h"
#include "access/tableam.h"
#include "executor/tuptable.h"
#include "storage/lmgr.h"
#include "utils/snapmgr.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "statehub_events.h"

PG_FUNCTION_INFO_V1(refuse_drop_with_events);

#define EXTENSION_NAME "statehub_events"

/* Does the statement name this extension among those it drops? */
static bool
drops_extension(DropStmt *stmt)
{
	ListCell   *lc;

	if (stmt->removeType != OBJECT_EXTENSION)
		return false;
	foreach(lc, stmt->objects)
	{
		Node	   *name = lfirst(lc);

		if (IsA(name, String) && strcmp(strVal(name), EXTENSION_NAME) == 0)
			return true;
	}
	return false;
}

/*
 * The owner of the outbox: the role that created the extension, who owns
 * its objects (InvalidOid if there is no outbox).
 */
static Oid
outbox_owner(void)
{
	Oid			nspid = get_namespace_oid(EXTENSION_NAME, true);
	Oid			outbox;
	HeapTuple	tup;
	Oid			owner;

	outbox = OidIsValid(nspid) ? get_relname_relid("outbox", nspid) : InvalidOid;
	if (!OidIsValid(outbox))
		return InvalidOid;
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(outbox));
	if (!HeapTupleIsValid(tup))
		return InvalidOid;
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/* Does DROP OWNED name the owner (whose objects include the extension)? */
static bool
drops_owner(DropOwnedStmt *stmt, Oid owner)
{
	ListCell   *lc;

	foreach(lc, stmt->roles)
	{
		RoleSpec   *role = lfirst(lc);

		if (get_rolespec_oid(role, true) == owner)
			return true;
	}
	return false;
}

/*
 * The rows of one of the extension's tables, counted after locking it as
 * the DROP will (ACCESS EXCLUSIVE, held to the end of the transaction):
 * that waits for every transaction still writing to it, and the count
 * uses the latest snapshot, not the statement's or the transaction's, so
 * an event committed while the DROP waited is counted too.  Counting in
 * the statement's snapshot let a DROP that waited for a capturing
 * transaction discard its committed event.
 */
static int64
count_rows(const char *relname)
{
	Oid			nspid = get_namespace_oid(EXTENSION_NAME, false);
	Oid			relid = get_relname_relid(relname, nspid);
	Relation	rel;
	Snapshot	snap;
	TableScanDesc scan;
	TupleTableSlot *slot;
	int64		n = 0;

	if (!OidIsValid(relid))
		return 0;
	rel = table_open(relid, AccessExclusiveLock);
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snap, 0, NULL);
	slot = table_slot_create(rel, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
		n++;
	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, NoLock);
	return n;
}

/*
 * refuse_drop_with_events(): the ddl_command_start event trigger function
 * for DROP EXTENSION and DROP OWNED.  It runs as the caller: one who does
 * not have the owner's privileges cannot drop the extension anyway
 * (PostgreSQL refuses that next) and learns nothing of the queue here;
 * one who does may read the owner's tables.
 */
Datum
refuse_drop_with_events(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	Node	   *parsetree;
	Oid			owner;
	int64		queued;
	int64		dead;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"refuse_drop_with_events\" was not called by the event trigger manager")));
	trigdata = (EventTriggerData *) fcinfo->context;
	parsetree = trigdata->parsetree;
	owner = outbox_owner();
	if (!OidIsValid(owner) || !has_privs_of_role(GetUserId(), owner))
		PG_RETURN_VOID();

	if (IsA(parsetree, DropStmt))
	{
		if (!drops_extension((DropStmt *) parsetree))
			PG_RETURN_VOID();
	}
	else if (IsA(parsetree, DropOwnedStmt))
	{
		if (!drops_owner((DropOwnedStmt *) parsetree, owner))
			PG_RETURN_VOID();
	}
	else
		PG_RETURN_VOID();

	queued = count_rows("outbox");
	dead = count_rows("dead_letter");

	if (queued > 0 || dead > 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot drop extension %s while it holds undelivered events",
						EXTENSION_NAME),
				 errdetail("Dropping it would discard the events in statehub_events.outbox (%lld) and statehub_events.dead_letter (%lld).",
						   (long long) queued, (long long) dead),
				 errhint("Wait until they are delivered with SELECT statehub_events.wait_for_drain(), or delete the rows from statehub_events.outbox and statehub_events.dead_letter on purpose, then drop the extension.")));
	PG_RETURN_VOID();
}
