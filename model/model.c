#include "gs_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gs_safetensors.h"
#include "gs_util.h"
#include "gs_vision.h"

/* ---- shard plan -------------------------------------------------------------------- */

enum gs_status gs_shard_plan(const struct gs_config *cfg, int32_t n_vocab, int rank, int size,
			     struct gs_shard *out)
{
	struct gs_shard s = { .rank = rank, .size = size };

	if (size < 1 || rank < 0 || rank >= size)
		return gs_errorf(GS_ERR_INVALID_ARG, "bad tensor-parallel rank %d of %d", rank, size);
	if (cfg->n_heads % size)
		return gs_errorf(GS_ERR_INVALID_ARG,
				 "tensor-parallel degree %d does not divide the %d query heads (valid: divisors of %d "
				 "that are multiples or divisors of the %d KV heads)",
				 size, cfg->n_heads, cfg->n_heads, cfg->n_kv_heads);
	if (cfg->intermediate % size)
		return gs_errorf(GS_ERR_INVALID_ARG, "tensor-parallel degree %d does not divide intermediate_size %d",
				 size, cfg->intermediate);
	if (size <= cfg->n_kv_heads ? cfg->n_kv_heads % size : size % cfg->n_kv_heads)
		return gs_errorf(GS_ERR_INVALID_ARG,
				 "tensor-parallel degree %d must divide the %d KV heads or be a multiple of them", size,
				 cfg->n_kv_heads);
	s.n_heads = cfg->n_heads / size;
	s.q_head0 = rank * s.n_heads;
	if (size <= cfg->n_kv_heads) {
		s.n_kv_heads = cfg->n_kv_heads / size;
		s.kv_head0 = rank * s.n_kv_heads;
	} else { /* replicate: T / Nkv ranks share each KV head */
		s.n_kv_heads = 1;
		s.kv_head0 = rank / (size / cfg->n_kv_heads);
	}
	s.n_f = cfg->intermediate / size;
	s.f0 = rank * s.n_f;
	s.vocab_stride = (n_vocab + size - 1) / size;
	s.vocab0 = rank * s.vocab_stride;
	if (s.vocab0 > n_vocab)
		s.vocab0 = n_vocab;
	s.n_vocab = n_vocab - s.vocab0 < s.vocab_stride ? n_vocab - s.vocab0 : s.vocab_stride;
	*out = s;
	return GS_OK;
}

/* ---- checkpoint ------------------------------------------------------------------ */

struct load_ctx {
	struct gs_model *m;
	const char *dir;
	int layer;          /* -1: not a layer tensor */
	char *own;          /* next free byte of m->slab for ROW-split copies */
};

/* Find a text-decoder tensor by suffix and check dtype and shape. cols 0: 1-D of rows. */
static enum gs_status find_tensor(struct load_ctx *c, const char *suffix, int64_t rows, int64_t cols,
				  const struct gs_st_tensor **out)
{
	char name[160];
	const struct gs_st_tensor *t;

	if (c->layer >= 0)
		snprintf(name, sizeof(name), "layers.%d.%s", c->layer, suffix);
	else
		snprintf(name, sizeof(name), "%s", suffix);
	t = gs_st_find_text(c->m->st, name);
	if (!t)
		return gs_errorf(GS_ERR_NOT_FOUND, "%s: tensor '%s' is missing (tried model.%s, "
				 "language_model.model.%s, model.language_model.%s)", c->dir, name, name, name, name);
	if (cols == 0) {
		if (t->ndim != 1 || t->shape[0] != rows)
			return gs_errorf(GS_ERR_FORMAT, "%s: tensor '%s' has shape [%lld%s] but config.json implies [%lld]",
					 gs_st_file_of(c->m->st, t->shard), t->name, (long long)t->shape[0],
					 t->ndim == 1 ? "" : ", ...", (long long)rows);
	} else if (t->ndim != 2 || (rows >= 0 && t->shape[0] != rows) || t->shape[1] != cols) {
		char want[48];
		if (rows >= 0)
			snprintf(want, sizeof(want), "[%lld, %lld]", (long long)rows, (long long)cols);
		else
			snprintf(want, sizeof(want), "[vocab, %lld]", (long long)cols);
		return gs_errorf(GS_ERR_FORMAT, "%s: tensor '%s' has shape [%lld, %lld] (ndim %d) but config.json implies %s",
				 gs_st_file_of(c->m->st, t->shard), t->name, (long long)t->shape[0],
				 (long long)(t->ndim > 1 ? t->shape[1] : 0), t->ndim, want);
	}
	*out = t;
	return GS_OK;
}

