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

/* Automatic prefix caching (ARCHITECTURE.md §5). A full global block is registered under a
 * hash chain over the token ids of itself and its whole prefix; a later sequence whose prompt
 * starts with the same blocks takes them (reference counted) instead of computing them. A hit
 * is verified, never trusted to the hash: the block's 16 token ids must match and its parent
 * must be the block matched just before (same id and generation), so by induction the whole
 * prefix matches. The sliding layers' KV of a block (one local block) hangs off its global
 * block while it is still held; a prefix of P positions is usable only if the local blocks of
 * every position a query at P can still see ([P - window + 1, P)) are held too. Blocks nobody
 * references stay cached in LRU order and are evicted only when the free list runs dry. */
struct gs_kv_gblock {
	int32_t  ref;                 /* sequences holding it in their table */
	bool     cached;              /* registered in the hash table */
	uint32_t gen;                 /* bumped when it leaves the cache: stale children never match */
	uint64_t hash;                /* chain hash through this block */
	int32_t  parent;              /* cached block of the previous 16 positions (-1: first) */
	uint32_t parent_gen;
	int32_t  local;               /* local block with this block's sliding-layer KV (-1: none) */
	uint64_t mm;                  /* images among its positions (gs_kv_images; 0: none) */
	int32_t  next;                /* in its hash bucket */
	int32_t  tokens[GS_KV_BLOCK];
};

/* A sequence's images for the prefix cache: the token ids of two images are the same
 * (image_token_id), so a block holding soft tokens of image i also carries key[i] (a digest of
 * its pixels) and its position, in its hash and in the check of a hit (as vLLM's mm hashes);
 * blocks after it differ through the chain. Image i's soft tokens are positions
 * [pos[i], pos[i] + len). A cached prefix never ends inside an image (the whole image is then
 * computed in one step: its bidirectional attention needs every key of it fresh). */
struct gs_kv_images {
	int32_t         n;
	const int32_t  *pos;          /* [n] ascending */
	int32_t         len;          /* soft tokens per image */
	const uint64_t *key;          /* [n] */
};

struct gs_kv_lblock {
	int32_t ref;                  /* rings holding it */
	int32_t owner;                /* global block it is the sliding KV of (-1: not cached) */
};

/* Least recently released first: unreferenced cached blocks, evicted from the head. */
struct gs_kv_lru {
	int32_t *prev, *next;         /* -1 ends; prev -2: not in the list */
	int32_t  head, tail, n;
};

struct gs_kv_pool {
	struct gs_kv_cache cache;     /* the slabs the forward pass reads and writes */
	/* Free lists (stacks of block ids) and reservations. */
	int32_t *gfree, *lfree;
	int32_t  n_gfree, n_lfree;
	int32_t  g_reserved;          /* global blocks promised to admitted sequences, not yet taken */
	int32_t  l_committed;         /* ring slots of admitted sequences (<= n_local_blocks) */
	/* Prefix cache */
	bool     prefix_cache;        /* register and reuse blocks (gs_kv_pool_set_prefix_cache) */
	struct gs_kv_gblock *gb;      /* [n_global_blocks] */
	struct gs_kv_lblock *lb;      /* [n_local_blocks] */
	struct gs_kv_lru glru, llru;
	int32_t *buckets;             /* [n_buckets] first block of each hash bucket, -1 empty */
	uint32_t n_buckets;           /* a power of two */
	uint64_t hash_mask;           /* all ones; tests narrow it to force collisions */
	uint64_t evictions;           /* cached global blocks taken for new use (a prefix lost) */
	uint64_t local_evictions;     /* cached local blocks taken (rings move on all the time) */
};

/* Sizes: n_global_blocks for all sequences' global layers, n_local_blocks for their rings
 * (ring_blocks per sequence). n_kv_heads is this rank's (after the TP split). K/V live in be's
 * memory, as the backend's kv_dtype (be NULL: fp32 on the heap, for bookkeeping tests); the
 * tables and free lists on the host. */
