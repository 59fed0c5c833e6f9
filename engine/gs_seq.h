/* One sequence through the forward pass, for the CLI tools (run, logits, bench) and the
 * worker's --tokens/--generate modes: a private KV pool sized for that one sequence. */
#ifndef GS_SEQ_H
#define GS_SEQ_H

#include <stdbool.h>
#include <stdint.h>

#include "gs_forward.h"
#include "gs_kvpool.h"

/* Single-sequence convenience for the CLI tools: a private pool for one sequence. */
struct gs_seq {
	struct gs_kv_pool pool;
	struct gs_kv_seq  kv;
	int32_t           max_ctx;
};

/* KV for one sequence of up to max_ctx positions (<= max_position_embeddings), in the memory of
 * f's backend. */
enum gs_status gs_seq_create(const struct gs_forward *f, int32_t max_ctx, struct gs_seq **out);
void gs_seq_free(struct gs_seq *s);
void gs_seq_reset(struct gs_seq *s);

/* Run ids[0..n) at the sequence's next positions, in chunks of f->max_tokens. logits gets
 * [n, shard.n_vocab] when all_logits, else [1, shard.n_vocab] for the last token; may be NULL. */
enum gs_status gs_forward_run(struct gs_forward *f, struct gs_seq *s, const int32_t *ids, int32_t n,
			      float *logits, bool all_logits);

#endif
