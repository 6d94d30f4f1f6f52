/*-------------------------------------------------------------------------
 *
 * nats_client.c
 *		The NATS JetStream side of the delivery worker (cnats); the only
 *		file that includes nats.h.
 *
 * Only the delivery worker calls in here.  The connection, its JetStream
 * context and the lookup table of the batch in flight are this file's
 * statics; the worker closes them in its exit callback.
 *
 * Threads.  cnats runs its own threads (socket reader, flusher, the
 * subscription that receives publish acks, timers).  Two rules follow:
 *
 *	- A cnats callback never calls a PostgreSQL function: no palloc, no
 *	  ereport, no elog, not even PostgreSQL's snprintf.  The ack handler
 *	  only looks the event up in a table built before the batch went out
 *	  (under a pthread mutex), writes its outcome, and copies the server's
 *	  reason with a plain byte loop; the connection callbacks only set a
 *	  flag and the worker's latch.  Everything else (formatting reasons,
 *	  logging) happens in the worker's own thread once the batch is done.
 *
 *	- PostgreSQL's signal handlers must only ever run in the worker's main
 *	  thread.  Every call that may start a cnats thread runs with all
 *	  signals blocked (see BLOCK_SIGNALS), so the threads inherit a fully
 *	  blocked mask and the kernel delivers SIGTERM, SIGHUP and the latch
 *	  signal to the main thread only.
 *
 * Batches.  statehub_nats_publish_async publishes every event of a batch
 * with js_PublishMsgAsync and a Nats-Msg-Id header (the event id) and
 * returns; a batch that is all there is gets a flush round trip, as cnats'
 * flusher would otherwise wait a moment for more.  The worker does its
 * database work meanwhile, then statehub_nats_publish_wait waits for the
 * acks with js_PublishAsyncComplete, up to what is left of publish_timeout.
 * What is still unacknowledged then is taken back with
 * js_PublishAsyncGetPendingList, and a short second js_PublishAsyncComplete
 * waits for ack handlers that were already running, so no callback of the
 * batch can run once it is finished.  One batch at a time is in flight (the
 * worker's ordering argument needs that, and js_PublishAsyncComplete waits
 * for all), so the ack handler's lookup table holds one batch.  A late ack
 * of an earlier batch for the same event id (a re-publish) would still be
 * true: the stream holds that event.
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
#include "lib/stringinfo.h"
#include "storage/latch.h"
#include "miscadmin.h"

#include "nats_client.h"
#include "statehub_events.h"

/* "NATS/1.0\r\n" "Nats-Msg-Id: " <id> "\r\n" "\r\n": counted in max_payload */
#define MSG_HEADER_OVERHEAD (10 + 13 + STATEHUB_MSG_ID_LEN + 2 + 2)

/* Upper bound of async publishes in flight; batch_size's maximum. */
#define MAX_PENDING_PUBLISHES 100000

/* How long to wait for ack handlers already running when a batch gave up. */
#define QUIESCE_TIMEOUT_MS 2000

#define MAX_SERVERS 32

static natsConnection *conn = NULL;
static jsCtx *js = NULL;


/*
 * The batch in flight.  batch_slots is an open-addressing table of
 * (index + 1) keyed by the event id's text; batch_mutex guards all of it
 * against the ack handler.
 */
static pthread_mutex_t batch_mutex = PTHREAD_MUTEX_INITIALIZER;
static StatehubPubEvent *batch_events = NULL;
static int	batch_nevents = 0;
static int *batch_slots = NULL;
static uint32 batch_nslots = 0;		/* a power of two */

static void batch_end(void);

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

/* FNV-1a over an event id's text.  Pure C, callable from cnats threads. */
static uint32
id_hash(const char *id)
{
	uint32		h = 2166136261u;
	int			i;

	for (i = 0; i < STATEHUB_MSG_ID_LEN && id[i] != '\0'; i++)
	{
		h ^= (unsigned char) id[i];
		h *= 16777619u;
	}
	return h;
}

/*
 * Index of the batch event with this id, preferring one still pending
 * (the same id twice in a batch gets two acks), or -1.  Caller holds
 * batch_mutex.
 */
