/* gs_vision_encode: the SigLIP tower and the Gemma 3 projector over one image at a time, on the
 * backend's ops (reference/gemma3.md §4.2, §4.3). Every step below is one op; the two ROW-split
 * matmuls of a layer are each followed by the layer's only all-reduces. */
#include "gs_vision.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gs_model.h"

struct gs_vision {
	const struct gs_model *m;
	struct gs_backend      be;
	const struct gs_comm  *comm;    /* NULL when T = 1 */
	int32_t g;                      /* patches per side */
	int32_t np;                     /* patches: g² */
	/* backend memory, one image */
	uint8_t *px;                    /* [S·S·3] */
	float *x;                       /* [Np, Hv] residual stream */
	float *xn;                      /* [Np, Hv] normed input of a block */
	float *q, *k, *v, *att;         /* [Np, (Nv/T)·Dv] this rank's heads */
	float *o;                       /* [Np, Hv] block output (partial sums before the all-reduce) */
	float *f;                       /* [Np, max(Fv/T, 3·P·P)] MLP columns; the unfolded patches */
	float *pool;                    /* [mm, Hv] pooled tokens */
	float *slab;                    /* behind every float buffer */
};

enum gs_status gs_vision_create(const struct gs_model *m, struct gs_backend be, const struct gs_comm *comm,
				struct gs_vision **out)
{
	const struct gs_vision_config *c = &m->cfg.vision;
	const struct gs_backend_i *b = be.iface;
	struct gs_vision *v;

	*out = NULL;
	if (!c->present || !m->vision)
		return gs_errorf(GS_ERR_INVALID_ARG, "%s has no vision tower (text-only model)", m->path);
	if (!b->layernorm || !b->add_rows || !b->gelu || !b->attention_full || !b->avgpool || !b->patches)
		return gs_errorf(GS_ERR_UNSUPPORTED, "backend %s lacks the vision tower's ops", b->name);
	if (!b->host_memory && m->vision->gains)
		return gs_errorf(GS_ERR_INVALID_ARG, "the vision weights are not in %s memory (gs_model_to_backend first)",
				 b->name);
	v = calloc(1, sizeof(*v));
	if (!v)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	v->m = m, v->be = be, v->comm = comm;
	v->g = c->image_size / c->patch_size;
	v->np = v->g * v->g;
	size_t Np = (size_t)v->np, Hv = (size_t)c->hidden;
	size_t QD = (size_t)m->vision->n_heads * (size_t)(c->hidden / c->n_heads);
	size_t F = (size_t)m->vision->n_f, PP3 = 3 * (size_t)c->patch_size * (size_t)c->patch_size;
	size_t FW = F > PP3 ? F : PP3, mm = (size_t)c->mm_tokens_per_image;
	v->slab = b->alloc(be.ctx, sizeof(float) * (Np * (3 * Hv + 4 * QD + FW) + mm * Hv));
	v->px = b->alloc(be.ctx, (size_t)c->image_size * (size_t)c->image_size * 3);
	if (!v->slab || !v->px) {
		gs_vision_free(v);
		return gs_errorf(GS_ERR_NOMEM, "cannot allocate the vision tower's activations (%zu patches)", Np);
	}
	float *p = v->slab;
	v->x = p, p += Np * Hv;
	v->xn = p, p += Np * Hv;
	v->o = p, p += Np * Hv;
	v->q = p, p += Np * QD;
	v->k = p, p += Np * QD;
	v->v = p, p += Np * QD;
	v->att = p, p += Np * QD;
	v->f = p, p += Np * FW;
	v->pool = p;
	*out = v;
	return GS_OK;
}

void gs_vision_free(struct gs_vision *v)
{
	if (!v)
		return;
	if (v->slab)
		v->be.iface->release(v->be.ctx, v->slab);
	if (v->px)
		v->be.iface->release(v->be.ctx, v->px);
	free(v);
}

/* Sum partial results over the TP group (no-op when T = 1). */
static enum gs_status reduce(struct gs_vision *v, float *buf, size_t n)
{
	return v->comm ? gs_comm_allreduce_f32(v->comm, buf, n) : GS_OK;
}

