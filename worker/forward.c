#include "gs_forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum gs_status gs_forward_create(const struct gs_model *m, struct gs_backend be, int32_t max_chunk,
				 struct gs_forward **out)
{
	const struct gs_config *cfg = &m->cfg;
	size_t C = (size_t)max_chunk, H = (size_t)cfg->hidden, F = (size_t)m->shard.n_f;
	size_t QD = (size_t)m->shard.n_heads * (size_t)cfg->head_dim;
	size_t KD = (size_t)m->shard.n_kv_heads * (size_t)cfg->head_dim;
	struct gs_forward *f;
	float *p;

	*out = NULL;
	if (max_chunk < 1)
		return gs_errorf(GS_ERR_INVALID_ARG, "max_chunk must be >= 1");
	f = calloc(1, sizeof(*f));
	if (!f)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	f->slab = malloc(sizeof(float) * C * (3 * H + 2 * QD + 2 * KD + 2 * F));
	if (!f->slab) {
		free(f);
		return gs_errorf(GS_ERR_NOMEM, "cannot allocate activations for %d-token chunks", max_chunk);
	}
	p = f->slab;
	f->x = p, p += C * H;
	f->xn = p, p += C * H;
	f->o = p, p += C * H;
	f->q = p, p += C * QD;
	f->att = p, p += C * QD;
	f->k = p, p += C * KD;
	f->v = p, p += C * KD;
	f->gate = p, p += C * F;
	f->up = p;
	f->m = m;
	f->be = be;
	f->max_chunk = max_chunk;
	*out = f;
	return GS_OK;
}

void gs_forward_free(struct gs_forward *f)
{
	if (!f)
		return;
	free(f->slab);
	free(f);
}

enum gs_status gs_seq_create(const struct gs_model *m, int32_t max_ctx, int32_t max_chunk, struct gs_seq **out)
{
	const struct gs_config *cfg = &m->cfg;
	size_t KD = (size_t)m->shard.n_kv_heads * (size_t)cfg->head_dim, total = 0;
	struct gs_seq *s;
	float *p;

	*out = NULL;
	if (max_ctx < 1 || max_ctx > cfg->max_position)
		return gs_errorf(GS_ERR_RANGE, "context %d outside 1..max_position_embeddings (%d)", max_ctx,
				 cfg->max_position);
	s = calloc(1, sizeof(*s));
	if (!s)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	s->layers = calloc((size_t)cfg->n_layers, sizeof(*s->layers));
	if (!s->layers)
		goto out_nomem;
	for (int l = 0; l < cfg->n_layers; l++) {
		int64_t cap = max_ctx;
		/* Sliding layers: a chunk's first query still needs window - 1 earlier keys. */
		if (cfg->is_sliding[l] && (int64_t)cfg->window[l] - 1 + max_chunk < cap)
			cap = (int64_t)cfg->window[l] - 1 + max_chunk;
		s->layers[l].cap = (int32_t)cap;
		total += 2 * (size_t)cap * KD;
	}
	s->slab = malloc(total * sizeof(float));
	if (!s->slab)
		goto out_nomem;
	p = s->slab;
	for (int l = 0; l < cfg->n_layers; l++) {
		s->layers[l].k = p, p += (size_t)s->layers[l].cap * KD;
		s->layers[l].v = p, p += (size_t)s->layers[l].cap * KD;
	}
	s->max_ctx = max_ctx;
	s->bytes = total * sizeof(float);
	*out = s;
	return GS_OK;

out_nomem:
	gs_seq_free(s);
	return gs_errorf(GS_ERR_NOMEM, "cannot allocate KV cache for %d positions", max_ctx);
}

void gs_seq_free(struct gs_seq *s)
{
	if (!s)
		return;
	free(s->slab);
	free(s->layers);
	free(s);
}

/* Sum partial results over the TP group (no-op when T = 1). */
static enum gs_status reduce(struct gs_forward *f, float *buf, size_t n)
{
	if (!f->comm)
		return GS_OK;
	return gs_comm_allreduce_f32(f->comm, buf, n);
}