static int
batch_lookup(const char *id)
{
	uint32		mask;
	uint32		pos;
	int			first = -1;

	if (batch_events == NULL || batch_nslots == 0)
		return -1;
	mask = batch_nslots - 1;
	for (pos = id_hash(id) & mask; batch_slots[pos] != 0; pos = (pos + 1) & mask)
	{
		int			i = batch_slots[pos] - 1;

		if (memcmp(batch_events[i].msg_id, id, STATEHUB_MSG_ID_LEN) != 0)
			continue;
		if (batch_events[i].outcome == STATEHUB_PUB_PENDING)
			return i;
		if (first < 0)
			first = i;
	}
	return first;
}

/*
 * JetStream's answer to one async publish, on a cnats thread.  Only looks
 * up the event and records the outcome; an ack always wins over an
 * earlier rejection of the same id.  The message is ours to destroy.
 */
static void
ack_handler(jsCtx *ctx, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae,
			void *closure)
{
	const char *id = NULL;

	if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK && id != NULL)
	{
		int			i;

		pthread_mutex_lock(&batch_mutex);
		i = batch_lookup(id);
		if (i >= 0)
		{
			StatehubPubEvent *ev = &batch_events[i];

			if (pa != NULL)
				ev->outcome = STATEHUB_PUB_ACKED;
			else if (pae != NULL && ev->outcome == STATEHUB_PUB_PENDING)
			{
				/*
				 * No responders: nothing listens on the subject (no stream
				 * covers it).  An error code: the JetStream API refused this
				 * message.  Anything else (a timeout, a broken connection)
				 * is not the event's fault and leaves it pending.
				 */
				if (pae->Err == NATS_NO_RESPONDERS || pae->ErrCode != 0)
				{
					ev->err_status = (int) pae->Err;
					ev->err_code = (int) pae->ErrCode;
					copy_text(ev->error, sizeof(ev->error), pae->ErrText);
					ev->outcome = STATEHUB_PUB_REJECTED;
				}
			}
		}
		pthread_mutex_unlock(&batch_mutex);
	}
	natsMsg_Destroy(msg);
}

