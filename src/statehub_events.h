/*-------------------------------------------------------------------------
 *
 * statehub_events.h
 *		Declarations shared by the files of statehub_events: the GUC
 *		variables (defined in statehub_events.c) and the entry points each
 *		file offers the others.
 *
 * The extension has two halves.  Capture (capture.c, mapping.c,
 * catalog_checks.c, envelope.c, outbox.c, and backfill.c for rows that
 * existed before their declaration) runs inside the writing
 * transaction and only ever appends to statehub_events.outbox.  Delivery (worker.c, nats_client.c)
 * runs in one background worker that drains the outbox into JetStream.
 * shmem.c is the only meeting point of the two: a wake flag and the
 * worker's published state.
 *
 *-------------------------------------------------------------------------
 */
#ifndef STATEHUB_EVENTS_H
#define STATEHUB_EVENTS_H

#include "postgres.h"

#include "access/htup.h"
#include "access/tupdesc.h"
#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "nodes/primnodes.h"
#include "utils/relcache.h"
#include "utils/reltrigger.h"

/* The schema the extension lives in; fixed, the extension is not relocatable. */
#define STATEHUB_SCHEMA "statehub_events"

/* Envelope contract constants (activity-core's EventEnvelope). */
#define STATEHUB_ENVELOPE_VERSION "1.0"
#define STATEHUB_DEFAULT_PUBLISHER "the-custodian/state-hub"

/* Longest event type (= NATS subject) accepted. */
#define STATEHUB_MAX_EVENT_TYPE_LEN 255

/* --- GUCs: capture --- */
extern PGDLLIMPORT bool statehub_capture;
extern PGDLLIMPORT char *statehub_publisher;

/* --- GUCs: delivery --- */
extern PGDLLIMPORT char *statehub_database;
extern PGDLLIMPORT char *statehub_nats_url;
extern PGDLLIMPORT char *statehub_nats_user;
extern PGDLLIMPORT char *statehub_nats_password;
extern PGDLLIMPORT char *statehub_nats_token;
extern PGDLLIMPORT char *statehub_nats_creds_file;
extern PGDLLIMPORT char *statehub_tls_ca_file;
extern PGDLLIMPORT char *statehub_tls_cert_file;
extern PGDLLIMPORT char *statehub_tls_key_file;
extern PGDLLIMPORT char *statehub_stream_name;
extern PGDLLIMPORT char *statehub_stream_subjects;
extern PGDLLIMPORT bool statehub_stream_create;
extern PGDLLIMPORT int statehub_stream_replicas;
extern PGDLLIMPORT int statehub_dedup_window;	/* seconds */
extern PGDLLIMPORT int statehub_batch_size;
extern PGDLLIMPORT int statehub_publish_timeout;	/* ms */
extern PGDLLIMPORT int statehub_max_attempts;
extern PGDLLIMPORT int statehub_retry_backoff_base;	/* ms */
extern PGDLLIMPORT int statehub_retry_backoff_max;	/* ms */
extern PGDLLIMPORT int statehub_poll_interval;	/* ms */

/* True when _PG_init ran from shared_preload_libraries. */
extern bool statehub_preloaded;

/* The database the worker drains when it is not this one, else NULL. */
extern const char *statehub_drained_elsewhere(void);

/* outbox.c: append one ready-to-publish event in the current transaction */
extern void statehub_outbox_append(const unsigned char *event_id,
								   const char *subject,
								   const char *payload, int payload_len,
								   TimestampTz occurred_at, bool backfill);

/* outbox.c: the same for many events, the outbox kept open in between */
typedef struct StatehubOutboxWriter StatehubOutboxWriter;
extern StatehubOutboxWriter *statehub_outbox_open(void);
extern void statehub_outbox_write(StatehubOutboxWriter *w,
								  const unsigned char *event_id,
								  const char *subject,
								  const char *payload, int payload_len,
								  TimestampTz occurred_at, bool backfill);
extern void statehub_outbox_close(StatehubOutboxWriter *w);

/* capture.c: arm the commit-time wake-up of the worker */
extern void statehub_capture_arm_wakeup(void);
extern void statehub_capture_arm_rescan(void);
extern void statehub_capture_init(void);

/* capture.c: the envelope of a row, as the capture trigger builds it */
extern const char *statehub_capture_envelope(StringInfo buf, Trigger *trigger,
											 Relation rel, HeapTuple tuple,
											 HeapTuple previous,
											 const unsigned char *id,
											 TimestampTz now);
extern AttrNumber statehub_capture_tracked_column(Trigger *trigger,
												  Relation rel);

/* backfill.c: a value a transition trigger's WHEN clause compares with */
extern Const *statehub_transition_constant(Node *node, int varno,
										   AttrNumber attnum);

/* mapping.c: what backfill() (backfill.c) needs of a declaration */
typedef struct StatehubMapping
{
	char	   *operation;		/* "insert", "update" or "delete" */
	char	   *trigger_name;	/* its capture trigger holds the rest */
} StatehubMapping;

extern void statehub_check_declare_rights(Oid relid, bool declaring);
extern void statehub_check_condition(const char *condition, const char *what);
extern bool statehub_mapping_lookup(Relation rel, const char *event_type,
									StatehubMapping *mapping);
extern char *statehub_transition_filter(Relation rel, AttrNumber attnum);

/* worker.c */
extern void statehub_register_worker(void);
PGDLLEXPORT void statehub_worker_main(Datum main_arg);

#endif							/* STATEHUB_EVENTS_H */
