/* Offline batch mode: every request of a JSONL file through the serving engine, results
 * appended to a resumable JSONL file (gs_batchio.h). The leader runs gs_batch_run; the other
 * ranks of the engine run gs_engine_follow meanwhile. */
#ifndef GS_BATCH_H
#define GS_BATCH_H

#include "gs_engine.h"
#include "gs_tokenizer.h"

/* Runs in_path into out_path (skipping ids already there), then shuts the followers down.
 * Per-request problems become error records; only I/O and engine failures return an error. */
enum gs_status gs_batch_run(struct gs_engine *e, const struct gs_model *m, const struct gs_tokenizer *tok,
			    const char *in_path, const char *out_path);

#endif
