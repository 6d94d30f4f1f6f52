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

/*
 * What is wrong with an event type, as a detail sentence, or NULL when it
 * is valid.  An event type is also the subject it is published on, so it
 * must be a literal NATS subject that activity-core's "org.statehub.>"
 * style filters can match: lowercase tokens, no wildcards, at most 255
 * bytes.  The worker asks this of every row it scans (a bad subject makes
 * nats-server drop the connection), so it reports without raising.
 */
const char *
statehub_event_type_problem(const char *event_type)
{
	size_t		len = strlen(event_type);
	int			ntokens = 1;
	size_t		toklen = 0;
	const char *p;

	if (len == 0)
		return "The event type is empty.";
	if (len > STATEHUB_MAX_EVENT_TYPE_LEN)
		return "The event type is longer than 255 bytes.";

	for (p = event_type; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c == '.')
		{
			if (toklen == 0)
				return "The event type has an empty token.";
			ntokens++;
			toklen = 0;
			continue;
		}
		if (c == '*' || c == '>')
			return "Wildcards (\"*\", \">\") are not allowed in an event type.";
		if (c <= ' ' || c == 0x7f)
			return "Whitespace and control characters are not allowed in an event type.";
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			  c == '_' || c == '-'))
			return "Only a-z, 0-9, \"_\", \"-\" and \".\" are allowed in an event type.";
		toklen++;
	}
	if (toklen == 0)
		return "The event type has an empty token.";
	if (ntokens < 2)
		return "The event type has only one token.";
	return NULL;
}

/* Raise an ERROR unless event_type is valid (see above). */
void
statehub_check_event_type(const char *event_type)
{
	size_t		len = strlen(event_type);
	const char *problem;

	if (len > STATEHUB_MAX_EVENT_TYPE_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid event type \"%.40s...\"", event_type),
				 errdetail("The event type is %zu bytes long; at most %d are allowed.",
						   len, STATEHUB_MAX_EVENT_TYPE_LEN)));
	problem = statehub_event_type_problem(event_type);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid event type \"%s\"", event_type),
				 errdetail("%s", problem),
				 errhint("An event type is a NATS subject of at least two dot-separated tokens of a-z, 0-9, \"_\" and \"-\", such as \"org.statehub.repo.registered\".")));
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
