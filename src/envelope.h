/*-------------------------------------------------------------------------
 *
 * envelope.h
 *		Building activity-core envelopes as exact JSON text.
 *
 *-------------------------------------------------------------------------
 */
#ifndef STATEHUB_ENVELOPE_H
#define STATEHUB_ENVELOPE_H

#include "postgres.h"

#include "access/tupdesc.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "lib/stringinfo.h"

#define STATEHUB_UUID_LEN 16
#define STATEHUB_UUID_TEXT_LEN 36

/* How to_json renders a type, decided once per column (see envelope.c). */
typedef enum StatehubJsonKind
{
	STATEHUB_JSON_BOOL,
	STATEHUB_JSON_NUMBER,
	STATEHUB_JSON_DATETIME,
	STATEHUB_JSON_JSON,
	STATEHUB_JSON_ARRAY,
	STATEHUB_JSON_COMPOSITE,
	STATEHUB_JSON_CAST,
	STATEHUB_JSON_STRING
} StatehubJsonKind;

/* One column of a captured row, ready to render without catalog lookups. */
typedef struct StatehubColumn
{
	AttrNumber	attnum;
	char	   *key;			/* "name": with the name JSON-escaped */
	int			keylen;
	StatehubJsonKind kind;
	Oid			basetype;		/* the type after looking through domains */
	FmgrInfo	func;			/* output function, or the cast to json */
} StatehubColumn;

extern StatehubJsonKind statehub_json_kind(Oid basetype, Oid *funcoid);
extern void statehub_column_init(StatehubColumn *col, Form_pg_attribute att,
								 const char *key_name, MemoryContext mcxt);
extern void statehub_append_value(StringInfo buf, StatehubColumn *col,
								  Datum value, bool isnull);
extern void statehub_new_event_id(unsigned char *id);
extern void statehub_format_uuid(const unsigned char *id, char *out);
extern void statehub_envelope_begin(StringInfo buf, const unsigned char *id,
									const char *event_type,
									TimestampTz occurred_at);
extern void statehub_envelope_end(StringInfo buf);

#endif							/* STATEHUB_ENVELOPE_H */
