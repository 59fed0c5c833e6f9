/* Offline batch mode: every request of a JSONL file through the serving engine, results
 * appended to a resumable JSONL file (gs_batchio.h). The leader runs gs_batch_run; the other
 * ranks of the engine run gs_engine_follow meanwhile. */
#ifndef GS_BATCH_H
#define GS_BATCH_H

#include "gs_engine.h"
#include "gs_tokenizer.h"

/* The part of the input one run owns: line L (1-based, blank lines counted) when
 * (L - 1) % n == k. {0, 1} is the whole file. Job arrays run one part per task, each into its
 * own output, and `gemmashard batch-merge` joins them (deploy/slurm/gemmashard-batch.sbatch).
 * Ids are assigned over the whole file either way, so a part's records carry the ids (and the
 * default seeds) of a single run. */
struct gs_batch_split {
	int k; /* 0 .. n-1 */
	int n; /* >= 1     */
};

/* Runs the lines of in_path that split owns into out_path (skipping ids already there), then
 * shuts the followers down. Per-request problems become error records; only I/O and engine
 * failures return an error. */
enum gs_status gs_batch_run(struct gs_engine *e, const struct gs_model *m, const struct gs_tokenizer *tok,
			    const char *in_path, const char *out_path, struct gs_batch_split split);

#endif
