#include "gs_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gs_safetensors.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- checkpoint ------------------------------------------------------------------ */

struct load_ctx {
	struct gs_model *m;
	const char *dir;
	int layer; /* -1: not a layer tensor */
};

/* Find a text-decoder tensor by suffix and check dtype and shape. ndim 1: rows only. */
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

static enum gs_status load_matrix(struct load_ctx *c, const char *suffix, int64_t rows, int64_t cols,
				  struct gs_tensor *w)
{
	const struct gs_st_tensor *t;

	GS_TRY(find_tensor(c, suffix, rows, cols, &t));
	w->dtype = t->dtype;
	w->rows = t->shape[0];
	w->cols = t->shape[1];
	w->data = t->data;
	c->m->weight_bytes += t->nbytes;
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
	m->gains = malloc(sizeof(float) * (L * (4 * H + 2 * D) + H));
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

static enum gs_status load_weights(struct gs_model *m, const char *dir)
{
	const struct gs_config *cfg = &m->cfg;
	int64_t H = cfg->hidden, F = cfg->intermediate, D = cfg->head_dim;
	int64_t QD = (int64_t)cfg->n_heads * D, KD = (int64_t)cfg->n_kv_heads * D;
	struct load_ctx c = { .m = m, .dir = dir, .layer = -1 };
	const struct gs_st_tensor *lm;

	GS_TRY(alloc_gains(m));
	GS_TRY(load_matrix(&c, "embed_tokens.weight", -1, H, &m->embed));
	if (m->embed.rows < 1)
		return gs_errorf(GS_ERR_FORMAT, "%s: embed_tokens has no rows", dir);
	m->n_vocab = (int32_t)m->embed.rows;
	m->lm_head = m->embed;
	lm = gs_st_find(m->st, "lm_head.weight");
	if (!lm)
		lm = gs_st_find(m->st, "language_model.lm_head.weight");
	if (lm && !cfg->tie_embeddings) {
		if (lm->ndim != 2 || lm->shape[0] != m->embed.rows || lm->shape[1] != H)
			return gs_errorf(GS_ERR_FORMAT, "%s: lm_head.weight shape does not match embed_tokens", dir);
		m->lm_head = (struct gs_tensor){ lm->dtype, lm->shape[0], lm->shape[1], lm->data };
		m->weight_bytes += lm->nbytes;
	} else if (!lm && !cfg->tie_embeddings) {
		return gs_errorf(GS_ERR_NOT_FOUND, "%s: tie_word_embeddings is false but lm_head.weight is missing", dir);
	}
	GS_TRY(load_gain(&c, "norm.weight", H, m->final_norm));

