# statehub_events — PGXS build.
#
#   make                 build the extension and the test helpers
#   make install         install into the PostgreSQL found by $(PG_CONFIG)
#   make installcheck    pg_regress, isolation and TAP tests against a running
#                        server (scripts/test sets all of that up)

PG_CONFIG ?= pg_config

MODULE_big = statehub_events
OBJS = \
	src/statehub_events.o \
	src/capture.o \
	src/envelope.o \
	src/json_check.o \
	src/catalog_checks.o \
	src/mapping.o \
	src/mapping_upkeep.o \
	src/outbox.o \
	src/admin.o \
	src/shmem.o \
	src/worker.o \
	src/pipeline.o \
	src/cursor.o \
	src/backfill.o \
	src/nats_client.o \
	src/counters.o \
	src/drop_guard.o

EXTENSION = statehub_events
DATA = statehub_events--1.0.sql statehub_events--1.1.sql statehub_events--1.2.sql \
	statehub_events--1.0--1.1.sql statehub_events--1.1--1.2.sql \
	statehub_events--1.0.control
PGFILEDESC = "statehub_events - transactional outbox delivered to NATS JetStream"

# setup creates the extension (and the helpers the other files use)
REGRESS = setup track_insert track_transition track_delete track_errors \
	attributes emit outbox_tx partitioned capture_guc privileges \
	column_changes security capture_cache operations mapping_fidelity backfill \
	mapping_ddl row_movement

ISOLATION = concurrent_transitions
ISOLATION_OPTS = --inputdir=test --outputdir=test/output_iso --load-extension=statehub_events

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

NATS_CFLAGS := $(shell pkg-config --cflags libnats 2>/dev/null)
NATS_LIBS := $(shell pkg-config --libs libnats 2>/dev/null || echo -lnats)
UUID_CFLAGS := $(shell pkg-config --cflags uuid 2>/dev/null)
UUID_LIBS := $(shell pkg-config --libs uuid 2>/dev/null || echo -luuid)

PG_CPPFLAGS = -I$(srcdir)/src $(NATS_CFLAGS) $(UUID_CFLAGS)
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
SHLIB_LINK = $(NATS_LIBS) $(UUID_LIBS)

# Test helpers: a JetStream consumer that prints each message as a JSON line,
# and a raw async publisher used as the drain benchmark's baseline.
TEST_PROGRAMS = $(patsubst %.c,%,$(wildcard test/*.c))
EXTRA_CLEAN = $(TEST_PROGRAMS) test/output_iso bench/out

all: $(TEST_PROGRAMS)

test/%: test/%.c
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $< $(NATS_CFLAGS) $(NATS_LIBS)

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# The README's two commands; both install what a fresh Debian 12 lacks.
.PHONY: demo test
demo:
	scripts/demo
test:
	scripts/test
