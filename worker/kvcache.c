#include "gs_kvcache.h"

#include <stdlib.h>
#include <string.h>

int32_t gs_kv_global_blocks_for(int32_t max_positions)
{
	return (max_positions + GS_KV_BLOCK - 1) / GS_KV_BLOCK;
}

static int32_t ring_blocks_for(int32_t window)
{
	/* History of window - 1 positions can straddle one extra block boundary. */
	return (window - 1 + GS_KV_BLOCK - 1) / GS_KV_BLOCK + 1;
}

size_t gs_kv_seq_bytes(const struct gs_config *cfg, int32_t n_kv_heads, int32_t positions, size_t elem_bytes)
{
	size_t per_pos = 2 * (size_t)n_kv_heads * (size_t)cfg->head_dim * elem_bytes; /* K and V */
	int32_t g = gs_kv_global_blocks_for(positions), ring = ring_blocks_for(cfg->sliding_window), n_global = 0;

	if (ring > g)
		ring = g;
	for (int32_t l = 0; l < cfg->n_layers; l++)
		n_global += !cfg->is_sliding[l];
	return per_pos * GS_KV_BLOCK *
	       ((size_t)n_global * (size_t)g + (size_t)(cfg->n_layers - n_global) * (size_t)ring);
}

int32_t gs_kv_ring_blocks(const struct gs_kv_pool *p)
{
	return p->n_local_layers ? p->ring_blocks : 0;
}

void gs_kv_pool_size_for(const struct gs_config *cfg, int32_t n_seqs, int32_t max_positions,
			 int32_t *n_global_blocks, int32_t *n_local_blocks)
{
	int32_t ring = ring_blocks_for(cfg->sliding_window), g = gs_kv_global_blocks_for(max_positions);

	/* A sequence shorter than the window never needs more ring blocks than positions. */
	if (ring > g)
		ring = g;
	*n_global_blocks = n_seqs * g;
	*n_local_blocks = n_seqs * ring;
}

static void *kv_alloc(const struct gs_kv_pool *p, size_t bytes)
{
	return p->be.iface ? p->be.iface->alloc(p->be.ctx, bytes) : malloc(bytes ? bytes : 1);
}

static void kv_release(const struct gs_kv_pool *p, void *ptr)
{
	if (p->be.iface)
		p->be.iface->release(p->be.ctx, ptr);
	else
		free(ptr);
}

enum gs_status gs_kv_pool_init(struct gs_kv_pool *p, const struct gs_config *cfg, int32_t n_kv_heads,
			       int32_t n_global_blocks, int32_t n_local_blocks, const struct gs_backend *be)
{
	size_t per_block;

	memset(p, 0, sizeof(*p));
	if (be)
		p->be = *be;
	p->n_layers = cfg->n_layers;
	p->layer_slot = calloc((size_t)cfg->n_layers, sizeof(*p->layer_slot));
	p->layer_sliding = calloc((size_t)cfg->n_layers, sizeof(*p->layer_sliding));
	if (!p->layer_slot || !p->layer_sliding)
		goto out_nomem;
	p->window = INT32_MAX;
	for (int l = 0; l < cfg->n_layers; l++) {
		p->layer_sliding[l] = cfg->is_sliding[l];
		p->layer_slot[l] = cfg->is_sliding[l] ? p->n_local_layers++ : p->n_global_layers++;
		if (cfg->is_sliding[l] && cfg->window[l] < p->window)
			p->window = cfg->window[l];
	}
	p->ring_blocks = p->n_local_layers ? ring_blocks_for(p->window) : 0;
	if (!p->n_local_layers)
		n_local_blocks = 0;
	if (!p->n_global_layers)
		n_global_blocks = 0;
	p->kd = (size_t)n_kv_heads * (size_t)cfg->head_dim;
	p->dtype = be && be->iface && be->iface->kv_dtype ? be->iface->kv_dtype(be->ctx) : GS_DTYPE_F32;
	GS_ASSERT(p->dtype == GS_DTYPE_F32 || p->dtype == GS_DTYPE_BF16);
	p->elem_bytes = gs_dtype_size(p->dtype);
	p->n_global_blocks = n_global_blocks;
	p->n_local_blocks = n_local_blocks;
	per_block = (size_t)GS_KV_BLOCK * p->kd * p->elem_bytes; /* bytes */
	p->gk = kv_alloc(p, per_block * (size_t)n_global_blocks * (size_t)p->n_global_layers);
	p->gv = kv_alloc(p, per_block * (size_t)n_global_blocks * (size_t)p->n_global_layers);
	p->lk = kv_alloc(p, per_block * (size_t)n_local_blocks * (size_t)p->n_local_layers);
	p->lv = kv_alloc(p, per_block * (size_t)n_local_blocks * (size_t)p->n_local_layers);
	p->gfree = malloc(sizeof(int32_t) * ((size_t)n_global_blocks + 1));
	p->lfree = malloc(sizeof(int32_t) * ((size_t)n_local_blocks + 1));
	if (!p->gk || !p->gv || !p->lk || !p->lv || !p->gfree || !p->lfree)
		goto out_nomem;
	/* Stacks popped from the end: block 0 comes out first. */
	for (int32_t i = 0; i < n_global_blocks; i++)
		p->gfree[i] = n_global_blocks - 1 - i;
	for (int32_t i = 0; i < n_local_blocks; i++)
		p->lfree[i] = n_local_blocks - 1 - i;
	p->n_gfree = n_global_blocks;
	p->n_lfree = n_local_blocks;
	p->bytes = 2 * per_block *
		   ((size_t)n_global_blocks * p->n_global_layers + (size_t)n_local_blocks * p->n_local_layers);
	return GS_OK;

out_nomem:
	gs_kv_pool_free(p);
	return gs_errorf(GS_ERR_NOMEM, "cannot allocate a KV pool of %d global + %d local blocks", n_global_blocks,
			 n_local_blocks);
}