/* One chunk of n <= max_chunk tokens at positions pos0..pos0+n-1. */
static enum gs_status forward_chunk(struct gs_forward *f, struct gs_seq *s, const int32_t *ids, int n,
				    float *logits, bool all_logits)
{
	const struct gs_model *m = f->m;
	const struct gs_config *cfg = &m->cfg;
	const struct gs_backend_i *be = f->be.iface;
	void *bc = f->be.ctx;
	int H = cfg->hidden, D = cfg->head_dim, Nq = m->shard.n_heads, Nkv = m->shard.n_kv_heads;
	size_t KD = (size_t)Nkv * D, F = (size_t)m->shard.n_f;
	int32_t pos0 = s->n_past;
	float eps = (float)cfg->rms_eps;

	/* Token embeddings times bf16(sqrt(H)) (HF rounds the normalizer to the model dtype);
	 * with a vocabulary split the owning rank writes the row, the others zeros, then sum. */
	be->embed(bc, f->x, &m->embed, ids, n, m->embed_scale, m->shard.vocab0);
	GS_TRY(reduce(f, f->x, (size_t)n * H));

	for (int l = 0; l < cfg->n_layers; l++) {
		const struct gs_layer_weights *lw = &m->layers[l];
		struct gs_kv_layer *kv = &s->layers[l];

		/* Attention block: pre-norm, projections, per-head QK-norm, RoPE with this layer's base. */
		be->rmsnorm(bc, f->xn, f->x, lw->attn_norm, n, H, eps);
		be->matmul(bc, f->q, f->xn, &lw->q, n);
		be->matmul(bc, f->k, f->xn, &lw->k, n);
		be->matmul(bc, f->v, f->xn, &lw->v, n);
		be->rmsnorm(bc, f->q, f->q, lw->q_norm, n * Nq, D, eps);
		be->rmsnorm(bc, f->k, f->k, lw->k_norm, n * Nkv, D, eps);
		be->rope(bc, f->q, n, Nq, D, pos0, cfg->rope_base[l], cfg->rope_scale[l]);
		be->rope(bc, f->k, n, Nkv, D, pos0, cfg->rope_base[l], cfg->rope_scale[l]);

		/* Append K/V to the ring; sliding layers overwrite positions that left the window. */
		for (int t = 0; t < n; t++) {
			size_t slot = (size_t)((pos0 + t) % kv->cap);
			memcpy(kv->k + slot * KD, f->k + (size_t)t * KD, KD * sizeof(float));
			memcpy(kv->v + slot * KD, f->v + (size_t)t * KD, KD * sizeof(float));
		}
		struct gs_attn_args a = {
			.out = f->att, .q = f->q, .k_cache = kv->k, .v_cache = kv->v, .cap = kv->cap,
			.n_tokens = n, .pos0 = pos0, .n_heads = Nq, .n_kv_heads = Nkv, .head_dim = D,
			.window = cfg->window[l], .scale = (float)(1.0 / sqrt(cfg->query_pre_attn_scalar)),
			.softcap = (float)cfg->attn_softcap,
		};
		be->attention(bc, &a);
		/* o_proj is ROW-split: each rank holds a partial sum over its heads. */
		be->matmul(bc, f->o, f->att, &lw->o, n);
		GS_TRY(reduce(f, f->o, (size_t)n * H));

		/* Sandwich norm: the post-norm applies to the branch before the residual add. */
		be->rmsnorm(bc, f->o, f->o, lw->post_attn_norm, n, H, eps);
		be->add(bc, f->x, f->o, (size_t)n * H);

		/* MLP block: GeGLU with tanh GELU; down_proj is ROW-split like o_proj. */
		be->rmsnorm(bc, f->xn, f->x, lw->pre_ffn_norm, n, H, eps);
		be->matmul(bc, f->gate, f->xn, &lw->gate, n);
		be->matmul(bc, f->up, f->xn, &lw->up, n);
		be->geglu(bc, f->gate, f->gate, f->up, (size_t)n * F);
		be->matmul(bc, f->o, f->gate, &lw->down, n);
		GS_TRY(reduce(f, f->o, (size_t)n * H));
		be->rmsnorm(bc, f->o, f->o, lw->post_ffn_norm, n, H, eps);
		be->add(bc, f->x, f->o, (size_t)n * H);
	}
	s->n_past += n;

	if (!logits)
		return GS_OK;
	/* Final norm and the tied LM head over this rank's vocabulary rows, only for the
	 * positions the caller wants; logits stay sharded. */
	{
		int first = all_logits ? 0 : n - 1, rows = n - first;
		be->rmsnorm(bc, f->xn, f->x + (size_t)first * H, m->final_norm, rows, H, eps);
		be->matmul(bc, logits, f->xn, &m->lm_head, rows);
		if (cfg->final_softcap > 0)
			be->softcap(bc, logits, (size_t)rows * m->shard.n_vocab, (float)cfg->final_softcap);
	}
	return GS_OK;
}

enum gs_status gs_forward_run(struct gs_forward *f, struct gs_seq *s, const int32_t *ids, int32_t n,
			      float *logits, bool all_logits)
{
	const struct gs_model *m = f->m;

	if (n < 1)
		return gs_errorf(GS_ERR_INVALID_ARG, "no tokens to run");
	for (int32_t i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= m->n_vocab)
			return gs_errorf(GS_ERR_RANGE, "token id %d at index %d is outside the vocabulary (0..%d)",
					 ids[i], i, m->n_vocab - 1);
	if ((int64_t)s->n_past + n > s->max_ctx)
		return gs_errorf(GS_ERR_RANGE,
				 "sequence of %lld tokens exceeds the context of %d (max_position_embeddings %d)",
				 (long long)s->n_past + n, s->max_ctx, m->cfg.max_position);

	for (int32_t done = 0; done < n;) {
		int32_t c = n - done < f->max_chunk ? n - done : f->max_chunk;
		bool last = done + c == n;
		float *out = NULL;
		if (logits && all_logits)
			out = logits + (size_t)done * m->shard.n_vocab;
		else if (logits && last)
			out = logits;
		GS_TRY(forward_chunk(f, s, ids + done, c, out, all_logits));
		done += c;
	}
	return GS_OK;
}
