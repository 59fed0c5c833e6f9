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
	const float      *img_rows;   /* gs_seq_set_images: projector rows (backend memory), or NULL */
	int32_t           n_img_rows, img_used; /* rows given; image tokens fed so far */
};

/* KV for one sequence of up to max_ctx positions (<= max_position_embeddings), in the memory of
 * f's backend. */
enum gs_status gs_seq_create(const struct gs_forward *f, int32_t max_ctx, struct gs_seq **out);
void gs_seq_free(struct gs_seq *s);
void gs_seq_reset(struct gs_seq *s);
/* The prompt's images: rows (f's backend memory, n_rows x H, image after image as
 * gs_vision_encode writes them; not owned, kept until the prompt is fed) replace the prompt's
 * image tokens in order. gs_seq_reset forgets them. */
void gs_seq_set_images(struct gs_seq *s, const float *rows, int32_t n_rows);

/* The next piece of a prompt fed in chunks of `chunk` tokens from `start`: gs_forward_chunk_len,
 * except that an image with more tokens than chunk goes in one piece. */
int32_t gs_seq_next_chunk(const struct gs_model *m, const int32_t *ids, int32_t n, int32_t start, int32_t chunk);

/* Run ids[0..n) at the sequence's next positions, in chunks of f->max_tokens that never end
 * inside an image (gs_forward_chunk_len; a caller feeding its own chunks keeps that rule too, or
 * gets GS_ERR_INVALID_ARG). logits gets [n, shard.n_vocab] when all_logits, else
 * [1, shard.n_vocab] for the last token; may be NULL. GS_ERR_INVALID_ARG when an image has more
 * tokens than f->max_tokens. */
enum gs_status gs_forward_run(struct gs_forward *f, struct gs_seq *s, const int32_t *ids, int32_t n,
			      float *logits, bool all_logits);

#endif
