/* The Gemma 3 forward pass over one sequence's KV cache: prefill and decode are the same
 * call (n tokens starting at the sequence's current length). */
#ifndef GS_FORWARD_H
#define GS_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "gs_comm.h"
#include "gs_kernels.h"
#include "gs_model.h"

/* KV of one layer: a ring of cap positions; position p lives in slot p % cap. Global
 * layers hold the whole context; sliding layers only window - 1 + max_chunk positions. */
struct gs_kv_layer {
	float  *k;              /* [cap, Nkv·D] */
	float  *v;              /* [cap, Nkv·D] */
	int32_t cap;
};

struct gs_seq {
	struct gs_kv_layer *layers;   /* [L] */
	float              *slab;     /* owns every k/v */
	int32_t             n_past;   /* positions already in the cache */
	int32_t             max_ctx;  /* positions this sequence may reach */
	size_t              bytes;    /* KV bytes allocated */
};

/* Activation arena for chunks of up to max_chunk tokens. */
struct gs_forward {
	const struct gs_model *m;
	struct gs_backend      be;
	const struct gs_comm  *comm;     /* TP group (host buffers); NULL when T = 1 */
	int32_t                max_chunk;
	float *x;      /* [C, H] residual stream */
	float *xn;     /* [C, H] normed input of a block */
	float *q;      /* [C, Nq·D] */
	float *k;      /* [C, Nkv·D] */
	float *v;      /* [C, Nkv·D] */
	float *att;    /* [C, Nq·D] attention output */
	float *o;      /* [C, H] block output */
	float *gate;   /* [C, F] */
	float *up;     /* [C, F] */
	float *slab;
};

enum gs_status gs_forward_create(const struct gs_model *m, struct gs_backend be, int32_t max_chunk,
				 struct gs_forward **out);
void gs_forward_free(struct gs_forward *f);

/* Tensor parallel: the group whose ranks hold the other shards of f->m. Every rank must
 * then call gs_forward_run with the same ids (all-reduces after o_proj, down_proj and the
 * embedding lookup). */
static inline void gs_forward_set_comm(struct gs_forward *f, const struct gs_comm *comm) { f->comm = comm; }

/* KV for one sequence of up to max_ctx positions (<= max_position_embeddings). */
enum gs_status gs_seq_create(const struct gs_model *m, int32_t max_ctx, int32_t max_chunk, struct gs_seq **out);
void gs_seq_free(struct gs_seq *s);
static inline void gs_seq_reset(struct gs_seq *s) { s->n_past = 0; }

/* Run ids[0..n) at positions s->n_past.. and append them to the cache. logits receives
 * [n, m->shard.n_vocab] floats (this rank's vocabulary slice; all of it when T = 1) when
 * all_logits, else [1, m->shard.n_vocab] for the last token; may be NULL.
 * Errors (nothing changes in the cache): id >= vocab or < 0 (GS_ERR_RANGE), context beyond
 * max_ctx or max_position_embeddings (GS_ERR_RANGE), a failed all-reduce (the cache is then
 * undefined: the group cannot continue). */
enum gs_status gs_forward_run(struct gs_forward *f, struct gs_seq *s, const int32_t *ids, int32_t n,
			      float *logits, bool all_logits);

#endif