enum gs_status gs_kv_pool_init(struct gs_kv_pool *p, const struct gs_config *cfg, int32_t n_kv_heads,
			       int32_t n_global_blocks, int32_t n_local_blocks, const struct gs_backend *be);
void gs_kv_pool_free(struct gs_kv_pool *p);

/* Pool sizes that hold `n_seqs` sequences of `max_positions` each (prefix_chunk: the prefix
 * cache's max_chunk, 0 when it is off). */
void gs_kv_pool_size_for(const struct gs_config *cfg, int32_t n_seqs, int32_t max_positions, int32_t prefix_chunk,
			 int32_t *n_global_blocks, int32_t *n_local_blocks);

/* Pool sizes for a KV memory budget of `bytes` on this rank (--kv-mem), for n_kv_heads heads
 * of elem_bytes values (gs_kv_elem_bytes). The budget is split in two, because the two kinds of
 * block are held differently: every admitted sequence takes its whole ring of local blocks
 * (ring_blocks, with the prefix cache's margin of prefix_chunk) however long it is, so the
 * local pool is exactly n_seqs rings (what n_seqs sequences running at once hold, and no use
 * beyond); everything left goes to the global pool, whose blocks a sequence takes per 16
 * positions, so the memory left over decides how long sequences may grow (one sequence up
 * to the whole global pool). GS_ERR_RANGE, naming the least budget, when `bytes` does not
 * hold the n_seqs rings plus one global block. */
enum gs_status gs_kv_pool_size_for_bytes(const struct gs_config *cfg, int32_t n_kv_heads, size_t elem_bytes,
					 size_t bytes, int32_t n_seqs, int32_t prefix_chunk, int32_t *n_global_blocks,
					 int32_t *n_local_blocks);
/* Positions of the longest sequence the pool could ever hold (INT32_MAX: no global layers,
 * the rings alone bound nothing); with context parallelism, spread over all C groups. */
int32_t gs_kv_pool_max_positions(const struct gs_kv_pool *p);

/* Could a sequence of max_positions be admitted now / ever (into an empty pool)? */
bool gs_kv_can_admit(const struct gs_kv_pool *p, int32_t max_positions);
bool gs_kv_could_ever_admit(const struct gs_kv_pool *p, int32_t max_positions);

/* Admit: reserve global blocks for max_positions and take this sequence's ring.
 * GS_ERR_RANGE when it does not fit now (the caller queues it). */
enum gs_status gs_kv_seq_admit(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t max_positions);
/* Context parallelism (ARCHITECTURE.md §4): this pool is group c's of C, before any
 * admission; the prefix cache must be off (a cached prefix would have to be the same on every
 * group). Global blocks are then taken only for this group's units of each sequence. */
void gs_kv_pool_set_cp(struct gs_kv_pool *p, int32_t C, int32_t c);
/* Admit a sequence spread over k groups from first (gs_kv_cp_owner): reserves this group's
 * share of its global blocks and its whole ring (sliding layers are kept on every group).
 * Without context parallelism (C = 1): gs_kv_seq_admit. GS_ERR_RANGE when this group cannot
 * hold it now; GS_ERR_FORMAT for a placement outside the C groups. */
enum gs_status gs_kv_seq_admit_cp(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t max_positions, int32_t k,
				  int32_t first);
/* Leader of a context-parallel engine: where to place n_seqs sequences of max_positions (the
 * first one's placement in *k, *first), given the global blocks each group's admitted
 * sequences hold or have reserved (used[C], all groups' pools being this one's size): on one
 * group when one can hold it (the one with the most free), else over the fewest groups from
 * the freest start. False when they do not fit now (rings included). */
#define GS_KV_MAX_CP 64
bool gs_kv_cp_place(const struct gs_kv_pool *p, const int32_t *used, int32_t max_positions, int32_t n_seqs,
		    int32_t *k, int32_t *first);
/* Make sure blocks exist for positions [n_past, n_past + n): takes global blocks from the
 * reservation. GS_ERR_RANGE if that would pass max_positions. */