static enum gs_status encode_one(struct gs_vision *v, const uint8_t *pixels, float *out)
{
	const struct gs_vision_config *c = &v->m->cfg.vision;
	const struct gs_vision_weights *w = v->m->vision;
	const struct gs_backend_i *be = v->be.iface;
	void *bc = v->be.ctx;
	int Np = v->np, Hv = c->hidden, Dv = c->hidden / c->n_heads, Nh = w->n_heads, F = w->n_f;
	int QD = Nh * Dv, side = 1, mm = c->mm_tokens_per_image;
	float eps = (float)c->ln_eps;

	while (side * side < mm)
		side++;

	/* Patch embedding: normalised, unfolded patches times the conv weight, plus bias and the
	 * learned position of each patch. */
	be->upload(bc, v->px, pixels, (size_t)c->image_size * (size_t)c->image_size * 3);
	be->patches(bc, v->f, v->px, c->image_size, c->patch_size);
	be->matmul(bc, v->x, v->f, &w->patch, Np);
	be->add_rows(bc, v->x, w->pos, w->patch_b, Np, Hv);

	for (int l = 0; l < c->n_layers; l++) {
		const struct gs_vision_layer *L = &w->layers[l];

		/* Attention block: pre-LayerNorm, biased projections of this rank's heads, every patch
		 * sees every patch, out_proj ROW-split then its bias once after the sum. */
		be->layernorm(bc, v->xn, v->x, L->ln1_w, L->ln1_b, Np, Hv, eps);
		be->matmul(bc, v->q, v->xn, &L->q, Np);
		be->matmul(bc, v->k, v->xn, &L->k, Np);
		be->matmul(bc, v->v, v->xn, &L->v, Np);
		be->add_rows(bc, v->q, NULL, L->q_b, Np, QD);
		be->add_rows(bc, v->k, NULL, L->k_b, Np, QD);
		be->add_rows(bc, v->v, NULL, L->v_b, Np, QD);
		be->attention_full(bc, v->att, v->q, v->k, v->v, Np, Nh, Dv, (float)(1.0 / sqrt((double)Dv)));
		be->matmul(bc, v->o, v->att, &L->o, Np);
		GS_TRY(reduce(v, v->o, (size_t)Np * Hv));
		be->add_rows(bc, v->x, v->o, L->o_b, Np, Hv);

		/* MLP block: fc1 (COLUMN) + bias, tanh GELU, fc2 (ROW) + bias after the sum. */
		be->layernorm(bc, v->xn, v->x, L->ln2_w, L->ln2_b, Np, Hv, eps);
		be->matmul(bc, v->f, v->xn, &L->fc1, Np);
		be->add_rows(bc, v->f, NULL, L->fc1_b, Np, F);
		be->gelu(bc, v->f, v->f, (size_t)Np * F);
		be->matmul(bc, v->o, v->f, &L->fc2, Np);
		GS_TRY(reduce(v, v->o, (size_t)Np * Hv));
		be->add_rows(bc, v->x, v->o, L->fc2_b, Np, Hv);
	}
	be->layernorm(bc, v->x, v->x, w->post_w, w->post_b, Np, Hv, eps);

	/* Projector: k×k average pool to mm tokens (token r·side + c), RMSNorm (1 + w) with the
	 * tower's eps, then x @ W (proj holds Wᵀ). */
	be->avgpool(bc, v->pool, v->x, v->g, v->g / side, Hv);
	be->rmsnorm(bc, v->pool, v->pool, w->mm_norm, mm, Hv, eps);
	be->matmul(bc, out, v->pool, &w->proj, mm);
	return GS_OK;
}

enum gs_status gs_vision_encode(struct gs_vision *v, const uint8_t *pixels, int32_t n, float *out)
{
	const struct gs_vision_config *c = &v->m->cfg.vision;
	size_t img = (size_t)c->image_size * (size_t)c->image_size * 3;
	size_t rows = (size_t)c->mm_tokens_per_image * (size_t)v->m->cfg.hidden;

	for (int32_t i = 0; i < n; i++)
		GS_TRY(encode_one(v, pixels + (size_t)i * img, out + (size_t)i * rows));
	return GS_OK;
}
