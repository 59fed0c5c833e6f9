/* The engine's KV block pool: free lists, admission reservations, blocks taken as sequences
 * grow (gs_kvpool.h). */
#include "gs_kvpool.h"

#include <stdlib.h>
#include <string.h>

void gs_kv_pool_size_for(const struct gs_config *cfg, int32_t n_seqs, int32_t max_positions,
			 int32_t *n_global_blocks, int32_t *n_local_blocks)
{
	int32_t ring = gs_kv_ring_blocks_for(cfg->sliding_window), g = gs_kv_global_blocks_for(max_positions);

	/* A sequence shorter than the window never needs more ring blocks than positions. */
	if (ring > g)
		ring = g;
	*n_global_blocks = n_seqs * g;
	*n_local_blocks = n_seqs * ring;
}

enum gs_status gs_kv_pool_init(struct gs_kv_pool *p, const struct gs_config *cfg, int32_t n_kv_heads,
			       int32_t n_global_blocks, int32_t n_local_blocks, const struct gs_backend *be)
{
	struct gs_kv_cache *c = &p->cache;

	memset(p, 0, sizeof(*p));
	GS_TRY(gs_kv_cache_init(c, cfg, n_kv_heads, n_global_blocks, n_local_blocks, be));
	p->gfree = malloc(sizeof(int32_t) * ((size_t)c->n_global_blocks + 1));
	p->lfree = malloc(sizeof(int32_t) * ((size_t)c->n_local_blocks + 1));
	if (!p->gfree || !p->lfree) {
		gs_kv_pool_free(p);
		return gs_errorf(GS_ERR_NOMEM, "cannot allocate a KV pool of %d global + %d local blocks",
				 n_global_blocks, n_local_blocks);
	}
	/* Stacks popped from the end: block 0 comes out first. */
	for (int32_t i = 0; i < c->n_global_blocks; i++)
		p->gfree[i] = c->n_global_blocks - 1 - i;
	for (int32_t i = 0; i < c->n_local_blocks; i++)
		p->lfree[i] = c->n_local_blocks - 1 - i;
	p->n_gfree = c->n_global_blocks;
	p->n_lfree = c->n_local_blocks;
	return GS_OK;
}

void gs_kv_pool_free(struct gs_kv_pool *p)
{
	gs_kv_cache_free(&p->cache);
	free(p->gfree);
	free(p->lfree);
	memset(p, 0, sizeof(*p));
}

static int32_t ring_for(const struct gs_kv_pool *p, int32_t max_positions)
{
	int32_t g = gs_kv_global_blocks_for(max_positions);
	return p->cache.ring_blocks < g ? p->cache.ring_blocks : g;
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
	int32_t g = p->cache.n_global_layers ? gs_kv_global_blocks_for(max_positions) : 0;
	int32_t r = p->cache.n_local_layers ? ring_for(p, max_positions) : 0;
	return g <= gs_kv_global_free(p) && r <= gs_kv_local_free(p);
}

bool gs_kv_could_ever_admit(const struct gs_kv_pool *p, int32_t max_positions)
{
	int32_t g = p->cache.n_global_layers ? gs_kv_global_blocks_for(max_positions) : 0;
	int32_t r = p->cache.n_local_layers ? ring_for(p, max_positions) : 0;
	return max_positions > 0 && g <= p->cache.n_global_blocks && r <= p->cache.n_local_blocks;
}

enum gs_status gs_kv_seq_admit(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t max_positions)
{
	int32_t g = gs_kv_global_blocks_for(max_positions), r = p->cache.n_local_layers ? ring_for(p, max_positions) : 0;

	memset(s, 0, sizeof(*s));
	if (!gs_kv_can_admit(p, max_positions))
		return gs_errorf(GS_ERR_RANGE, "KV cache full: %d positions need %d global + %d local blocks, %d + %d free",
				 max_positions, p->cache.n_global_layers ? g : 0, r, gs_kv_global_free(p), gs_kv_local_free(p));
	s->gtable = malloc(sizeof(int32_t) * (size_t)(g ? g : 1));
	s->ring = malloc(sizeof(int32_t) * (size_t)(p->cache.ring_blocks ? p->cache.ring_blocks : 1));
	if (!s->gtable || !s->ring) {
		free(s->gtable);
		free(s->ring);
		memset(s, 0, sizeof(*s));
		return gs_errorf(GS_ERR_NOMEM, "out of memory for a block table");
	}
	s->g_cap = g;
	s->max_positions = max_positions;
	if (p->cache.n_global_layers) {
		s->g_reserved = g;
		p->g_reserved += g;
	}
	/* The ring is taken whole: its size does not depend on how far the sequence gets. A ring
	 * shorter than ring_blocks (short sequence) is indexed modulo ring_blocks, so fill the
	 * unused slots with the same blocks again: positions never reach them. */
	for (int32_t i = 0; i < r; i++)
		s->ring[i] = p->lfree[--p->n_lfree];
	for (int32_t i = r; i < p->cache.ring_blocks; i++)
		s->ring[i] = r ? s->ring[i % r] : -1;
	return GS_OK;
}

enum gs_status gs_kv_seq_prepare(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t n)
{
	int32_t need;

	if ((int64_t)s->n_past + n > s->max_positions)
		return gs_errorf(GS_ERR_RANGE, "sequence would reach %lld positions, %d reserved",
				 (long long)s->n_past + n, s->max_positions);
	if (!p->cache.n_global_layers)
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
	r = p->cache.n_local_layers ? ring_for(p, s->max_positions) : 0;
	for (int32_t i = 0; i < r; i++)
		p->lfree[p->n_lfree++] = s->ring[i];
	free(s->gtable);
	free(s->ring);
	memset(s, 0, sizeof(*s));
}

static enum gs_status prepare_batch(struct gs_forward *f, struct gs_kv_pool *p, const int32_t *ids,
				    const struct gs_batch_seq *seqs, int32_t n_seqs)
{
	GS_TRY(gs_forward_check(f, ids, seqs, n_seqs));
	for (int32_t i = 0; i < n_seqs; i++)
		GS_TRY(gs_kv_seq_prepare(p, seqs[i].kv, seqs[i].n_tokens));
	return GS_OK;
}

enum gs_status gs_kv_forward_batch(struct gs_forward *f, struct gs_kv_pool *p, const int32_t *ids,
				   const struct gs_batch_seq *seqs, int32_t n_seqs, float *logits)
{
	GS_TRY(prepare_batch(f, p, ids, seqs, n_seqs));
	return gs_forward_batch(f, &p->cache, ids, seqs, n_seqs, logits);
}

enum gs_status gs_kv_forward_batch_dev(struct gs_forward *f, struct gs_kv_pool *p, const int32_t *ids,
				       const struct gs_batch_seq *seqs, int32_t n_seqs, const float **logits)
{
	*logits = NULL;
	GS_TRY(prepare_batch(f, p, ids, seqs, n_seqs));
	return gs_forward_batch_dev(f, &p->cache, ids, seqs, n_seqs, logits);
}
