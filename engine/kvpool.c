/* The engine's KV block pool: free lists, admission reservations, blocks taken as sequences
 * grow, and the prefix cache (gs_kvpool.h). */
#include "gs_kvpool.h"

#include <stdlib.h>
#include <string.h>

int32_t gs_kv_ring_blocks_cached(int32_t window, int32_t max_chunk)
{
	return gs_kv_ring_blocks_for(window) + (max_chunk > 0 ? gs_kv_global_blocks_for(max_chunk) : 0);
}

void gs_kv_pool_size_for(const struct gs_config *cfg, int32_t n_seqs, int32_t max_positions, int32_t prefix_chunk,
			 int32_t *n_global_blocks, int32_t *n_local_blocks)
{
	int32_t ring = gs_kv_ring_blocks_cached(cfg->sliding_window, prefix_chunk);
	int32_t g = gs_kv_global_blocks_for(max_positions);

	/* A sequence shorter than the window never needs more ring blocks than positions. */
	if (ring > g)
		ring = g;
	*n_global_blocks = n_seqs * g;
	*n_local_blocks = n_seqs * ring;
}

enum gs_status gs_kv_pool_size_for_bytes(const struct gs_config *cfg, int32_t n_kv_heads, size_t elem_bytes,
					 size_t bytes, int32_t n_seqs, int32_t prefix_chunk, int32_t *n_global_blocks,
					 int32_t *n_local_blocks)
{
	const size_t gb = gs_kv_block_bytes(cfg, n_kv_heads, false, elem_bytes);
	const size_t lb = gs_kv_block_bytes(cfg, n_kv_heads, true, elem_bytes);
	const size_t rings = lb ? (size_t)n_seqs * (size_t)gs_kv_ring_blocks_cached(cfg->sliding_window, prefix_chunk) : 0;
	const size_t least = rings * lb + gb;
	const double mib = 1024.0 * 1024.0;
	size_t g;

	if (bytes < least || rings > INT32_MAX)
		return gs_errorf(GS_ERR_RANGE, "--kv-mem %.1f MiB is too small: the sliding-window rings of %d sequences "
				 "(--max-seqs) and one global block need %.1f MiB per rank", (double)bytes / mib,
				 n_seqs, (double)least / mib);
	g = gb ? (bytes - rings * lb) / gb : 0;
	if (g > (size_t)1 << 30) /* block ids and free lists are int32; 2^30 blocks is 16 Gi positions */
		g = (size_t)1 << 30;
	*n_global_blocks = (int32_t)g;
	*n_local_blocks = (int32_t)rings;
	return GS_OK;
}

