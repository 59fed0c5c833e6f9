/* Paged KV cache: one block pool per rank, block tables per sequence (DESIGN.md §5).
 *
 * Blocks hold GS_KV_BLOCK positions of K and V for this rank's KV heads, in every layer of
 * one type at once (the same block id indexes each layer's slab, as in vLLM). Global layers
 * draw from the global pool and a sequence's table grows with its length. Sliding layers
 * draw from the local pool, and a sequence keeps only a ring of
 *     ring = ceil((window - 1) / 16) + 1
 * blocks: the history a query can still see (window - 1 positions) always fits, blocks are
 * recycled as the window moves, and a sequence 20x longer than the window uses no more.
 * (The chunk being computed reads its own fresh K/V from the activations, so the ring never
 * has to hold it.)
 *
 * Admission reserves a request's worst case (prompt + max_tokens) in global blocks up front,
 * and its ring in local blocks, so a running sequence never runs out of KV; blocks of the
 * global table are then taken lazily from that reservation as positions are written. */
#ifndef GS_KVCACHE_H
#define GS_KVCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_config.h"
#include "gs_kernels.h"
#include "gs_status.h"

#define GS_KV_BLOCK 16

struct gs_kv_pool {
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
	/* Free lists (stacks of block ids) and reservations. */
	int32_t *gfree, *lfree;
	int32_t  n_gfree, n_lfree;
	int32_t  g_reserved;          /* global blocks promised to admitted sequences, not yet taken */
	size_t   bytes;               /* everything allocated for K and V */
};

/* One sequence's view of the pool. Plain data: the forward pass indexes it. */
struct gs_kv_seq {
	int32_t *gtable;              /* [g_cap] global block ids, g_used taken */
	int32_t  g_cap, g_used;
	int32_t  g_reserved;          /* of the pool's reservation, still owed to this sequence */
	int32_t *ring;                /* [pool->ring_blocks] local block ids (NULL: no sliding layers) */
	int32_t  n_past;              /* positions already in the cache */
	int32_t  max_positions;       /* reservation covers positions [0, max_positions) */
};

/* Sizes: n_global_blocks for all sequences' global layers, n_local_blocks for their rings
 * (ring_blocks per sequence). n_kv_heads is this rank's (after the TP split). K/V live in be's
 * memory, as the backend's kv_dtype (be NULL: fp32 on the heap, for bookkeeping tests); the
 * tables and free lists on the host. */
enum gs_status gs_kv_pool_init(struct gs_kv_pool *p, const struct gs_config *cfg, int32_t n_kv_heads,
			       int32_t n_global_blocks, int32_t n_local_blocks, const struct gs_backend *be);
void gs_kv_pool_free(struct gs_kv_pool *p);

/* Pool sizes that hold `n_seqs` sequences of `max_positions` each. */
void gs_kv_pool_size_for(const struct gs_config *cfg, int32_t n_seqs, int32_t max_positions,
			 int32_t *n_global_blocks, int32_t *n_local_blocks);

/* Bytes one sequence of `positions` occupies in a pool (whole blocks: its global table plus
 * its ring on sliding layers), for n_kv_heads heads on this rank and elem_bytes per value
 * (4: fp32 on CPU, 2: bf16 on GPU). This is what admission reserves. */
size_t gs_kv_seq_bytes(const struct gs_config *cfg, int32_t n_kv_heads, int32_t positions, size_t elem_bytes);

/* Blocks a sequence of max_positions needs: global table, local ring. */
int32_t gs_kv_global_blocks_for(int32_t max_positions);
int32_t gs_kv_ring_blocks(const struct gs_kv_pool *p);

/* Could a sequence of max_positions be admitted now / ever (into an empty pool)? */
bool gs_kv_can_admit(const struct gs_kv_pool *p, int32_t max_positions);
bool gs_kv_could_ever_admit(const struct gs_kv_pool *p, int32_t max_positions);

/* Admit: reserve global blocks for max_positions and take this sequence's ring.
 * GS_ERR_RANGE when it does not fit now (the caller queues it). */
enum gs_status gs_kv_seq_admit(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t max_positions);
/* Make sure blocks exist for positions [n_past, n_past + n): takes global blocks from the
 * reservation. GS_ERR_RANGE if that would pass max_positions. */
enum gs_status gs_kv_seq_prepare(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t n);
/* Return every block and the unused reservation to the pool (cancel, finish). */
void gs_kv_seq_release(struct gs_kv_pool *p, struct gs_kv_seq *s);

/* Free blocks counting reservations as used. */
int32_t gs_kv_global_free(const struct gs_kv_pool *p);
int32_t gs_kv_local_free(const struct gs_kv_pool *p);

/* Where position pos of a sequence lives in one layer's K/V slab (row of kd floats), the same for
 * every layer of a type: sliding layers index the ring, global layers the table. */
static inline int64_t gs_kv_slab_row(const struct gs_kv_pool *p, const struct gs_kv_seq *s, bool sliding, int32_t pos)
{
	int32_t lb = pos / GS_KV_BLOCK;
	int32_t blk = sliding ? s->ring[lb % p->ring_blocks] : s->gtable[lb];
	return (int64_t)blk * GS_KV_BLOCK + pos % GS_KV_BLOCK;
}

/* Layer l's K (v false) or V slab: rows of kd values of p->dtype. */
static inline void *gs_kv_slab(const struct gs_kv_pool *p, int layer, bool v)
{
	const bool sliding = p->layer_sliding[layer];
	char *base = sliding ? (v ? p->lv : p->lk) : (v ? p->gv : p->gk);
	const size_t blocks = (size_t)(sliding ? p->n_local_blocks : p->n_global_blocks);
	return base + (size_t)p->layer_slot[layer] * blocks * GS_KV_BLOCK * p->kd * p->elem_bytes;
}

static inline void *gs_kv_k(const struct gs_kv_pool *p, int layer) { return gs_kv_slab(p, layer, false); }
static inline void *gs_kv_v(const struct gs_kv_pool *p, int layer) { return gs_kv_slab(p, layer, true); }

#endif