/* Connection callbacks (cnats threads): a flag and a latch, nothing else. */
static void
disconnected_cb(natsConnection *nc, void *closure)
{
	SetLatch(MyLatch);
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
	const char *last = nats_GetLastError(NULL);

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
	if (s == NATS_OK && (nonempty(statehub_tls_ca_file) || nonempty(statehub_tls_cert_file)))
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
 * Connect to the configured servers and open the JetStream context.  On
 * failure errbuf says why (secrets scrubbed) and nothing stays open.
 */
StatehubNatsResult
statehub_nats_connect(char *errbuf, size_t errlen)
{
	natsOptions *opts = NULL;
	jsOptions	jo;
	natsStatus	s;
	const char *what;
	sigset_t	saved;

	statehub_nats_close();

	BLOCK_SIGNALS(saved);
	s = build_options(&opts, &what);
	if (s == NATS_OK)
	{
		what = "could not connect to NATS";
		s = natsConnection_Connect(&conn, opts);
	}
	if (s == NATS_OK)
	{
		jsOptions_Init(&jo);
		jo.Wait = statehub_publish_timeout;
		jo.PublishAsync.MaxPending = MAX_PENDING_PUBLISHES;
		jo.PublishAsync.AckHandler = ack_handler;
		what = "could not open a JetStream context";
		s = natsConnection_JetStream(&js, conn, &jo);
	}
	RESTORE_SIGNALS(saved);
	natsOptions_Destroy(opts);

	if (s != NATS_OK)
	{
		describe_failure(errbuf, errlen, what, s);
		statehub_nats_close();
		return STATEHUB_NATS_FAILED;
	}
	return STATEHUB_NATS_OK;
}

bool
statehub_nats_connected(void)
{
	return conn != NULL && natsConnection_Status(conn) == NATS_CONN_STATUS_CONNECTED;
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
 * may not be created is not a connection failure: *missing is set and
 * events are then rejected one by one (no responders).
 */
StatehubNatsResult
statehub_nats_check_stream(char *errbuf, size_t errlen, int64 *dedup_window_us,
						   bool *missing)
{
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;
	sigset_t	saved;
	char	   *list;
	char	   *subjects[MAX_SERVERS];
	int			nsubjects;
	bool		created = false;
	const char *what = "could not look up the stream";

	*dedup_window_us = 0;
	*missing = false;
	if (js == NULL)
	{
		snprintf(errbuf, errlen, "not connected to NATS");
		return STATEHUB_NATS_FAILED;
	}

	list = pstrdup(statehub_stream_subjects);
	nsubjects = split_list(list, subjects, MAX_SERVERS);

	BLOCK_SIGNALS(saved);
	s = js_GetStreamInfo(&si, js, statehub_stream_name, NULL, &jerr);
	if (s == NATS_NOT_FOUND && statehub_stream_create)
	{
		jsStreamConfig cfg;

		jsStreamConfig_Init(&cfg);
		cfg.Name = statehub_stream_name;
		cfg.Subjects = (const char **) subjects;
		cfg.SubjectsLen = nsubjects;
		cfg.Storage = js_FileStorage;
		cfg.Replicas = statehub_stream_replicas;
		cfg.Duplicates = (int64) statehub_dedup_window * INT64CONST(1000000000);
		s = js_AddStream(&si, js, &cfg, NULL, &jerr);
		if (s != NATS_OK)
			what = "could not create the stream";
		else
			created = true;
	}
	RESTORE_SIGNALS(saved);
	pfree(list);

	if (created)
		ereport(LOG,
				(errmsg("created NATS JetStream stream \"%s\"", statehub_stream_name)));

	if (s == NATS_NOT_FOUND)
	{
		*missing = true;
		snprintf(errbuf, errlen, "stream \"%s\" does not exist and statehub_events.stream_create is off",
				 statehub_stream_name);
		return STATEHUB_NATS_OK;
	}
	if (s != NATS_OK)
	{
		describe_failure(errbuf, errlen, what, s);
		return STATEHUB_NATS_FAILED;
	}
	if (si->Config != NULL)
		*dedup_window_us = si->Config->Duplicates / 1000;
	jsStreamInfo_Destroy(si);
	return STATEHUB_NATS_OK;
}

/* Close the connection, if any.  Safe to call from an exit callback. */
void
statehub_nats_close(void)
{
	if (js != NULL)
	{
		jsCtx_Destroy(js);
		js = NULL;
	}
	if (conn != NULL)
	{
		sigset_t	saved;

		BLOCK_SIGNALS(saved);
		natsConnection_Destroy(conn);
		RESTORE_SIGNALS(saved);
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

/* Publish the batch's lookup table, sized for nevents, under the mutex. */
static bool
batch_begin(StatehubPubEvent *events, int nevents)
{
	uint32		nslots = 16;
	int			i;

	while (nslots < (uint32) nevents * 2)
		nslots <<= 1;

	pthread_mutex_lock(&batch_mutex);
	if (nslots > batch_nslots)
	{
		int		   *slots = realloc(batch_slots, nslots * sizeof(int));

		if (slots == NULL)
		{
			pthread_mutex_unlock(&batch_mutex);
			return false;
		}
		batch_slots = slots;
		batch_nslots = nslots;
	}
	memset(batch_slots, 0, batch_nslots * sizeof(int));
	for (i = 0; i < nevents; i++)
	{
		uint32		mask = batch_nslots - 1;
		uint32		pos = id_hash(events[i].msg_id) & mask;

		while (batch_slots[pos] != 0)
			pos = (pos + 1) & mask;
		batch_slots[pos] = i + 1;
	}
	batch_events = events;
	batch_nevents = nevents;
	pthread_mutex_unlock(&batch_mutex);
	return true;
}

static void
batch_end(void)
{
	pthread_mutex_lock(&batch_mutex);
	batch_events = NULL;
	batch_nevents = 0;
	pthread_mutex_unlock(&batch_mutex);
}

/* Turn what the ack handler recorded into a reason (worker thread). */
static void
describe_rejection(StatehubPubEvent *ev)
{
	char		text[STATEHUB_PUB_ERROR_LEN];

	if (ev->err_status == NATS_NO_RESPONDERS)
		snprintf(ev->error, sizeof(ev->error),
				 "no JetStream stream listens on subject \"%s\"", ev->subject);
	else
	{
		strlcpy(text, ev->error, sizeof(text));
		snprintf(ev->error, sizeof(ev->error),
				 "JetStream rejected the event: %s (error code %d)",
				 text, ev->err_code);
	}
}

/*
 * Take back what is still unanswered, then wait for ack handlers that are
 * already running, so none of them touches the batch once it is finished.
 * Caller has blocked signals.
 */
static void
abandon_pending(void)
{
	jsPubOptions po;
	natsMsgList pending;

	if (js_PublishAsyncGetPendingList(&pending, js) == NATS_OK)
		natsMsgList_Destroy(&pending);
	jsPubOptions_Init(&po);
	po.MaxWait = QUIESCE_TIMEOUT_MS;
	(void) js_PublishAsyncComplete(js, &po);
}

/* Forget the batch (no handler sees it any more); word its rejections. */
static void
finish_batch(StatehubPubEvent *events, int nevents)
{
	int			i;

	batch_end();
	for (i = 0; i < nevents; i++)
	{
		if (events[i].outcome == STATEHUB_PUB_REJECTED && events[i].err_code >= 0)
			describe_rejection(&events[i]);
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
	sigset_t	saved;
	int			i;

	Assert(batch_events == NULL);
	if (js == NULL || !statehub_nats_connected())
	{
		snprintf(errbuf, errlen, "not connected to NATS");
		return STATEHUB_NATS_FAILED;
	}
	if (!batch_begin(events, nevents))
	{
		snprintf(errbuf, errlen, "out of memory");
		return STATEHUB_NATS_FAILED;
	}

	BLOCK_SIGNALS(saved);
	for (i = 0; i < nevents; i++)
	{
		StatehubPubEvent *ev = &events[i];
		natsMsg    *msg = NULL;

		s = natsMsg_Create(&msg, ev->subject, NULL, ev->payload, ev->payload_len);
		if (s == NATS_INVALID_SUBJECT || s == NATS_INVALID_ARG)
		{
			/* the event can never be published: its own fault */
			ev->err_status = (int) s;
			ev->err_code = -1;
			snprintf(ev->error, sizeof(ev->error), "invalid subject \"%s\"",
					 ev->subject);
			ev->outcome = STATEHUB_PUB_REJECTED;
			s = NATS_OK;
			continue;
		}
		if (s == NATS_OK)
			s = natsMsgHeader_Set(msg, "Nats-Msg-Id", ev->msg_id);
		if (s == NATS_OK)
			s = js_PublishMsgAsync(js, &msg, NULL);
		/* on success the library owns the message and msg is NULL */
		natsMsg_Destroy(msg);
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
		s = natsConnection_FlushTimeout(conn, Max(timeout_ms, 1));
		if (s != NATS_OK)
		{
			describe_failure(errbuf, errlen, "could not flush to NATS", s);
			result = STATEHUB_NATS_FAILED;
		}
	}
	if (result != STATEHUB_NATS_OK)
		abandon_pending();
	RESTORE_SIGNALS(saved);

	if (result != STATEHUB_NATS_OK)
		finish_batch(events, nevents);
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
	jsPubOptions po;
	natsStatus	s;
	sigset_t	saved;

	if (batch_events != events || js == NULL)
	{
		/* statehub_nats_close finished it: whatever was not acked is lost */
		snprintf(errbuf, errlen, "the connection to NATS was closed");
		finish_batch(events, nevents);
		return STATEHUB_NATS_FAILED;
	}

	BLOCK_SIGNALS(saved);
	jsPubOptions_Init(&po);
	po.MaxWait = Max(timeout_ms, 1);
	s = js_PublishAsyncComplete(js, &po);
	if (s != NATS_OK)
	{
		if (s == NATS_TIMEOUT)
			snprintf(errbuf, errlen,
					 "timed out waiting for JetStream to acknowledge the events");
		else
			describe_failure(errbuf, errlen,
							 "could not wait for JetStream acknowledgements", s);
		result = STATEHUB_NATS_FAILED;
		abandon_pending();
	}
	RESTORE_SIGNALS(saved);
	finish_batch(events, nevents);
	return result;
}
