/*-------------------------------------------------------------------------
 *
 * nats_publish_raw.c
 *		Benchmark baseline: the fastest a plain cnats program publishes
 *		envelope-sized messages to a JetStream file-storage stream, with a
 *		unique Nats-Msg-Id each and every ack awaited.  bench/drain
 *		compares the delivery worker's drain rate with this figure.
 *
 * Usage:
 *	nats_publish_raw [-s SUBJECT] [-S STREAM_SUBJECTS] [-b BYTES]
 *					 [-P MAX_PENDING] URL STREAM COUNT
 *
 *	-s SUBJECT	subject to publish on (default org.statehub.bench.raw)
 *	-S SUBJECTS	subjects of the stream when it is created here (default
 *				org.statehub.>); an existing stream is used as it is
 *	-b BYTES	payload size (default 370, about an activity-core envelope)
 *	-P N		most publishes awaiting their ack at once (default 0:
 *				cnats's default)
 *
 * Prints one JSON line:
 *	{"messages": N, "errors": E, "seconds": S, "msgs_per_s": R}
 * Exit status 0 when every message was acked, 1 otherwise.
 *
 *-------------------------------------------------------------------------
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>

static int64_t ack_errors = 0;

static void
die_status(const char *what, natsStatus s, jsErrCode jerr)
{
	fprintf(stderr, "nats_publish_raw: %s: %s (%d)", what, natsStatus_GetText(s), (int) s);
	if (jerr != 0)
		fprintf(stderr, ", JetStream error %d", (int) jerr);
	fprintf(stderr, "\n");
	nats_PrintLastErrorStack(stderr);
	exit(1);
}

static double
now_s(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return tv.tv_sec + tv.tv_usec / 1e6;
}

/* Runs on a cnats thread: count, nothing else. */
static void
on_ack_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
	(void) js;
	(void) pae;
	(void) closure;
	__atomic_add_fetch(&ack_errors, 1, __ATOMIC_RELAXED);
}

static void
ensure_stream(jsCtx *js, const char *stream, const char *subjects_csv)
{
	jsStreamInfo *si = NULL;
	jsStreamConfig cfg;
	jsErrCode	jerr = 0;
	const char *subjects[64];
	char	   *copy;
	char	   *tok;
	char	   *save = NULL;
	int			n = 0;
	natsStatus	s;

	s = js_GetStreamInfo(&si, js, stream, NULL, &jerr);
	if (s == NATS_OK)
	{
		jsStreamInfo_Destroy(si);
		return;
	}
	if (s != NATS_NOT_FOUND && jerr != JSStreamNotFoundErr)
		die_status("could not get stream info", s, jerr);

	copy = strdup(subjects_csv);
	for (tok = strtok_r(copy, ",", &save); tok != NULL && n < 64;
		 tok = strtok_r(NULL, ",", &save))
		subjects[n++] = tok;
	jsStreamConfig_Init(&cfg);
	cfg.Name = stream;
	cfg.Subjects = subjects;
	cfg.SubjectsLen = n;
	cfg.Storage = js_FileStorage;
	jerr = 0;
	s = js_AddStream(&si, js, &cfg, NULL, &jerr);
	if (s != NATS_OK)
		die_status("could not create stream", s, jerr);
	jsStreamInfo_Destroy(si);
	free(copy);
}

/*
 * An envelope-shaped body of exactly size bytes (when size allows): the
 * id, type and timestamp fields a real envelope has, padded in attributes.
 */
static int
build_payload(char *buf, int size, const char *id, const char *subject)
{
	int			len;
	int			pad;

	len = snprintf(buf, size + 1,
				   "{\"id\": \"%s\", \"type\": \"%s\", \"version\": \"1.0\", "
				   "\"timestamp\": \"2026-01-01T00:00:00.000000Z\", "
				   "\"publisher\": \"the-custodian/state-hub\", "
				   "\"attributes\": {\"id\": 1, \"status\": \"", id, subject);
	if (len > size)
		return size;
	pad = size - len - 3;
	if (pad > 0)
	{
		memset(buf + len, 'x', pad);
		len += pad;
	}
	if (size - len >= 3)
	{
		memcpy(buf + len, "\"}}", 3);
		len += 3;
	}
	buf[len] = '\0';
	return len;
}