/* This rank's part of a [rows, cols] weight: COLUMN takes rows [off, off+len) as a view into
 * the mmap; ROW copies columns [off, off+len) of every row into the owned slab (each rank
 * reads only its own bytes either way). */
static enum gs_status load_matrix(struct load_ctx *c, const char *suffix, int64_t rows, int64_t cols,
				  enum gs_split split, int64_t off, int64_t len, struct gs_tensor *w)
{
	const struct gs_st_tensor *t;
	size_t es;

	GS_TRY(find_tensor(c, suffix, rows, cols, &t));
	es = gs_dtype_size(t->dtype);
	switch (split) {
	case GS_SPLIT_MIRRORED:
		*w = (struct gs_tensor){ t->dtype, t->shape[0], t->shape[1], t->data };
		break;
	case GS_SPLIT_COLUMN:
	case GS_SPLIT_VOCAB:
		GS_ASSERT(off >= 0 && off + len <= t->shape[0]);
		*w = (struct gs_tensor){ t->dtype, len, t->shape[1], (const char *)t->data + (size_t)off * t->shape[1] * es };
		break;
	case GS_SPLIT_ROW: {
		GS_ASSERT(off >= 0 && off + len <= t->shape[1]);
		char *dst = c->own;
		for (int64_t r = 0; r < t->shape[0]; r++)
			memcpy(dst + (size_t)r * len * es, (const char *)t->data + ((size_t)r * t->shape[1] + off) * es,
			       (size_t)len * es);
		*w = (struct gs_tensor){ t->dtype, t->shape[0], len, dst };
		c->own += (size_t)t->shape[0] * len * es;
		gs_st_evict(c->m->st, t->data, t->nbytes);
		break;
	}
	default:
		GS_ASSERT(!"bad split");
	}
	c->m->weight_bytes += (size_t)w->rows * w->cols * es;
	return GS_OK;
}

/* gain[i] = 1 + w[i] in fp32. */
static enum gs_status load_gain(struct load_ctx *c, const char *suffix, int64_t dim, float *gain)
{
	const struct gs_st_tensor *t;

	GS_TRY(find_tensor(c, suffix, dim, 0, &t));
	for (int64_t i = 0; i < dim; i++) {
		float w;
		switch (t->dtype) {
		case GS_DTYPE_BF16: w = gs_bf16_to_f32(((const uint16_t *)t->data)[i]); break;
		case GS_DTYPE_F16: w = gs_f16_to_f32(((const uint16_t *)t->data)[i]); break;
		case GS_DTYPE_F32: memcpy(&w, (const char *)t->data + 4 * i, 4); break;
		default: return gs_errorf(GS_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s", c->dir, t->name,
					  gs_dtype_name(t->dtype));
		}
		gain[i] = 1.0f + w;
	}
	c->m->weight_bytes += t->nbytes;
	return GS_OK;
}

/* Norm gains for L layers × (4·H + 2·D) + final H, one slab. */
static enum gs_status alloc_gains(struct gs_model *m)
{
	const struct gs_config *cfg = &m->cfg;
	size_t H = (size_t)cfg->hidden, D = (size_t)cfg->head_dim, L = (size_t)cfg->n_layers;
	float *g;

	m->layers = calloc(L, sizeof(*m->layers));
	m->gains = malloc(sizeof(float) * gs_model_gains_count(cfg));
	if (!m->layers || !m->gains)
		return gs_errorf(GS_ERR_NOMEM, "out of memory for %zu layers", L);
	g = m->gains;
	for (size_t l = 0; l < L; l++) {
		struct gs_layer_weights *lw = &m->layers[l];
		lw->attn_norm = g, g += H;
		lw->post_attn_norm = g, g += H;
		lw->pre_ffn_norm = g, g += H;
		lw->post_ffn_norm = g, g += H;
		lw->q_norm = g, g += D;
		lw->k_norm = g, g += D;
	}
	m->final_norm = g;
	return GS_OK;
}

static float embed_scale_of(int32_t hidden)
{
	/* HF: normalizer = torch.tensor(hidden_size**0.5, dtype=bf16). */
	return gs_round_bf16((float)sqrt((double)hidden));
}

