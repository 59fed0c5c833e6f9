/* One sequence through the forward pass with a private KV pool (gs_seq.h). */
#include "gs_seq.h"

#include <stdlib.h>

enum gs_status gs_seq_create(const struct gs_forward *f, int32_t max_ctx, struct gs_seq **out)
{
	const struct gs_model *m = f->m;
	const struct gs_config *cfg = &m->cfg;
	int32_t ng, nl;
	struct gs_seq *s;
	enum gs_status st;

	*out = NULL;
	if (max_ctx < 1 || max_ctx > cfg->max_position)
		return gs_errorf(GS_ERR_RANGE, "context %d outside 1..max_position_embeddings (%d)", max_ctx,
				 cfg->max_position);
	s = calloc(1, sizeof(*s));
	if (!s)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	gs_kv_pool_size_for(cfg, 1, max_ctx, 0, &ng, &nl);
	/* context parallelism: the sequence spread over all C groups, this group's share held */
	ng = gs_kv_cp_blocks(f->cp_size, f->cp_size, 0, f->cp_rank, ng);
	st = gs_kv_pool_init(&s->pool, cfg, m->shard.n_kv_heads, ng, nl, &f->be);
	if (st == GS_OK)
		gs_kv_pool_set_cp(&s->pool, f->cp_size, f->cp_rank);
	if (st == GS_OK)
		st = gs_kv_seq_admit_cp(&s->pool, &s->kv, max_ctx, f->cp_size, 0);
	if (st != GS_OK) {
		gs_seq_free(s);
		return st;
	}
	s->max_ctx = max_ctx;
	*out = s;
	return GS_OK;
}

void gs_seq_free(struct gs_seq *s)
{
	if (!s)
		return;
	gs_kv_seq_release(&s->pool, &s->kv);
	gs_kv_pool_free(&s->pool);
	free(s);
}

void gs_seq_reset(struct gs_seq *s)
{
	int32_t C = s->pool.cache.cp_size;

	gs_kv_seq_release(&s->pool, &s->kv);
	GS_ASSERT(gs_kv_seq_admit_cp(&s->pool, &s->kv, s->max_ctx, C, 0) == GS_OK);
	gs_seq_set_images(s, NULL, 0);
}

void gs_seq_set_images(struct gs_seq *s, const float *rows, int32_t n_rows)
{
	s->img_rows = rows;
	s->n_img_rows = rows ? n_rows : 0;
	s->img_used = 0;
}

int32_t gs_seq_next_chunk(const struct gs_model *m, const int32_t *ids, int32_t n, int32_t start, int32_t chunk)
{
	int32_t c = gs_forward_chunk_len(m, ids, n, start, chunk), img = m->cfg.vision.image_token_id;

	while (m->cfg.vision.present && start + c < n && (c < 1 || (ids[start + c - 1] == img && ids[start + c] == img)))
		c++;
	return c;
}

enum gs_status gs_forward_run(struct gs_forward *f, struct gs_seq *s, const int32_t *ids, int32_t n,
			      float *logits, bool all_logits)
{
	const struct gs_model *m = f->m;

	if (n < 1)
		return gs_errorf(GS_ERR_INVALID_ARG, "no tokens to run");
	for (int32_t i = 0; i < n; i++)
		if ((ids[i] < 0 || ids[i] >= m->n_vocab) && !(s->img_rows && ids[i] == m->cfg.vision.image_token_id))
			return gs_errorf(GS_ERR_RANGE, "token id %d at index %d is outside the vocabulary (0..%d)",
					 ids[i], i, m->n_vocab - 1);
	if ((int64_t)s->kv.n_past + n > s->max_ctx)
		return gs_errorf(GS_ERR_RANGE,
				 "sequence of %lld tokens exceeds the context of %d (max_position_embeddings %d)",
				 (long long)s->kv.n_past + n, s->max_ctx, m->cfg.max_position);
	for (int32_t done = 0; done < n;) {
		int32_t c = gs_forward_chunk_len(m, ids, n, done, f->max_tokens), n_img = 0;
		if (c < 1)
			return gs_errorf(GS_ERR_INVALID_ARG, "an image's %d tokens exceed the %d-token chunk of this "
					 "forward pass", m->cfg.vision.mm_tokens_per_image, f->max_tokens);
		bool last = done + c == n;
		struct gs_batch_seq b = { .kv = &s->kv, .n_tokens = c, .want_logits = last && logits != NULL,
					  .all_logits = all_logits && logits != NULL, .img_rows = s->img_rows,
					  .n_img_rows = s->n_img_rows, .img_row0 = s->img_used };
		float *out = !logits ? NULL : all_logits ? logits + (size_t)done * m->shard.n_vocab : logits;
		for (int32_t t = 0; s->img_rows && t < c; t++)
			n_img += ids[done + t] == m->cfg.vision.image_token_id;
		GS_TRY(gs_kv_forward_batch(f, &s->pool, ids + done, &b, 1, out));
		s->img_used += n_img;
		done += c;
	}
	return GS_OK;
}
