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

/*
 * whether NATS subject pattern (tokens, "*" for one, ">" for the rest)
 * matches the literal subject; calls no PostgreSQL function (cnats threads
 * may use it)
 */
extern bool statehub_subject_matches(const char *pattern, const char *subject);

/* whether statehub_events.stream_subjects covers event_type */
extern bool statehub_stream_subjects_cover(const char *event_type);

/* elevel (WARNING or ERROR) unless stream_subjects covers event_type */
extern void statehub_check_stream_covers(const char *event_type, int elevel);

/* a table's live (not dropped) column by name, or NULL */
extern Form_pg_attribute statehub_find_column(TupleDesc desc, const char *name);

/*
 * A capture trigger's arguments, decoded.  Since 1.2 they are
 *
 *   event type, "keys" | "all keys", tracked key, tracked column,
 *   then pairs of (key, column)
 *
 * where the tracked key and column are empty except for a transition, and
 * each key is the name the column had when the event was declared: it is
 * what consumers receive, whatever the column is called later
 * (mapping_upkeep.c rewrites the column names of a RENAME).  With "all
 * keys" the pairs are the columns the table had at declaration; columns
 * added later follow under their own name.  1.0 and 1.1 triggers ("all" |
 * "list", then column names; the tracked column is the trigger's UPDATE OF
 * column) are read as pairs of (name, name), the tracked column being left
 * to the caller.
 */
typedef struct StatehubCaptureArgs
{
	const char *event_type;
	bool		all_columns;
	bool		keyed;			/* the 1.2 layout */
	const char *tracked_key;	/* NULL unless a transition */
	const char *tracked_column;
	int			npairs;
	char	  **keys;
	char	  **columns;
} StatehubCaptureArgs;

#define STATEHUB_ARGS_KEYS "keys"
#define STATEHUB_ARGS_ALL_KEYS "all keys"
#define STATEHUB_ARGS_FIRST_PAIR 4

/*
 * The row-move trigger of a partitioned table with transitions: capture()
 * with this one argument, AFTER INSERT OR DELETE (capture.c says why).  Its
 * name is the prefix and the table's name (a partition inherits a clone of
 * each ancestor's, under the ancestor's name); no event type contains a
 * space, so it is never a declaration's.
 */
#define STATEHUB_ROW_MOVE_ARG "row moved"
#define STATEHUB_ROW_MOVE_PREFIX "statehub_events:row moved:"

/* false when the arguments are not a capture trigger's */
extern bool statehub_parse_capture_args(int nargs, char **args,
										StatehubCaptureArgs *out);

#endif							/* STATEHUB_CATALOG_CHECKS_H */