int
main(int argc, char **argv)
{
	const char *subject = "org.statehub.bench.raw";
	const char *stream_subjects = "org.statehub.>";
	int			size = 370;
	int64_t		max_pending = 0;
	const char *url;
	const char *stream;
	int64_t		count;
	natsConnection *conn = NULL;
	jsCtx	   *js = NULL;
	jsOptions	jo;
	jsPubOptions po;
	natsStatus	s;
	char	   *payload;
	char		prefix[32];
	double		start;
	double		elapsed;
	int64_t		i;
	int			c;

	while ((c = getopt(argc, argv, "s:S:b:P:")) != -1)
	{
		switch (c)
		{
			case 's':
				subject = optarg;
				break;
			case 'S':
				stream_subjects = optarg;
				break;
			case 'b':
				size = atoi(optarg);
				break;
			case 'P':
				max_pending = strtoll(optarg, NULL, 10);
				break;
			default:
				fprintf(stderr, "usage: nats_publish_raw [-s SUBJECT] [-S STREAM_SUBJECTS] [-b BYTES] [-P MAX_PENDING] URL STREAM COUNT\n");
				return 1;
		}
	}
	if (argc - optind != 3 || size < 16)
	{
		fprintf(stderr, "usage: nats_publish_raw [-s SUBJECT] [-S STREAM_SUBJECTS] [-b BYTES] [-P MAX_PENDING] URL STREAM COUNT\n");
		return 1;
	}
	url = argv[optind];
	stream = argv[optind + 1];
	count = strtoll(argv[optind + 2], NULL, 10);

	if ((s = natsConnection_ConnectTo(&conn, url)) != NATS_OK)
		die_status("could not connect", s, 0);

	jsOptions_Init(&jo);
	jo.PublishAsync.ErrHandler = on_ack_error;
	if (max_pending > 0)
		jo.PublishAsync.MaxPending = max_pending;
	if ((s = natsConnection_JetStream(&js, conn, &jo)) != NATS_OK)
		die_status("could not get a JetStream context", s, 0);
	ensure_stream(js, stream, stream_subjects);

	/* ids unique across runs against the same stream: pid and time prefix */
	snprintf(prefix, sizeof(prefix), "%08x-%04x",
			 (unsigned) time(NULL), (unsigned) getpid() & 0xffff);
	payload = malloc(size + 64);

	jsPubOptions_Init(&po);
	start = now_s();
	for (i = 0; i < count; i++)
	{
		natsMsg    *msg = NULL;
		char		id[64];
		int			len;

		snprintf(id, sizeof(id), "%s-4000-8000-%012" PRIx64, prefix, (uint64_t) i);
		len = build_payload(payload, size, id, subject);
		if ((s = natsMsg_Create(&msg, subject, NULL, payload, len)) != NATS_OK ||
			(s = natsMsgHeader_Set(msg, "Nats-Msg-Id", id)) != NATS_OK)
			die_status("could not build message", s, 0);
		s = js_PublishMsgAsync(js, &msg, &po);
		if (s != NATS_OK)
			die_status("could not publish", s, 0);
	}
	{
		jsPubOptions wo;

		jsPubOptions_Init(&wo);
		wo.MaxWait = 120000;
		if ((s = js_PublishAsyncComplete(js, &wo)) != NATS_OK)
			die_status("acks did not all arrive", s, 0);
	}
	elapsed = now_s() - start;

	printf("{\"messages\": %" PRId64 ", \"errors\": %" PRId64
		   ", \"seconds\": %.3f, \"msgs_per_s\": %.0f}\n",
		   count, __atomic_load_n(&ack_errors, __ATOMIC_RELAXED),
		   elapsed, elapsed > 0 ? count / elapsed : 0.0);

	free(payload);
	jsCtx_Destroy(js);
	natsConnection_Destroy(conn);
	nats_Close();
	return __atomic_load_n(&ack_errors, __ATOMIC_RELAXED) == 0 ? 0 : 1;
}
