/*-------------------------------------------------------------------------
 *
 * statehub_events.c
 *		Module entry point: GUCs, shared memory hooks, the delivery worker.
 *
 * Loading the library must never fail a write.  It is loaded either from
 * shared_preload_libraries (then it also reserves shared memory and
 * registers the delivery worker) or on first use of the capture trigger in
 * an ordinary backend (then capture works and events wait in the outbox
 * until a worker runs).
 *
 * GUC contexts: what the postmaster fixes at start (the worker's database)
 * is PGC_POSTMASTER; connection and tuning settings are PGC_SIGHUP and read
 * by the worker on reload; anything that lets a session skip or alter
 * capture is PGC_SUSET.  Secrets are superuser-only and hidden from SHOW
 * ALL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "shmem.h"
#include "statehub_events.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

bool		statehub_preloaded = false;

bool		statehub_capture = true;
char	   *statehub_publisher = NULL;

char	   *statehub_database = NULL;
char	   *statehub_nats_url = NULL;
char	   *statehub_nats_user = NULL;
char	   *statehub_nats_password = NULL;
char	   *statehub_nats_token = NULL;
char	   *statehub_nats_creds_file = NULL;
char	   *statehub_tls_ca_file = NULL;
char	   *statehub_tls_cert_file = NULL;
char	   *statehub_tls_key_file = NULL;
char	   *statehub_stream_name = NULL;
char	   *statehub_stream_subjects = NULL;
bool		statehub_stream_create = true;
int			statehub_stream_replicas = 1;
int			statehub_dedup_window = 86400;
int			statehub_batch_size = 4000;
int			statehub_publish_timeout = 5000;
int			statehub_max_attempts = 10;
int			statehub_retry_backoff_base = 1000;
int			statehub_retry_backoff_max = 300000;
int			statehub_poll_interval = 1000;

/*
 * The publisher goes into every envelope verbatim; keep it printable and
 * short so it can never break the JSON or bloat every event.
 */
static bool
check_publisher(char **newval, void **extra, GucSource source)
{
	const unsigned char *p;

	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("The publisher must not be empty.");
		return false;
	}
	if (strlen(*newval) > 255)
	{
		GUC_check_errdetail("The publisher must be at most 255 bytes long.");
		return false;
	}
	for (p = (const unsigned char *) *newval; *p; p++)
	{
		if (*p < 0x20 || *p == '"' || *p == '\\' || *p == 0x7f)
		{
			GUC_check_errdetail("The publisher must not contain control characters, quotes or backslashes.");
			return false;
		}
	}
	return true;
}

/* A stream name is one NATS token: no dots, wildcards or whitespace. */
static bool
check_stream_name(char **newval, void **extra, GucSource source)
{
	const char *p;

	if (*newval == NULL || (*newval)[0] == '\0')
	{
		GUC_check_errdetail("The stream name must not be empty.");
		return false;
	}
	if (strlen(*newval) >= NAMEDATALEN)
	{
		GUC_check_errdetail("The stream name must be shorter than %d bytes.", NAMEDATALEN);
		return false;
	}
	for (p = *newval; *p; p++)
	{
		if (*p == '.' || *p == '*' || *p == '>' || *p == '/' || *p == '\\' ||
			(unsigned char) *p <= ' ')
		{
			GUC_check_errdetail("The stream name must not contain \".\", \"*\", \">\", slashes or whitespace.");
			return false;
		}
	}
	return true;
}