enum gs_status gs_kv_seq_prepare(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t n);
/* Return every block and the unused reservation to the pool (cancel, finish). */
void gs_kv_seq_release(struct gs_kv_pool *p, struct gs_kv_seq *s);

/* Turn prefix caching on or off, before any admission (off: nothing is registered). With it on,
 * a ring slot whose block stays cached (or is shared) gets a fresh block when the sequence
 * writes there next, before the step runs; so that no query of the step still reads the old
 * one, the ring then holds ceil(max_chunk / 16) more blocks (max_chunk: the most positions one
 * sequence writes in a step). */
void gs_kv_pool_set_prefix_cache(struct gs_kv_pool *p, bool on, int32_t max_chunk);
/* Ring blocks of one sequence for a window, with the prefix cache's margin (max_chunk 0: none). */
int32_t gs_kv_ring_blocks_cached(int32_t window, int32_t max_chunk);
/* The chain hash of a block of GS_KV_BLOCK token ids after the blocks hashed into `parent`
 * (0 for the first block), masked by p->hash_mask. */
uint64_t gs_kv_block_hash(const struct gs_kv_pool *p, uint64_t parent, const int32_t *tokens);
/* Leader: the longest cached prefix of prompt[0, n) a new sequence can take, in whole blocks and
 * at most n - 1 positions (the last prompt token is always computed, for its logits), with the
 * sliding layers' window blocks held too, never ending inside an image of im (NULL: none).
 * Writes its block ids to out[0, cap); returns the count. */
int32_t gs_kv_prefix_lookup(const struct gs_kv_pool *p, const int32_t *prompt, int32_t n,
			    const struct gs_kv_images *im, int32_t *out, int32_t cap);
/* gs_kv_can_admit / gs_kv_seq_admit for a sequence that starts with the cached blocks
 * blocks[0, n) (from gs_kv_prefix_lookup; a reused block counts as held, not reserved).
 * Admission checks the chain again (every rank: a block that is not the cached chain is
 * GS_ERR_FORMAT) and leaves s->n_past at n * GS_KV_BLOCK. */
bool gs_kv_can_admit_cached(const struct gs_kv_pool *p, int32_t max_positions, const int32_t *blocks, int32_t n);
enum gs_status gs_kv_seq_admit_cached(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t max_positions,
				      const int32_t *blocks, int32_t n);
/* n_seqs sequences of max_positions each (OpenAI's n), the first starting with the cached blocks
 * blocks[0, n_blocks): could all of them be admitted now / ever? Counts every sequence's worst
 * case (the later ones, taking the first one's prompt blocks from the cache, need less). */
bool gs_kv_can_admit_group(const struct gs_kv_pool *p, int32_t max_positions, const int32_t *blocks, int32_t n_blocks,
			   int32_t n_seqs);
bool gs_kv_could_ever_admit_group(const struct gs_kv_pool *p, int32_t max_positions, int32_t n_seqs);
/* The token ids of cached blocks blocks[0, n): out[0, n * GS_KV_BLOCK). */
void gs_kv_cached_tokens(const struct gs_kv_pool *p, const int32_t *blocks, int32_t n, int32_t *out);
/* After a forward pass: register the blocks s filled completely; hist holds the token ids of
 * its positions [0, n_past), im its images (NULL: none; at least those before n_past). */
void gs_kv_seq_commit(struct gs_kv_pool *p, struct gs_kv_seq *s, const int32_t *hist,
		      const struct gs_kv_images *im);
/* Every block accounted for: reference counts equal the tables of seqs[0, n), unreferenced
 * blocks are free or cached (LRU), reservations and ring slots add up, cached blocks are
 * findable. With n = 0: the pool is whole (nothing held, reserved or committed). */
bool gs_kv_pool_consistent(const struct gs_kv_pool *p, const struct gs_kv_seq *const *seqs, int32_t n);

/* Free blocks counting reservations as used (cached unreferenced blocks count as free). */
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
