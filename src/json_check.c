/*-------------------------------------------------------------------------
 *
 * json_check.c
 *		Whether a text is one JSON value: the delivery worker's check of
 *		every payload before it is published.
 *
 * The worker checks each queued payload, since the outbox is a table its
 * owner can write by hand, and a consumer must never get a body that is
 * not JSON.  PostgreSQL's JSON parser did this before, at a tenth of the
 * worker's time while draining a backlog, and it recurses: a payload
 * nested deeper than max_stack_depth allows (a few thousand levels,
 * trivially put into the table by hand) raised an ERROR in every round, so
 * one row stalled delivery for good.
 *
 * This is a single pass over the bytes with an explicit stack, so nesting
 * costs memory (one byte per level), never the C stack; the plain bytes of
 * strings, most of a payload, are skipped 8 at a time.  It accepts
 * exactly what the json type accepts (RFC 8259): no trailing commas, no
 * leading zeros, no control characters in strings, "\u" with four hex
 * digits (a lone surrogate is accepted, as json accepts it).  Bytes from
 * 0x80 up are taken as they are: the text is valid in the database
 * encoding, and every server encoding keeps ASCII bytes out of its
 * multibyte characters.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "port/pg_bitutils.h"

#include "json_check.h"

/* the nesting a stack on the C stack holds before one is allocated */
#define LOCAL_DEPTH 64

/* What is expected next. */
typedef enum JsonExpect
{
	EXPECT_VALUE,				/* a value */
	EXPECT_KEY,					/* a member's name, then ':' and a value */
	EXPECT_MORE					/* after a value: ',', a closing bracket, or
								 * the end */
} JsonExpect;

static inline bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static inline bool
is_hex(char c)
{
	return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* uint64 with every byte b */
#define EVERY_BYTE(b) (UINT64CONST(0x0101010101010101) * (b))

/*
 * The bytes of x that are '"', '\\' or below 0x20, those that end a run of
 * plain bytes in a string, as their high bits; 0 when there is none.
 * (v - 0x0101..01) & ~v & 0x8080..80 flags the 0 bytes of v (the classic
 * test: a borrow can also flag a byte above a 0 byte, never below it, so
 * the lowest flag is exact); v = x ^ c..c has a 0 byte where x has c; and
 * with 0x2020..20 subtracted the test is for a byte below 0x20.
 */
static inline uint64
run_ends(uint64 x)
{
	uint64		q = x ^ EVERY_BYTE('"');
	uint64		b = x ^ EVERY_BYTE('\\');

	return (((q - EVERY_BYTE(0x01)) & ~q) |
			((b - EVERY_BYTE(0x01)) & ~b) |
			((x - EVERY_BYTE(0x20)) & ~x)) & EVERY_BYTE(0x80);
}

/* A string starting at p (its '"'): the byte after it, or NULL. */
static const char *
scan_string(const char *p, const char *end)
{
	for (p++; p < end; p++)
	{
		unsigned char c;

#ifndef WORDS_BIGENDIAN
		/*
		 * Most of a payload is plain bytes in strings: skip them 8 at a time,
		 * to the first byte that ends the run (the lowest flagged one, the
		 * first in memory on a little-endian machine).
		 */
		while (end - p >= 8)
		{
			uint64		x;
			uint64		ends;

			memcpy(&x, p, 8);
			ends = run_ends(x);
			if (ends != 0)
			{
				p += pg_rightmost_one_pos64(ends) / 8;
				break;
			}
			p += 8;
		}
		if (p == end)
			break;
#endif
		c = (unsigned char) *p;
		if (c == '"')
			return p + 1;
		if (c < 0x20)
			return NULL;
		if (c != '\\')
			continue;
		if (++p == end)
			return NULL;
		switch (*p)
		{
			case '"':
			case '\\':
			case '/':
			case 'b':
			case 'f':
			case 'n':
			case 'r':
			case 't':
				break;
			case 'u':
				if (end - p < 5 || !is_hex(p[1]) || !is_hex(p[2]) ||
					!is_hex(p[3]) || !is_hex(p[4]))
					return NULL;
				p += 4;
				break;
			default:
				return NULL;
		}
	}
	return NULL;
}

/* A number starting at p: the byte after it, or NULL. */
static const char *
scan_number(const char *p, const char *end)
{
	if (*p == '-')
		p++;
	if (p == end)
		return NULL;
	if (*p == '0')
		p++;
	else if (is_digit(*p))
		while (p < end && is_digit(*p))
			p++;
	else
		return NULL;
	if (p < end && *p == '.')
	{
		if (++p == end || !is_digit(*p))
			return NULL;
		while (p < end && is_digit(*p))
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E'))
	{
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (p == end || !is_digit(*p))
			return NULL;
		while (p < end && is_digit(*p))
			p++;
	}
	return p;
}

/* The literal word at p: the byte after it, or NULL. */
static const char *
scan_word(const char *p, const char *end, const char *word, size_t len)
{
	if ((size_t) (end - p) < len || memcmp(p, word, len) != 0)
		return NULL;
	return p + len;
}

/*
 * Whether the len bytes at s are one JSON value with only whitespace
 * around it.  Allocates (in the current memory context) only for a
 * nesting deeper than LOCAL_DEPTH.
 */
bool
statehub_json_valid(const char *s, size_t len)
{
	const char *p = s;
	const char *end = s + len;
	char		local[LOCAL_DEPTH];
	char	   *stack = local;	/* what closes each open one: '}' or ']' */
	size_t		size = LOCAL_DEPTH;
	size_t		depth = 0;
	JsonExpect	expect = EXPECT_VALUE;
	bool		valid = false;

	for (;;)
	{
		p = statehub_json_skip_space(p, end);
		if (expect == EXPECT_MORE)
		{
			if (depth == 0)
			{
				valid = (p == end);
				break;
			}
			if (p == end)
				break;
			if (*p == stack[depth - 1])
			{
				depth--;
				p++;
				continue;
			}
			if (*p != ',')
				break;
			p++;
			expect = stack[depth - 1] == '}' ? EXPECT_KEY : EXPECT_VALUE;
			continue;
		}
		if (p == end)
			break;
		if (expect == EXPECT_KEY)
		{
			if (*p != '"' || (p = scan_string(p, end)) == NULL)
				break;
			p = statehub_json_skip_space(p, end);
			if (p == end || *p != ':')
				break;
			p++;
			expect = EXPECT_VALUE;
			continue;
		}

		/* a value */
		switch (*p)
		{
			case '{':
			case '[':
				if (depth == size)
				{
					if (stack == local)
					{
						stack = palloc(size * 2);
						memcpy(stack, local, size);
					}
					else
						stack = repalloc(stack, size * 2);
					size *= 2;
				}
				stack[depth++] = *p == '{' ? '}' : ']';
				p = statehub_json_skip_space(p + 1, end);
				if (p < end && *p == stack[depth - 1])
				{
					/* empty */
					depth--;
					p++;
					expect = EXPECT_MORE;
				}
				else
					expect = stack[depth - 1] == '}' ? EXPECT_KEY : EXPECT_VALUE;
				continue;
			case '"':
				p = scan_string(p, end);
				break;
			case 't':
				p = scan_word(p, end, "true", 4);
				break;
			case 'f':
				p = scan_word(p, end, "false", 5);
				break;
			case 'n':
				p = scan_word(p, end, "null", 4);
				break;
			default:
				p = (*p == '-' || is_digit(*p)) ? scan_number(p, end) : NULL;
				break;
		}
		if (p == NULL)
			break;
		expect = EXPECT_MORE;
	}
	if (stack != local)
		pfree(stack);
	return valid;
}
