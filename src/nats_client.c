/*-------------------------------------------------------------------------
 *
 * nats_client.c
 *		The NATS JetStream side of the delivery worker (cnats); the only
 *		file that includes nats.h.
 *
 * Only the delivery worker calls in here.  The connection, its JetStream
 * context, the subscription the acks come in on and the batch in flight
 * are this file's statics; the worker closes them in its exit callback.
 *
 * Threads.  cnats runs its own threads (socket reader, flusher, timers).
 * Two rules follow:
 *
 *	- A cnats callback never calls a PostgreSQL function: no palloc, no
 *	  ereport, no elog, not even PostgreSQL's snprintf.  The connection
 *	  callbacks only set a flag and the worker's latch.  The acks are not
 *	  callbacks: the worker reads them itself from a synchronous
 *	  subscription (wait_for_acks), so they cost no hand-off to a delivery
 *	  thread, and everything about them happens in the worker's thread.
 *
 *	- PostgreSQL's signal handlers must only ever run in the worker's main
 *	  thread.  Every call that may start a cnats thread runs with all
 *	  signals blocked (see BLOCK_SIGNALS), so the threads inherit a fully
 *	  blocked mask and the kernel delivers SIGTERM, SIGHUP and the latch
 *	  signal to the main thread only.  Signals are blocked around those
 *	  calls only, never across a wait.
 *
 * Waits.  The worker never sits in one long blocking cnats call: SIGTERM
 * must stop it within a second and postmaster death must be noticed as
 * fast, whatever NATS does.  Waits for acks and flushes are loops of
 * cnats calls of at most WAIT_SLICE_MS, each reported as a wait event and
 * followed by CHECK_FOR_INTERRUPTS and a postmaster check (wait_slice_end).
 * Connecting and looking up the stream cannot be sliced (cnats waits up to
 * its timeout per server, and a request up to publish_timeout), so they run
 * on a helper thread (run_on_helper) that this file starts with every
 * signal blocked, while the worker waits on its latch in slices.  The
 * helper calls nothing of PostgreSQL: it takes its inputs ready made and
 * copies cnats' (thread-local) last error text back.  A helper abandoned by
 * an ERROR or a signal keeps its results until the next call collects and
 * frees them; at process exit it simply dies with the process.
 *
 * Batches.  statehub_nats_publish_async publishes every event of a batch
 * as a core NATS message to its subject with a Nats-Msg-Id header (the
 * event id) and a reply subject that names the batch and the event, which
 * is what a JetStream publish is, and returns; a batch that is all there
 * is gets a flush round trip, as cnats' flusher would otherwise wait a
 * moment for more.  The worker does its database work meanwhile, then
 * statehub_nats_publish_wait reads the acks, up to what is left of
 * publish_timeout: JetStream's answer to each message is its ack ("stream"
 * and "seq"), an error with a JetStream error code, or, when nothing
 * listens on the subject, a "no responders" status.  One batch at a time is
 * in flight (the worker's ordering argument needs that); an ack that names
 * another batch is dropped, so a batch given up is simply forgotten.
 *
 * Secrets.  Passwords and tokens (GUCs or inside the URL) never leave this
 * file: the server name handed out is masked, and cnats error text is
 * scrubbed of them before the worker sees it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <pthread.h>
#include <signal.h>

#include <nats/nats.h>

#include "common/hashfn.h"
#include "common/jsonapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "catalog_checks.h"
#include "json_check.h"
#include "nats_client.h"
#include "statehub_events.h"

/*
 * "NATS/1.0\r\n" "Nats-Msg-Id: " <id> "\r\n" ["Statehub-Backfill: true\r\n"]
 * "\r\n": counted in max_payload (the backfill header always, so one limit
 * holds for every event)
 */
#define MSG_HEADER_OVERHEAD (10 + 13 + STATEHUB_MSG_ID_LEN + 2 + 25 + 2)

/*
 * JetStream errors that are about one message, not the stream
 * (nats-server's errors.json).
 */
#define JS_MESSAGE_EXCEEDS_MAX_ERR_CODE 10054
#define JS_STREAM_NOT_MATCH_ERR_CODE 10060
#define JS_STREAM_WRONG_LAST_MSG_ID_ERR_CODE 10070
#define JS_STREAM_WRONG_LAST_SEQ_ERR_CODE 10071

#define MAX_SERVERS 32

/* Longest single blocking cnats call in the worker's own thread. */
#define WAIT_SLICE_MS 100

/*
 * Longest answer read as a JetStream ack; a real one is well under 1 kB.
 * (Parsed by PostgreSQL's recursive JSON parser: a huge forged answer must
 * not nest deep enough to fail the round.)
 */
#define ACK_MAX_LEN 4096

/* Longest a write to the server may make no progress (build_options). */
#define WRITE_DEADLINE_MS 1000

/* How often to PING the server, how many may go unanswered (build_options) */
#define PING_INTERVAL_MS 5000
#define PING_MAX_OUT 2

static natsConnection *conn = NULL;
static jsCtx *js = NULL;


/*
 * The batch in flight, and the subscription its acks come in on.  Event i
 * of the batch is published with the reply subject
 * "<ack_prefix>.<batch_token>.<i>" (ack_prefix is an inbox of the
 * connection), so an ack names its event exactly, and an ack of an earlier
 * batch (one given up, or a re-publish) is told apart and dropped.  The
 * token is random, new for every batch: a reply subject seen once tells
 * nobody those of later batches, so nothing answered ahead of a publish
 * (by anyone who may publish to _INBOX.>) is taken for its ack.  Only the
 * worker's thread touches any of it: the acks are read with
 * natsSubscription_NextMsg, not handed to a cnats delivery thread.
 */
#define BATCH_TOKEN_BYTES 8
static natsSubscription *ack_sub = NULL;
static char ack_prefix[128];
static char batch_token[BATCH_TOKEN_BYTES * 2 + 1];
static StatehubPubEvent *batch_events = NULL;
static int	batch_nevents = 0;
static int	batch_unanswered = 0;
static MemoryContext ack_context = NULL;	/* parsing one ack, reset after */

/*
 * Messages done with, destroyed SPENT_MAX at a time (or once they hold
 * SPENT_MAX_BYTES of data).  cnats hands every destroyed message to its
 * garbage-collector thread and wakes that thread when it sleeps; destroyed
 * one by one, each published event and each ack cost a thread wake-up.
 * While draining a backlog that thread took a sixth of the worker's CPU
 * time; in bursts of 512 it takes half as much.
 */
#define SPENT_MAX 512
#define SPENT_MAX_BYTES (1024 * 1024)
static natsMsg *spent[SPENT_MAX];
static int	nspent = 0;
static int64 spent_bytes = 0;

static void batch_end(void);

/* When the connection was last lost (disconnected_cb), a TimestampTz. */
static pg_atomic_uint64 lost_at;
static natsStatus wait_for_acks(int timeout_ms);

/* What the helper thread does (see the file header). */
typedef enum HelperJob
{
	HELPER_CONNECT,				/* connect, open a JetStream context */
	HELPER_STREAM				/* look the stream up, create it if allowed */
} HelperJob;

/*
 * The helper thread's inputs and results.  The worker fills the inputs,
 * starts the thread and reads the results once done is set; between the
 * two only the helper touches the struct.  Inputs are copies the helper
 * owns, so an abandoned helper never reads memory the worker freed.
 */
