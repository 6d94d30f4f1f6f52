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

#include "utils/varlena.h"

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

/*
 * Decode a capture trigger's arguments (the layouts are described in
 * catalog_checks.h).  The strings point into args.
 */
bool
statehub_parse_capture_args(int nargs, char **args, StatehubCaptureArgs *out)
{
	memset(out, 0, sizeof(*out));
	if (nargs < 2)
		return false;
	out->event_type = args[0];
	if (strcmp(args[1], STATEHUB_ARGS_KEYS) == 0 ||
		strcmp(args[1], STATEHUB_ARGS_ALL_KEYS) == 0)
	{
		if (nargs < STATEHUB_ARGS_FIRST_PAIR ||
			(nargs - STATEHUB_ARGS_FIRST_PAIR) % 2 != 0 ||
			(args[2][0] == '\0') != (args[3][0] == '\0'))
			return false;
		out->keyed = true;
		out->all_columns = strcmp(args[1], STATEHUB_ARGS_ALL_KEYS) == 0;
		if (args[2][0] != '\0')
		{
			out->tracked_key = args[2];
			out->tracked_column = args[3];
		}
		out->npairs = (nargs - STATEHUB_ARGS_FIRST_PAIR) / 2;
		out->keys = palloc(sizeof(char *) * Max(out->npairs, 1));
		out->columns = palloc(sizeof(char *) * Max(out->npairs, 1));
		for (int i = 0; i < out->npairs; i++)
		{
			out->keys[i] = args[STATEHUB_ARGS_FIRST_PAIR + 2 * i];
			out->columns[i] = args[STATEHUB_ARGS_FIRST_PAIR + 2 * i + 1];
		}
		return true;
	}
	if (strcmp(args[1], "all") == 0 || strcmp(args[1], "list") == 0)
	{
		out->all_columns = strcmp(args[1], "all") == 0;
		out->npairs = nargs - 2;
		out->keys = args + 2;
		out->columns = args + 2;
		return true;
	}
	return false;
}

/*
 * Whether NATS subject pattern pattern (tokens, "*" for one, ">" for the
 * rest) matches the literal subject.
 */
bool
statehub_subject_matches(const char *pattern, const char *subject)
{
	const char *p = pattern;
	const char *t = subject;

	for (;;)
	{
		size_t		plen = strcspn(p, ".");
		size_t		tlen = strcspn(t, ".");

		if (plen == 1 && p[0] == '>')
			return tlen > 0;
		if (!(plen == 1 && p[0] == '*') &&
			(plen != tlen || strncmp(p, t, plen) != 0))
			return false;
		p += plen;
		t += tlen;
		if (*p == '\0' || *t == '\0')
			return *p == '\0' && *t == '\0';
		p++;
		t++;
	}
}

/*
 * Whether the configured stream_subjects cover an event type.  The stream
 * itself may differ (a DBA may make it), but this is what a backend knows,
 * and what the worker creates the stream with.
 */
bool
statehub_stream_subjects_cover(const char *event_type)
{
	char	   *list;
	List	   *patterns;
	ListCell   *lc;
	bool		covered = false;

	if (statehub_stream_subjects == NULL)
		return false;
	list = pstrdup(statehub_stream_subjects);
	if (!SplitGUCList(list, ',', &patterns))
		return false;
	foreach(lc, patterns)
		covered |= statehub_subject_matches((char *) lfirst(lc), event_type);
	list_free(patterns);
	pfree(list);
	return covered;
}

/*
 * Report an event type the stream will not take, at call time rather than
 * as dead letters later (issue 12, item 6).
 */
void
statehub_check_stream_covers(const char *event_type, int elevel)
{
	if (statehub_stream_subjects_cover(event_type))
		return;
	ereport(elevel,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("event type \"%s\" is not among the stream's subjects", event_type),
			 errdetail("statehub_events.stream_subjects is \"%s\"; events of this type would end up as dead letters.",
					   statehub_stream_subjects ? statehub_stream_subjects : ""),
			 errhint("Use an event type that statehub_events.stream_subjects covers, or add it to that setting (and to the stream).")));
}
