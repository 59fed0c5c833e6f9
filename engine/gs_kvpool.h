/* The engine's KV block pool: which blocks of the KV cache (model/gs_kvcache.h) each sequence
 * holds, one pool per rank.
 *
 * Admission reserves a request's worst case (prompt + max_tokens) in global blocks up front,
 * and its ring in local blocks, so a running sequence never runs out of KV; blocks of the
 * global table are then taken lazily from that reservation as positions are written
 * (gs_kv_seq_prepare, before each forward step). */
#ifndef GS_KVPOOL_H
#define GS_KVPOOL_H

#include <stdbool.h>
#include <stdint.h>

#include "gs_forward.h"
#include "gs_kvcache.h"

struct gs_kv_pool {
	struct gs_kv_cache cache;     /* the slabs the forward pass reads and writes */
	/* Free lists (stacks of block ids) and reservations. */
	int32_t *gfree, *lfree;
	int32_t  n_gfree, n_lfree;
	int32_t  g_reserved;          /* global blocks promised to admitted sequences, not yet taken */
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

/* The forward pass over sequences of this pool: checks the batch (gs_forward_check), takes the
 * blocks each sequence needs from its reservation, then runs gs_forward_batch (logits on the
 * host) or gs_forward_batch_dev (logits left in backend memory). A batch refused by the check
 * takes no block. */
enum gs_status gs_kv_forward_batch(struct gs_forward *f, struct gs_kv_pool *p, const int32_t *ids,
				   const struct gs_batch_seq *seqs, int32_t n_seqs, float *logits);
enum gs_status gs_kv_forward_batch_dev(struct gs_forward *f, struct gs_kv_pool *p, const int32_t *ids,
				       const struct gs_batch_seq *seqs, int32_t n_seqs, const float **logits);

#endif