typedef struct Helper
{
	pthread_t	thread;
	bool		started;		/* a thread to join */
	bool		abandoned;		/* results nobody collected: free them */
	pg_atomic_uint32 done;		/* set by the helper as its last step */
	Latch	   *latch;			/* the worker's, set when done */
	HelperJob	job;

	/* HELPER_CONNECT */
	natsOptions *opts;
	int			js_wait_ms;
	natsConnection *conn;
	jsCtx	   *js;

	/* HELPER_STREAM (on the connection's js) */
	char		stream_name[NAMEDATALEN];
	char		subject_list[1024];
	bool		create;
	int			replicas;
	int64		duplicates_ns;
	jsStreamInfo *si;
	bool		created;

	/* results of either job */
	natsStatus	status;
	const char *what;			/* a string constant */
	char		last_error[256];	/* cnats' last error, thread-local there */
} Helper;

static Helper helper;

/*
 * The subjects the stream listens on, as a comma-separated list: the
 * stream's own when it exists, the configured stream_subjects while it is
 * missing (they are what it will cover once created).  Set by
 * statehub_nats_check_stream; malloc'd, "" until then.
 */
static char *stream_subjects = NULL;

static bool stream_covers(const char *subject);
static void set_stream_subjects(const char *list, const char **subjects,
								int n);
static void describe_failure_text(char *errbuf, size_t errlen,
								  const char *what, natsStatus s,
								  const char *last);

/*
 * Block every signal in this thread for the duration of a cnats call that
 * may start threads; restore the worker's mask afterwards.
 */
#define BLOCK_SIGNALS(saved) \
	do { \
		sigset_t	all_; \
		sigfillset(&all_); \
		pthread_sigmask(SIG_SETMASK, &all_, &(saved)); \
	} while (0)
#define RESTORE_SIGNALS(saved) \
	pthread_sigmask(SIG_SETMASK, &(saved), NULL)

/*
 * Copy at most dstlen - 1 bytes of src.  Callable from cnats threads, which
 * must not call PostgreSQL's string functions.
 */
static void
copy_text(char *dst, size_t dstlen, const char *src)
{
	size_t		i = 0;

	if (src != NULL)
	{
		for (; i + 1 < dstlen && src[i] != '\0'; i++)
			dst[i] = src[i];
	}
	dst[i] = '\0';
}

/*
 * What one ack says, as pg_parse_json's semantic actions gather it: a
 * JetStream publish ack is {"stream": ..., "seq": ..., ["duplicate": true]}
 * or {"error": {"code": ..., "err_code": ..., "description": ...}}.
 */
typedef struct AckParse
{
	int			depth;			/* of objects and arrays */
	const char *key;			/* the current field, at depth 1 or 2 */
	bool		in_error;		/* inside the top-level "error" object */
	bool		stored;			/* a top-level "seq" */
	bool		zero_seq;		/* ... that is 0 */
	bool		duplicate;		/* a top-level "duplicate": true */
	bool		odd;			/* "seq" twice or not whole, "duplicate" not
								 * a boolean: no ack */
	char		stream[NAMEDATALEN + 1];	/* the top-level "stream" */
	bool		error;			/* a top-level "error" */
	int64		err_code;
	char		description[STATEHUB_PUB_ERROR_LEN];
} AckParse;

static void
ack_nest(void *state)
{
	AckParse   *a = (AckParse *) state;

	if (a->depth == 1 && a->key != NULL && strcmp(a->key, "error") == 0)
	{
		a->in_error = true;
		a->error = true;
	}
	a->depth++;
}

static void
ack_unnest(void *state)
{
	AckParse   *a = (AckParse *) state;

	a->depth--;
	if (a->depth == 1)
		a->in_error = false;
	a->key = NULL;
}

static void
ack_field(void *state, char *fname, bool isnull)
{
	AckParse   *a = (AckParse *) state;

	a->key = fname;
}

static void
ack_scalar(void *state, char *token, JsonTokenType tokentype)
{
	AckParse   *a = (AckParse *) state;

	if (a->key == NULL)
		return;
	if (a->depth == 1 && strcmp(a->key, "seq") == 0 &&
		tokentype == JSON_TOKEN_NUMBER)
	{
		/*
		 * A stream sequence is a whole number of 64 bits: no sign, fraction
		 * or exponent.  Given twice, the answer is no ack (which counts?).
		 */
		a->odd |= a->stored || strspn(token, "0123456789") != strlen(token) ||
			strlen(token) > 19;
		a->stored = true;
		a->zero_seq = strcmp(token, "0") == 0;
	}
	else if (a->depth == 1 && strcmp(a->key, "duplicate") == 0)
	{
		a->odd |= tokentype != JSON_TOKEN_TRUE && tokentype != JSON_TOKEN_FALSE;
		a->duplicate = tokentype == JSON_TOKEN_TRUE;
	}
	else if (a->depth == 1 && strcmp(a->key, "stream") == 0 &&
			 tokentype == JSON_TOKEN_STRING)
		strlcpy(a->stream, token, sizeof(a->stream));
	else if (a->depth == 1 && strcmp(a->key, "error") == 0)
		a->error = true;		/* not an object: an error all the same */
	else if (a->in_error && a->depth == 2 && strcmp(a->key, "err_code") == 0 &&
			 tokentype == JSON_TOKEN_NUMBER)
		a->err_code = strtoll(token, NULL, 10);
	else if (a->in_error && a->depth == 2 && strcmp(a->key, "description") == 0 &&
			 tokentype == JSON_TOKEN_STRING)
		strlcpy(a->description, token, sizeof(a->description));
}

/*
 * The stream refused ev: status and code as statehub_nats_stream_trouble
 * reads them (code -1: the event's own fault), and the reason worded for
 * the DBA.  Worker thread only.
 */
static void reject(StatehubPubEvent *ev, natsStatus status, int code,
				   const char *fmt,...) pg_attribute_printf(4, 5);

static void
reject(StatehubPubEvent *ev, natsStatus status, int code, const char *fmt,...)
{
	va_list		args;

	ev->err_status = (int) status;
	ev->err_code = code;
	va_start(args, fmt);
	vsnprintf(ev->error, sizeof(ev->error), fmt, args);
	va_end(args);
	ev->outcome = STATEHUB_PUB_REJECTED;
}

/* Destroy the messages set aside by discard_msg. */
static void
destroy_spent(void)
{
	for (int i = 0; i < nspent; i++)
		natsMsg_Destroy(spent[i]);
	nspent = 0;
	spent_bytes = 0;
}

/* Done with msg: destroyed with the next SPENT_MAX, or by destroy_spent. */
static void
discard_msg(natsMsg *msg)
{
	if (msg == NULL)
		return;
	spent[nspent++] = msg;
	spent_bytes += natsMsg_GetDataLength(msg);
	if (nspent == SPENT_MAX || spent_bytes >= SPENT_MAX_BYTES)
		destroy_spent();
}

/*
 * Skip JSON whitespace at *p, then the literal lit (of len bytes) if it is
 * there: whether it was.
 */
static bool
ack_token(const char **p, const char *end, const char *lit, size_t len)
{
	*p = statehub_json_skip_space(*p, end);
	if ((size_t) (end - *p) < len || memcmp(*p, lit, len) != 0)
		return false;
	*p += len;
	return true;
}

/*
 * Whether the len bytes at data are a plain ack by our stream:
 * {"stream": "<our stream>", "seq": <n>} with n > 0, or the same with
 * "duplicate": true after the sequence, as nats-server writes them (its
 * layout varies by path, so whitespace may be anywhere JSON allows it).
 * Nearly every answer is one, and they need no JSON parser; anything else
 * (an error, sequence 0, another stream, another field) is left to it.
 */