void gs_kv_pool_free(struct gs_kv_pool *p)
{
	free(p->layer_slot);
	free(p->layer_sliding);
	kv_release(p, p->gk);
	kv_release(p, p->gv);
	kv_release(p, p->lk);
	kv_release(p, p->lv);
	free(p->gfree);
	free(p->lfree);
	memset(p, 0, sizeof(*p));
}

static int32_t ring_for(const struct gs_kv_pool *p, int32_t max_positions)
{
	int32_t g = gs_kv_global_blocks_for(max_positions);
	return p->ring_blocks < g ? p->ring_blocks : g;
}

int32_t gs_kv_global_free(const struct gs_kv_pool *p)
{
	return p->n_gfree - p->g_reserved;
}

int32_t gs_kv_local_free(const struct gs_kv_pool *p)
{
	return p->n_lfree;
}

bool gs_kv_can_admit(const struct gs_kv_pool *p, int32_t max_positions)
{
	int32_t g = p->n_global_layers ? gs_kv_global_blocks_for(max_positions) : 0;
	int32_t r = p->n_local_layers ? ring_for(p, max_positions) : 0;
	return g <= gs_kv_global_free(p) && r <= gs_kv_local_free(p);
}

bool gs_kv_could_ever_admit(const struct gs_kv_pool *p, int32_t max_positions)
{
	int32_t g = p->n_global_layers ? gs_kv_global_blocks_for(max_positions) : 0;
	int32_t r = p->n_local_layers ? ring_for(p, max_positions) : 0;
	return max_positions > 0 && g <= p->n_global_blocks && r <= p->n_local_blocks;
}

enum gs_status gs_kv_seq_admit(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t max_positions)
{
	int32_t g = gs_kv_global_blocks_for(max_positions), r = p->n_local_layers ? ring_for(p, max_positions) : 0;

	memset(s, 0, sizeof(*s));
	if (!gs_kv_can_admit(p, max_positions))
		return gs_errorf(GS_ERR_RANGE, "KV cache full: %d positions need %d global + %d local blocks, %d + %d free",
				 max_positions, p->n_global_layers ? g : 0, r, gs_kv_global_free(p), gs_kv_local_free(p));
	s->gtable = malloc(sizeof(int32_t) * (size_t)(g ? g : 1));
	s->ring = malloc(sizeof(int32_t) * (size_t)(p->ring_blocks ? p->ring_blocks : 1));
	if (!s->gtable || !s->ring) {
		free(s->gtable);
		free(s->ring);
		memset(s, 0, sizeof(*s));
		return gs_errorf(GS_ERR_NOMEM, "out of memory for a block table");
	}
	s->g_cap = g;
	s->max_positions = max_positions;
	if (p->n_global_layers) {
		s->g_reserved = g;
		p->g_reserved += g;
	}
	/* The ring is taken whole: its size does not depend on how far the sequence gets. A ring
	 * shorter than ring_blocks (short sequence) is indexed modulo ring_blocks, so fill the
	 * unused slots with the same blocks again: positions never reach them. */
	for (int32_t i = 0; i < r; i++)
		s->ring[i] = p->lfree[--p->n_lfree];
	for (int32_t i = r; i < p->ring_blocks; i++)
		s->ring[i] = r ? s->ring[i % r] : -1;
	return GS_OK;
}

enum gs_status gs_kv_seq_prepare(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t n)
{
	int32_t need;

	if ((int64_t)s->n_past + n > s->max_positions)
		return gs_errorf(GS_ERR_RANGE, "sequence would reach %lld positions, %d reserved",
				 (long long)s->n_past + n, s->max_positions);
	if (!p->n_global_layers)
		return GS_OK;
	need = gs_kv_global_blocks_for(s->n_past + n);
	while (s->g_used < need) {
		GS_ASSERT(s->g_reserved > 0 && p->n_gfree > 0);
		s->gtable[s->g_used++] = p->gfree[--p->n_gfree];
		s->g_reserved--;
		p->g_reserved--;
	}
	return GS_OK;
}

void gs_kv_seq_release(struct gs_kv_pool *p, struct gs_kv_seq *s)
{
	int32_t r;

	if (!s->gtable)
		return;
	for (int32_t i = 0; i < s->g_used; i++)
		p->gfree[p->n_gfree++] = s->gtable[i];
	p->g_reserved -= s->g_reserved;
	r = p->n_local_layers ? ring_for(p, s->max_positions) : 0;
	for (int32_t i = 0; i < r; i++)
		p->lfree[p->n_lfree++] = s->ring[i];
	free(s->gtable);
	free(s->ring);
	memset(s, 0, sizeof(*s));
}
