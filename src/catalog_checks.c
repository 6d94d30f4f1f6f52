/*-------------------------------------------------------------------------
 *
 * catalog_checks.c
 *		What capture and the mapping API check alike: the event type (which
 *		is also the NATS subject) and the columns a declaration names.
 *
 * The mapping API refuses a bad declaration with these checks; capture
 * applies the same ones to a trigger made by hand, so an event type it
 * writes into the envelope unescaped is always a valid one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog_checks.h"
#include "statehub_events.h"

static void
invalid_event_type(const char *event_type, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid event type \"%s\"", event_type),
			 errdetail("%s", detail),
			 errhint("An event type is a NATS subject of at least two dot-separated tokens of a-z, 0-9, \"_\" and \"-\", such as \"org.statehub.repo.registered\".")));
}

/*
 * An event type is also the subject it is published on, so it must be a
 * literal NATS subject that activity-core's "org.statehub.>" style filters
 * can match: lowercase tokens, no wildcards, at most 255 bytes.
 */
void
statehub_check_event_type(const char *event_type)
{
	size_t		len = strlen(event_type);
	int			ntokens = 1;
	size_t		toklen = 0;
	const char *p;

	if (len == 0)
		invalid_event_type(event_type, "The event type is empty.");
	if (len > STATEHUB_MAX_EVENT_TYPE_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid event type \"%.40s...\"", event_type),
				 errdetail("The event type is %zu bytes long; at most %d are allowed.",
						   len, STATEHUB_MAX_EVENT_TYPE_LEN)));

	for (p = event_type; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c == '.')
		{
			if (toklen == 0)
				invalid_event_type(event_type, "The event type has an empty token.");
			ntokens++;
			toklen = 0;
			continue;
		}
		if (c == '*' || c == '>')
			invalid_event_type(event_type, "Wildcards (\"*\", \">\") are not allowed in an event type.");
		if (c <= ' ' || c == 0x7f)
			invalid_event_type(event_type, "Whitespace and control characters are not allowed in an event type.");
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			  c == '_' || c == '-'))
			invalid_event_type(event_type, "Only a-z, 0-9, \"_\", \"-\" and \".\" are allowed in an event type.");
		toklen++;
	}
	if (toklen == 0)
		invalid_event_type(event_type, "The event type has an empty token.");
	if (ntokens < 2)
		invalid_event_type(event_type, "The event type has only one token.");
}

/*
 * The live (not dropped) column of a table with this name, or NULL: capture
 * resolves attribute names with it, the mapping API checks them with it.
 */
Form_pg_attribute
statehub_find_column(TupleDesc desc, const char *name)
{
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att;
	}
	return NULL;
}