static bool
plain_ack(const char *data, int len)
{
	const char *p = data;
	const char *end = data + len;
	const char *digits;
	size_t		slen;

	if (!ack_token(&p, end, "{", 1) ||
		!ack_token(&p, end, "\"stream\"", 8) ||
		!ack_token(&p, end, ":", 1) ||
		!ack_token(&p, end, "\"", 1))
		return false;
	/* the name, exactly, inside its quotes */
	slen = strlen(statehub_stream_name);
	if ((size_t) (end - p) < slen + 1 ||
		memcmp(p, statehub_stream_name, slen) != 0 || p[slen] != '"')
		return false;
	p += slen + 1;
	if (!ack_token(&p, end, ",", 1) ||
		!ack_token(&p, end, "\"seq\"", 5) ||
		!ack_token(&p, end, ":", 1) ||
		!ack_token(&p, end, "", 0) ||
		p == end || *p < '1' || *p > '9')
		return false;
	digits = p;
	while (p < end && *p >= '0' && *p <= '9')
		p++;
	if (p - digits > 19)
		return false;			/* maybe past 64 bits: the parser's case */
	if (ack_token(&p, end, ",", 1) &&
		!(ack_token(&p, end, "\"duplicate\"", 11) &&
		  ack_token(&p, end, ":", 1) &&
		  ack_token(&p, end, "true", 4)))
		return false;
	return ack_token(&p, end, "}", 1) && ack_token(&p, end, "", 0) && p == end;
}

/*
 * Up to max of the len bytes at data, for quoting between double quotes:
 * what is not printable ASCII (NUL bytes too) as '?', and '"' and '\\'
 * escaped with a '\\', so the quote shows every byte it covers and the text
 * cannot end it; "..." follows when there is more.  buf holds 2 * max + 4
 * bytes.
 */
static void
quote_bytes(char *buf, const char *data, int len, int max)
{
	int			n = Min(len, max);
	char	   *out = buf;

	for (int i = 0; i < n; i++)
	{
		char		c = data[i];

		if (c == '"' || c == '\\')
			*out++ = '\\';
		*out++ = (c < 0x20 || c >= 0x7F) ? '?' : c;
	}
	strcpy(out, len > n ? "..." : "");
}

/* The start of an answer, quoted (quote_bytes). */
static void
quote_answer(char *buf, natsMsg *msg, int max)
{
	quote_bytes(buf, natsMsg_GetData(msg), natsMsg_GetDataLength(msg), max);
}

/*
 * The answer to ev is not a JetStream ack: something else answers on its
 * subject.  The event's own fault (its subject), as when no stream listens:
 * retried with back-off and dead-lettered at max_attempts, instead of being
 * published again and again.  The reason quotes the answer's start.
 */
static void
unknown_answer(StatehubPubEvent *ev, natsMsg *msg)
{
	char		quoted[2 * 64 + 4];

	quote_answer(quoted, msg, 64);
	reject(ev, NATS_ERR, -1,
		   "the answer to the event is not a JetStream acknowledgement (\"%s\"): something other than a stream answers on subject \"%s\"",
		   quoted, ev->subject);
}

/*
 * Whether the subjects of our stream were seen to be out of date: an ack
 * came for a subject they do not cover (statehub_nats_subjects_suspect).
 */
static bool subjects_suspect = false;

/* How many times set_stream_subjects has run: which lookup they are from. */
static uint64 subjects_generation = 0;

/*
 * The event whose ack came last for a subject the stream's subjects do not
 * cover, and the lookup of those subjects it was checked against.
 */
static char suspect_msg_id[STATEHUB_MSG_ID_LEN + 1];
static uint64 suspect_generation = 0;

/*
 * An answer says our stream stored ev.  Our stream does not listen on a
 * subject it does not cover, so for such a subject the answer came from
 * something else that answers on it (a NATS client that may publish to
 * the reply subject; otherwise nothing at all answers there and the event
 * is dead-lettered): never an ack, or the event would be deleted although
 * no stream holds it.  Unless the subjects known are out of date (a DBA
 * added this one to the stream): so the first such answer is trouble of
 * the stream (no attempt burnt, the event goes out again in order) and
 * the worker looks the subjects up again; only an answer checked against
 * subjects looked up after the event's last such answer is a rejection.
 */
static void
acked_by_our_stream(StatehubPubEvent *ev, natsMsg *msg)
{
	char		quoted[2 * 64 + 4];

	if (stream_covers(ev->subject))
	{
		ev->outcome = STATEHUB_PUB_ACKED;
		return;
	}
	subjects_suspect = true;
	quote_answer(quoted, msg, 64);
	if (strcmp(ev->msg_id, suspect_msg_id) != 0 ||
		subjects_generation == suspect_generation)
	{
		strlcpy(suspect_msg_id, ev->msg_id, sizeof(suspect_msg_id));
		suspect_generation = subjects_generation;
		reject(ev, NATS_MISMATCH, 0,
			   "an answer (\"%s\") says stream \"%s\" stored the event, but as far as the worker knows that stream does not listen on subject \"%s\": looking the stream up again",
			   quoted, statehub_stream_name, ev->subject);
		return;
	}
	reject(ev, NATS_ERR, -1,
		   "an answer (\"%s\") says stream \"%s\" stored the event, but that stream does not listen on subject \"%s\": the answer did not come from the stream",
		   quoted, statehub_stream_name, ev->subject);
}

/* Whether an ack came for a subject the stream's subjects lack (once). */
bool
statehub_nats_subjects_suspect(void)
{
	bool		suspect = subjects_suspect;

	subjects_suspect = false;
	return suspect;
}

/*
 * Record what an ack says about its event.  An error with a JetStream error
 * code: the stream refused this message.  A message stored by our stream
 * (or a duplicate of one) under a sequence above 0: acked.  An error
 * without a code leaves the event without an answer, which is not its
 * fault.  Anything else is no JetStream ack (unknown_answer).  ("No
 * responders", nothing listens on the subject, is seen by wait_for_acks.)
 */
static void
record_ack(StatehubPubEvent *ev, natsMsg *msg)
{
	AckParse	a;
	JsonSemAction sem;
	JsonLexContext *lex;
	MemoryContext old;
	bool		parsed;
	char		quoted[2 * Max(NAMEDATALEN, 128) + 4];

	/* what each event's answer said, for tracing a lost or odd one */
	if (message_level_is_interesting(DEBUG2))
	{
		quote_answer(quoted, msg, 128);
		ereport(DEBUG2,
				(errmsg_internal("statehub_events worker: the answer to event %s is \"%s\"",
								 ev->msg_id, quoted)));
	}
	if (plain_ack(natsMsg_GetData(msg), natsMsg_GetDataLength(msg)))
	{
		acked_by_our_stream(ev, msg);
		return;
	}
	if (natsMsg_GetDataLength(msg) > ACK_MAX_LEN)
	{
		unknown_answer(ev, msg);
		return;
	}
	memset(&a, 0, sizeof(a));
	memset(&sem, 0, sizeof(sem));
	sem.semstate = &a;
	sem.object_start = ack_nest;
	sem.object_end = ack_unnest;
	sem.array_start = ack_nest;
	sem.array_end = ack_unnest;
	sem.object_field_start = ack_field;
	sem.scalar = ack_scalar;
	old = MemoryContextSwitchTo(ack_context);
	lex = makeJsonLexContextCstringLen(unconstify(char *, natsMsg_GetData(msg)),
									   natsMsg_GetDataLength(msg),
									   PG_UTF8, true);
	parsed = pg_parse_json(lex, &sem) == JSON_SUCCESS;
	/* names and texts in reasons (read by pg_monitor) are quoted */
	if (!parsed)
		unknown_answer(ev, msg);
	else if (a.error && a.err_code != 0)
	{
		quote_bytes(quoted, a.description, strlen(a.description), 64);
		reject(ev, NATS_ERR, (int) a.err_code,
			   "JetStream rejected the event: \"%s\" (error code %d)",
			   quoted, (int) a.err_code);
	}
	else if (a.error)
	{
		/* an error without a JetStream code: left without an answer */
	}
	else if (!a.stored || a.odd)
		unknown_answer(ev, msg);
	else if (strcmp(a.stream, statehub_stream_name) != 0)
	{
		/*
		 * Stored, but by another stream that listens on the subject: not
		 * delivered to ours, and so not to its consumers.  The event's own
		 * fault (its subject), like no stream at all.
		 */
		quote_bytes(quoted, a.stream, strlen(a.stream), NAMEDATALEN);
		reject(ev, NATS_ERR, -1,
			   "stream \"%s\" took the event, not stream \"%s\": no stream of this worker listens on subject \"%s\"",
			   quoted, statehub_stream_name, ev->subject);
	}
	else if (a.zero_seq)
	{
		/*
		 * Sequence 0 stores nothing.  "A duplicate of sequence 0": a
		 * clustered stream leader of nats-server before 2.10.25 stages a
		 * Nats-Msg-Id with sequence 0 until the message is stored, and keeps
		 * it when a leader change drops the message (nats-server pull
		 * request 6415).  Nothing says the event is stored: trouble of the
		 * stream, published again in order after a back-off, never deleted
		 * on such an answer.
		 */
		reject(ev, NATS_ERR, 0,
			   a.duplicate ?
			   "JetStream answered that the event duplicates one it has not stored (sequence 0)" :
			   "JetStream answered with sequence 0, which stores nothing");
	}
	else
		acked_by_our_stream(ev, msg);
	MemoryContextSwitchTo(old);
	MemoryContextReset(ack_context);
}