static enum gs_status load_weights(struct gs_model *m, const char *dir, int rank, int size)
{
	const struct gs_config *cfg = &m->cfg;
	int64_t H = cfg->hidden, F = cfg->intermediate, D = cfg->head_dim;
	int64_t QD = (int64_t)cfg->n_heads * D, KD = (int64_t)cfg->n_kv_heads * D;
	struct load_ctx c = { .m = m, .dir = dir, .layer = -1 };
	const struct gs_st_tensor *emb, *lm;
	const struct gs_shard *sh = &m->shard;
	size_t own_bytes = 0;

	GS_TRY(alloc_gains(m));
	GS_TRY(find_tensor(&c, "embed_tokens.weight", -1, H, &emb));
	if (emb->shape[0] < 1 || emb->shape[0] > INT32_MAX)
		return gs_errorf(GS_ERR_FORMAT, "%s: embed_tokens has %lld rows", gs_st_file_of(m->st, emb->shard),
				 (long long)emb->shape[0]);
	m->n_vocab = (int32_t)emb->shape[0];
	GS_TRY(gs_shard_plan(cfg, m->n_vocab, rank, size, &m->shard));

	/* ROW-split weights (o_proj, down_proj) are copied: their columns are strided. */
	if (size > 1) {
		const struct gs_st_tensor *o = gs_st_find_text(m->st, "layers.0.self_attn.o_proj.weight");
		size_t es = o ? gs_dtype_size(o->dtype) : 4;
		own_bytes = (size_t)cfg->n_layers * (size_t)H * ((size_t)sh->n_heads * D + (size_t)sh->n_f) * es;
		m->slab = gs_alloc_huge(own_bytes ? own_bytes : 1);
		if (!m->slab)
			return gs_errorf(GS_ERR_NOMEM, "%s: cannot allocate %zu bytes for this rank's row-split weights",
					 dir, own_bytes);
		c.own = m->slab;
	}

	GS_TRY(load_matrix(&c, "embed_tokens.weight", -1, H, GS_SPLIT_VOCAB, sh->vocab0, sh->n_vocab, &m->embed));
	m->lm_head = m->embed;
	lm = gs_st_find(m->st, "lm_head.weight");
	if (!lm)
		lm = gs_st_find(m->st, "language_model.lm_head.weight");
	if (lm && !cfg->tie_embeddings) {
		if (lm->ndim != 2 || lm->shape[0] != m->n_vocab || lm->shape[1] != H)
			return gs_errorf(GS_ERR_FORMAT, "%s: lm_head.weight shape does not match embed_tokens",
					 gs_st_file_of(m->st, lm->shard));
		m->lm_head = (struct gs_tensor){ lm->dtype, sh->n_vocab, H,
						 (const char *)lm->data + (size_t)sh->vocab0 * H * gs_dtype_size(lm->dtype) };
		m->weight_bytes += (size_t)sh->n_vocab * H * gs_dtype_size(lm->dtype);
	} else if (!lm && !cfg->tie_embeddings) {
		return gs_errorf(GS_ERR_NOT_FOUND, "%s: tie_word_embeddings is false but lm_head.weight is missing", dir);
	}
	GS_TRY(load_gain(&c, "norm.weight", H, m->final_norm));

