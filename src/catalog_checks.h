/*-------------------------------------------------------------------------
 *
 * catalog_checks.h
 *		The checks capture (capture.c) and the mapping API (mapping.c) both
 *		apply: what an event type may be, and which column a name means.
 *
 * Both files depend on this one and neither on the other.
 *
 *-------------------------------------------------------------------------
 */
#ifndef STATEHUB_CATALOG_CHECKS_H
#define STATEHUB_CATALOG_CHECKS_H

#include "access/tupdesc.h"
#include "catalog/pg_attribute.h"

/* why event_type is not a literal NATS subject we publish on, or NULL */
extern const char *statehub_event_type_problem(const char *event_type);

/* raises ERROR unless it is one */
extern void statehub_check_event_type(const char *event_type);

/* a table's live (not dropped) column by name, or NULL */
extern Form_pg_attribute statehub_find_column(TupleDesc desc, const char *name);

#endif							/* STATEHUB_CATALOG_CHECKS_H */
