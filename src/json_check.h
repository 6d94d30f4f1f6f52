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

#endif							/* STATEHUB_JSON_CHECK_H */