	for (int l = 0; l < cfg->n_layers; l++) {
		struct gs_layer_weights *lw = &m->layers[l];
		enum gs_split row = size > 1 ? GS_SPLIT_ROW : GS_SPLIT_MIRRORED;
		c.layer = l;
		GS_TRY(load_matrix(&c, "self_attn.q_proj.weight", QD, H, GS_SPLIT_COLUMN, sh->q_head0 * D,
				   sh->n_heads * D, &lw->q));
		GS_TRY(load_matrix(&c, "self_attn.k_proj.weight", KD, H, GS_SPLIT_COLUMN, sh->kv_head0 * D,
				   sh->n_kv_heads * D, &lw->k));
		GS_TRY(load_matrix(&c, "self_attn.v_proj.weight", KD, H, GS_SPLIT_COLUMN, sh->kv_head0 * D,
				   sh->n_kv_heads * D, &lw->v));
		GS_TRY(load_matrix(&c, "self_attn.o_proj.weight", H, QD, row, sh->q_head0 * D, sh->n_heads * D, &lw->o));
		GS_TRY(load_matrix(&c, "mlp.gate_proj.weight", F, H, GS_SPLIT_COLUMN, sh->f0, sh->n_f, &lw->gate));
		GS_TRY(load_matrix(&c, "mlp.up_proj.weight", F, H, GS_SPLIT_COLUMN, sh->f0, sh->n_f, &lw->up));
		GS_TRY(load_matrix(&c, "mlp.down_proj.weight", H, F, row, sh->f0, sh->n_f, &lw->down));
		GS_TRY(load_gain(&c, "input_layernorm.weight", H, lw->attn_norm));
		GS_TRY(load_gain(&c, "post_attention_layernorm.weight", H, lw->post_attn_norm));
		GS_TRY(load_gain(&c, "pre_feedforward_layernorm.weight", H, lw->pre_ffn_norm));
		GS_TRY(load_gain(&c, "post_feedforward_layernorm.weight", H, lw->post_ffn_norm));
		GS_TRY(load_gain(&c, "self_attn.q_norm.weight", D, lw->q_norm));
		GS_TRY(load_gain(&c, "self_attn.k_norm.weight", D, lw->k_norm));
	}
	GS_ASSERT(!m->slab || (size_t)(c.own - (char *)m->slab) <= own_bytes);
	return GS_OK;
}

/* Fault this rank's weight pages in now, so the first request does not pay for disk reads;
 * progress on stderr once this has taken more than a second. */
static void touch_weights(struct gs_model *m)
{
	struct gs_tensor *list[8];
	size_t total = m->weight_bytes, done = 0;
	double t0 = gs_now_s(), last = t0;
	volatile unsigned char sink = 0;
	bool shown = false;

	for (int l = -1; l < m->cfg.n_layers; l++) {
		size_t nt = 0;
		if (l < 0) {
			list[nt++] = &m->embed;
		} else {
			struct gs_layer_weights *w = &m->layers[l];
			list[nt++] = &w->q, list[nt++] = &w->k, list[nt++] = &w->v, list[nt++] = &w->o;
			list[nt++] = &w->gate, list[nt++] = &w->up, list[nt++] = &w->down;
		}
		for (size_t i = 0; i < nt; i++) {
			const unsigned char *p = list[i]->data;
			size_t n = (size_t)list[i]->rows * list[i]->cols * gs_dtype_size(list[i]->dtype);
			if (m->st)
				gs_st_prefetch(m->st, p, n);
			for (size_t off = 0; off < n; off += 4096)
				sink ^= p[off];
			done += n;
			double now = gs_now_s();
			if (now - t0 > 1.0 && now - last > 0.5) {
				fprintf(stderr, "\rloading %s: %.2f / %.2f GB mapped and touched, %.0f MB/s   ", m->path,
					(double)done / 1e9, (double)total / 1e9, (double)done / 1e6 / (now - t0));
				last = now;
				shown = true;
			}
		}
	}
	if (shown)
		fprintf(stderr, "\rloading %s: %.2f GB mapped and touched in %.1f s (%.0f MB/s)        \n", m->path,
			(double)total / 1e9, gs_now_s() - t0, (double)total / 1e6 / (gs_now_s() - t0));
	(void)sink;
}

enum gs_status gs_model_load_tp(const char *dir, int rank, int size, bool touch_pages, struct gs_model **out)
{
	struct gs_model *m;
	char path[1024];
	enum gs_status st;

	*out = NULL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	snprintf(m->path, sizeof(m->path), "%s", dir);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	st = gs_config_load(path, &m->cfg);
	if (st != GS_OK)
		goto out_free_model;
	st = gs_st_open(dir, &m->st);
	if (st != GS_OK)
		goto out_free_model;
	st = load_weights(m, dir, rank, size);
	if (st != GS_OK)
		goto out_free_model;
	st = gs_vision_load(m, m->st, dir); /* no-op without a vision_config */
	if (st != GS_OK)
		goto out_free_model;
	if (m->n_vocab != m->cfg.vocab_size)
		gs_log(GS_LOG_DEBUG, "%s: embed_tokens has %d rows, config vocab_size %d: using the tensor",
		       dir, m->n_vocab, m->cfg.vocab_size);
	m->embed_scale = embed_scale_of(m->cfg.hidden);
	if (touch_pages)
		touch_weights(m);
	*out = m;
	return GS_OK;

out_free_model:
	gs_model_free(m);
	return st;
}