static void
define_capture_gucs(void)
{
	DefineCustomBoolVariable("statehub_events.capture",
							 "Enables capture of row changes as events.",
							 "Off turns the capture trigger into a no-op, e.g. for bulk loads; rows changed meanwhile queue no events.",
							 &statehub_capture,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("statehub_events.publisher",
							   "Sets the publisher named in every event envelope.",
							   NULL,
							   &statehub_publisher,
							   STATEHUB_DEFAULT_PUBLISHER,
							   PGC_SUSET,
							   0,
							   check_publisher, NULL, NULL);
}

/*
 * Secrets (nats_url, which may hold a password, nats_password, nats_token)
 * show as asterisks to anyone but a superuser: GUC_SUPERUSER_ONLY alone
 * still lets members of pg_read_all_settings (so pg_monitor) read them.
 * Outside a transaction superuser() cannot be asked, so they stay hidden.
 */
static const char *
show_hidden(const char *value)
{
	if (value == NULL || value[0] == '\0')
		return "";
	if (IsTransactionState() && superuser())
		return value;
	return "********";
}

static const char *
show_nats_url(void)
{
	return show_hidden(statehub_nats_url);
}

static const char *
show_nats_password(void)
{
	return show_hidden(statehub_nats_password);
}

static const char *
show_nats_token(void)
{
	return show_hidden(statehub_nats_token);
}

static void
define_delivery_gucs(void)
{
	DefineCustomStringVariable("statehub_events.nats_url",
							   "Sets the NATS server URL, or a comma-separated list of a cluster's URLs.",
							   "Empty: nothing is published and events stay queued.",
							   &statehub_nats_url,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, show_nats_url);

	DefineCustomStringVariable("statehub_events.nats_user",
							   "Sets the user name for NATS authentication.",
							   NULL,
							   &statehub_nats_user,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("statehub_events.nats_password",
							   "Sets the password for NATS authentication.",
							   NULL,
							   &statehub_nats_password,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, show_nats_password);

	DefineCustomStringVariable("statehub_events.nats_token",
							   "Sets the token for NATS authentication.",
							   NULL,
							   &statehub_nats_token,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   NULL, NULL, show_nats_token);

	DefineCustomStringVariable("statehub_events.nats_creds_file",
							   "Sets the NATS credentials (.creds) file.",
							   NULL,
							   &statehub_nats_creds_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("statehub_events.tls_ca_file",
							   "Sets the CA certificate file used to verify the NATS server.",
							   NULL,
							   &statehub_tls_ca_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("statehub_events.tls_cert_file",
							   "Sets the client certificate file for NATS TLS.",
							   NULL,
							   &statehub_tls_cert_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("statehub_events.tls_key_file",
							   "Sets the client private key file for NATS TLS.",
							   NULL,
							   &statehub_tls_key_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("statehub_events.stream_name",
							   "Sets the JetStream stream events are published to.",
							   NULL,
							   &statehub_stream_name,
							   "STATEHUB",
							   PGC_SIGHUP,
							   0,
							   check_stream_name, NULL, NULL);

	DefineCustomStringVariable("statehub_events.stream_subjects",
							   "Sets the subjects of the stream when the worker creates it.",
							   "A comma-separated list of subjects or wildcards.",
							   &statehub_stream_subjects,
							   "org.statehub.>",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("statehub_events.stream_create",
							 "Creates the stream (file storage) when it does not exist.",
							 "An existing stream is never modified.",
							 &statehub_stream_create,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("statehub_events.stream_replicas",
							"Sets the number of replicas of the stream when the worker creates it.",
							NULL,
							&statehub_stream_replicas,
							1, 1, 5,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("statehub_events.dedup_window",
							"Sets the duplicate window of the stream when the worker creates it.",
							"A re-published event is dropped by the stream only within this window.",
							&statehub_dedup_window,
							86400, 1, 365 * 86400,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("statehub_events.batch_size",
							"Sets the number of events published per batch.",
							NULL,
							&statehub_batch_size,
							4000, 1, 100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("statehub_events.publish_timeout",
							"Sets how long the worker waits for JetStream to acknowledge a batch.",
							NULL,
							&statehub_publish_timeout,
							5000, 10, 600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("statehub_events.max_attempts",
							"Sets how many rejected attempts an event gets before it becomes a dead letter.",
							NULL,
							&statehub_max_attempts,
							10, 1, 1000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("statehub_events.retry_backoff_base",
							"Sets the delay before the first retry of a rejected event; it doubles on each attempt.",
							NULL,
							&statehub_retry_backoff_base,
							1000, 1, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("statehub_events.retry_backoff_max",
							"Sets the longest delay between retries of a rejected event or of a NATS connection.",
							NULL,
							&statehub_retry_backoff_max,
							300000, 1, 86400000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("statehub_events.poll_interval",
							"Sets how often the worker looks at the outbox without being woken.",
							"Commits that queue events wake the worker at once; this is the safety net.",
							&statehub_poll_interval,
							1000, 1, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

/*
 * The database the worker drains, or NULL when it is this one (or no
 * worker can run: the library was not preloaded).  The worker serves one
 * database per cluster; in any other the extension can still be installed
 * (a restore into a scratch database, say), and what it shows of the
 * worker must not pass for its own.
 */
const char *
statehub_drained_elsewhere(void)
{
	char	   *here;

	if (!statehub_preloaded || statehub_database == NULL)
		return NULL;
	here = get_database_name(MyDatabaseId);
	if (here != NULL && strcmp(here, statehub_database) == 0)
		return NULL;
	return statehub_database;
}

void
_PG_init(void)
{
	/* pg_upgrade's binary-upgrade backends must not run any of this */
	if (IsBinaryUpgrade)
		return;

	define_capture_gucs();
	define_delivery_gucs();
	statehub_capture_init();

	/*
	 * A PGC_POSTMASTER variable can only be defined while preloading (later
	 * it is FATAL), and only a preloaded library runs a worker to use it.
	 */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomStringVariable("statehub_events.database",
								   "Sets the database the delivery worker drains.",
								   NULL,
								   &statehub_database,
								   "postgres",
								   PGC_POSTMASTER,
								   0,
								   NULL, NULL, NULL);

	MarkGUCPrefixReserved("statehub_events");

	if (!process_shared_preload_libraries_in_progress)
		return;

	statehub_preloaded = true;
	statehub_shmem_install_hooks();
	statehub_register_worker();
}
