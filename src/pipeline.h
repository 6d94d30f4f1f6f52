/*-------------------------------------------------------------------------
 *
 * pipeline.h
 *		The delivery worker's batch pipeline: scan the outbox, publish,
 *		collect the acks, settle (see pipeline.c).  worker.c drives it, one
 *		step a call, and owns the process around it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef STATEHUB_PIPELINE_H
#define STATEHUB_PIPELINE_H

#include "postgres.h"

#include "datatype/timestamp.h"

/* What became of a transaction of the pipeline. */
typedef enum StatehubBatchResult
{
	STATEHUB_BATCH_DONE,		/* saw every ready event from the cursor on */
	STATEHUB_BATCH_FULL,		/* a full batch: more may be waiting */
	STATEHUB_BATCH_SKIPPED		/* no extension, or the outbox is locked */
} StatehubBatchResult;

extern StatehubBatchResult statehub_pipeline_transaction(bool scan,
														 bool *progress);
extern bool statehub_pipeline_collect(char *error, size_t errlen,
									  bool *stream_trouble);
extern bool statehub_pipeline_publish(bool full, char *error, size_t errlen);
extern void statehub_pipeline_drop_scanned(void);
extern void statehub_pipeline_forget_in_flight(void);
extern void statehub_pipeline_reset(void);
extern void statehub_pipeline_shrink_batches(void);
extern void statehub_pipeline_grow_batches(void);

extern int	statehub_pipeline_scanned_count(void);
extern bool statehub_pipeline_in_flight(void);
extern bool statehub_pipeline_answered(void);
extern TimestampTz statehub_pipeline_retry_due_at(void);

extern long statehub_ms_until(TimestampTz ts);

#endif							/* STATEHUB_PIPELINE_H */