enum gs_status gs_model_load(const char *dir, bool touch_pages, struct gs_model **out)
{
	return gs_model_load_tp(dir, 0, 1, touch_pages, out);
}

static size_t gains_bytes(const struct gs_model *m)
{
	return sizeof(float) * gs_model_gains_count(&m->cfg);
}

/* Upload the norm gains to dst in m->dev's memory and point every gain there (each keeps its
 * offset in the slab); the host slab is freed. */
static void move_gains(struct gs_model *m, void *dst)
{
	float *dev = dst;
	m->dev.iface->upload(m->dev.ctx, dev, m->gains, gains_bytes(m));
	for (int l = 0; l < m->cfg.n_layers; l++) {
		struct gs_layer_weights *lw = &m->layers[l];
		float **g[] = { &lw->attn_norm, &lw->post_attn_norm, &lw->pre_ffn_norm, &lw->post_ffn_norm, &lw->q_norm, &lw->k_norm };
		for (size_t i = 0; i < 6; i++)
			*g[i] = dev + (*g[i] - m->gains);
	}
	m->final_norm = dev + (m->final_norm - m->gains);
	free(m->gains);
	m->gains = NULL;
}

/* The weights of m, on the host, into one allocation of be's memory. */
static enum gs_status move_weights(struct gs_model *m, struct gs_backend be)
{
	const size_t align = 256;
	size_t L = (size_t)m->cfg.n_layers, total = 0, off = 0;
	bool tied = m->lm_head.data == m->embed.data;
	char *dev;

	/* every weight the forward pass reads, in one list */
	size_t n_t = 2 + 7 * L, k = 0;
	struct gs_tensor **ts = malloc(n_t * sizeof(*ts));
	if (!ts)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	ts[k++] = &m->embed;
	if (!tied)
		ts[k++] = &m->lm_head;
	for (size_t l = 0; l < L; l++) {
		struct gs_layer_weights *lw = &m->layers[l];
		struct gs_tensor *w[] = { &lw->q, &lw->k, &lw->v, &lw->o, &lw->gate, &lw->up, &lw->down };
		for (size_t i = 0; i < 7; i++)
			ts[k++] = w[i];
	}
	for (size_t i = 0; i < k; i++)
		total += ((size_t)ts[i]->rows * (size_t)ts[i]->cols * gs_dtype_size(ts[i]->dtype) + align - 1) / align * align;
	dev = be.iface->alloc(be.ctx, total);
	if (!dev) {
		free(ts);
		return gs_errorf(GS_ERR_NOMEM, "%s: cannot allocate %.2f GiB for the weights of this rank", be.iface->name,
				 (double)total / (1 << 30));
	}
	for (size_t i = 0; i < k; i++) {
		size_t bytes = (size_t)ts[i]->rows * (size_t)ts[i]->cols * gs_dtype_size(ts[i]->dtype);
		be.iface->upload(be.ctx, dev + off, ts[i]->data, bytes);
		ts[i]->data = dev + off;
		off += (bytes + align - 1) / align * align;
	}
	if (tied)
		m->lm_head.data = m->embed.data;
	free(ts);
	/* the host copies are no longer read */
	gs_st_close(m->st);
	m->st = NULL;
	free(m->slab);
	m->slab = NULL;
	m->dev_slab = dev;
	return GS_OK;
}

enum gs_status gs_model_to_backend(struct gs_model *m, struct gs_backend be)
{
	if (be.iface->host_memory)
		return GS_OK;
	if ((m->dev_slab || m->dev_gains) && m->dev.iface != be.iface)
		return gs_errorf(GS_ERR_INVALID_ARG, "model already lives in %s memory", m->dev.iface->name);
	m->dev = be;
	GS_TRY(gs_vision_to_backend(m, be)); /* first: it reads the mmap, which the move closes */
	if (!m->dev_slab) /* drawn on the device already: only the gains are left */
		GS_TRY(move_weights(m, be));
	if (m->gains) {
		m->dev_gains = be.iface->alloc(be.ctx, gains_bytes(m));
		if (!m->dev_gains)
			return gs_errorf(GS_ERR_NOMEM, "%s: cannot allocate the norm gains", be.iface->name);
		move_gains(m, m->dev_gains);
	}
	return GS_OK;
}

