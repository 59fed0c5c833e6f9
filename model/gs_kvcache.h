/* The KV cache memory: what the forward pass reads and writes (DESIGN: docs/ARCHITECTURE.md §5).
 *
 * Blocks hold GS_KV_BLOCK positions of K and V for this rank's KV heads, in every layer of
 * one type at once (the same block id indexes each layer's slab, as in vLLM). Global layers
 * index a sequence's block table, which grows with its length. Sliding layers index a ring of
 *     ring = ceil((window - 1) / 16) + 1
 * blocks: the history a query can still see (window - 1 positions) always fits, blocks are
 * recycled as the window moves, and a sequence 20x longer than the window uses no more.
 * (The chunk being computed reads its own fresh K/V from the activations, so the ring never
 * has to hold it.)
 *
 * This header is the layout only: slabs, a sequence's tables, where a position lives. Which
 * blocks a sequence gets, reservations and admission belong to the engine's block pool
 * (engine/gs_kvpool.h), which fills the tables before the forward pass runs. */
#ifndef GS_KVCACHE_H
#define GS_KVCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_config.h"
#include "gs_kernels.h"
#include "gs_status.h"

#define GS_KV_BLOCK 16

struct gs_kv_cache {
	/* Shape */
	int32_t  n_layers;
	int32_t  n_global_layers, n_local_layers;
	int32_t *layer_slot;          /* [L] index of layer l among the layers of its type */
	bool    *layer_sliding;       /* [L] */
	int32_t  window;              /* of the sliding layers (all equal in Gemma 3) */
	int32_t  ring_blocks;         /* blocks per sequence on sliding layers */
	size_t   kd;                  /* values of K (or V) per position: local KV heads × head_dim */
	enum gs_dtype dtype;          /* the backend's kv_dtype: fp32, or bf16 (GS_CUDA_KV=bf16) */
	size_t   elem_bytes;          /* 4 or 2 */
	/* Storage: [type layers][blocks][GS_KV_BLOCK][kd], K and V separately. */
	int32_t  n_global_blocks, n_local_blocks;
	void    *gk, *gv, *lk, *lv;     /* in the backend's memory (device memory on a GPU) */
	struct gs_backend be;          /* whose memory; iface NULL: the heap */
	size_t   bytes;               /* everything allocated for K and V */
	/* Context parallelism (ARCHITECTURE.md §4): this rank's group among the engine's C groups
	 * (1, 0 without it). Global layers hold only the positions of this group's units. */
	int32_t  cp_size, cp_rank;
};

/* One sequence's view of the cache. Plain data: the forward pass indexes it; the engine's pool
 * fills the tables and keeps the reservation counts. */
struct gs_kv_seq {
	int32_t *gtable;              /* [g_cap] global block ids, g_used taken */
	int32_t  g_cap, g_used;
	int32_t  g_reserved;          /* of the pool's reservation, still owed to this sequence */
	int32_t *ring;                /* [cache->ring_blocks] local block ids (NULL: no sliding layers) */
	int32_t  n_past;              /* positions already in the cache */
	/* Context parallelism: the global layers' units of GS_KV_CP_UNIT positions are spread over
	 * cp_k groups from cp_first (gs_kv_cp_owner); gtable entries of other groups' blocks are
	 * -1. cp_k 0 or 1: every unit on group cp_first (all of it when C = 1). */
	int32_t  cp_k, cp_first;
	int32_t  max_positions;       /* reservation covers positions [0, max_positions) */
	/* The pool's prefix-cache bookkeeping (engine/gs_kvpool.h); the forward pass ignores it. */
	int32_t  n_ring;              /* ring slots taken (ring_blocks, or fewer when short) */
	int32_t  n_reg;               /* blocks [0, n_reg) registered (or taken from the cache) */
	uint64_t reg_hash;            /* chain hash of blocks [0, n_reg) */
	int32_t  reg_node;            /* cached block holding block n_reg - 1 (-1: none, -2: chain lost) */
	uint32_t reg_gen;             /* its generation */
};

