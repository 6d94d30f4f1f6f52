/*-------------------------------------------------------------------------
 *
 * json_check.h
 *		Whether a text is one JSON value (json_check.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef STATEHUB_JSON_CHECK_H
#define STATEHUB_JSON_CHECK_H

extern bool statehub_json_valid(const char *s, size_t len);

/* p past JSON whitespace, at most to end */
static inline const char *
statehub_json_skip_space(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

#endif							/* STATEHUB_JSON_CHECK_H */