void gs_model_free(struct gs_model *m)
{
	if (!m)
		return;
	gs_vision_weights_free(m->vision, &m->dev);
	if (m->dev_slab)
		m->dev.iface->release(m->dev.ctx, m->dev_slab);
	if (m->dev_gains)
		m->dev.iface->release(m->dev.ctx, m->dev_gains);
	gs_st_close(m->st);
	free(m->slab);
	free(m->gains);
	free(m->layers);
	gs_config_free(&m->cfg);
	free(m);
}

double gs_model_layer_flops(const struct gs_model *m)
{
	double f = 0;

	for (int l = 0; l < m->cfg.n_layers; l++) {
		const struct gs_layer_weights *L = &m->layers[l];
		const struct gs_tensor *ws[] = { &L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down };
		for (size_t i = 0; i < sizeof(ws) / sizeof(ws[0]); i++)
			f += 2.0 * (double)ws[i]->rows * (double)ws[i]->cols;
	}
	return f;
}

size_t gs_model_kv_bytes_per_token(const struct gs_config *cfg, int tp, size_t elem_bytes)
{
	int kv_local = cfg->n_kv_heads >= tp ? cfg->n_kv_heads / tp : 1;
	return 2 * (size_t)kv_local * (size_t)cfg->head_dim * elem_bytes;
}

/* ---- synthetic weights ---------------------------------------------------------------- */

static const struct {
	const char *name;
	const char *json;
} gs_presets[] = {
	{ "tiny", "{\"architectures\":[\"Gemma3ForCausalLM\"],\"vocab_size\":262144,\"hidden_size\":64,"
		  "\"intermediate_size\":128,\"num_hidden_layers\":6,\"num_attention_heads\":4,"
		  "\"num_key_value_heads\":2,\"head_dim\":16,\"query_pre_attn_scalar\":16,\"sliding_window\":8,"
		  "\"max_position_embeddings\":32768,\"rope_scaling\":null}" },
	{ "1b", "{\"architectures\":[\"Gemma3ForCausalLM\"],\"vocab_size\":262144,\"hidden_size\":1152,"
		"\"intermediate_size\":6912,\"num_hidden_layers\":26,\"num_attention_heads\":4,"
		"\"num_key_value_heads\":1,\"head_dim\":256,\"query_pre_attn_scalar\":256,\"sliding_window\":512,"
		"\"max_position_embeddings\":32768,\"rope_scaling\":null}" },
	{ "4b", "{\"architectures\":[\"Gemma3ForCausalLM\"],\"vocab_size\":262208,\"hidden_size\":2560,"
		"\"intermediate_size\":10240,\"num_hidden_layers\":34,\"num_attention_heads\":8,"
		"\"num_key_value_heads\":4,\"head_dim\":256,\"query_pre_attn_scalar\":256,\"sliding_window\":1024,"
		"\"max_position_embeddings\":131072,\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":8.0}}" },
	{ "27b", "{\"architectures\":[\"Gemma3ForCausalLM\"],\"vocab_size\":262208,\"hidden_size\":5376,"
		 "\"intermediate_size\":21504,\"num_hidden_layers\":62,\"num_attention_heads\":32,"
		 "\"num_key_value_heads\":16,\"head_dim\":128,\"query_pre_attn_scalar\":168,\"sliding_window\":1024,"
		 "\"max_position_embeddings\":131072,\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":8.0}}" },
};

const char *gs_model_preset_json(const char *shape)
{
	for (size_t i = 0; i < sizeof(gs_presets) / sizeof(gs_presets[0]); i++)
		if (strcmp(gs_presets[i].name, shape) == 0)
			return gs_presets[i].json;
	return NULL;
}

/* A [rows, cols] bf16 matrix carved from *w and filled uniformly in [-a, a] (gs_synth_bf16), by
 * the backend that owns the memory when there is one. */
static struct gs_tensor synth_matrix(const struct gs_backend *be, uint16_t **w, size_t rows, size_t cols, float a,
				     uint64_t seed)
{
	struct gs_tensor t = { GS_DTYPE_BF16, (int64_t)rows, (int64_t)cols, *w };
	if (be)
		be->iface->fill_synth_bf16(be->ctx, *w, rows * cols, a, seed);
	else
		for (size_t i = 0; i < rows * cols; i++)
			(*w)[i] = gs_synth_bf16(seed, i, a);
	*w += rows * cols;
	return t;
}