/*
 * An ack read from the subscription: if it answers an event of the batch
 * in flight for the first time, record it.  The message is ours.
 */
static void
take_ack(natsMsg *msg)
{
	const char *subject = natsMsg_GetSubject(msg);
	size_t		plen = strlen(ack_prefix);
	size_t		tlen = strlen(batch_token);
	char	   *end;
	long		i;

	if (batch_events != NULL && strncmp(subject, ack_prefix, plen) == 0 &&
		subject[plen] == '.')
	{
		const char *token = subject + plen + 1;

		if (strncmp(token, batch_token, tlen) == 0 && token[tlen] == '.' &&
			token[tlen + 1] >= '0' && token[tlen + 1] <= '9')
		{
			i = strtol(token + tlen + 1, &end, 10);
			if (*end == '\0' && i >= 0 && i < batch_nevents &&
				!batch_events[i].answered)
			{
				batch_events[i].answered = true;
				record_ack(&batch_events[i], msg);
				batch_unanswered--;
			}
		}
	}
	discard_msg(msg);
}

/* Connection callbacks (cnats threads): a flag and a latch, nothing else. */
static void
disconnected_cb(natsConnection *nc, void *closure)
{
	struct timespec now;

	/* a TimestampTz, computed by hand: no PostgreSQL function here */
	clock_gettime(CLOCK_REALTIME, &now);
	pg_atomic_write_u64(&lost_at,
						(uint64) (((int64) now.tv_sec -
								   (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY) *
								  USECS_PER_SEC + now.tv_nsec / 1000));
	SetLatch(MyLatch);
}

/*
 * When the connection was last lost (0: never), as the disconnected
 * callback saw it, not when the worker noticed.
 */
TimestampTz
statehub_nats_lost_at(void)
{
	return (TimestampTz) pg_atomic_read_u64(&lost_at);
}

/*
 * Replace every occurrence of secret in buf by "***".  Worker thread only.
 */
static void
scrub(char *buf, size_t buflen, const char *secret)
{
	size_t		slen;
	char	   *p;

	if (secret == NULL || secret[0] == '\0')
		return;
	slen = strlen(secret);
	while ((p = strstr(buf, secret)) != NULL)
	{
		size_t		tail = strlen(p + slen);

		if (slen >= 3)
		{
			memcpy(p, "***", 3);
			memmove(p + 3, p + slen, tail + 1);
		}
		else
		{
			/* a short secret: pad it over, never let the text grow */
			memset(p, '*', slen);
		}
	}
	buf[buflen - 1] = '\0';
}

/*
 * Find the secret in the user info of the URL starting at url, in a
 * comma-separated list: the password of "user:password@host" or the token
 * of "token@host".  Sets *next to the end of this URL (its comma or NUL);
 * returns false when the URL has no user info.
 */
static bool
url_secret(const char *url, const char **secret, const char **secret_end,
		   const char **next)
{
	const char *end = url + strcspn(url, ",");
	const char *scheme = strstr(url, "://");
	const char *info;
	const char *at = NULL;
	const char *colon;
	const char *p;

	*next = end;
	info = (scheme != NULL && scheme < end) ? scheme + 3 : url;
	for (p = info; p < end && *p != '/'; p++)
	{
		if (*p == '@')
			at = p;
	}
	if (at == NULL)
		return false;
	colon = memchr(info, ':', at - info);
	*secret = colon != NULL ? colon + 1 : info;
	*secret_end = at;
	return true;
}

/* Scrub the password (or token) inside each URL of nats_url. */
static void
scrub_url_secrets(char *buf, size_t buflen)
{
	const char *p;
	const char *next;

	for (p = statehub_nats_url ? statehub_nats_url : ""; *p != '\0';
		 p = (*next == ',') ? next + 1 : next)
	{
		const char *secret;
		const char *secret_end;
		char		copy[256];

		if (!url_secret(p, &secret, &secret_end, &next))
			continue;
		strlcpy(copy, secret, Min((size_t) (secret_end - secret) + 1, sizeof(copy)));
		scrub(buf, buflen, copy);
	}
}

/* Scrub every secret we know of from a message about to leave this file. */
static void
scrub_secrets(char *buf, size_t buflen)
{
	scrub(buf, buflen, statehub_nats_password);
	scrub(buf, buflen, statehub_nats_token);
	scrub_url_secrets(buf, buflen);
}

/*
 * Describe a failed cnats call: what we did, the status text, and cnats'
 * last error (which often names the cause), scrubbed of secrets.
 */
static void
describe_failure(char *errbuf, size_t errlen, const char *what, natsStatus s)
{
	describe_failure_text(errbuf, errlen, what, s, nats_GetLastError(NULL));
}

/* describe_failure with cnats' last error text as taken on another thread */
static void
describe_failure_text(char *errbuf, size_t errlen, const char *what,
					  natsStatus s, const char *last)
{
	/* cnats prefixes its source location, "(conn.c:1905): " */
	if (last != NULL && last[0] == '(' && strstr(last, "): ") != NULL)
		last = strstr(last, "): ") + 3;
	if (last != NULL && last[0] != '\0' && strcmp(last, natsStatus_GetText(s)) != 0)
		snprintf(errbuf, errlen, "%s: %s (%s)", what, natsStatus_GetText(s), last);
	else
		snprintf(errbuf, errlen, "%s: %s", what, natsStatus_GetText(s));
	scrub_secrets(errbuf, errlen);
}

/*
 * Mask the secret part of the user info of each URL of a comma-separated
 * list: user:pw@host becomes user:***@host, and tok@host becomes ***@host.
 */
void
statehub_nats_mask_url(const char *url, char *buf, size_t buflen)
{
	StringInfoData out;
	const char *p;
	const char *next;

	initStringInfo(&out);
	for (p = url ? url : ""; *p != '\0'; p = (*next == ',') ? next + 1 : next)
	{
		const char *secret;
		const char *secret_end;

		if (url_secret(p, &secret, &secret_end, &next))
		{
			appendBinaryStringInfo(&out, p, secret - p);
			appendStringInfoString(&out, "***");
			appendBinaryStringInfo(&out, secret_end, next - secret_end);
		}
		else
			appendBinaryStringInfo(&out, p, next - p);
		if (*next == ',')
			appendStringInfoChar(&out, ',');
	}
	strlcpy(buf, out.data, buflen);
	pfree(out.data);
}

/*
 * A hash of every setting the connection depends on; the worker reconnects
 * when it changes on reload.
 */
uint32
statehub_nats_settings_hash(void)
{
	const char *parts[] = {
		statehub_nats_url, statehub_nats_user, statehub_nats_password,
		statehub_nats_token, statehub_nats_creds_file, statehub_tls_ca_file,
		statehub_tls_cert_file, statehub_tls_key_file
	};
	uint32		h = 0;
	int			i;

	for (i = 0; i < lengthof(parts); i++)
	{
		const char *s = parts[i] ? parts[i] : "";

		h = hash_combine(h, hash_bytes((const unsigned char *) s, strlen(s)));
	}
	return h;
}

static bool
nonempty(const char *s)
{
	return s != NULL && s[0] != '\0';
}

/* Split a comma-separated list in place, trimming blanks; returns count. */
static int
split_list(char *list, char **items, int maxitems)
{
	int			n = 0;
	char	   *tok;
	char	   *save = NULL;

	for (tok = strtok_r(list, ",", &save); tok != NULL && n < maxitems;
		 tok = strtok_r(NULL, ",", &save))
	{
		char	   *end;

		while (*tok == ' ' || *tok == '\t')
			tok++;
		end = tok + strlen(tok);
		while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';
		if (*tok != '\0')
			items[n++] = tok;
	}
	return n;
}

/*
 * Whether a server URL asks for TLS.  cnats 3.4 accepts "tls://" but does
 * not require TLS for it: without this the worker would speak plain text
 * (credentials included) to a server that offers no TLS.
 */
static bool
any_tls_url(char **servers, int nservers)
{
	int			i;

	for (i = 0; i < nservers; i++)
		if (pg_strncasecmp(servers[i], "tls://", 6) == 0)
			return true;
	return false;
}

/* Options from the GUCs.  Returns the status of the first failing call. */
static natsStatus
build_options(natsOptions **optsp, const char **what)
{
	natsOptions *opts = NULL;
	natsStatus	s;
	char	   *urls = pstrdup(statehub_nats_url);
	char	   *servers[MAX_SERVERS];
	int			nservers = split_list(urls, servers, MAX_SERVERS);

	*what = "could not set up the NATS connection options";
	s = natsOptions_Create(&opts);
	if (s == NATS_OK)
		s = natsOptions_SetServers(opts, (const char **) servers, nservers);
	if (s == NATS_OK)
		s = natsOptions_SetName(opts, "statehub_events worker");
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(opts, 2000);
	/*
	 * No reconnection by cnats: it would resend what it had buffered when
	 * the connection broke on the new connection, after events that were
	 * lost with the old one and that the worker publishes again later,
	 * breaking the per-row order.  A broken connection is closed instead
	 * and the worker connects anew, then publishes from the first event
	 * without an answer, in id order.
	 */
	if (s == NATS_OK)
		s = natsOptions_SetAllowReconnect(opts, false);

	/*
	 * A server that takes no bytes for WRITE_DEADLINE_MS (stopped, or
	 * stalled) fails the write, and so the connection, rather than block
	 * the worker in send() (or behind cnats' flusher blocked there) for as
	 * long as it hangs, deaf to SIGTERM: a big batch fills the socket's
	 * buffers.
	 */
	if (s == NATS_OK)
		s = natsOptions_SetWriteDeadline(opts, WRITE_DEADLINE_MS);

	/*
	 * A server that hangs while nothing is published: without PINGs more
	 * often than cnats' 2 minutes, the status view would say "connected"
	 * for minutes.  With no PONG to PING_MAX_OUT of them, cnats closes the
	 * connection and the worker connects anew (to another server of the
	 * list first).  A PONG comes behind everything the server was sent, as
	 * an ack does, and publish_timeout (5 s by default) already takes a
	 * server that answers nothing for that long as hung.
	 */
	if (s == NATS_OK)
		s = natsOptions_SetPingInterval(opts, PING_INTERVAL_MS);
	if (s == NATS_OK)
		s = natsOptions_SetMaxPingsOut(opts, PING_MAX_OUT);
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(opts, disconnected_cb, NULL);
	if (s == NATS_OK)
		s = natsOptions_SetClosedCB(opts, disconnected_cb, NULL);
	if (s == NATS_OK && (nonempty(statehub_nats_user) || nonempty(statehub_nats_password)))
		s = natsOptions_SetUserInfo(opts, statehub_nats_user, statehub_nats_password);
	if (s == NATS_OK && nonempty(statehub_nats_token))
		s = natsOptions_SetToken(opts, statehub_nats_token);
	if (s == NATS_OK && nonempty(statehub_nats_creds_file))
	{
		*what = "could not load the NATS credentials file";
		s = natsOptions_SetUserCredentialsFromFiles(opts, statehub_nats_creds_file, NULL);
	}
	if (s == NATS_OK && (nonempty(statehub_tls_ca_file) || nonempty(statehub_tls_cert_file) ||
						 any_tls_url(servers, nservers)))
	{
		*what = "could not set up TLS for NATS";
		s = natsOptions_SetSecure(opts, true);
		if (s == NATS_OK && nonempty(statehub_tls_ca_file))
			s = natsOptions_LoadCATrustedCertificates(opts, statehub_tls_ca_file);
		if (s == NATS_OK && nonempty(statehub_tls_cert_file))
			s = natsOptions_LoadCertificatesChain(opts, statehub_tls_cert_file,
												  statehub_tls_key_file);
	}
	pfree(urls);
	if (s != NATS_OK)
	{
		natsOptions_Destroy(opts);
		opts = NULL;
	}
	*optsp = opts;
	return s;
}

/*
 * Wait-slice bookkeeping in the worker's thread, after each blocking cnats
 * call of at most WAIT_SLICE_MS: end its wait event, act on SIGTERM (and
 * a query cancel), and exit at once if the postmaster died.
 */
static void
wait_slice_end(void)
{
	pgstat_report_wait_end();
	if (!PostmasterIsAlive())
		proc_exit(1);
	CHECK_FOR_INTERRUPTS();
}

/*
 * The helper thread's body: the blocking cnats calls of one job, with
 * nothing of PostgreSQL (see the file header).  Every signal is blocked in
 * this thread, and so in every thread cnats starts from it.
 */
static void *
helper_main(void *arg)
{
	natsStatus	s = NATS_OK;

	if (helper.job == HELPER_CONNECT)
	{
		jsOptions	jo;

		helper.what = "could not connect to NATS";
		s = natsConnection_Connect(&helper.conn, helper.opts);
		if (s == NATS_OK)
		{
			jsOptions_Init(&jo);
			jo.Wait = helper.js_wait_ms;
			helper.what = "could not open a JetStream context";
			s = natsConnection_JetStream(&helper.js, helper.conn, &jo);
		}
	}
	else
	{
		jsErrCode	jerr = 0;
		char	   *subjects[MAX_SERVERS];
		int			nsubjects;

		helper.what = "could not look up the stream";
		s = js_GetStreamInfo(&helper.si, helper.js, helper.stream_name, NULL, &jerr);
		if (s == NATS_NOT_FOUND && helper.create)
		{
			jsStreamConfig cfg;

			/* split_list calls no PostgreSQL function: safe on this thread */
			nsubjects = split_list(helper.subject_list, subjects, MAX_SERVERS);
			jsStreamConfig_Init(&cfg);
			cfg.Name = helper.stream_name;
			cfg.Subjects = (const char **) subjects;
			cfg.SubjectsLen = nsubjects;
			cfg.Storage = js_FileStorage;
			cfg.Replicas = helper.replicas;
			cfg.Duplicates = helper.duplicates_ns;
			s = js_AddStream(&helper.si, helper.js, &cfg, NULL, &jerr);
			if (s != NATS_OK)
				helper.what = "could not create the stream";
			else
				helper.created = true;
		}
	}
	helper.status = s;
	copy_text(helper.last_error, sizeof(helper.last_error),
			  s == NATS_OK ? "" : nats_GetLastError(NULL));
	pg_atomic_write_u32(&helper.done, 1);
	SetLatch(helper.latch);
	return NULL;
}

/*
 * Wait, in latch slices, for the helper thread to finish, and join it.
 * SIGTERM and postmaster death end the wait (and the process) at once.
 */
static void
wait_for_helper(void)
{
	while (pg_atomic_read_u32(&helper.done) == 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 WAIT_SLICE_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	pthread_join(helper.thread, NULL);
	helper.started = false;
}

/* Free what a helper left that nobody collected (an ERROR cut us short). */
static void
reap_helper(void)
{
	if (helper.started)
		wait_for_helper();
	if (!helper.abandoned)
		return;
	helper.abandoned = false;
	if (helper.si != NULL)
		jsStreamInfo_Destroy(helper.si);
	helper.si = NULL;
	if (helper.job == HELPER_CONNECT)
	{
		if (helper.js != NULL)
			jsCtx_Destroy(helper.js);
		if (helper.conn != NULL)
			natsConnection_Destroy(helper.conn);
		natsOptions_Destroy(helper.opts);
		helper.opts = NULL;
		helper.js = NULL;
		helper.conn = NULL;
	}
}

/*
 * Run the helper's job (inputs already set, after reap_helper) on its
 * thread and wait for it.
 * Signals are blocked only while the thread is created, so it and the
 * threads cnats starts from it never run PostgreSQL's handlers.
 */
static void
run_on_helper(HelperJob job)
{
	sigset_t	saved;
	int			rc;

	helper.job = job;
	helper.latch = MyLatch;
	helper.status = NATS_OK;
	helper.last_error[0] = '\0';
	pg_atomic_init_u32(&helper.done, 0);

	BLOCK_SIGNALS(saved);
	rc = pthread_create(&helper.thread, NULL, helper_main, NULL);
	RESTORE_SIGNALS(saved);
	if (rc != 0)
	{
		helper.status = NATS_SYS_ERROR;
		helper.what = "could not start a thread for NATS";
		strlcpy(helper.last_error, strerror(rc), sizeof(helper.last_error));
		return;
	}
	helper.started = true;
	/* until collected below; an ERROR or exit in between leaves it so */
	helper.abandoned = true;
	wait_for_helper();
	helper.abandoned = false;
}

/*
 * Subscribe, on the new connection, to the replies of our publishes: a
 * synchronous subscription, read by the worker itself (wait_for_acks), with
 * no limit on what it holds (a batch is at most batch_size acks).
 */
static natsStatus
open_ack_sub(void)
{
	natsInbox  *inbox = NULL;
	char		subject[sizeof(ack_prefix) + 2];
	natsStatus	s;

	if (ack_context == NULL)
		ack_context = AllocSetContextCreate(TopMemoryContext,
											"statehub_events acks",
											ALLOCSET_SMALL_SIZES);
	s = natsInbox_Create(&inbox);
	if (s != NATS_OK)
		return s;
	strlcpy(ack_prefix, inbox, sizeof(ack_prefix));
	natsInbox_Destroy(inbox);
	snprintf(subject, sizeof(subject), "%s.>", ack_prefix);
	s = natsConnection_SubscribeSync(&ack_sub, conn, subject);
	if (s == NATS_OK)
		s = natsSubscription_SetPendingLimits(ack_sub, -1, -1);
	return s;
}

/* Drop the acks' subscription (the connection is going away). */
static void
close_ack_sub(void)
{
	destroy_spent();
	if (ack_sub != NULL)
		natsSubscription_Destroy(ack_sub);
	ack_sub = NULL;
}

/*
 * Replace the acks' subscription while the connection stays open (an
 * unfinished batch, finish_batch).  The old one is only unsubscribed here
 * and destroyed later (destroy_retired): cnats' reader thread
 * may be delivering a late ack to it at this very moment, and destroying
 * it under that thread crashed the worker (a segmentation fault in
 * natsConn_processMsg, 1 run in 6 of 169 with a publish_timeout of 10 ms).
 */
#define RETIRED_MAX 16
static natsSubscription *retired[RETIRED_MAX];
static int	nretired = 0;

/* Destroy the retired subscriptions: only once no reader thread runs. */
static void
destroy_retired(int keep)
{
	while (nretired > keep)
	{
		natsSubscription_Destroy(retired[0]);
		memmove(&retired[0], &retired[1], sizeof(retired[0]) * (nretired - 1));
		nretired--;
	}
}

static void
renew_ack_sub(void)
{
	if (ack_sub != NULL)
	{
		(void) natsSubscription_Unsubscribe(ack_sub);
		/* the oldest, unsubscribed RETIRED_MAX renewals ago, is long idle */
		destroy_retired(RETIRED_MAX - 1);
		retired[nretired++] = ack_sub;
		ack_sub = NULL;
	}
	if (open_ack_sub() != NATS_OK)
		close_ack_sub();		/* statehub_nats_connected() says false now */
}

/*
 * Connect to the configured servers and open the JetStream context.  On
 * failure errbuf says why (secrets scrubbed) and nothing stays open.
 */
StatehubNatsResult
statehub_nats_connect(char *errbuf, size_t errlen)
{
	static bool lost_at_ready = false;
	natsStatus	s;
	const char *what;

	/* before the first connection, so before any callback can run */
	if (!lost_at_ready)
	{
		pg_atomic_init_u64(&lost_at, 0);
		lost_at_ready = true;
	}
	statehub_nats_close();

	s = build_options(&helper.opts, &what);
	if (s != NATS_OK)
	{
		describe_failure(errbuf, errlen, what, s);
		return STATEHUB_NATS_FAILED;
	}
	helper.js_wait_ms = statehub_publish_timeout;
	helper.conn = NULL;
	helper.js = NULL;
	run_on_helper(HELPER_CONNECT);
	natsOptions_Destroy(helper.opts);
	helper.opts = NULL;
	conn = helper.conn;
	js = helper.js;
	helper.conn = NULL;
	helper.js = NULL;

	if (helper.status != NATS_OK)
	{
		describe_failure_text(errbuf, errlen, helper.what, helper.status,
							  helper.last_error);
		statehub_nats_close();
		return STATEHUB_NATS_FAILED;
	}
	s = open_ack_sub();
	if (s != NATS_OK)
	{
		describe_failure(errbuf, errlen, "could not subscribe to the acknowledgements", s);
		statehub_nats_close();
		return STATEHUB_NATS_FAILED;
	}
	return STATEHUB_NATS_OK;
}

bool
statehub_nats_connected(void)
{
	return conn != NULL && ack_sub != NULL &&
		natsConnection_Status(conn) == NATS_CONN_STATUS_CONNECTED;
}

/*
 * True while a lost connection is still going down (cnats does not
 * reconnect, see build_options).  Once cnats has closed it, it is
 * destroyed here and the worker connects anew.
 */
bool
statehub_nats_reconnecting(void)
{
	natsConnStatus st;

	if (conn == NULL)
		return false;
	st = natsConnection_Status(conn);
	if (st == NATS_CONN_STATUS_CLOSED)
	{
		statehub_nats_close();
		return false;
	}
	return st != NATS_CONN_STATUS_CONNECTED;
}

/*
 * Make sure the stream exists: look it up, create it (file storage, the
 * configured subjects, replicas and duplicate window) when it is missing
 * and stream_create is on; never modify an existing one.  Reports the
 * stream's duplicate window (0 when unknown).  A stream that is missing and
 * may not be created is not a connection failure: *missing is set, and
 * events for its subjects wait for it (statehub_nats_stream_trouble).
 */
StatehubNatsResult
statehub_nats_check_stream(char *errbuf, size_t errlen, int64 *dedup_window_us,
						   bool *missing)
{
	char	   *list;
	char	   *subjects[MAX_SERVERS];
	int			nsubjects;
	int			i;
	natsStatus	s;

	*dedup_window_us = 0;
	*missing = false;
	if (js == NULL)
	{
		snprintf(errbuf, errlen, "not connected to NATS");
		return STATEHUB_NATS_FAILED;
	}

	/* an abandoned helper first; then the helper gets its own copies */
	reap_helper();
	list = pstrdup(statehub_stream_subjects);
	nsubjects = split_list(list, subjects, MAX_SERVERS);
	helper.subject_list[0] = '\0';
	for (i = 0; i < nsubjects; i++)
	{
		if (i > 0)
			strlcat(helper.subject_list, ",", sizeof(helper.subject_list));
		strlcat(helper.subject_list, subjects[i], sizeof(helper.subject_list));
	}
	pfree(list);
	strlcpy(helper.stream_name, statehub_stream_name, sizeof(helper.stream_name));
	helper.create = statehub_stream_create;
	helper.replicas = statehub_stream_replicas;
	helper.duplicates_ns = (int64) statehub_dedup_window * INT64CONST(1000000000);
	helper.js = js;
	helper.si = NULL;
	helper.created = false;
	run_on_helper(HELPER_STREAM);
	helper.js = NULL;
	s = helper.status;

	if (helper.created)
		ereport(LOG,
				(errmsg("created NATS JetStream stream \"%s\"", statehub_stream_name)));

	if (s == NATS_NOT_FOUND)
		set_stream_subjects(helper.subject_list, NULL, 0);
	else if (s == NATS_OK && helper.si->Config != NULL)
		set_stream_subjects(NULL, helper.si->Config->Subjects,
							helper.si->Config->SubjectsLen);
	if (s == NATS_NOT_FOUND)
	{
		*missing = true;
		snprintf(errbuf, errlen, "stream \"%s\" does not exist and statehub_events.stream_create is off",
				 statehub_stream_name);
		return STATEHUB_NATS_OK;
	}
	if (s != NATS_OK)
	{
		describe_failure_text(errbuf, errlen, helper.what, s, helper.last_error);
		return STATEHUB_NATS_FAILED;
	}
	if (helper.si->Config != NULL)
		*dedup_window_us = helper.si->Config->Duplicates / 1000;
	jsStreamInfo_Destroy(helper.si);
	helper.si = NULL;
	return STATEHUB_NATS_OK;
}

/*
 * The last subject stream_covers said yes to: every ack asks, and a
 * batch's events mostly share their subjects.  Emptied when the stream's
 * subjects change.
 */
static char covered_subject[256];

/* Remember what the stream covers: a list "a,b" or an array of subjects. */
static void
set_stream_subjects(const char *list, const char **subjects, int n)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	if (list != NULL)
		appendStringInfoString(&buf, list);
	for (i = 0; i < n; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? "," : "", subjects[i]);
	free(stream_subjects);
	stream_subjects = strdup(buf.data);
	covered_subject[0] = '\0';
	subjects_generation++;
	pfree(buf.data);
}

/* Whether the stream listens on (or, missing, will listen on) subject. */
static bool
stream_covers(const char *subject)
{
	const char *p = stream_subjects;

	if (covered_subject[0] != '\0' && strcmp(subject, covered_subject) == 0)
		return true;
	while (p != NULL && *p != '\0')
	{
		size_t		len = strcspn(p, ",");
		char		pattern[256];

		if (len < sizeof(pattern))
		{
			memcpy(pattern, p, len);
			pattern[len] = '\0';
			if (statehub_subject_matches(pattern, subject))
			{
				if (strlen(subject) < sizeof(covered_subject))
					strcpy(covered_subject, subject);
				return true;
			}
		}
		p += len;
		if (*p == ',')
			p++;
	}
	return false;
}

/*
 * Whether a rejection is about the stream rather than the event: for a
 * subject the stream covers, "no responders" (it has no leader just now,
 * during an election or while the node holding an R1 stream restarts, or
 * it is missing) or any JetStream error but those that can only be about
 * this one message; or an ack for a subject not known to be the stream's
 * (acked_by_our_stream).  Such an event is not to blame: it is treated
 * like one without an answer (no attempt burnt, nothing overtakes it, the
 * worker backs off and publishes again in id order).
 */
bool
statehub_nats_stream_trouble(const StatehubPubEvent *ev)
{
	if (ev->outcome != STATEHUB_PUB_REJECTED || ev->err_code < 0)
		return false;
	if (ev->err_status == NATS_MISMATCH)
		return true;			/* acked for a subject not known to be ours */
	switch (ev->err_code)
	{
		case JS_MESSAGE_EXCEEDS_MAX_ERR_CODE:
		case JS_STREAM_WRONG_LAST_SEQ_ERR_CODE:
		case JS_STREAM_WRONG_LAST_MSG_ID_ERR_CODE:
		case JS_STREAM_NOT_MATCH_ERR_CODE:
			return false;		/* this message's own */
		default:

			/*
			 * About our stream only if it listens on the subject: else
			 * another stream (or something else) answered, and the event
			 * is to blame, like one no stream listens for.
			 */
			return stream_covers(ev->subject);
	}
}

/* Close the connection, if any.  Safe to call from an exit callback. */
void
statehub_nats_close(void)
{
	/*
	 * A helper thread may still use the connection.  When the process is
	 * exiting there is no waiting for it: everything dies with the process.
	 */
	if (helper.started && proc_exit_inprogress)
		return;
	reap_helper();
	/* no reader thread from here on: the subscriptions can go */
	if (conn != NULL)
		natsConnection_Close(conn);
	close_ack_sub();
	destroy_retired(0);
	if (js != NULL)
	{
		jsCtx_Destroy(js);
		js = NULL;
	}
	if (conn != NULL)
	{
		natsConnection_Destroy(conn);
		conn = NULL;
	}
	/* no handler runs any more; a batch in flight is left unanswered */
	batch_end();
}

/* Largest body the server accepts with our header, or 0 if not connected. */
int64
statehub_nats_max_body(void)
{
	if (conn == NULL)
		return 0;
	return natsConnection_GetMaxPayload(conn) - MSG_HEADER_OVERHEAD;
}

/* The URL of the server we are connected to, masked; "" if none. */
void
statehub_nats_server(char *buf, size_t buflen)
{
	char		url[512];

	buf[0] = '\0';
	if (conn == NULL || natsConnection_GetConnectedUrl(conn, url, sizeof(url)) != NATS_OK)
		return;
	statehub_nats_mask_url(url, buf, buflen);
}

/* Start a batch: a fresh reply token, every event without an answer. */
static void
batch_begin(StatehubPubEvent *events, int nevents)
{
	uint8		random[BATCH_TOKEN_BYTES];

	if (!pg_strong_random(random, sizeof(random)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random reply token for a batch")));
	hex_encode((const char *) random, sizeof(random), batch_token);
	batch_token[sizeof(batch_token) - 1] = '\0';
	batch_events = events;
	batch_nevents = nevents;
	batch_unanswered = nevents;
	for (int i = 0; i < nevents; i++)
		events[i].answered = false;
}

/* Forget the batch: acks still to come for it are dropped when read. */
static void
batch_end(void)
{
	batch_events = NULL;
	batch_nevents = 0;
	batch_unanswered = 0;
}

/*
 * Forget the batch events (if it is still the one in flight).  Replies
 * still to come for it must never be taken for the next batch's: a "no
 * responders" status names no batch.  So an unfinished batch's go to a
 * subscription that no longer exists.
 */
static void
finish_batch(StatehubPubEvent *events)
{
	destroy_spent();
	if (events == batch_events && batch_unanswered > 0 && ack_sub != NULL)
		renew_ack_sub();
	batch_end();
}

/*
 * Read acks of the batch in flight for up to timeout_ms, in slices (see
 * the file header), until every event has one.  Returns NATS_OK once all
 * are in, NATS_TIMEOUT when time ran out, or the subscription's trouble:
 * NATS_CONNECTION_CLOSED as soon as the connection is closed (a node
 * stopped while a batch waited for its acks), so the worker connects to
 * another node instead of waiting for acks that can no longer come.
 */
static natsStatus
wait_for_acks(int timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   Max(timeout_ms, 1));
	natsStatus	s = NATS_OK;

	while (batch_unanswered > 0)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
														   deadline);
		natsMsg    *msg = NULL;

		pgstat_report_wait_start(PG_WAIT_EXTENSION);
		s = natsSubscription_NextMsg(&msg, ack_sub, Max(Min(left, WAIT_SLICE_MS), 1));
		wait_slice_end();
		if (s == NATS_OK)
		{
			take_ack(msg);
			continue;
		}
		if (s == NATS_NO_RESPONDERS)
		{
			/* cnats drops the message itself: which event, see below */
			batch_unanswered--;
			continue;
		}
		if (s == NATS_TIMEOUT && natsConnection_IsClosed(conn))
			return NATS_CONNECTION_CLOSED;
		if (s != NATS_TIMEOUT || left <= WAIT_SLICE_MS)
			return s;
	}

	/*
	 * Every event has its answer.  cnats reads a "no responders" status
	 * itself and reports only that one came, not for which message; those
	 * are the events without a recorded answer, since each publish gets one
	 * reply and an earlier batch's cannot come in here (finish_batch).
	 */
	for (int i = 0; i < batch_nevents; i++)
	{
		StatehubPubEvent *ev = &batch_events[i];

		if (ev->answered)
			continue;
		ev->answered = true;
		reject(ev, NATS_NO_RESPONDERS, 0,
			   "no JetStream stream listens on subject \"%s\"", ev->subject);
	}
	return NATS_OK;
}

