/*-------------------------------------------------------------------------
 *
 * nats_consume.c
 *		Test helper: read a JetStream stream back and print every message
 *		as one JSON line, so TAP tests and benchmarks can check what the
 *		delivery worker really put in the stream.
 *
 * Usage:
 *	nats_consume [options] URL STREAM
 *
 *	(default)	read every message the stream holds when the program
 *				starts (up to its last sequence at that moment), print
 *				them, exit 0
 *	-n COUNT	instead follow the stream until COUNT messages arrived
 *	-f SUBJECT	only messages on this subject (filter, wildcards allowed)
 *	-t MS		idle timeout: give up when no message arrived for MS
 *				milliseconds while more were expected (exit 2); default
 *				10000
 *	-d NAME		use a durable push consumer NAME (acks each message)
 *				instead of an ephemeral ordered consumer
 *	-i			print the stream's state as one JSON line and exit:
 *				{"stream": S, "exists": true, "messages": N,
 *				 "first_seq": A, "last_seq": B, "duplicate_window_us": D,
 *				 "subjects": [...]}
 *				or {"stream": S, "exists": false, "messages": 0}
 *	-S SUBJECTS	create the stream (file storage) on these comma-separated
 *				subjects, print its state like -i, and exit
 *	-D SECONDS	with -S: the stream's duplicate window
 *	-R REPLICAS	with -S: the stream's replicas (a cluster's R3)
 *	-X			delete the stream (as a DBA would with the nats CLI) and exit
 *	-u USER -p PASSWORD		user/password authentication
 *	-k TOKEN	token authentication
 *	-C CAFILE	TLS, verifying the server with this CA certificate
 *
 * Each message is printed as
 *	{"subject": S, "headers": {"Nats-Msg-Id": ID, ...}, "body": B,
 *	 "received_at_us": T, "seq": N}
 * where B is the exact body as a JSON string (bytes >= 0x80 are passed
 * through, so a UTF-8 body decodes back to itself) and T is the Unix time
 * in microseconds at which the message was taken from the subscription.
 * A header with several values prints its first one.
 *
 * Errors go to stderr; the exit status is 0 on success, 1 on a usage or
 * NATS error, 2 on an idle timeout.
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
#include <unistd.h>

#include <nats/nats.h>

typedef struct Options
{
	const char *url;
	const char *stream;
	const char *filter;
	const char *durable;
	const char *user;
	const char *password;
	const char *token;
	const char *ca_file;
	const char *create_subjects;
	int64_t		dup_window_s;
	int64_t		replicas;
	int64_t		count;			/* -1: read what the stream holds now */
	int64_t		idle_ms;
	bool		info;
	bool		delete_stream;
} Options;

static void
usage(void)
{
	fprintf(stderr,
			"usage: nats_consume [-n COUNT] [-f SUBJECT] [-t IDLE_MS] [-d DURABLE] [-i]\n"
			"                    [-S SUBJECTS [-D DUP_SECONDS] [-R REPLICAS]] [-u USER -p PASSWORD]\n"
			"                    [-k TOKEN] [-C CAFILE] [-X] URL STREAM\n");
	exit(1);
}

static void
die_status(const char *what, natsStatus s, jsErrCode jerr)
{
	fprintf(stderr, "nats_consume: %s: %s (%d)", what, natsStatus_GetText(s), (int) s);
	if (jerr != 0)
		fprintf(stderr, ", JetStream error %d", (int) jerr);
	fprintf(stderr, "\n");
	nats_PrintLastErrorStack(stderr);
	exit(1);
}

static int64_t
now_us(void)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	return (int64_t) tv.tv_sec * 1000000 + tv.tv_usec;
}

/* Print len bytes as a JSON string literal. */
static void
print_json_string(const char *s, int len)
{
	int			i;

	putchar('"');
	for (i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		switch (c)
		{
			case '"':
				fputs("\\\"", stdout);
				break;
			case '\\':
				fputs("\\\\", stdout);
				break;
			case '\n':
				fputs("\\n", stdout);
				break;
			case '\r':
				fputs("\\r", stdout);
				break;
			case '\t':
				fputs("\\t", stdout);
				break;
			default:
				if (c < 0x20 || c == 0x7f)
					printf("\\u%04x", c);
				else
					putchar(c);
		}
	}
	putchar('"');
}

static void
print_cstring(const char *s)
{
	print_json_string(s, (int) strlen(s));
}