enum gs_status gs_model_synthetic_tp(const char *shape, uint64_t seed, int rank, int size, struct gs_model **out)
{
	return gs_model_synthetic_on(shape, seed, rank, size, NULL, out);
}

enum gs_status gs_model_synthetic_on(const char *shape, uint64_t seed, int rank, int size, const struct gs_backend *be,
				     struct gs_model **out)
{
	bool dev = be && !be->iface->host_memory;
	const char *json = gs_model_preset_json(shape);
	const struct gs_shard *sh;
	struct gs_model *m;
	enum gs_status st;
	size_t H, D, F, QD, KD, V, L, per_layer, total;
	uint16_t *w;

	*out = NULL;
	if (!json)
		return gs_errorf(GS_ERR_INVALID_ARG, "unknown synthetic shape '%s' (tiny, 1b, 4b, 27b)", shape);
	m = calloc(1, sizeof(*m));
	if (!m)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	snprintf(m->path, sizeof(m->path), "synthetic:%s", shape);
	st = gs_config_parse(json, strlen(json), m->path, &m->cfg);
	if (st != GS_OK)
		goto out_free_model;
	m->n_vocab = m->cfg.vocab_size;
	st = gs_shard_plan(&m->cfg, m->n_vocab, rank, size, &m->shard);
	if (st != GS_OK)
		goto out_free_model;
	st = alloc_gains(m);
	if (st != GS_OK)
		goto out_free_model;
	sh = &m->shard;
	H = (size_t)m->cfg.hidden, D = (size_t)m->cfg.head_dim, L = (size_t)m->cfg.n_layers;
	F = (size_t)sh->n_f, QD = (size_t)sh->n_heads * D, KD = (size_t)sh->n_kv_heads * D;
	V = (size_t)sh->n_vocab;
	per_layer = 2 * QD * H + 2 * KD * H + 3 * F * H;
	total = V * H + L * per_layer;
	if (dev) { /* weights drawn in device memory; the gains follow in gs_model_to_backend */
		m->dev_slab = be->iface->alloc(be->ctx, total * sizeof(uint16_t));
		m->dev = *be;
	} else {
		m->slab = gs_alloc_huge(total * sizeof(uint16_t));
	}
	if (!m->slab && !m->dev_slab) {
		st = gs_errorf(GS_ERR_NOMEM, "synthetic %s: cannot allocate %.2f GB of weights%s", shape,
			       (double)total * 2 / 1e9, dev ? " on the device" : "");
		goto out_free_model;
	}
	w = dev ? m->dev_slab : m->slab;
	seed = seed * 1000003u + (uint64_t)rank;
	m->embed = synth_matrix(be, &w, V, H, 0.05f, seed);
	m->lm_head = m->embed;
	for (size_t l = 0; l < L; l++) {
		struct gs_layer_weights *lw = &m->layers[l];
		size_t FF = (size_t)m->cfg.intermediate, QQ = (size_t)m->cfg.n_heads * D;
		float a = 1.0f / sqrtf((float)H), b = 1.0f / sqrtf((float)FF), c = 1.0f / sqrtf((float)QQ);
		uint64_t sd = seed + 10 * l;
		lw->q = synth_matrix(be, &w, QD, H, a, sd + 1);
		lw->k = synth_matrix(be, &w, KD, H, a, sd + 2);
		lw->v = synth_matrix(be, &w, KD, H, a, sd + 3);
		lw->o = synth_matrix(be, &w, H, QD, c, sd + 4);
		lw->gate = synth_matrix(be, &w, F, H, a, sd + 5);
		lw->up = synth_matrix(be, &w, F, H, a, sd + 6);
		lw->down = synth_matrix(be, &w, H, F, b, sd + 7);
	}
	for (size_t i = 0; i < gs_model_gains_count(&m->cfg); i++)
		m->gains[i] = 1.0f;
	m->weight_bytes = total * sizeof(uint16_t);
	m->embed_scale = embed_scale_of(m->cfg.hidden);
	*out = m;
	return GS_OK;

out_free_model:
	gs_model_free(m);
	return st;
}

enum gs_status gs_model_synthetic(const char *shape, uint64_t seed, struct gs_model **out)
{
	return gs_model_synthetic_tp(shape, seed, 0, 1, out);
}