/*
 * natsConnection_FlushTimeout for up to timeout_ms, in slices: each slice
 * sends a PING and waits up to WAIT_SLICE_MS for its PONG, which comes
 * behind everything written before it.
 */
static natsStatus
flush_sliced(int timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   Max(timeout_ms, 1));
	natsStatus	s;

	for (;;)
	{
		long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
														   deadline);

		pgstat_report_wait_start(PG_WAIT_EXTENSION);
		s = natsConnection_FlushTimeout(conn, Max(Min(left, WAIT_SLICE_MS), 1));
		wait_slice_end();
		if (s != NATS_TIMEOUT || left <= WAIT_SLICE_MS)
			return s;
	}
}

/*
 * Publish a batch without waiting for its acks; statehub_nats_publish_wait
 * collects them.  Only one batch is in flight at a time: the previous one
 * must have been waited for.  The events array (not the payloads, which
 * cnats copies) must stay valid until then.
 *
 * With flush, the messages are written at once and this waits for a PING
 * round trip (at most timeout_ms); without, cnats' flusher writes them a
 * moment later, while the worker goes on.  STATEHUB_NATS_FAILED means a connection-level failure
 * before every event went out; the batch is then already finished, as by
 * statehub_nats_publish_wait, and each event's outcome is final.
 */