	for (int l = 0; l < cfg->n_layers; l++) {
		struct gs_layer_weights *lw = &m->layers[l];
		c.layer = l;
		GS_TRY(load_matrix(&c, "self_attn.q_proj.weight", QD, H, &lw->q));
		GS_TRY(load_matrix(&c, "self_attn.k_proj.weight", KD, H, &lw->k));
		GS_TRY(load_matrix(&c, "self_attn.v_proj.weight", KD, H, &lw->v));
		GS_TRY(load_matrix(&c, "self_attn.o_proj.weight", H, QD, &lw->o));
		GS_TRY(load_matrix(&c, "mlp.gate_proj.weight", F, H, &lw->gate));
		GS_TRY(load_matrix(&c, "mlp.up_proj.weight", F, H, &lw->up));
		GS_TRY(load_matrix(&c, "mlp.down_proj.weight", H, F, &lw->down));
		GS_TRY(load_gain(&c, "input_layernorm.weight", H, lw->attn_norm));
		GS_TRY(load_gain(&c, "post_attention_layernorm.weight", H, lw->post_attn_norm));
		GS_TRY(load_gain(&c, "pre_feedforward_layernorm.weight", H, lw->pre_ffn_norm));
		GS_TRY(load_gain(&c, "post_feedforward_layernorm.weight", H, lw->post_ffn_norm));
		GS_TRY(load_gain(&c, "self_attn.q_norm.weight", D, lw->q_norm));
		GS_TRY(load_gain(&c, "self_attn.k_norm.weight", D, lw->k_norm));
	}
	return GS_OK;
}

/* Fault every weight page in now, so the first request does not pay for disk reads;
 * progress on stderr once this has taken more than a second. */
static void touch_weights(struct gs_model *m)
{
	size_t total = 0, done = 0;
	double t0 = now_s(), last = t0;
	volatile unsigned char sink = 0;
	bool shown = false;

	for (size_t i = 0; i < gs_st_count(m->st); i++)
		total += gs_st_at(m->st, i)->nbytes;
	for (size_t i = 0; i < gs_st_count(m->st); i++) {
		const struct gs_st_tensor *t = gs_st_at(m->st, i);
		const unsigned char *p = t->data;
		gs_st_prefetch(m->st, t->data, t->nbytes);
		for (size_t off = 0; off < t->nbytes; off += 4096) {
			sink ^= p[off];
			if ((off & ((1u << 24) - 1)) == 0) {
				double now = now_s();
				if (now - t0 > 1.0 && now - last > 0.5) {
					fprintf(stderr, "\rloading %s: %.2f / %.2f GB touched, %.0f MB/s   ", m->path,
						(double)(done + off) / 1e9, (double)total / 1e9,
						(double)(done + off) / 1e6 / (now - t0));
					last = now;
					shown = true;
				}
			}
		}
		done += t->nbytes;
	}
	if (shown)
		fprintf(stderr, "\rloading %s: %.2f GB mapped and touched in %.1f s (%.0f MB/s)        \n", m->path,
			(double)total / 1e9, now_s() - t0, (double)total / 1e6 / (now_s() - t0));
	(void)sink;
}

enum gs_status gs_model_load(const char *dir, bool touch_pages, struct gs_model **out)
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
	st = load_weights(m, dir);
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

void gs_model_free(struct gs_model *m)
{
	if (!m)
		return;
	gs_st_close(m->st);
	free(m->slab);
	free(m->gains);
	free(m->layers);
	gs_config_free(&m->cfg);
	free(m);
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

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform bf16 values in [-a, a]: cheap and enough to exercise every byte path. */
static void fill_bf16(uint16_t *p, size_t n, float a, uint64_t seed)
{
	uint64_t s = seed;
	for (size_t i = 0; i < n; i++) {
		uint64_t r = splitmix64(&s);
		float u = (float)((double)(r >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
		p[i] = gs_f32_to_bf16(u * a);
	}
}

enum gs_status gs_model_synthetic(const char *shape, uint64_t seed, struct gs_model **out)
{
	const char *json = gs_model_preset_json(shape);
	struct gs_model *m;
	enum gs_status st;
	size_t H, F, QD, KD, V, L, per_layer, total;
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
	st = alloc_gains(m);
	if (st != GS_OK)
		goto out_free_model;
	H = (size_t)m->cfg.hidden, F = (size_t)m->cfg.intermediate, L = (size_t)m->cfg.n_layers;
	QD = (size_t)m->cfg.n_heads * (size_t)m->cfg.head_dim;
	KD = (size_t)m->cfg.n_kv_heads * (size_t)m->cfg.head_dim;
	V = (size_t)m->cfg.vocab_size;
	per_layer = 2 * QD * H + 2 * KD * H + 3 * F * H;
	total = V * H + L * per_layer;
	m->slab = malloc(total * sizeof(uint16_t));
	if (!m->slab) {
		st = gs_errorf(GS_ERR_NOMEM, "synthetic %s: cannot allocate %.2f GB of weights", shape,
			       (double)total * 2 / 1e9);
		goto out_free_model;
	}
	w = m->slab;
	m->n_vocab = (int32_t)V;
	m->embed = (struct gs_tensor){ GS_DTYPE_BF16, (int64_t)V, (int64_t)H, w };
	m->lm_head = m->embed;
	fill_bf16(w, V * H, 0.05f, seed), w += V * H;
	for (size_t l = 0; l < L; l++) {
		struct gs_layer_weights *lw = &m->layers[l];
		float a = 1.0f / sqrtf((float)H), b = 1.0f / sqrtf((float)F), c = 1.0f / sqrtf((float)QD);
		lw->q = (struct gs_tensor){ GS_DTYPE_BF16, (int64_t)QD, (int64_t)H, w };
		fill_bf16(w, QD * H, a, seed + 10 * l + 1), w += QD * H;
		lw->k = (struct gs_tensor){ GS_DTYPE_BF16, (int64_t)KD, (int64_t)H, w };
		fill_bf16(w, KD * H, a, seed + 10 * l + 2), w += KD * H;
		lw->v = (struct gs_tensor){ GS_DTYPE_BF16, (int64_t)KD, (int64_t)H, w };
		fill_bf16(w, KD * H, a, seed + 10 * l + 3), w += KD * H;
		lw->o = (struct gs_tensor){ GS_DTYPE_BF16, (int64_t)H, (int64_t)QD, w };
		fill_bf16(w, H * QD, c, seed + 10 * l + 4), w += H * QD;
		lw->gate = (struct gs_tensor){ GS_DTYPE_BF16, (int64_t)F, (int64_t)H, w };
		fill_bf16(w, F * H, a, seed + 10 * l + 5), w += F * H;
		lw->up = (struct gs_tensor){ GS_DTYPE_BF16, (int64_t)F, (int64_t)H, w };
		fill_bf16(w, F * H, a, seed + 10 * l + 6), w += F * H;
		lw->down = (struct gs_tensor){ GS_DTYPE_BF16, (int64_t)H, (int64_t)F, w };
		fill_bf16(w, H * F, b, seed + 10 * l + 7), w += H * F;
	}
	for (size_t i = 0; i < L * (4 * H + 2 * (size_t)m->cfg.head_dim) + H; i++)
		m->gains[i] = 1.0f;
	m->weight_bytes = total * sizeof(uint16_t);
	m->embed_scale = embed_scale_of(m->cfg.hidden);
	*out = m;
	return GS_OK;

out_free_model:
	gs_model_free(m);
	return st;
}
