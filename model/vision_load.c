/* The vision tower and projector weights: loaded from a Gemma3ForConditionalGeneration
 * checkpoint in either name scheme, or drawn for benchmarks, and moved to backend memory.
 * Split like the decoder (ARCHITECTURE.md, "Vision tower"): q/k/v and fc1 COLUMN by head /
 * MLP column, out_proj and fc2 ROW (one all-reduce each), everything else MIRRORED. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_model.h"
#include "gs_safetensors.h"
#include "gs_vision.h"

struct vload {
	struct gs_model          *m;
	struct gs_vision_weights *w;
	const struct gs_safetensors *st;
	const char               *dir;
	char                     *own;   /* next free byte of w->own */
	float                    *g;     /* next free float of w->gains */
};

/* Original scheme first, then the transformers >= 4.52 one. */
static const char *const tower_prefix[] = { "vision_tower.vision_model.", "model.vision_tower.vision_model." };
static const char *const proj_prefix[] = { "multi_modal_projector.", "model.multi_modal_projector." };

/* Find a tower (proj false) or projector tensor and check its shape: dims[0..ndim). */
static enum gs_status vfind(struct vload *c, bool proj, const char *suffix, int ndim, const int64_t *dims,
			    const struct gs_st_tensor **out)
{
	const char *const *pre = proj ? proj_prefix : tower_prefix;
	const struct gs_st_tensor *t = NULL;
	char name[256], want[96], got[96];
	int n = 0;

	for (int i = 0; i < 2 && !t; i++) {
		snprintf(name, sizeof(name), "%s%s", pre[i], suffix);
		t = gs_st_find(c->st, name);
	}
	if (!t)
		return gs_errorf(GS_ERR_NOT_FOUND, "%s: vision tensor '%s%s' is missing (also tried '%s%s')", c->dir, pre[0],
				 suffix, pre[1], suffix);
	bool ok = t->ndim == ndim;
	for (int i = 0; ok && i < ndim; i++)
		ok = t->shape[i] == dims[i];
	if (!ok) {
		n = 0;
		for (int i = 0; i < ndim; i++)
			n += snprintf(want + n, sizeof(want) - (size_t)n, "%s%lld", i ? ", " : "", (long long)dims[i]);
		n = 0;
		got[0] = 0;
		for (int i = 0; i < t->ndim; i++)
			n += snprintf(got + n, sizeof(got) - (size_t)n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
		return gs_errorf(GS_ERR_FORMAT, "%s: tensor '%s' has shape [%s] but config.json implies [%s]",
				 gs_st_file_of(c->st, t->shard), t->name, got, want);
	}
	if (t->dtype != GS_DTYPE_BF16 && t->dtype != GS_DTYPE_F16 && t->dtype != GS_DTYPE_F32)
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s", c->dir, t->name, gs_dtype_name(t->dtype));
	*out = t;
	return GS_OK;
}

static float elem_f32(const struct gs_st_tensor *t, size_t i)
{
	float f;
	switch (t->dtype) {
	case GS_DTYPE_BF16: return gs_bf16_to_f32(((const uint16_t *)t->data)[i]);
	case GS_DTYPE_F16: return gs_f16_to_f32(((const uint16_t *)t->data)[i]);
	default: memcpy(&f, (const char *)t->data + 4 * i, 4); return f;
	}
}

/* n floats [off, off + n) of a tensor into the gain slab, plus `one` (1 for a 1 + w gain). */
static enum gs_status vfloats(struct vload *c, bool proj, const char *suffix, int ndim, const int64_t *dims, size_t off,
			      size_t n, float one, float **out)
{
	const struct gs_st_tensor *t;

	GS_TRY(vfind(c, proj, suffix, ndim, dims, &t));
	*out = c->g;
	for (size_t i = 0; i < n; i++)
		c->g[i] = one + elem_f32(t, off + i);
	c->g += n;
	c->w->weight_bytes += n * gs_dtype_size(t->dtype);
	return GS_OK;
}

/* A [rows, cols] weight: COLUMN takes rows [off, off + len) (a view), ROW copies columns
 * [off, off + len) of every row, MIRRORED all of it (a view). */
static enum gs_status vmatrix(struct vload *c, const char *suffix, int64_t rows, int64_t cols, enum gs_split split,
			      int64_t off, int64_t len, struct gs_tensor *w)
{
	const struct gs_st_tensor *t;
	int64_t dims[2] = { rows, cols };
	size_t es;

	GS_TRY(vfind(c, false, suffix, 2, dims, &t));
	es = gs_dtype_size(t->dtype);
	if (split == GS_SPLIT_COLUMN) {
		*w = (struct gs_tensor){ t->dtype, len, cols, (const char *)t->data + (size_t)off * (size_t)cols * es };
	} else if (split == GS_SPLIT_ROW) {
		for (int64_t r = 0; r < rows; r++)
			memcpy(c->own + (size_t)r * (size_t)len * es, (const char *)t->data + ((size_t)r * (size_t)cols + (size_t)off) * es,
			       (size_t)len * es);
		*w = (struct gs_tensor){ t->dtype, rows, len, c->own };
		c->own += (size_t)rows * (size_t)len * es;
	} else {
		*w = (struct gs_tensor){ t->dtype, rows, cols, t->data };
	}
	c->w->weight_bytes += (size_t)w->rows * (size_t)w->cols * es;
	return GS_OK;
}

/* fp32 floats of the gain slab: see struct gs_vision_weights. */
static size_t gains_count(const struct gs_config *cfg, int32_t n_heads, int32_t n_f)
{
	const struct gs_vision_config *v = &cfg->vision;
	size_t Hv = (size_t)v->hidden, QD = (size_t)n_heads * (size_t)(v->hidden / v->n_heads);
	size_t g = (size_t)(v->image_size / v->patch_size), Np = g * g;
	return (size_t)v->n_layers * (6 * Hv + 3 * QD + (size_t)n_f) + Hv + Np * Hv + 2 * Hv + Hv;
}

/* The shares of this rank and the slabs; T must divide the heads and the MLP width. */
static enum gs_status vweights_alloc(struct gs_model *m, size_t own_bytes, struct gs_vision_weights **out)
{
	const struct gs_vision_config *v = &m->cfg.vision;
	int T = m->shard.size;
	struct gs_vision_weights *w;

	*out = NULL;
	if (v->n_heads % T)
		return gs_errorf(GS_ERR_INVALID_ARG,
				 "tensor-parallel degree %d does not divide the %d vision attention heads "
				 "(vision_config.num_attention_heads)", T, v->n_heads);
	if (v->intermediate % T)
		return gs_errorf(GS_ERR_INVALID_ARG,
				 "tensor-parallel degree %d does not divide the vision intermediate_size %d", T,
				 v->intermediate);
	w = calloc(1, sizeof(*w));
	if (!w)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	w->n_heads = v->n_heads / T;
	w->n_f = v->intermediate / T;
	w->gains_count = gains_count(&m->cfg, w->n_heads, w->n_f);
	w->layers = calloc((size_t)v->n_layers, sizeof(*w->layers));
	w->gains = malloc(w->gains_count * sizeof(float));
	w->own = malloc(own_bytes ? own_bytes : 1);
	if (!w->layers || !w->gains || !w->own) {
		gs_vision_weights_free(w, NULL);
		return gs_errorf(GS_ERR_NOMEM, "cannot allocate the vision tower (%zu bytes of copies)", own_bytes);
	}
	*out = w;
	return GS_OK;
}

/* y = x @ W with W = mm_input_projection_weight [Hv, H]: stored transposed as [H, Hv] so the
 * matmul op (y = x · wᵀ) applies it. */
static enum gs_status load_projection(struct vload *c)
{
	const struct gs_vision_config *v = &c->m->cfg.vision;
	int64_t Hv = v->hidden, H = c->m->cfg.hidden, dims[2] = { Hv, H };
	const struct gs_st_tensor *t;
	size_t es;

	GS_TRY(vfind(c, true, "mm_input_projection_weight", 2, dims, &t));
	es = gs_dtype_size(t->dtype);
	for (int64_t i = 0; i < Hv; i++)
		for (int64_t o = 0; o < H; o++)
			memcpy(c->own + ((size_t)o * (size_t)Hv + (size_t)i) * es,
			       (const char *)t->data + ((size_t)i * (size_t)H + (size_t)o) * es, es);
	c->w->proj = (struct gs_tensor){ t->dtype, H, Hv, c->own };
	c->own += (size_t)H * (size_t)Hv * es;
	c->w->weight_bytes += (size_t)H * (size_t)Hv * es;
	return GS_OK;
}

enum gs_status gs_vision_load(struct gs_model *m, const struct gs_safetensors *st, const char *dir)
{
	const struct gs_vision_config *v = &m->cfg.vision;

	if (!v->present)
		return GS_OK;
	int64_t Hv = v->hidden, Fv = v->intermediate, P = v->patch_size, Dv = v->hidden / v->n_heads;
	int64_t g = v->image_size / v->patch_size, Np = g * g, H = m->cfg.hidden;
	int T = m->shard.size, r = m->shard.rank;
	struct vload c = { .m = m, .st = st, .dir = dir };
	enum gs_status s;
	char n[160];
	/* copies: ROW-split out_proj and fc2 at T > 1, and the transposed projection (4 bytes per
	 * element bounds every dtype) */
	size_t own = 4 * (size_t)H * (size_t)Hv;
	if (T > 1)
		own += 4 * (size_t)v->n_layers * (size_t)Hv * ((size_t)(v->n_heads / T) * (size_t)Dv + (size_t)(Fv / T));
	GS_TRY(vweights_alloc(m, own, &c.w));
	struct gs_vision_weights *w = c.w;
	c.own = w->own, c.g = w->gains;
	int64_t QD = (int64_t)w->n_heads * Dv, q0 = (int64_t)r * QD, f0 = (int64_t)r * w->n_f;
	enum gs_split row = T > 1 ? GS_SPLIT_ROW : GS_SPLIT_MIRRORED;
	int64_t d1[1] = { Hv }, dq[1] = { Hv }, df[1] = { Fv }, dpos[2] = { Np, Hv }, dpatch[4] = { Hv, 3, P, P };
	const struct gs_st_tensor *pt;

	/* patch embedding: the conv weight [Hv, 3, P, P] read as the matrix [Hv, 3·P·P] */
	s = vfind(&c, false, "embeddings.patch_embedding.weight", 4, dpatch, &pt);
	if (s != GS_OK)
		goto out_free;
	w->patch = (struct gs_tensor){ pt->dtype, Hv, 3 * P * P, pt->data };
	w->weight_bytes += pt->nbytes;
#define V_TRY(x)                    \
	do {                        \
		s = (x);            \
		if (s != GS_OK)     \
			goto out_free; \
	} while (0)
	V_TRY(vfloats(&c, false, "embeddings.patch_embedding.bias", 1, d1, 0, (size_t)Hv, 0.0f, &w->patch_b));
	V_TRY(vfloats(&c, false, "embeddings.position_embedding.weight", 2, dpos, 0, (size_t)(Np * Hv), 0.0f, &w->pos));
	for (int l = 0; l < v->n_layers; l++) {
		struct gs_vision_layer *L = &w->layers[l];
#define VN(suffix) (snprintf(n, sizeof(n), "encoder.layers.%d.%s", l, suffix), n)
		V_TRY(vfloats(&c, false, VN("layer_norm1.weight"), 1, d1, 0, (size_t)Hv, 0.0f, &L->ln1_w));
		V_TRY(vfloats(&c, false, VN("layer_norm1.bias"), 1, d1, 0, (size_t)Hv, 0.0f, &L->ln1_b));
		V_TRY(vmatrix(&c, VN("self_attn.q_proj.weight"), Hv, Hv, GS_SPLIT_COLUMN, q0, QD, &L->q));
		V_TRY(vmatrix(&c, VN("self_attn.k_proj.weight"), Hv, Hv, GS_SPLIT_COLUMN, q0, QD, &L->k));
		V_TRY(vmatrix(&c, VN("self_attn.v_proj.weight"), Hv, Hv, GS_SPLIT_COLUMN, q0, QD, &L->v));
		V_TRY(vfloats(&c, false, VN("self_attn.q_proj.bias"), 1, dq, (size_t)q0, (size_t)QD, 0.0f, &L->q_b));
		V_TRY(vfloats(&c, false, VN("self_attn.k_proj.bias"), 1, dq, (size_t)q0, (size_t)QD, 0.0f, &L->k_b));
		V_TRY(vfloats(&c, false, VN("self_attn.v_proj.bias"), 1, dq, (size_t)q0, (size_t)QD, 0.0f, &L->v_b));
		V_TRY(vmatrix(&c, VN("self_attn.out_proj.weight"), Hv, Hv, row, q0, QD, &L->o));
		V_TRY(vfloats(&c, false, VN("self_attn.out_proj.bias"), 1, d1, 0, (size_t)Hv, 0.0f, &L->o_b));
		V_TRY(vfloats(&c, false, VN("layer_norm2.weight"), 1, d1, 0, (size_t)Hv, 0.0f, &L->ln2_w));
		V_TRY(vfloats(&c, false, VN("layer_norm2.bias"), 1, d1, 0, (size_t)Hv, 0.0f, &L->ln2_b));
		V_TRY(vmatrix(&c, VN("mlp.fc1.weight"), Fv, Hv, GS_SPLIT_COLUMN, f0, w->n_f, &L->fc1));
		V_TRY(vfloats(&c, false, VN("mlp.fc1.bias"), 1, df, (size_t)f0, (size_t)w->n_f, 0.0f, &L->fc1_b));
		V_TRY(vmatrix(&c, VN("mlp.fc2.weight"), Hv, Fv, row, f0, w->n_f, &L->fc2));
		V_TRY(vfloats(&c, false, VN("mlp.fc2.bias"), 1, d1, 0, (size_t)Hv, 0.0f, &L->fc2_b));
#undef VN
	}
	V_TRY(vfloats(&c, false, "post_layernorm.weight", 1, d1, 0, (size_t)Hv, 0.0f, &w->post_w));
	V_TRY(vfloats(&c, false, "post_layernorm.bias", 1, d1, 0, (size_t)Hv, 0.0f, &w->post_b));
	V_TRY(vfloats(&c, true, "mm_soft_emb_norm.weight", 1, d1, 0, (size_t)Hv, 1.0f, &w->mm_norm));
	V_TRY(load_projection(&c));
#undef V_TRY
	GS_ASSERT((size_t)(c.g - w->gains) == w->gains_count && (size_t)(c.own - (char *)w->own) <= own);
	m->vision = w;
	m->weight_bytes += w->weight_bytes;
	return GS_OK;

out_free:
	gs_vision_weights_free(w, NULL);
	return s;
}

/* The SigLIP-So400m/14 tower at 896 of Gemma 3 4B/12B/27B (reference/gemma3.md §1.3), for
 * synthetic models; the text part only satisfies the parser. */
static const char gs_vision_4b_json[] =
	"{\"architectures\":[\"Gemma3ForConditionalGeneration\"],\"text_config\":{\"hidden_size\":2560,"
	"\"intermediate_size\":10240,\"num_hidden_layers\":1},\"vision_config\":{\"hidden_size\":1152,"
	"\"image_size\":896,\"intermediate_size\":4304,\"model_type\":\"siglip_vision_model\","
	"\"num_attention_heads\":16,\"num_hidden_layers\":27,\"patch_size\":14,\"vision_use_head\":false},"
	"\"mm_tokens_per_image\":256}";

static struct gs_tensor synth(uint16_t **p, int64_t rows, int64_t cols, float a, uint64_t seed)
{
	struct gs_tensor t = { GS_DTYPE_BF16, rows, cols, *p };
	for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++)
		(*p)[i] = gs_synth_bf16(seed, i, a);
	*p += (size_t)rows * (size_t)cols;
	return t;
}