StatehubNatsResult
statehub_nats_publish_async(StatehubPubEvent *events, int nevents,
							bool flush, int timeout_ms,
							char *errbuf, size_t errlen)
{
	StatehubNatsResult result = STATEHUB_NATS_OK;
	natsStatus	s = NATS_OK;
	int			i;

	Assert(batch_events == NULL);
	if (ack_sub == NULL || !statehub_nats_connected())
	{
		snprintf(errbuf, errlen, "not connected to NATS");
		return STATEHUB_NATS_FAILED;
	}
	batch_begin(events, nevents);

	for (i = 0; i < nevents; i++)
	{
		StatehubPubEvent *ev = &events[i];
		natsMsg    *msg = NULL;
		char		reply[sizeof(ack_prefix) + sizeof(batch_token) + 16];

		snprintf(reply, sizeof(reply), "%s.%s.%d", ack_prefix, batch_token, i);
		s = natsMsg_Create(&msg, ev->subject, reply, ev->payload, ev->payload_len);
		if (s == NATS_INVALID_SUBJECT || s == NATS_INVALID_ARG)
		{
			/* the event can never be published: its own fault */
			reject(ev, s, -1, "invalid subject \"%s\"", ev->subject);
			ev->answered = true;
			batch_unanswered--;
			s = NATS_OK;
			continue;
		}
		if (s == NATS_OK)
			s = natsMsgHeader_Set(msg, "Nats-Msg-Id", ev->msg_id);
		if (s == NATS_OK && ev->backfill)
			s = natsMsgHeader_Set(msg, "Statehub-Backfill", "true");
		if (s == NATS_OK)
			s = natsConnection_PublishMsg(conn, msg);
		discard_msg(msg);
		if (s != NATS_OK)
		{
			describe_failure(errbuf, errlen, "could not publish to NATS", s);
			result = STATEHUB_NATS_FAILED;
			break;
		}
	}

	/*
	 * cnats' flusher waits a moment for more before it writes; a batch that
	 * is all there is should not.  A PING makes cnats write at once; its
	 * PONG, one round trip later, comes behind the messages.
	 */
	if (result == STATEHUB_NATS_OK && flush)
	{
		s = flush_sliced(timeout_ms);
		if (s != NATS_OK)
		{
			describe_failure(errbuf, errlen, "could not flush to NATS", s);
			result = STATEHUB_NATS_FAILED;
		}
	}
	destroy_spent();
	if (result != STATEHUB_NATS_OK)
		finish_batch(events);
	return result;
}

