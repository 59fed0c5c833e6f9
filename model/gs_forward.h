/* The Gemma 3 forward pass over a ragged batch: any mix of prefill chunks and decode tokens
 * of many sequences in one call, each continuing at its own position in the paged KV cache. */
#ifndef GS_FORWARD_H
#define GS_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "gs_comm.h"
#include "gs_kernels.h"
#include "gs_kvcache.h"
#include "gs_model.h"

/* One sequence's part of a batch: the next n_tokens rows of ids, at positions kv->n_past..
 *
 * Images (reference/gemma3.md §4.4, §4.5): with img_rows set, the rows whose id is the model's
 * image_token_id take rows img_row0, img_row0 + 1, ... of img_rows in order instead of their
 * embedding (not scaled by sqrt(H)), and each run of them (one image, mm_tokens_per_image rows)
 * attends to itself in both directions in every layer. The caller keeps each image's run whole
 * inside one part (gs_forward_chunk_len); gs_forward_check refuses a cut one. */
struct gs_batch_seq {
	struct gs_kv_seq *kv;
	int32_t           n_tokens;
	bool              want_logits;  /* logits of its last row */
	bool              all_logits;   /* logits of every row (parity checks) */
	const float      *img_rows;     /* backend memory [n_img_rows, H]: projector outputs; NULL: none */
	int32_t           n_img_rows;
	int32_t           img_row0;     /* row of img_rows for this part's first image token */
};

/* Activation arena for batches of up to max_tokens rows. Everything an op reads or writes lives
 * in the backend's memory (device memory on a GPU): the activations, and per step the ids,
 * positions, row maps, attention sequences and their block tables, uploaded from host copies.
 * Host arrays are prefixed h_. */
struct gs_forward {
	const struct gs_model *m;
	struct gs_backend      be;
	const struct gs_comm  *comm;     /* TP group (buffers of be's memory); NULL when T = 1 */
	int32_t                max_tokens;
	float *x;      /* [C, H] residual stream */
	float *xn;     /* [C, H] normed input of a block */
	float *q;      /* [C, Nq·D] (this rank's heads) */
	float *k;      /* [C, Nkv·D] */
	float *v;      /* [C, Nkv·D] */
	float *att;    /* [C, Nq·D] attention output */
	float *o;      /* [C, H] block output */
	float *gate;   /* [C, F] (this rank's columns) */
	float *up;     /* [C, F] */
	float *slab;   /* behind all of the above */
	/* Context parallelism (ARCHITECTURE.md §4): C groups run every step together. Group c
	 * computes rows [c·P, c·P + P) of an n-row batch (P = ceil(n / C)) through the matmuls;
	 * q, k and v are all-gathered over cp each layer, sliding-layer attention runs on every
	 * group, and global-layer attention runs per group over the keys it holds, all-gathered as
	 * (o, lse) records and merged. Activations then have max_tokens + C - 1 rows. */
	const struct gs_comm *cp;      /* NULL: none */
	int32_t cp_size, cp_rank;
	float  *parts;                 /* [C][max_tokens][Nq][D + 1] partial attention records */
	/* per step, backend memory */
	int32_t *ids;       /* [C] */
	int32_t *pos;       /* [C] position of each row */
	int32_t *tok_seq;   /* [C] sequence index of each row */
	int32_t *out_rows;  /* [C] rows whose logits are wanted */
	int64_t *kv_rows;   /* [2][C] slab row of each row's K/V: global layers, sliding layers */
	struct gs_attn_seq *aseq; /* [2][C] global layers, sliding layers (tables point into tables) */
	int32_t *tables;    /* block tables of the step's sequences */
	int32_t *span;      /* [C][2] image span of each row (attention), when the step has images */
	int64_t *img_dst;   /* [C] rows of x that take projector rows, sequence by sequence */
	size_t   tables_cap;
	float   *logits;    /* [logits_cap rows, shard vocab] when the backend's memory is not the host's */
	size_t   logits_cap;  /* rows */
	/* host copies */
	int32_t *h_pos, *h_tok_seq, *h_out_rows, *h_tables; /* h_tables: tables_cap entries */
	int32_t *h_ids;     /* ids as looked up: image tokens as 0 (their rows are replaced) */
	int32_t *h_span;
	int64_t *h_kv_rows, *h_img_dst;
	struct gs_attn_seq *h_aseq;
};

enum gs_status gs_forward_create(const struct gs_model *m, struct gs_backend be, int32_t max_tokens,
				 struct gs_forward **out);
void gs_forward_free(struct gs_forward *f);

/* Tensor parallel: the group whose ranks hold the other shards of f->m. Every rank must
 * then run the same batches (all-reduces after o_proj, down_proj and the embedding). */
static inline void gs_forward_set_comm(struct gs_forward *f, const struct gs_comm *comm) { f->comm = comm; }

/* Context parallelism: cp joins this rank to the ranks with the same TP rank in the other
 * groups (NULL or size 1: none). Before the first batch; the KV pools must then be set up for
 * this rank's group (gs_kv_pool_set_cp). GS_ERR_UNSUPPORTED for a backend without attn_merge. */
enum gs_status gs_forward_set_cp(struct gs_forward *f, const struct gs_comm *cp);

/* Is this batch well formed for f: 1..max_tokens rows in all, every id inside the vocabulary
 * (or an image token with its projector row), no sequence past its reservation
 * (kv->max_positions), images whole and their rows there? GS_ERR_INVALID_ARG / GS_ERR_RANGE
 * with the reason; nothing is touched. gs_forward_batch checks it again. */
enum gs_status gs_forward_check(const struct gs_forward *f, const int32_t *ids, const struct gs_batch_seq *seqs,
				int32_t n_seqs);

/* The chunk rule of prompts with images: the longest chunk ids[start, start + c), c <= want, that
 * does not end inside a run of image tokens (ids[0, n) is the whole prompt). 0 when a run that
 * starts at `start` is longer than want. Text (or a model without vision): min(want, n - start). */
int32_t gs_forward_chunk_len(const struct gs_model *m, const int32_t *ids, int32_t n, int32_t start, int32_t want);

/* Run one batch: ids holds the rows of seqs[0], then seqs[1], ... (sum of n_tokens <=
 * max_tokens). Each sequence's tables must already hold the blocks of its new positions (the
 * engine's pool takes them: gs_kv_forward_batch); appends the K/V and advances kv->n_past.
 * logits receives, in sequence order, n_tokens rows for an all_logits sequence
 * and one row for a want_logits one, each m->shard.n_vocab wide (this rank's vocabulary
 * slice; all of it when T = 1); may be NULL when no sequence wants logits.
 * Errors (nothing changes): a batch gs_forward_check refuses, tables that do not hold the new
 * positions (GS_ERR_RANGE); a failed all-reduce (the group cannot continue). */
enum gs_status gs_forward_batch(struct gs_forward *f, const struct gs_kv_cache *cache, const int32_t *ids,
				const struct gs_batch_seq *seqs, int32_t n_seqs, float *logits);

/* The same, but the logits rows stay in backend memory (for the candidates op, so a 262K-wide
 * row never crosses to the host): *logits points at them (rows as above) until the next call
 * on f; NULL when no sequence wants logits. */
enum gs_status gs_forward_batch_dev(struct gs_forward *f, const struct gs_kv_cache *cache, const int32_t *ids,
				    const struct gs_batch_seq *seqs, int32_t n_seqs, const float **logits);

#endif