enum gs_status gs_vision_synthetic(struct gs_model *m, uint64_t seed)
{
	struct gs_config tmp;
	struct gs_vision_weights *w;

	if (!m->cfg.vision.present) {
		GS_TRY(gs_config_parse(gs_vision_4b_json, strlen(gs_vision_4b_json), "synthetic vision", &tmp));
		m->cfg.vision = tmp.vision;
		gs_config_free(&tmp);
	}
	const struct gs_vision_config *v = &m->cfg.vision;
	int64_t Hv = v->hidden, Dv = v->hidden / v->n_heads, P = v->patch_size, H = m->cfg.hidden;
	int64_t g = v->image_size / v->patch_size, Np = g * g;
	int64_t QD = (int64_t)(v->n_heads / m->shard.size) * Dv, F = v->intermediate / m->shard.size;
	size_t per_layer = (size_t)(3 * QD * Hv + Hv * QD + 2 * F * Hv);
	size_t total = (size_t)v->n_layers * per_layer + (size_t)(Hv * 3 * P * P) + (size_t)(H * Hv);

	GS_TRY(vweights_alloc(m, total * 2, &w));
	uint16_t *p = w->own;
	float *gp = w->gains;
	float a = 1.0f / sqrtf((float)Hv), b = 1.0f / sqrtf((float)v->intermediate);
	seed = seed * 1000003u + (uint64_t)m->shard.rank + 7777;
	w->patch = synth(&p, Hv, 3 * P * P, 1.0f / sqrtf((float)(3 * P * P)), seed);
	w->proj = synth(&p, H, Hv, a, seed + 1);
	for (int l = 0; l < v->n_layers; l++) {
		struct gs_vision_layer *L = &w->layers[l];
		uint64_t sd = seed + 10 * (uint64_t)(l + 1);
		L->q = synth(&p, QD, Hv, a, sd + 1);
		L->k = synth(&p, QD, Hv, a, sd + 2);
		L->v = synth(&p, QD, Hv, a, sd + 3);
		L->o = synth(&p, Hv, QD, a, sd + 4);
		L->fc1 = synth(&p, F, Hv, a, sd + 5);
		L->fc2 = synth(&p, Hv, F, b, sd + 6);
	}
	/* gains: LayerNorm weights 1, biases 0, small positions, mm_norm 1 */
	for (size_t i = 0; i < w->gains_count; i++)
		gp[i] = 0.0f;
	float *g0 = gp;
	w->patch_b = gp, gp += Hv;
	w->pos = gp, gp += Np * Hv;
	for (size_t i = 0; i < (size_t)(Np * Hv); i++)
		w->pos[i] = gs_bf16_to_f32(gs_synth_bf16(seed + 3, i, 0.02f));
	for (int l = 0; l < v->n_layers; l++) {
		struct gs_vision_layer *L = &w->layers[l];
		L->ln1_w = gp, gp += Hv;
		L->ln1_b = gp, gp += Hv;
		L->q_b = gp, gp += QD;
		L->k_b = gp, gp += QD;
		L->v_b = gp, gp += QD;
		L->o_b = gp, gp += Hv;
		L->ln2_w = gp, gp += Hv;
		L->ln2_b = gp, gp += Hv;
		L->fc1_b = gp, gp += F;
		L->fc2_b = gp, gp += Hv;
		for (int64_t i = 0; i < Hv; i++)
			L->ln1_w[i] = L->ln2_w[i] = 1.0f;
	}
	w->post_w = gp, gp += Hv;
	w->post_b = gp, gp += Hv;
	w->mm_norm = gp, gp += Hv;
	for (int64_t i = 0; i < Hv; i++)
		w->post_w[i] = w->mm_norm[i] = 1.0f;
	GS_ASSERT((size_t)(gp - g0) == w->gains_count);
	w->weight_bytes = total * 2 + w->gains_count * 4;
	m->vision = w;
	m->weight_bytes += w->weight_bytes;
	return GS_OK;
}