/*
 * Wait up to timeout_ms (at least 1) for the acks of the batch that
 * statehub_nats_publish_async sent, then finish it: once this returns no
 * cnats callback touches the events, and each outcome says what became of
 * its event.  STATEHUB_NATS_FAILED means a connection-level failure (acks
 * timed out, connection lost or closed meanwhile): the events still
 * pending were not rejected, they just have no answer.
 */
StatehubNatsResult
statehub_nats_publish_wait(StatehubPubEvent *events, int nevents,
						   int timeout_ms, char *errbuf, size_t errlen)
{
	StatehubNatsResult result = STATEHUB_NATS_OK;
	natsStatus	s;

	if (batch_events != events || ack_sub == NULL)
	{
		/* statehub_nats_close ended it: whatever was not acked is lost */
		snprintf(errbuf, errlen, "the connection to NATS was closed");
		finish_batch(events);
		return STATEHUB_NATS_FAILED;
	}

	s = wait_for_acks(timeout_ms);
	if (s != NATS_OK)
	{
		if (s == NATS_TIMEOUT)
			snprintf(errbuf, errlen,
					 "timed out waiting for JetStream to acknowledge the events");
		else
			describe_failure(errbuf, errlen,
							 "could not wait for JetStream acknowledgements", s);
		result = STATEHUB_NATS_FAILED;
	}
	finish_batch(events);
	return result;
}

/*
 * After an ERROR in the worker's round: whatever batch is still registered
 * is given up (no ack handler touches it any more), and its events simply
 * have no answer.
 */
void
statehub_nats_abandon_batch(void)
{
	batch_end();
}
