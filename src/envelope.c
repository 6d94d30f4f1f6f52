/*-------------------------------------------------------------------------
 *
 * envelope.c
 *		The activity-core envelope as exact JSON text.
 *
 * The outbox stores the bytes that will be published, so they are built
 * here once, in the writing transaction:
 *
 *   {"id": "<uuid v4>", "type": "<event type>", "version": "1.0",
 *    "timestamp": "<UTC RFC 3339, microseconds, Z>", "publisher": "<...>",
 *    "attributes": {...}}
 *
 * on one line, keys in exactly that order, with jsonb's ", " and ": "
 * separators.  Attribute values are rendered exactly as to_json() renders
 * their type.  to_json() decides how to render a type on every call (a
 * handful of syscache lookups); here that decision is taken once per column
 * when a trigger's cache entry is built, and each row only pays for the
 * output function and the escaping.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <uuid/uuid.h>

#include "access/transam.h"
#include "catalog/pg_cast.h"
#include "catalog/pg_type.h"
#include "common/jsonapi.h"
#include "parser/parse_coerce.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "envelope.h"
#include "statehub_events.h"

/*
 * Decide, as to_json() does, how a type (looked through its domains) is
 * rendered: booleans, numbers, date/times and json(b) have their own form;
 * arrays and composites recurse; a non-built-in type with a cast to json
 * uses the cast; everything else is its output text as a JSON string.
 * *funcoid is set to the function that renders a value (InvalidOid when
 * none is needed).
 */
StatehubJsonKind
statehub_json_kind(Oid basetype, Oid *funcoid)
{
	bool		isvarlena;
	Oid			castfunc = InvalidOid;

	*funcoid = InvalidOid;
	switch (basetype)
	{
		case BOOLOID:
			return STATEHUB_JSON_BOOL;
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case FLOAT4OID:
		case FLOAT8OID:
		case NUMERICOID:
			getTypeOutputInfo(basetype, funcoid, &isvarlena);
			return STATEHUB_JSON_NUMBER;
		case DATEOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return STATEHUB_JSON_DATETIME;
		case JSONOID:
		case JSONBOID:
			getTypeOutputInfo(basetype, funcoid, &isvarlena);
			return STATEHUB_JSON_JSON;
		default:
			break;
	}
	if (OidIsValid(get_element_type(basetype)))
		return STATEHUB_JSON_ARRAY;
	if (type_is_rowtype(basetype))
		return STATEHUB_JSON_COMPOSITE;
	if (basetype >= FirstNormalObjectId &&
		find_coercion_pathway(JSONOID, basetype, COERCION_EXPLICIT,
							  &castfunc) == COERCION_PATH_FUNC &&
		OidIsValid(castfunc))
	{
		*funcoid = castfunc;
		return STATEHUB_JSON_CAST;
	}
	getTypeOutputInfo(basetype, funcoid, &isvarlena);
	return STATEHUB_JSON_STRING;
}

/*
 * Prepare a column for rendering (statehub_json_kind decides how).  The
 * column is published under key_name (its own name when NULL).
 */
void
statehub_column_init(StatehubColumn *col, Form_pg_attribute att,
					 const char *key_name, MemoryContext mcxt)
{
	Oid			typoid = getBaseType(att->atttypid);
	Oid			funcoid;
	StringInfoData key;

	col->attnum = att->attnum;
	col->basetype = typoid;

	initStringInfo(&key);
	escape_json(&key, key_name != NULL ? key_name : NameStr(att->attname));
	appendStringInfoString(&key, ": ");
	col->key = MemoryContextStrdup(mcxt, key.data);
	col->keylen = key.len;
	pfree(key.data);

	col->kind = statehub_json_kind(typoid, &funcoid);
	if (OidIsValid(funcoid))
		fmgr_info_cxt(funcoid, &col->func, mcxt);
}