enum gs_status gs_vision_synthetic_model(const char *shape, uint64_t seed, int rank, int size, struct gs_model **out)
{
	const char *json = gs_model_preset_json(shape);
	struct gs_model *m;
	enum gs_status st;

	*out = NULL;
	if (!json)
		return gs_errorf(GS_ERR_INVALID_ARG, "unknown synthetic shape '%s' (tiny, 1b, 4b, 27b)", shape);
	if (size < 1 || rank < 0 || rank >= size)
		return gs_errorf(GS_ERR_INVALID_ARG, "bad tensor-parallel rank %d of %d", rank, size);
	m = calloc(1, sizeof(*m));
	if (!m)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	snprintf(m->path, sizeof(m->path), "synthetic:%s (vision tower only)", shape);
	m->shard.rank = rank, m->shard.size = size;
	st = gs_config_parse(json, strlen(json), m->path, &m->cfg);
	if (st == GS_OK)
		st = gs_vision_synthetic(m, seed);
	if (st != GS_OK) {
		gs_model_free(m);
		return st;
	}
	*out = m;
	return GS_OK;
}

/* Every tensor of w, for the move. */
static size_t vtensors(struct gs_vision_weights *w, int n_layers, struct gs_tensor **ts)
{
	size_t k = 0;
	ts[k++] = &w->patch;
	ts[k++] = &w->proj;
	for (int l = 0; l < n_layers; l++) {
		struct gs_vision_layer *L = &w->layers[l];
		struct gs_tensor *x[] = { &L->q, &L->k, &L->v, &L->o, &L->fc1, &L->fc2 };
		for (size_t i = 0; i < 6; i++)
			ts[k++] = x[i];
	}
	return k;
}