int32_t gs_kv_pool_max_positions(const struct gs_kv_pool *p)
{
	int64_t n = (int64_t)p->cache.n_global_blocks * GS_KV_BLOCK;
	int32_t C = p->cache.cp_size;

	if (!p->cache.n_global_layers)
		return INT32_MAX;
	if (C > 1) { /* spread over all C groups: group 0 (the first unit's) holds the most */
		int64_t lo = 0, hi = (int64_t)C * (p->cache.n_global_blocks + GS_KV_CP_UNIT / GS_KV_BLOCK);
		if (hi > INT32_MAX / GS_KV_BLOCK)
			hi = INT32_MAX / GS_KV_BLOCK;
		while (lo < hi) { /* the most blocks g whose share fits */
			int64_t mid = (lo + hi + 1) / 2;
			if (gs_kv_cp_blocks(C, C, 0, 0, (int32_t)mid) <= p->cache.n_global_blocks)
				lo = mid;
			else
				hi = mid - 1;
		}
		n = lo * GS_KV_BLOCK;
	}
	return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

static int32_t ring_for(const struct gs_kv_pool *p, int32_t max_positions);

bool gs_kv_cp_place(const struct gs_kv_pool *p, const int32_t *used, int32_t max_positions, int32_t n_seqs,
		    int32_t *k_out, int32_t *first_out)
{
	enum { MAXC = GS_KV_MAX_CP };
	int32_t C = p->cache.cp_size, G = p->cache.n_global_blocks, g = gs_kv_global_blocks_for(max_positions);
	int32_t fr[MAXC];

	GS_ASSERT(C >= 1 && C <= MAXC);
	if ((int64_t)ring_for(p, max_positions) * n_seqs > gs_kv_local_free(p))
		return false;
	for (int32_t c = 0; c < C; c++)
		fr[c] = G - used[c];
	if (!p->cache.n_global_layers) {
		*k_out = 1, *first_out = 0;
		return true;
	}
	for (int32_t i = 0; i < n_seqs; i++) {
		int32_t bk = 0, bf = -1;
		/* one group if any holds it (the one with the most free), else the fewest groups */
		for (int32_t k = 1; k <= C && bf < 0; k++)
			for (int32_t f = 0; f < C; f++) {
				bool fits = true;
				for (int32_t c = 0; c < C && fits; c++)
					fits = gs_kv_cp_blocks(C, k, f, c, g) <= fr[c];
				if (fits && (bf < 0 || fr[f] > fr[bf]))
					bk = k, bf = f;
			}
		if (bf < 0)
			return false;
		for (int32_t c = 0; c < C; c++)
			fr[c] -= gs_kv_cp_blocks(C, bk, bf, c, g);
		if (i == 0)
			*k_out = bk, *first_out = bf;
	}
	return true;
}

/* ---- LRU lists ------------------------------------------------------------------------- */

static bool lru_init(struct gs_kv_lru *l, int32_t n)
{
	l->prev = malloc(sizeof(int32_t) * ((size_t)n + 1));
	l->next = malloc(sizeof(int32_t) * ((size_t)n + 1));
	if (!l->prev || !l->next)
		return false;
	for (int32_t i = 0; i < n; i++)
		l->prev[i] = -2, l->next[i] = -1;
	l->head = l->tail = -1;
	l->n = 0;
	return true;
}

static void lru_free(struct gs_kv_lru *l)
{
	free(l->prev);
	free(l->next);
}

static bool lru_has(const struct gs_kv_lru *l, int32_t b)
{
	return l->prev[b] != -2;
}

static void lru_push(struct gs_kv_lru *l, int32_t b)
{
	GS_ASSERT(!lru_has(l, b));
	l->prev[b] = l->tail, l->next[b] = -1;
	if (l->tail >= 0)
		l->next[l->tail] = b;
	else
		l->head = b;
	l->tail = b;
	l->n++;
}

static void lru_remove(struct gs_kv_lru *l, int32_t b)
{
	GS_ASSERT(lru_has(l, b));
	if (l->prev[b] >= 0)
		l->next[l->prev[b]] = l->next[b];
	else
		l->head = l->next[b];
	if (l->next[b] >= 0)
		l->prev[l->next[b]] = l->prev[b];
	else
		l->tail = l->prev[b];
	l->prev[b] = -2, l->next[b] = -1;
	l->n--;
}

/* ---- pool ------------------------------------------------------------------------------ */

enum gs_status gs_kv_pool_init(struct gs_kv_pool *p, const struct gs_config *cfg, int32_t n_kv_heads,
			       int32_t n_global_blocks, int32_t n_local_blocks, const struct gs_backend *be)
{
	struct gs_kv_cache *c = &p->cache;
	bool ok;

	memset(p, 0, sizeof(*p));
	GS_TRY(gs_kv_cache_init(c, cfg, n_kv_heads, n_global_blocks, n_local_blocks, be));
	p->n_buckets = 1;
	while (p->n_buckets < (uint32_t)c->n_global_blocks && p->n_buckets < (1u << 30))
		p->n_buckets <<= 1;
	p->gfree = malloc(sizeof(int32_t) * ((size_t)c->n_global_blocks + 1));
	p->lfree = malloc(sizeof(int32_t) * ((size_t)c->n_local_blocks + 1));
	p->gb = calloc((size_t)c->n_global_blocks + 1, sizeof(*p->gb));
	p->lb = calloc((size_t)c->n_local_blocks + 1, sizeof(*p->lb));
	p->buckets = malloc(sizeof(int32_t) * p->n_buckets);
	ok = lru_init(&p->glru, c->n_global_blocks);
	ok = lru_init(&p->llru, c->n_local_blocks) && ok;
	if (!p->gfree || !p->lfree || !p->gb || !p->lb || !p->buckets || !ok) {
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
	for (int32_t i = 0; i < c->n_global_blocks; i++)
		p->gb[i].parent = p->gb[i].local = p->gb[i].next = -1;
	for (int32_t i = 0; i < c->n_local_blocks; i++)
		p->lb[i].owner = -1;
	for (uint32_t i = 0; i < p->n_buckets; i++)
		p->buckets[i] = -1;
	p->hash_mask = ~(uint64_t)0;
	return GS_OK;
}

void gs_kv_pool_free(struct gs_kv_pool *p)
{
	gs_kv_cache_free(&p->cache);
	free(p->gfree);
	free(p->lfree);
	free(p->gb);
	free(p->lb);
	free(p->buckets);
	lru_free(&p->glru);
	lru_free(&p->llru);
	memset(p, 0, sizeof(*p));
}

static int32_t ring_for(const struct gs_kv_pool *p, int32_t max_positions)
{
	int32_t g = gs_kv_global_blocks_for(max_positions);
	if (!p->cache.n_local_layers)
		return 0;
	return p->cache.ring_blocks < g ? p->cache.ring_blocks : g;
}

int32_t gs_kv_global_free(const struct gs_kv_pool *p)
{
	return p->n_gfree + p->glru.n - p->g_reserved;
}

int32_t gs_kv_local_free(const struct gs_kv_pool *p)
{
	return p->cache.n_local_blocks - p->l_committed;
}

/* ---- the hash table and block states ----------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

uint64_t gs_kv_block_hash(const struct gs_kv_pool *p, uint64_t parent, const int32_t *tokens)
{
	uint64_t h = mix64(parent ^ 0x9e3779b97f4a7c15ULL);

	for (int32_t i = 0; i < GS_KV_BLOCK; i++)
		h = mix64(h + (uint32_t)tokens[i] + ((uint64_t)(i + 1) << 32));
	return h & p->hash_mask;
}

/* The image key of logical block b: the images with soft tokens in it (0: none). */
static uint64_t block_mm(const struct gs_kv_images *im, int32_t b)
{
	int64_t lo = (int64_t)b * GS_KV_BLOCK, hi = lo + GS_KV_BLOCK;
	uint64_t k = 0;

	for (int32_t i = 0; im && i < im->n; i++)
		if (im->pos[i] < hi && (int64_t)im->pos[i] + im->len > lo)
			k = mix64(k ^ im->key[i]) + (uint64_t)im->pos[i] + 1;
	return k;
}

/* gs_kv_block_hash with the block's image key mixed in (a text block's hash is unchanged). */
static uint64_t block_hash_mm(const struct gs_kv_pool *p, uint64_t parent, const int32_t *tokens, uint64_t mm)
{
	uint64_t h = gs_kv_block_hash(p, parent, tokens);

	return mm ? mix64(h ^ mm) & p->hash_mask : h;
}

static uint32_t bucket_of(const struct gs_kv_pool *p, uint64_t h)
{
	return (uint32_t)(mix64(h) & (p->n_buckets - 1));
}

/* The cached block for (hash, tokens) whose parent is (parent, parent_gen): -1 if none. */
static int32_t find_block(const struct gs_kv_pool *p, uint64_t h, const int32_t *tokens, int32_t parent,
			  uint32_t parent_gen, uint64_t mm)
{
	for (int32_t b = p->buckets[bucket_of(p, h)]; b >= 0; b = p->gb[b].next) {
		const struct gs_kv_gblock *g = &p->gb[b];
		if (g->hash == h && g->parent == parent && (parent < 0 || g->parent_gen == parent_gen) && g->mm == mm &&
		    !memcmp(g->tokens, tokens, sizeof(g->tokens)))
			return b;
	}
	return -1;
}

static void local_detach(struct gs_kv_pool *p, int32_t l)
{
	int32_t o = p->lb[l].owner;

	if (o < 0)
		return;
	p->gb[o].local = -1;
	p->lb[l].owner = -1;
	if (!p->lb[l].ref) { /* cached and unreferenced: back to the free list */
		lru_remove(&p->llru, l);
		p->lfree[p->n_lfree++] = l;
	}
}

/* Take global block b out of the cache (its children can no longer match: gen moves on). */
static void uncache(struct gs_kv_pool *p, int32_t b)
{
	struct gs_kv_gblock *g = &p->gb[b];
	int32_t *link = &p->buckets[bucket_of(p, g->hash)];

	if (!g->cached)
		return;
	while (*link != b)
		link = &p->gb[*link].next;
	*link = g->next;
	g->next = -1;
	g->cached = false;
	g->gen++;
	if (g->local >= 0)
		local_detach(p, g->local);
}

static int32_t take_global(struct gs_kv_pool *p)
{
	int32_t b;

	if (p->n_gfree > 0) {
		b = p->gfree[--p->n_gfree];
	} else {
		b = p->glru.head;
		GS_ASSERT(b >= 0);
		lru_remove(&p->glru, b);
		uncache(p, b);
		p->evictions++;
	}
	p->gb[b].ref = 1;
	return b;
}

static void put_global(struct gs_kv_pool *p, int32_t b)
{
	GS_ASSERT(p->gb[b].ref > 0);
	if (--p->gb[b].ref)
		return;
	if (p->gb[b].cached)
		lru_push(&p->glru, b);
	else
		p->gfree[p->n_gfree++] = b;
}

static void hold_global(struct gs_kv_pool *p, int32_t b)
{
	if (!p->gb[b].ref++)
		lru_remove(&p->glru, b);
}

static int32_t take_local(struct gs_kv_pool *p)
{
	int32_t l;

	if (p->n_lfree > 0) {
		l = p->lfree[--p->n_lfree];
	} else {
		l = p->llru.head;
		GS_ASSERT(l >= 0);
		lru_remove(&p->llru, l);
		p->gb[p->lb[l].owner].local = -1;
		p->lb[l].owner = -1;
		p->local_evictions++;
	}
	p->lb[l].ref = 1;
	return l;
}

static void put_local(struct gs_kv_pool *p, int32_t l)
{
	GS_ASSERT(p->lb[l].ref > 0);
	if (--p->lb[l].ref)
		return;
	if (p->lb[l].owner >= 0)
		lru_push(&p->llru, l);
	else
		p->lfree[p->n_lfree++] = l;
}

static void hold_local(struct gs_kv_pool *p, int32_t l)
{
	if (!p->lb[l].ref++)
		lru_remove(&p->llru, l);
}

void gs_kv_pool_set_prefix_cache(struct gs_kv_pool *p, bool on, int32_t max_chunk)
{
	GS_ASSERT(!p->l_committed && p->g_reserved + p->n_gfree + p->glru.n == p->cache.n_global_blocks);
	p->prefix_cache = on && p->cache.n_global_layers > 0;
	if (p->cache.n_local_layers)
		p->cache.ring_blocks = p->prefix_cache ? gs_kv_ring_blocks_cached(p->cache.window, max_chunk)
						       : gs_kv_ring_blocks_for(p->cache.window);
	if (p->prefix_cache)
		return;
	for (int32_t b = 0; b < p->cache.n_global_blocks; b++) {
		if (!p->gb[b].cached)
			continue;
		uncache(p, b);
		if (!p->gb[b].ref) {
			lru_remove(&p->glru, b);
			p->gfree[p->n_gfree++] = b;
		}
	}
}

/* ---- admission --------------------------------------------------------------------------- */

/* First logical block whose sliding-layer KV a query at position pos (block aligned) reads. */
static int32_t window_first_block(const struct gs_kv_pool *p, int32_t pos)
{
	int64_t lo = (int64_t)pos - p->cache.window + 1;
	return lo > 0 ? (int32_t)(lo / GS_KV_BLOCK) : 0;
}

/* The longest prefix of nb blocks (or fewer) that does not end inside an image. */
static int32_t image_back_off(const struct gs_kv_images *im, int32_t nb)
{
	for (int32_t i = 0; im && i < im->n; i++) {
		int64_t end = (int64_t)nb * GS_KV_BLOCK;
		if (im->pos[i] < end && (int64_t)im->pos[i] + im->len > end)
			nb = im->pos[i] / GS_KV_BLOCK;
	}
	return nb;
}

int32_t gs_kv_prefix_lookup(const struct gs_kv_pool *p, const int32_t *prompt, int32_t n,
			    const struct gs_kv_images *im, int32_t *out, int32_t cap)
{
	int32_t nb = 0, parent = -1, prev;
	uint64_t h = 0;

	if (!p->prefix_cache || n < 2)
		return 0;
	while (nb < cap && (int64_t)(nb + 1) * GS_KV_BLOCK <= n - 1) {
		const int32_t *t = prompt + (size_t)nb * GS_KV_BLOCK;
		uint64_t mm = block_mm(im, nb);
		int32_t b;
		h = block_hash_mm(p, h, t, mm);
		b = find_block(p, h, t, parent, parent >= 0 ? p->gb[parent].gen : 0, mm);
		if (b < 0)
			break;
		out[nb++] = parent = b;
	}
	do {
		prev = nb;
		/* An image is computed whole in one step: never start inside one. */
		nb = image_back_off(im, nb);
		/* Sliding layers: back off to the longest prefix whose window blocks are all held. */
		while (p->cache.n_local_layers && nb > 0) {
			bool held = true;
			for (int32_t i = window_first_block(p, nb * GS_KV_BLOCK); i < nb && held; i++)
				held = p->gb[out[i]].local >= 0;
			if (held)
				break;
			nb--;
		}
	} while (nb != prev);
	return nb;
}

bool gs_kv_can_admit_cached(const struct gs_kv_pool *p, int32_t max_positions, const int32_t *blocks, int32_t n)
{
	int32_t g = p->cache.n_global_layers ? gs_kv_global_blocks_for(max_positions) : 0;
	int32_t r = ring_for(p, max_positions), revive = 0;

	for (int32_t i = 0; i < n; i++)
		revive += blocks[i] >= 0 && blocks[i] < p->cache.n_global_blocks && !p->gb[blocks[i]].ref;
	return g - n + revive <= gs_kv_global_free(p) && r <= gs_kv_local_free(p);
}

bool gs_kv_can_admit(const struct gs_kv_pool *p, int32_t max_positions)
{
	return gs_kv_can_admit_cached(p, max_positions, NULL, 0);
}

bool gs_kv_could_ever_admit(const struct gs_kv_pool *p, int32_t max_positions)
{
	int32_t g = p->cache.n_global_layers ? gs_kv_global_blocks_for(max_positions) : 0;
	int32_t r = ring_for(p, max_positions);
	if (p->cache.cp_size > 1)
		return max_positions > 0 && max_positions <= gs_kv_pool_max_positions(p) && r <= p->cache.n_local_blocks;
	return max_positions > 0 && g <= p->cache.n_global_blocks && r <= p->cache.n_local_blocks;
}

bool gs_kv_can_admit_group(const struct gs_kv_pool *p, int32_t max_positions, const int32_t *blocks, int32_t n_blocks,
			   int32_t n_seqs)
{
	int64_t g = p->cache.n_global_layers ? gs_kv_global_blocks_for(max_positions) : 0;
	int64_t r = ring_for(p, max_positions), revive = 0;

	for (int32_t i = 0; i < n_blocks; i++)
		revive += blocks[i] >= 0 && blocks[i] < p->cache.n_global_blocks && !p->gb[blocks[i]].ref;
	return g * n_seqs - n_blocks + revive <= gs_kv_global_free(p) && r * n_seqs <= gs_kv_local_free(p);
}

bool gs_kv_could_ever_admit_group(const struct gs_kv_pool *p, int32_t max_positions, int32_t n_seqs)
{
	int64_t g = p->cache.n_global_layers ? gs_kv_global_blocks_for(max_positions) : 0;
	int64_t r = ring_for(p, max_positions);
	if (p->cache.cp_size > 1) /* each spread over all groups */
		g = gs_kv_cp_blocks(p->cache.cp_size, p->cache.cp_size, 0, 0, (int32_t)g);
	return max_positions > 0 && g * n_seqs <= p->cache.n_global_blocks && r * n_seqs <= p->cache.n_local_blocks;
}

/* Is blocks[0, n) the cached chain of a prefix a sequence of max_positions may start with? */
static enum gs_status check_chain(const struct gs_kv_pool *p, int32_t max_positions, const int32_t *blocks, int32_t n)
{
	if (!n)
		return GS_OK;
	if (!p->prefix_cache || n < 0 || (int64_t)n * GS_KV_BLOCK >= max_positions)
		return gs_errorf(GS_ERR_FORMAT, "%d cached blocks for a sequence of %d positions (prefix cache %s)", n,
				 max_positions, p->prefix_cache ? "on" : "off");
	for (int32_t i = 0; i < n; i++) {
		int32_t b = blocks[i];
		if (b < 0 || b >= p->cache.n_global_blocks || !p->gb[b].cached ||
		    p->gb[b].parent != (i ? blocks[i - 1] : -1) || (i && p->gb[b].parent_gen != p->gb[blocks[i - 1]].gen))
			return gs_errorf(GS_ERR_FORMAT, "cached block %d (%d of %d) is not the cached prefix chain", b, i, n);
	}
	for (int32_t i = p->cache.n_local_layers ? window_first_block(p, n * GS_KV_BLOCK) : n; i < n; i++)
		if (p->gb[blocks[i]].local < 0)
			return gs_errorf(GS_ERR_FORMAT, "cached block %d lacks its sliding-window KV", blocks[i]);
	return GS_OK;
}

static enum gs_status admit(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t max_positions, const int32_t *blocks,
			    int32_t n, int32_t own);

/* Global blocks of a sequence of max_positions spread over k groups from first that this
 * rank's group holds (all of them without context parallelism). */
static int32_t own_blocks(const struct gs_kv_pool *p, int32_t max_positions, int32_t k, int32_t first)
{
	return gs_kv_cp_blocks(p->cache.cp_size, k, first, p->cache.cp_rank, gs_kv_global_blocks_for(max_positions));
}

void gs_kv_pool_set_cp(struct gs_kv_pool *p, int32_t C, int32_t c)
{
	GS_ASSERT(C >= 1 && c >= 0 && c < C && (C == 1 || !p->prefix_cache));
	p->cache.cp_size = C;
	p->cache.cp_rank = c;
}

enum gs_status gs_kv_seq_admit_cp(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t max_positions, int32_t k,
				  int32_t first)
{
	int32_t C = p->cache.cp_size;
	int32_t own, r = ring_for(p, max_positions);

	if (k < 1 || k > C || first < 0 || first >= C)
		return gs_errorf(GS_ERR_FORMAT, "context-parallel placement over %d groups from %d of %d", k, first, C);
	if (C == 1)
		return gs_kv_seq_admit(p, s, max_positions);
	memset(s, 0, sizeof(*s));
	own = p->cache.n_global_layers ? own_blocks(p, max_positions, k, first) : 0;
	if (own > gs_kv_global_free(p) || r > gs_kv_local_free(p))
		return gs_errorf(GS_ERR_RANGE, "KV cache full: %d positions need %d global + %d local blocks on group %d, "
				 "%d + %d free", max_positions, own, r, p->cache.cp_rank, gs_kv_global_free(p),
				 gs_kv_local_free(p));
	GS_TRY(admit(p, s, max_positions, NULL, 0, own));
	s->cp_k = k;
	s->cp_first = first;
	return GS_OK;
}

enum gs_status gs_kv_seq_admit_cached(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t max_positions,
				      const int32_t *blocks, int32_t n)
{
	int32_t g = gs_kv_global_blocks_for(max_positions), r = ring_for(p, max_positions);

	memset(s, 0, sizeof(*s));
	if (p->cache.cp_size > 1)
		return gs_errorf(GS_ERR_INTERNAL, "a context-parallel pool admits through gs_kv_seq_admit_cp");
	GS_TRY(check_chain(p, max_positions, blocks, n));
	if (!gs_kv_can_admit_cached(p, max_positions, blocks, n))
		return gs_errorf(GS_ERR_RANGE, "KV cache full: %d positions need %d global + %d local blocks, %d + %d free",
				 max_positions, p->cache.n_global_layers ? g - n : 0, r, gs_kv_global_free(p),
				 gs_kv_local_free(p));
	return admit(p, s, max_positions, blocks, n, g);
}

/* Admission once checked: own = global blocks this rank will hold (reserved but for the n
 * cached ones). */
static enum gs_status admit(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t max_positions, const int32_t *blocks,
			    int32_t n, int32_t own)
{
	int32_t g = gs_kv_global_blocks_for(max_positions), r = ring_for(p, max_positions), R = p->cache.ring_blocks;

	s->gtable = malloc(sizeof(int32_t) * (size_t)(g ? g : 1));
	s->ring = malloc(sizeof(int32_t) * (size_t)(R ? R : 1));
	if (!s->gtable || !s->ring) {
		free(s->gtable);
		free(s->ring);
		memset(s, 0, sizeof(*s));
		return gs_errorf(GS_ERR_NOMEM, "out of memory for a block table");
	}
	s->g_cap = g;
	s->max_positions = max_positions;
	s->reg_node = -1;
	for (int32_t i = 0; i < n; i++) {
		hold_global(p, blocks[i]);
		s->gtable[i] = blocks[i];
	}
	s->g_used = s->n_reg = n;
	s->n_past = n * GS_KV_BLOCK;
	if (n) {
		s->reg_hash = p->gb[blocks[n - 1]].hash;
		s->reg_node = blocks[n - 1];
		s->reg_gen = p->gb[blocks[n - 1]].gen;
	}
	if (p->cache.n_global_layers) {
		s->g_reserved = own - n;
		p->g_reserved += own - n;
	}
	/* The ring is taken whole: its size does not depend on how far the sequence gets. The
	 * slots of a cached prefix's window get its held local blocks; the others fresh ones. A
	 * ring shorter than ring_blocks (short sequence) is indexed modulo ring_blocks, so fill
	 * the unused slots with the same blocks again: positions never reach them. */
	s->n_ring = r;
	p->l_committed += r;
	for (int32_t i = 0; i < R; i++)
		s->ring[i] = -1;
	if (r) {
		for (int32_t i = window_first_block(p, n * GS_KV_BLOCK); i < n; i++) {
			int32_t l = p->gb[blocks[i]].local;
			hold_local(p, l);
			s->ring[i % R] = l;
		}
		for (int32_t i = 0; i < r; i++)
			if (s->ring[i] < 0)
				s->ring[i] = take_local(p);
	}
	for (int32_t i = r; i < R; i++)
		s->ring[i] = r ? s->ring[i % r] : -1;
	return GS_OK;
}

enum gs_status gs_kv_seq_admit(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t max_positions)
{
	return gs_kv_seq_admit_cached(p, s, max_positions, NULL, 0);
}

void gs_kv_cached_tokens(const struct gs_kv_pool *p, const int32_t *blocks, int32_t n, int32_t *out)
{
	for (int32_t i = 0; i < n; i++)
		memcpy(out + (size_t)i * GS_KV_BLOCK, p->gb[blocks[i]].tokens, sizeof(p->gb[0].tokens));
}

enum gs_status gs_kv_seq_prepare(struct gs_kv_pool *p, struct gs_kv_seq *s, int32_t n)
{
	int32_t need;

	if ((int64_t)s->n_past + n > s->max_positions)
		return gs_errorf(GS_ERR_RANGE, "sequence would reach %lld positions, %d reserved",
				 (long long)s->n_past + n, s->max_positions);
	/* A ring slot about to be written must be this sequence's alone and uncached: a block the
	 * cache or another ring holds is left to them and the slot gets a fresh one (at most the
	 * ring's size in blocks is ever held per sequence, so one is always free or evictable). */
	if (s->n_ring && n > 0) {
		int32_t R = p->cache.ring_blocks, b0 = s->n_past / GS_KV_BLOCK, b1 = (s->n_past + n - 1) / GS_KV_BLOCK;
		if (b1 - b0 >= R)
			b0 = b1 - R + 1;
		for (int32_t b = b0; b <= b1; b++) {
			int32_t slot = b % R, l = s->ring[slot];
			if (p->lb[l].ref == 1 && p->lb[l].owner < 0)
				continue;
			put_local(p, l);
			l = take_local(p);
			for (int32_t i = slot; i < R; i += s->n_ring)
				s->ring[i] = l;
		}
	}
	if (!p->cache.n_global_layers)
		return GS_OK;
	need = gs_kv_global_blocks_for(s->n_past + n);
	while (s->g_used < need) {
		if (gs_kv_cp_owner(p->cache.cp_size, s->cp_k, s->cp_first, s->g_used) != p->cache.cp_rank) {
			s->gtable[s->g_used++] = -1; /* another group's */
			continue;
		}
		GS_ASSERT(s->g_reserved > 0 && p->n_gfree + p->glru.n > 0);
		s->gtable[s->g_used++] = take_global(p);
		s->g_reserved--;
		p->g_reserved--;
	}
	return GS_OK;
}

void gs_kv_seq_commit(struct gs_kv_pool *p, struct gs_kv_seq *s, const int32_t *hist,
		      const struct gs_kv_images *im)
{
	int32_t full = s->n_past / GS_KV_BLOCK, last = s->n_past ? (s->n_past - 1) / GS_KV_BLOCK : 0;

	if (!p->prefix_cache || !s->gtable)
		return;
	while (s->n_reg < full && s->reg_node != -2) {
		int32_t i = s->n_reg, own = s->gtable[i], c;
		const int32_t *t = hist + (size_t)i * GS_KV_BLOCK;
		uint64_t h, mm = block_mm(im, i);

		/* The chain goes through the cached block of the previous 16 positions, which may be
		 * another sequence's (same tokens, registered first); if that left the cache, stop. */
		if (i && (s->reg_node < 0 || !p->gb[s->reg_node].cached || p->gb[s->reg_node].gen != s->reg_gen)) {
			s->reg_node = -2;
			break;
		}
		h = block_hash_mm(p, i ? s->reg_hash : 0, t, mm);
		c = find_block(p, h, t, i ? s->reg_node : -1, s->reg_gen, mm);
		if (c < 0 && !p->gb[own].cached) {
			struct gs_kv_gblock *g = &p->gb[own];
			uint32_t bk = bucket_of(p, h);
			c = own;
			g->cached = true;
			g->hash = h;
			g->parent = i ? s->reg_node : -1;
			g->parent_gen = i ? s->reg_gen : 0;
			g->local = -1;
			g->mm = mm;
			memcpy(g->tokens, t, sizeof(g->tokens));
			g->next = p->buckets[bk];
			p->buckets[bk] = own;
		}
		if (c < 0) { /* cannot happen: an own block is registered only here, once */
			s->reg_node = -2;
			break;
		}
		/* The sliding layers' KV of this block, if the ring still holds it (a chunk longer
		 * than the ring overwrote its early blocks) and the cached block has none yet. */
		if (s->n_ring && p->gb[c].local < 0 && i + p->cache.ring_blocks > last) {
			int32_t l = s->ring[i % p->cache.ring_blocks];
			if (p->lb[l].ref == 1 && p->lb[l].owner < 0) {
				p->lb[l].owner = c;
				p->gb[c].local = l;
			}
		}
		s->reg_hash = h;
		s->reg_node = c;
		s->reg_gen = p->gb[c].gen;
		s->n_reg++;
	}
}

void gs_kv_seq_release(struct gs_kv_pool *p, struct gs_kv_seq *s)
{
	if (!s->gtable)
		return;
	/* Last block first: the LRU then evicts a prefix's tail before its head. */
	for (int32_t i = s->g_used - 1; i >= 0; i--)
		if (s->gtable[i] >= 0)
			put_global(p, s->gtable[i]);
	p->g_reserved -= s->g_reserved;
	for (int32_t i = 0; i < s->n_ring; i++)
		put_local(p, s->ring[i]);
	p->l_committed -= s->n_ring;
	free(s->gtable);
	free(s->ring);
	memset(s, 0, sizeof(*s));
}

bool gs_kv_pool_consistent(const struct gs_kv_pool *p, const struct gs_kv_seq *const *seqs, int32_t n)
{
	const int32_t G = p->cache.n_global_blocks, L = p->cache.n_local_blocks;
	int32_t *gref = calloc((size_t)G + 1, sizeof(int32_t)), *lref = calloc((size_t)L + 1, sizeof(int32_t));
	int32_t reserved = 0, committed = 0, held_g = 0, held_l = 0;
	bool ok = gref && lref;

	for (int32_t i = 0; ok && i < n; i++) {
		const struct gs_kv_seq *s = seqs[i];
		reserved += s->g_reserved;
		committed += s->n_ring;
		for (int32_t j = 0; ok && j < s->g_used; j++) {
			/* each block on its owner group only */
			bool mine = gs_kv_cp_owner(p->cache.cp_size, s->cp_k, s->cp_first, j) == p->cache.cp_rank;
			ok = (s->gtable[j] >= 0) == mine && s->gtable[j] < G;
			if (ok && mine)
				gref[s->gtable[j]]++;
		}
		for (int32_t j = 0; j < s->n_ring; j++)
			lref[s->ring[j]]++;
	}
	/* free-list membership, marked as -1 */
	for (int32_t i = 0; ok && i < p->n_gfree; i++)
		ok = !gref[p->gfree[i]]++ && !p->gb[p->gfree[i]].cached;
	for (int32_t i = 0; ok && i < p->n_lfree; i++)
		ok = !lref[p->lfree[i]]++ && p->lb[p->lfree[i]].owner < 0;
	for (int32_t b = 0; ok && b < G; b++) {
		const struct gs_kv_gblock *g = &p->gb[b];
		bool in_free = !g->ref && !g->cached;
		held_g += g->ref > 0;
		ok = g->ref >= 0 && gref[b] == (in_free ? 1 : g->ref) && lru_has(&p->glru, b) == (!g->ref && g->cached);
		if (ok && g->cached)
			ok = find_block(p, g->hash, g->tokens, g->parent, g->parent_gen, g->mm) == b &&
			     (g->local < 0 || p->lb[g->local].owner == b);
	}
	for (int32_t l = 0; ok && l < L; l++) {
		const struct gs_kv_lblock *x = &p->lb[l];
		bool in_free = !x->ref && x->owner < 0;
		held_l += x->ref > 0;
		ok = x->ref >= 0 && lref[l] == (in_free ? 1 : x->ref) && lru_has(&p->llru, l) == (!x->ref && x->owner >= 0) &&
		     (x->owner < 0 || p->gb[x->owner].local == l);
	}
	ok = ok && held_g + p->n_gfree + p->glru.n == G && held_l + p->n_lfree + p->llru.n == L &&
	     reserved == p->g_reserved && committed == p->l_committed && held_l <= committed &&
	     p->g_reserved <= p->n_gfree + p->glru.n && p->l_committed <= L;
	free(gref);
	free(lref);
	return ok;
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