/* Append one value as to_json() would render it. */
void
statehub_append_value(StringInfo buf, StatehubColumn *col, Datum value,
					  bool isnull)
{
	char	   *str;
	char		dtbuf[MAXDATELEN + 1];

	if (isnull)
	{
		appendBinaryStringInfo(buf, "null", 4);
		return;
	}

	switch (col->kind)
	{
		case STATEHUB_JSON_BOOL:
			if (DatumGetBool(value))
				appendBinaryStringInfo(buf, "true", 4);
			else
				appendBinaryStringInfo(buf, "false", 5);
			break;
		case STATEHUB_JSON_NUMBER:
			str = OutputFunctionCall(&col->func, value);
			/* NaN and the infinities are not JSON numbers: quote them */
			if (IsValidJsonNumber(str, strlen(str)))
				appendStringInfoString(buf, str);
			else
				escape_json(buf, str);
			pfree(str);
			break;
		case STATEHUB_JSON_DATETIME:
			JsonEncodeDateTime(dtbuf, value, col->basetype, NULL);
			appendStringInfoChar(buf, '"');
			appendStringInfoString(buf, dtbuf);
			appendStringInfoChar(buf, '"');
			break;
		case STATEHUB_JSON_JSON:
			str = OutputFunctionCall(&col->func, value);
			appendStringInfoString(buf, str);
			pfree(str);
			break;
		case STATEHUB_JSON_ARRAY:
			str = TextDatumGetCString(DirectFunctionCall1(array_to_json, value));
			appendStringInfoString(buf, str);
			pfree(str);
			break;
		case STATEHUB_JSON_COMPOSITE:
			str = TextDatumGetCString(DirectFunctionCall1(row_to_json, value));
			appendStringInfoString(buf, str);
			pfree(str);
			break;
		case STATEHUB_JSON_CAST:
			str = TextDatumGetCString(FunctionCall1(&col->func, value));
			appendStringInfoString(buf, str);
			pfree(str);
			break;
		case STATEHUB_JSON_STRING:
			str = OutputFunctionCall(&col->func, value);
			escape_json(buf, str);
			pfree(str);
			break;
	}
}

/*
 * Random bytes for event ids, drawn from PostgreSQL's strong random source
 * (OpenSSL's generator in Debian's build, as gen_random_uuid() uses) a
 * block at a time.  libuuid's own generator made a getrandom() system call
 * and reseeded random() for every id: 13% of a capturing backend's CPU
 * (perf, 300,000 emit() calls).  The block lives in this backend only; a
 * backend is never forked, so no two processes hand out the same bytes.
 */
#define EVENT_ID_BLOCK 64

/* A fresh random (version 4) UUID. */
void
statehub_new_event_id(unsigned char *id)
{
	static unsigned char block[EVENT_ID_BLOCK * STATEHUB_UUID_LEN];
	static int	left = 0;
	unsigned char *next;

	if (left == 0)
	{
		if (!pg_strong_random(block, sizeof(block)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random values for event ids")));
		left = EVENT_ID_BLOCK;
	}
	next = block + (EVENT_ID_BLOCK - left) * STATEHUB_UUID_LEN;
	left--;
	memcpy(id, next, STATEHUB_UUID_LEN);
	/* handed out once: forget it */
	memset(next, 0, STATEHUB_UUID_LEN);
	id[6] = (id[6] & 0x0f) | 0x40;	/* version 4 */
	id[8] = (id[8] & 0x3f) | 0x80;	/* variant RFC 4122 */
}

/*
 * The canonical text form of a UUID (36 lower-case characters and a NUL
 * into out), for the envelope's id and the worker's Nats-Msg-Id header
 * alike: libuuid's.
 */
void
statehub_format_uuid(const unsigned char *id, char *out)
{
	uuid_unparse_lower(id, out);
}

/*
 * Open an envelope, up to and including the "{" of its attributes.  The
 * publisher needs no escaping: its GUC check hook admits no quotes,
 * backslashes or control characters.
 */
void
statehub_envelope_begin(StringInfo buf, const unsigned char *id,
						const char *event_type, TimestampTz occurred_at)
{
	char		idtext[STATEHUB_UUID_TEXT_LEN + 1];
	struct pg_tm tm;
	fsec_t		fsec;

	statehub_format_uuid(id, idtext);

	/* with a NULL time zone, timestamp2tm gives UTC */
	if (timestamp2tm(occurred_at, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "event timestamp out of range");

	appendStringInfo(buf,
					 "{\"id\": \"%s\", \"type\": \"%s\", \"version\": \"" STATEHUB_ENVELOPE_VERSION "\", "
					 "\"timestamp\": \"%04d-%02d-%02dT%02d:%02d:%02d.%06dZ\", "
					 "\"publisher\": \"%s\", \"attributes\": ",
					 idtext, event_type,
					 tm.tm_year, tm.tm_mon, tm.tm_mday,
					 tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec,
					 statehub_publisher);
}

/* Close the envelope opened by statehub_envelope_begin. */
void
statehub_envelope_end(StringInfo buf)
{
	appendStringInfoChar(buf, '}');
}
