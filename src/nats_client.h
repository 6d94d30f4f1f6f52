/*-------------------------------------------------------------------------
 *
 * nats_client.h
 *		The delivery worker's view of NATS JetStream: connect, make sure the
 *		stream exists, publish a batch asynchronously and report each
 *		event's outcome.
 *
 * Nothing here exposes a cnats type: nats_client.c is the only file that
 * includes nats.h.  The connection lives in that file's statics and exists
 * only in the delivery worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef STATEHUB_NATS_CLIENT_H
#define STATEHUB_NATS_CLIENT_H

#include "postgres.h"

#include "datatype/timestamp.h"

/* Text form of a UUID, the Nats-Msg-Id of an event. */
#define STATEHUB_MSG_ID_LEN 36

/* Room for a per-event rejection reason written by a cnats thread. */
#define STATEHUB_PUB_ERROR_LEN 160

/* Outcome of one event of a batch. */
typedef enum StatehubPubOutcome
{
	STATEHUB_PUB_PENDING = 0,	/* no answer (yet): connection-level trouble */
	STATEHUB_PUB_ACKED,			/* stored in the stream (or a duplicate) */
	STATEHUB_PUB_REJECTED		/* refused for this event: retry later */
} StatehubPubOutcome;

/*
 * One event of a batch.  The worker fills the first fields; outcome and
 * error are written by cnats threads while the batch is in flight and are
 * read by the worker only after statehub_nats_publish_wait returned (or
 * statehub_nats_publish_async failed).
 */
typedef struct StatehubPubEvent
{
	const char *subject;		/* NUL-terminated */
	const char *payload;
	int			payload_len;
	char		msg_id[STATEHUB_MSG_ID_LEN + 1];
	bool		backfill;		/* adds the header Statehub-Backfill: true */

	int			outcome;		/* a StatehubPubOutcome */
	bool		answered;		/* an ack came in, whatever it said */
	int			err_status;		/* cnats status of a rejection */
	int			err_code;		/* JetStream error code; -1: the event's own fault */
	char		error[STATEHUB_PUB_ERROR_LEN];	/* why it was rejected */
} StatehubPubEvent;

/* How a connection attempt or a batch went as a whole. */
typedef enum StatehubNatsResult
{
	STATEHUB_NATS_OK = 0,
	STATEHUB_NATS_FAILED		/* connection-level failure, see errbuf */
} StatehubNatsResult;

extern void statehub_nats_mask_url(const char *url, char *buf, size_t buflen);
extern uint32 statehub_nats_settings_hash(void);
extern StatehubNatsResult statehub_nats_connect(char *errbuf, size_t errlen);
extern bool statehub_nats_connected(void);
extern bool statehub_nats_reconnecting(void);
extern StatehubNatsResult statehub_nats_check_stream(char *errbuf, size_t errlen,
													 int64 *dedup_window_us,
													 bool *missing);
extern void statehub_nats_close(void);
extern int64 statehub_nats_max_body(void);
extern void statehub_nats_server(char *buf, size_t buflen);
extern StatehubNatsResult statehub_nats_publish_async(StatehubPubEvent *events,
													  int nevents,
													  bool flush,
													  int timeout_ms,
													  char *errbuf,
													  size_t errlen);
extern StatehubNatsResult statehub_nats_publish_wait(StatehubPubEvent *events,
													 int nevents,
													 int timeout_ms,
													 char *errbuf,
													 size_t errlen);

extern void statehub_nats_abandon_batch(void);
extern bool statehub_nats_stream_trouble(const StatehubPubEvent *ev);
extern bool statehub_nats_subjects_suspect(void);
extern TimestampTz statehub_nats_lost_at(void);

#endif							/* STATEHUB_NATS_CLIENT_H */