static void
print_message(natsMsg *msg)
{
	int64_t		received = now_us();
	const char **keys = NULL;
	int			nkeys = 0;
	jsMsgMetaData *meta = NULL;
	uint64_t	seq = 0;
	int			i;

	if (natsMsg_GetMetaData(&meta, msg) == NATS_OK)
	{
		seq = meta->Sequence.Stream;
		jsMsgMetaData_Destroy(meta);
	}

	fputs("{\"subject\": ", stdout);
	print_cstring(natsMsg_GetSubject(msg));
	fputs(", \"headers\": {", stdout);
	if (natsMsgHeader_Keys(msg, &keys, &nkeys) == NATS_OK)
	{
		for (i = 0; i < nkeys; i++)
		{
			const char *value = NULL;

			if (natsMsgHeader_Get(msg, keys[i], &value) != NATS_OK || value == NULL)
				value = "";
			if (i > 0)
				fputs(", ", stdout);
			print_cstring(keys[i]);
			fputs(": ", stdout);
			print_cstring(value);
		}
		free((void *) keys);
	}
	fputs("}, \"body\": ", stdout);
	print_json_string(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
	printf(", \"received_at_us\": %" PRId64 ", \"seq\": %" PRIu64 "}\n",
		   received, seq);
}

static void
print_stream_info(const char *stream, jsStreamInfo *si)
{
	int			i;

	if (si == NULL)
	{
		fputs("{\"stream\": ", stdout);
		print_cstring(stream);
		fputs(", \"exists\": false, \"messages\": 0}\n", stdout);
		return;
	}
	fputs("{\"stream\": ", stdout);
	print_cstring(stream);
	printf(", \"exists\": true, \"messages\": %" PRIu64 ", \"first_seq\": %" PRIu64
		   ", \"last_seq\": %" PRIu64 ", \"duplicate_window_us\": %" PRId64
		   ", \"subjects\": [",
		   si->State.Msgs, si->State.FirstSeq, si->State.LastSeq,
		   si->Config->Duplicates / 1000);
	for (i = 0; i < si->Config->SubjectsLen; i++)
	{
		if (i > 0)
			fputs(", ", stdout);
		print_cstring(si->Config->Subjects[i]);
	}
	fputs("]}\n", stdout);
}

/* Returns the stream's info, or NULL when the stream does not exist. */
static jsStreamInfo *
get_stream_info(jsCtx *js, const char *stream)
{
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;

	s = js_GetStreamInfo(&si, js, stream, NULL, &jerr);
	if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr)
		return NULL;
	if (s != NATS_OK)
		die_status("could not get stream info", s, jerr);
	return si;
}

static void
create_stream(jsCtx *js, const Options *o)
{
	jsStreamConfig cfg;
	jsStreamInfo *si = NULL;
	jsErrCode	jerr = 0;
	const char *subjects[64];
	char	   *copy = strdup(o->create_subjects);
	char	   *tok;
	char	   *save = NULL;
	int			n = 0;
	natsStatus	s;

	for (tok = strtok_r(copy, ",", &save); tok != NULL && n < 64;
		 tok = strtok_r(NULL, ",", &save))
		subjects[n++] = tok;

	jsStreamConfig_Init(&cfg);
	cfg.Name = o->stream;
	cfg.Subjects = subjects;
	cfg.SubjectsLen = n;
	cfg.Storage = js_FileStorage;
	if (o->dup_window_s > 0)
		cfg.Duplicates = o->dup_window_s * 1000000000LL;
	if (o->replicas > 0)
		cfg.Replicas = o->replicas;

	s = js_AddStream(&si, js, &cfg, NULL, &jerr);
	if (s != NATS_OK)
		die_status("could not create stream", s, jerr);
	print_stream_info(o->stream, si);
	jsStreamInfo_Destroy(si);
	free(copy);
}

/*
 * Read messages and print them.  Without -n, stop at the stream's last
 * sequence as it was when we started (the consumer sees the filtered
 * subset, so also stop when the server says nothing is pending).
 */
static int
consume(jsCtx *js, const Options *o)
{
	jsSubOptions so;
	natsSubscription *sub = NULL;
	jsErrCode	jerr = 0;
	natsStatus	s;
	uint64_t	last_seq = 0;
	int64_t		received = 0;

	if (o->count < 0)
	{
		jsStreamInfo *si = get_stream_info(js, o->stream);

		if (si == NULL)
		{
			fprintf(stderr, "nats_consume: stream \"%s\" does not exist\n", o->stream);
			return 1;
		}
		last_seq = si->State.LastSeq;
		if (si->State.Msgs == 0)
		{
			jsStreamInfo_Destroy(si);
			return 0;
		}
		jsStreamInfo_Destroy(si);
	}
	else if (o->count == 0)
		return 0;

	jsSubOptions_Init(&so);
	so.Stream = o->stream;
	so.Config.DeliverPolicy = js_DeliverAll;
	if (o->durable != NULL)
	{
		so.Config.Durable = o->durable;
		so.Config.AckPolicy = js_AckExplicit;
		so.ManualAck = true;
	}
	else
		so.Ordered = true;

	s = js_SubscribeSync(&sub, js, o->filter ? o->filter : ">", NULL, &so, &jerr);
	if (s != NATS_OK)
		die_status("could not subscribe", s, jerr);
	/* a large stream arrives faster than we print: don't drop anything */
	natsSubscription_SetPendingLimits(sub, -1, -1);

	for (;;)
	{
		natsMsg    *msg = NULL;
		jsMsgMetaData *meta = NULL;
		uint64_t	seq = 0;
		uint64_t	pending = 1;

		s = natsSubscription_NextMsg(&msg, sub, o->idle_ms);
		if (s == NATS_TIMEOUT)
		{
			fflush(stdout);
			fprintf(stderr, "nats_consume: no message for %" PRId64 " ms after %" PRId64 " messages\n",
					o->idle_ms, received);
			natsSubscription_Destroy(sub);
			return 2;
		}
		if (s != NATS_OK)
			die_status("could not receive", s, 0);

		print_message(msg);
		received++;
		if (natsMsg_GetMetaData(&meta, msg) == NATS_OK)
		{
			seq = meta->Sequence.Stream;
			pending = meta->NumPending;
			jsMsgMetaData_Destroy(meta);
		}
		if (o->durable != NULL)
			natsMsg_Ack(msg, NULL);
		natsMsg_Destroy(msg);

		if (o->count >= 0 && received >= o->count)
			break;
		if (o->count < 0 && (seq >= last_seq || pending == 0))
			break;
	}
	fflush(stdout);
	natsSubscription_Unsubscribe(sub);
	natsSubscription_Destroy(sub);
	return 0;
}

