/* The KV cache memory: slab allocation and sizes (gs_kvcache.h). */
#include "gs_kvcache.h"

#include <stdlib.h>
#include <string.h>

int32_t gs_kv_global_blocks_for(int32_t max_positions)
{
	return (max_positions + GS_KV_BLOCK - 1) / GS_KV_BLOCK;
}

int32_t gs_kv_ring_blocks_for(int32_t window)
{
	/* History of window - 1 positions can straddle one extra block boundary. */
	return (window - 1 + GS_KV_BLOCK - 1) / GS_KV_BLOCK + 1;
}

int32_t gs_kv_cp_blocks(int32_t C, int32_t k, int32_t first, int32_t c, int32_t g)
{
	const int32_t per = GS_KV_CP_UNIT / GS_KV_BLOCK;
	int32_t units = g / per, rem = g % per, j, n;

	if (C <= 1)
		return g;
	if (k < 1)
		k = 1;
	j = ((c - first) % C + C) % C; /* c's place among the k groups from first */
	if (j >= k)
		return 0;
	n = per * (units / k + (j < units % k));
	if (rem && gs_kv_cp_owner(C, k, first, units * per) == c)
		n += rem;
	return n;
}

size_t gs_kv_seq_bytes(const struct gs_config *cfg, int32_t n_kv_heads, int32_t positions, size_t elem_bytes)
{
	size_t per_pos = 2 * (size_t)n_kv_heads * (size_t)cfg->head_dim * elem_bytes; /* K and V */
	int32_t g = gs_kv_global_blocks_for(positions), ring = gs_kv_ring_blocks_for(cfg->sliding_window), n_global = 0;

	if (ring > g)
		ring = g;
	for (int32_t l = 0; l < cfg->n_layers; l++)
		n_global += !cfg->is_sliding[l];
	return per_pos * GS_KV_BLOCK *
	       ((size_t)n_global * (size_t)g + (size_t)(cfg->n_layers - n_global) * (size_t)ring);
}

size_t gs_kv_elem_bytes(const struct gs_backend *be)
{
	return be && be->iface && be->iface->kv_dtype ? gs_dtype_size(be->iface->kv_dtype(be->ctx)) : 4;
}

size_t gs_kv_block_bytes(const struct gs_config *cfg, int32_t n_kv_heads, bool sliding, size_t elem_bytes)
{
	size_t layers = 0;

	for (int32_t l = 0; l < cfg->n_layers; l++)
		layers += cfg->is_sliding[l] == sliding;
	return 2 * layers * GS_KV_BLOCK * (size_t)n_kv_heads * (size_t)cfg->head_dim * elem_bytes; /* K and V */
}

static void *kv_alloc(const struct gs_kv_cache *c, size_t bytes)
{
	return c->be.iface ? c->be.iface->alloc(c->be.ctx, bytes) : malloc(bytes ? bytes : 1);
}

static void kv_release(const struct gs_kv_cache *c, void *ptr)
{
	if (c->be.iface)
		c->be.iface->release(c->be.ctx, ptr);
	else
		free(ptr);
}

enum gs_status gs_kv_cache_init(struct gs_kv_cache *c, const struct gs_config *cfg, int32_t n_kv_heads,
				int32_t n_global_blocks, int32_t n_local_blocks, const struct gs_backend *be)
{
	size_t per_block;

	memset(c, 0, sizeof(*c));
	if (be)
		c->be = *be;
	c->n_layers = cfg->n_layers;
	c->cp_size = 1;
	c->layer_slot = calloc((size_t)cfg->n_layers, sizeof(*c->layer_slot));
	c->layer_sliding = calloc((size_t)cfg->n_layers, sizeof(*c->layer_sliding));
	if (!c->layer_slot || !c->layer_sliding)
		goto out_nomem;
	c->window = INT32_MAX;
	for (int l = 0; l < cfg->n_layers; l++) {
		c->layer_sliding[l] = cfg->is_sliding[l];
		c->layer_slot[l] = cfg->is_sliding[l] ? c->n_local_layers++ : c->n_global_layers++;
		if (cfg->is_sliding[l] && cfg->window[l] < c->window)
			c->window = cfg->window[l];
	}
	c->ring_blocks = c->n_local_layers ? gs_kv_ring_blocks_for(c->window) : 0;
	if (!c->n_local_layers)
		n_local_blocks = 0;
	if (!c->n_global_layers)
		n_global_blocks = 0;
	c->kd = (size_t)n_kv_heads * (size_t)cfg->head_dim;
	c->dtype = be && be->iface && be->iface->kv_dtype ? be->iface->kv_dtype(be->ctx) : GS_DTYPE_F32;
	GS_ASSERT(c->dtype == GS_DTYPE_F32 || c->dtype == GS_DTYPE_BF16);
	c->elem_bytes = gs_dtype_size(c->dtype);
	c->n_global_blocks = n_global_blocks;
	c->n_local_blocks = n_local_blocks;
	per_block = (size_t)GS_KV_BLOCK * c->kd * c->elem_bytes; /* bytes */
	c->gk = kv_alloc(c, per_block * (size_t)n_global_blocks * (size_t)c->n_global_layers);
	c->gv = kv_alloc(c, per_block * (size_t)n_global_blocks * (size_t)c->n_global_layers);
	c->lk = kv_alloc(c, per_block * (size_t)n_local_blocks * (size_t)c->n_local_layers);
	c->lv = kv_alloc(c, per_block * (size_t)n_local_blocks * (size_t)c->n_local_layers);
	if (!c->gk || !c->gv || !c->lk || !c->lv)
		goto out_nomem;
	c->bytes = 2 * per_block *
		   ((size_t)n_global_blocks * c->n_global_layers + (size_t)n_local_blocks * c->n_local_layers);
	return GS_OK;

out_nomem:
	gs_kv_cache_free(c);
	return gs_errorf(GS_ERR_NOMEM, "cannot allocate a KV cache of %d global + %d local blocks", n_global_blocks,
			 n_local_blocks);
}

void gs_kv_cache_free(struct gs_kv_cache *c)
{
	free(c->layer_slot);
	free(c->layer_sliding);
	kv_release(c, c->gk);
	kv_release(c, c->gv);
	kv_release(c, c->lk);
	kv_release(c, c->lv);
	memset(c, 0, sizeof(*c));
}