/* Slabs for n_global_blocks (global layers) and n_local_blocks (sliding rings). n_kv_heads is
 * this rank's (after the TP split). K/V live in be's memory, as the backend's kv_dtype (be NULL:
 * fp32 on the heap, for bookkeeping tests). */
enum gs_status gs_kv_cache_init(struct gs_kv_cache *c, const struct gs_config *cfg, int32_t n_kv_heads,
				int32_t n_global_blocks, int32_t n_local_blocks, const struct gs_backend *be);
void gs_kv_cache_free(struct gs_kv_cache *c);

/* Bytes one sequence of `positions` occupies in a cache (whole blocks: its global table plus
 * its ring on sliding layers), for n_kv_heads heads on this rank and elem_bytes per value
 * (4: fp32 on CPU, 2: bf16 on GPU). This is what admission reserves. */
size_t gs_kv_seq_bytes(const struct gs_config *cfg, int32_t n_kv_heads, int32_t positions, size_t elem_bytes);

/* Bytes of one value in a cache on be: its kv_dtype's (be NULL or without kv_dtype: fp32, 4). */
size_t gs_kv_elem_bytes(const struct gs_backend *be);

/* Bytes of one block of GS_KV_BLOCK positions on one rank, K and V of every layer of one type
 * (sliding false: the global layers; true: the sliding layers) for n_kv_heads heads. */
size_t gs_kv_block_bytes(const struct gs_config *cfg, int32_t n_kv_heads, bool sliding, size_t elem_bytes);

/* Blocks a sequence of max_positions needs in its global table; blocks of a sliding ring. */
int32_t gs_kv_global_blocks_for(int32_t max_positions);
int32_t gs_kv_ring_blocks_for(int32_t window);

/* Context parallelism: the group holding global block b of a sequence spread over k groups
 * from first, of C (unit u = b / (GS_KV_CP_UNIT / GS_KV_BLOCK) goes to (first + u % k) % C). */
static inline int32_t gs_kv_cp_owner(int32_t C, int32_t k, int32_t first, int32_t b)
{
	int32_t u = b / (GS_KV_CP_UNIT / GS_KV_BLOCK);
	return k > 1 ? (first + u % k) % C : first % C;
}

/* How many of global blocks [0, g) of such a sequence group c holds (closed form). */
int32_t gs_kv_cp_blocks(int32_t C, int32_t k, int32_t first, int32_t c, int32_t g);

/* Do s's tables hold positions [n_past, n_past + n) in every layer type? */
static inline bool gs_kv_seq_holds(const struct gs_kv_cache *c, const struct gs_kv_seq *s, int32_t n)
{
	if (c->n_local_layers && !s->ring)
		return false;
	return !c->n_global_layers || (int64_t)s->g_used * GS_KV_BLOCK >= (int64_t)s->n_past + n;
}

/* Where position pos of a sequence lives in one layer's K/V slab (row of kd floats), the same for
 * every layer of a type: sliding layers index the ring, global layers the table. */
static inline int64_t gs_kv_slab_row(const struct gs_kv_cache *c, const struct gs_kv_seq *s, bool sliding, int32_t pos)
{
	int32_t lb = pos / GS_KV_BLOCK;
	int32_t blk = sliding ? s->ring[lb % c->ring_blocks] : s->gtable[lb];
	return (int64_t)blk * GS_KV_BLOCK + pos % GS_KV_BLOCK;
}

/* Layer l's K (v false) or V slab: rows of kd values of c->dtype. */
static inline void *gs_kv_slab(const struct gs_kv_cache *c, int layer, bool v)
{
	const bool sliding = c->layer_sliding[layer];
	char *base = sliding ? (v ? c->lv : c->lk) : (v ? c->gv : c->gk);
	const size_t blocks = (size_t)(sliding ? c->n_local_blocks : c->n_global_blocks);
	return base + (size_t)c->layer_slot[layer] * blocks * GS_KV_BLOCK * c->kd * c->elem_bytes;
}

static inline void *gs_kv_k(const struct gs_kv_cache *c, int layer) { return gs_kv_slab(c, layer, false); }
static inline void *gs_kv_v(const struct gs_kv_cache *c, int layer) { return gs_kv_slab(c, layer, true); }

#endif