enum gs_status gs_vision_to_backend(struct gs_model *m, struct gs_backend be)
{
	struct gs_vision_weights *w = m->vision;
	const size_t align = 256;
	size_t total = 0, off = 0, n;
	struct gs_tensor **ts;
	char *dev;
	float *dg;

	if (!w || be.iface->host_memory || w->dev_slab)
		return GS_OK;
	ts = malloc((2 + 6 * (size_t)m->cfg.vision.n_layers) * sizeof(*ts));
	if (!ts)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	n = vtensors(w, m->cfg.vision.n_layers, ts);
	for (size_t i = 0; i < n; i++)
		total += ((size_t)ts[i]->rows * (size_t)ts[i]->cols * gs_dtype_size(ts[i]->dtype) + align - 1) / align * align;
	dev = be.iface->alloc(be.ctx, total);
	dg = be.iface->alloc(be.ctx, w->gains_count * sizeof(float));
	if (!dev || !dg) {
		if (dev)
			be.iface->release(be.ctx, dev);
		if (dg)
			be.iface->release(be.ctx, dg);
		free(ts);
		return gs_errorf(GS_ERR_NOMEM, "%s: cannot allocate %.2f GiB for the vision tower", be.iface->name,
				 (double)total / (1 << 30));
	}
	for (size_t i = 0; i < n; i++) {
		size_t bytes = (size_t)ts[i]->rows * (size_t)ts[i]->cols * gs_dtype_size(ts[i]->dtype);
		be.iface->upload(be.ctx, dev + off, ts[i]->data, bytes);
		ts[i]->data = dev + off;
		off += (bytes + align - 1) / align * align;
	}
	free(ts);
	/* every gain keeps its offset in the slab */
	be.iface->upload(be.ctx, dg, w->gains, w->gains_count * sizeof(float));
#define MOVE(p) ((p) = dg + ((p) - w->gains))
	MOVE(w->patch_b), MOVE(w->pos), MOVE(w->post_w), MOVE(w->post_b), MOVE(w->mm_norm);
	for (int l = 0; l < m->cfg.vision.n_layers; l++) {
		struct gs_vision_layer *L = &w->layers[l];
		MOVE(L->ln1_w), MOVE(L->ln1_b), MOVE(L->q_b), MOVE(L->k_b), MOVE(L->v_b), MOVE(L->o_b);
		MOVE(L->ln2_w), MOVE(L->ln2_b), MOVE(L->fc1_b), MOVE(L->fc2_b);
	}
#undef MOVE
	free(w->gains);
	free(w->own);
	w->gains = NULL;
	w->own = NULL;
	w->dev_slab = dev;
	w->dev_gains = dg;
	return GS_OK;
}

void gs_vision_weights_free(struct gs_vision_weights *w, const struct gs_backend *dev)
{
	if (!w)
		return;
	if (dev && dev->iface) {
		if (w->dev_slab)
			dev->iface->release(dev->ctx, w->dev_slab);
		if (w->dev_gains)
			dev->iface->release(dev->ctx, w->dev_gains);
	}
	free(w->gains);
	free(w->own);
	free(w->layers);
	free(w);
}

double gs_vision_flops(const struct gs_model *m)
{
	const struct gs_vision_config *v = &m->cfg.vision;
	double Hv = v->hidden, F = v->intermediate, P = v->patch_size, g = v->image_size / v->patch_size;
	double Np = g * g, mm = v->mm_tokens_per_image, H = m->cfg.hidden;

	if (!v->present)
		return 0;
	return 2 * Np * Hv * 3 * P * P                                   /* patch embedding */
	       + v->n_layers * (2 * Np * (4 * Hv * Hv + 2 * Hv * F)       /* q, k, v, out, fc1, fc2 */
				+ 4 * Np * Np * Hv)                        /* Q·Kᵀ and P·V */
	       + 2 * mm * Hv * H;                                         /* projector */
}