int
main(int argc, char **argv)
{
	Options		o = {0};
	natsOptions *nopts = NULL;
	natsConnection *conn = NULL;
	jsCtx	   *js = NULL;
	natsStatus	s;
	int			c;
	int			rc = 0;

	o.count = -1;
	o.idle_ms = 10000;

	while ((c = getopt(argc, argv, "n:f:t:d:iS:D:R:u:p:k:C:X")) != -1)
	{
		switch (c)
		{
			case 'n':
				o.count = strtoll(optarg, NULL, 10);
				break;
			case 'f':
				o.filter = optarg;
				break;
			case 't':
				o.idle_ms = strtoll(optarg, NULL, 10);
				break;
			case 'd':
				o.durable = optarg;
				break;
			case 'i':
				o.info = true;
				break;
			case 'X':
				o.delete_stream = true;
				break;
			case 'S':
				o.create_subjects = optarg;
				break;
			case 'D':
				o.dup_window_s = strtoll(optarg, NULL, 10);
				break;
			case 'R':
				o.replicas = strtoll(optarg, NULL, 10);
				break;
			case 'u':
				o.user = optarg;
				break;
			case 'p':
				o.password = optarg;
				break;
			case 'k':
				o.token = optarg;
				break;
			case 'C':
				o.ca_file = optarg;
				break;
			default:
				usage();
		}
	}
	if (argc - optind != 2)
		usage();
	o.url = argv[optind];
	o.stream = argv[optind + 1];

	/* unbuffered enough for a reader that follows us line by line */
	setvbuf(stdout, NULL, _IOLBF, 0);

	if ((s = natsOptions_Create(&nopts)) != NATS_OK ||
		(s = natsOptions_SetURL(nopts, o.url)) != NATS_OK ||
		(s = natsOptions_SetTimeout(nopts, 5000)) != NATS_OK ||
		(s = natsOptions_SetMaxReconnect(nopts, -1)) != NATS_OK)
		die_status("could not set options", s, 0);
	if (o.user != NULL &&
		(s = natsOptions_SetUserInfo(nopts, o.user, o.password)) != NATS_OK)
		die_status("could not set user", s, 0);
	if (o.token != NULL &&
		(s = natsOptions_SetToken(nopts, o.token)) != NATS_OK)
		die_status("could not set token", s, 0);
	if (o.ca_file != NULL &&
		((s = natsOptions_SetSecure(nopts, true)) != NATS_OK ||
		 (s = natsOptions_LoadCATrustedCertificates(nopts, o.ca_file)) != NATS_OK))
		die_status("could not set TLS", s, 0);

	if ((s = natsConnection_Connect(&conn, nopts)) != NATS_OK)
		die_status("could not connect", s, 0);
	if ((s = natsConnection_JetStream(&js, conn, NULL)) != NATS_OK)
		die_status("could not get a JetStream context", s, 0);

	if (o.delete_stream)
	{
		jsErrCode	jerr = 0;

		if ((s = js_DeleteStream(js, o.stream, NULL, &jerr)) != NATS_OK)
			die_status("could not delete stream", s, jerr);
	}
	else if (o.create_subjects != NULL)
		create_stream(js, &o);
	else if (o.info)
	{
		jsStreamInfo *si = get_stream_info(js, o.stream);

		print_stream_info(o.stream, si);
		if (si != NULL)
			jsStreamInfo_Destroy(si);
	}
	else
		rc = consume(js, &o);

	jsCtx_Destroy(js);
	natsConnection_Destroy(conn);
	natsOptions_Destroy(nopts);
	nats_Close();
	return rc;
}
