/* Paged KV accounting against the formula of ARCHITECTURE.md §5, computed here by hand:
 * 27B (62 layers, 10 global, 16 KV heads × 128, window 1024): 80 KiB per token over the global
 * layers + a fixed ring of ceil(1023/16)+1 = 65 blocks × 16 positions on 52 sliding layers,
 * divided by T. Plus pool allocation, reservation and release bookkeeping. */
#include <stdlib.h>
#include <string.h>

#include "gs_config.h"
#include "gs_kvpool.h"
#include "gs_model.h"
#include "gs_test.h"

static void prefix_cache_case(const struct gs_config *c0, uint64_t mask);

static void prefix_cache_tests(const struct gs_config *c)
{
	prefix_cache_case(c, ~(uint64_t)0);
	/* forced collisions: every block hashes alike (0) or to one of two values; hits are
	 * decided by the token ids and the parent block, never by the hash alone */
	prefix_cache_case(c, 0);
	prefix_cache_case(c, 1);
}

/* ---- the prefix cache's bookkeeping (no forward pass: positions are marked written) ---- */

/* What gs_kv_forward_batch does for one sequence, then the engine's commit. */
static void grow(struct gs_kv_pool *p, struct gs_kv_seq *s, const int32_t *hist, int32_t n)
{
	CHECK(gs_kv_seq_prepare(p, s, n) == GS_OK);
	s->n_past += n;
	gs_kv_seq_commit(p, s, hist, NULL);
}

static bool consistent(const struct gs_kv_pool *p, const struct gs_kv_seq *a, const struct gs_kv_seq *b)
{
	const struct gs_kv_seq *v[2];
	int32_t n = 0;
	if (a)
		v[n++] = a;
	if (b)
		v[n++] = b;
	return gs_kv_pool_consistent(p, v, n);
}

/* Do the cached blocks hold exactly prompt[0, n * 16)? */
static bool tokens_match(const struct gs_kv_pool *p, const int32_t *blocks, int32_t n, const int32_t *prompt)
{
	int32_t t[64 * GS_KV_BLOCK];
	gs_kv_cached_tokens(p, blocks, n, t);
	return !memcmp(t, prompt, sizeof(int32_t) * (size_t)n * GS_KV_BLOCK);
}

static void prefix_cache_case(const struct gs_config *c0, uint64_t mask)
{
	/* 6 layers of the 27B pattern (5 sliding, 1 global), window 40: ring of 4 blocks, + 2 for
	 * chunks of up to 32 positions = 6. */
	struct gs_config c = *c0;
	struct gs_kv_pool p;
	struct gs_kv_seq a, b, x;
	int32_t ta[200], tb[200], hit[16], n;

	c.n_layers = 6;
	c.sliding_window = 40;
	for (int l = 0; l < 6; l++)
		c.window[l] = c.is_sliding[l] ? 40 : INT32_MAX;
	for (int i = 0; i < 200; i++)
		ta[i] = tb[i] = 1000 + i;
	tb[100] = 7; /* b diverges inside block 6 */
	CHECK(gs_kv_pool_init(&p, &c, 1, 20, 14, NULL) == GS_OK);
	gs_kv_pool_set_prefix_cache(&p, true, 32);
	p.hash_mask = mask;
	CHECK(p.cache.ring_blocks == 6);
	CHECK(gs_kv_prefix_lookup(&p, ta, 200, NULL, hit, 16) == 0);

	/* a: 100 positions in chunks of 32 registers blocks 0..5 (block 6 is partial) */
	CHECK(gs_kv_seq_admit(&p, &a, 120) == GS_OK);
	for (int32_t done = 0; done < 100; done += 32)
		grow(&p, &a, ta, done + 32 <= 100 ? 32 : 100 - done);
	CHECK(a.n_reg == 6 && consistent(&p, &a, NULL));
	/* block 6 took ring slot 0 from block 0, which stays cached: a fresh block instead */
	CHECK(p.llru.n == 1 && p.lb[p.llru.head].owner == a.gtable[0]);
	for (int i = 0; i < 6; i++)
		CHECK(p.gb[a.gtable[i]].cached && p.gb[a.gtable[i]].ref == 1 && p.gb[a.gtable[i]].local >= 0);
	CHECK(!p.gb[a.gtable[6]].cached);

	/* b shares 100 tokens: 6 cached blocks (96 positions), while a still runs */
	n = gs_kv_prefix_lookup(&p, tb, 150, NULL, hit, 16);
	CHECK_MSG(n == 6, "b hits %d blocks", n);
	CHECK(tokens_match(&p, hit, n, tb));
	for (int i = 0; i < n; i++)
		CHECK(hit[i] == a.gtable[i]);
	/* at most n - 1 positions: a 96-token prompt can take only 5 blocks */
	CHECK(gs_kv_prefix_lookup(&p, tb, 96, NULL, hit, 16) == 5);
	CHECK(gs_kv_prefix_lookup(&p, tb, 97, NULL, hit, 16) == 6);
	/* a different first block: no hit even though later blocks' tokens match (the chain) */
	{
		int32_t tc[200];
		memcpy(tc, ta, sizeof(tc));
		tc[3] = 5;
		CHECK(gs_kv_prefix_lookup(&p, tc, 200, NULL, hit, 16) == 0);
		/* a divergence in block 2: exactly blocks 0, 1, then the window backs off to the
		 * longest prefix whose last 39 positions' local blocks are held (all are) */
		memcpy(tc, ta, sizeof(tc));
		tc[40] = 5;
		n = gs_kv_prefix_lookup(&p, tc, 200, NULL, hit, 16);
		CHECK_MSG(n == 2, "tc hits %d", n);
		CHECK(tokens_match(&p, hit, n, tc));
	}
	n = gs_kv_prefix_lookup(&p, tb, 150, NULL, hit, 16);
	/* a block that is not the chain is refused on admission (what a follower checks) */
	{
		int32_t bad[6];
		memcpy(bad, hit, sizeof(bad));
		bad[3] = hit[4], bad[4] = hit[3];
		CHECK(gs_kv_seq_admit_cached(&p, &x, 160, bad, 6) == GS_ERR_FORMAT);
		CHECK(gs_kv_seq_admit_cached(&p, &x, 96, hit, 6) == GS_ERR_FORMAT); /* 96 positions: no room */
	}
	CHECK(gs_kv_can_admit_cached(&p, 160, hit, n));
	CHECK(gs_kv_seq_admit_cached(&p, &b, 160, hit, n) == GS_OK);
	CHECK(b.n_past == 96 && b.g_used == 6 && b.g_reserved == 10 - 6);
	for (int i = 0; i < 6; i++)
		CHECK(p.gb[hit[i]].ref == 2);
	/* the window's local blocks (3, 4, 5) are shared by both rings */
	for (int i = 3; i < 6; i++)
		CHECK(p.lb[p.gb[hit[i]].local].ref == 2 && b.ring[i % 6] == p.gb[hit[i]].local);
	CHECK(consistent(&p, &a, &b));
	/* b writes on: its own block 6, then past the ring: shared slots get fresh blocks */
	grow(&p, &b, tb, 20);
	grow(&p, &b, tb, 34);
	CHECK(b.n_reg == 9 && consistent(&p, &a, &b));
	CHECK(p.gb[b.gtable[6]].cached && b.gtable[6] != a.gtable[6]);
	/* b's block 9 reached slot 3: the shared block was left to a; slots 4, 5 still shared */
	CHECK(p.lb[a.ring[3]].ref == 1 && a.ring[3] != b.ring[3] && p.lb[b.ring[3]].ref == 1);
	CHECK(p.lb[a.ring[4]].ref == 2 && a.ring[4] == b.ring[4] && a.ring[5] == b.ring[5]);

	/* release a: its blocks b shares stay held; its partial block 6 goes back free */
	gs_kv_seq_release(&p, &a);
	CHECK(consistent(&p, &b, NULL));
	for (int i = 0; i < 6; i++)
		CHECK(p.gb[hit[i]].ref == 1);
	/* release b: every block unreferenced; the LRU evicts b's tail before its head */
	{
		int32_t tail = b.gtable[b.n_reg - 1], head = b.gtable[0];
		gs_kv_seq_release(&p, &b);
		CHECK(consistent(&p, NULL, NULL));
		CHECK(p.glru.head == tail && p.glru.tail == head && p.glru.n == 9);
		CHECK(gs_kv_global_free(&p) == 20 && gs_kv_local_free(&p) == 14);
	}
	/* pressure: x needs 16 blocks, 11 are free: the 5 least recently used cached ones go,
	 * tail first; the head of the chain stays findable */
	{
		int32_t tx[256];
		uint64_t ev0 = p.evictions;
		for (int i = 0; i < 256; i++)
			tx[i] = 50000 + i;
		CHECK(gs_kv_seq_admit(&p, &x, 256) == GS_OK);
		for (int32_t done = 0; done < 256; done += 32)
			grow(&p, &x, tx, 32);
		CHECK_MSG(p.evictions - ev0 >= 5, "%llu evictions", (unsigned long long)(p.evictions - ev0));
		CHECK(consistent(&p, &x, NULL));
		n = gs_kv_prefix_lookup(&p, tb, 150, NULL, hit, 16);
		CHECK(tokens_match(&p, hit, n, tb));
		CHECK_MSG(n <= 4, "evicted tail still found: %d", n);
		gs_kv_seq_release(&p, &x);
		CHECK(consistent(&p, NULL, NULL));
		n = gs_kv_prefix_lookup(&p, tx, 256, NULL, hit, 16);
		CHECK(n > 0 && tokens_match(&p, hit, n, tx));
	}
	/* off: everything cached goes back to the free lists */
	gs_kv_pool_set_prefix_cache(&p, false, 0);
	CHECK(p.glru.n == 0 && p.llru.n == 0 && p.n_gfree == 20 && p.n_lfree == 14 && p.cache.ring_blocks == 4);
	CHECK(gs_kv_prefix_lookup(&p, ta, 200, NULL, hit, 16) == 0);
	CHECK(consistent(&p, NULL, NULL));
	gs_kv_pool_free(&p);
}

int main(int argc, char **argv)
{
	struct gs_config c;
	const char *j = gs_model_preset_json("27b");
	const size_t KiB = 1024;

	CHECK(gs_config_parse(j, strlen(j), "27b", &c) == GS_OK);
	/* bf16, TP = 1, 128K context */
	{
		size_t per_token = 10 * 2 * 16 * 128 * 2; /* layers × (K,V) × heads × dim × bytes */
		size_t fixed = (size_t)52 * 65 * 16 * (2 * 16 * 128 * 2);
		CHECK(per_token == 80 * KiB);
		CHECK(gs_kv_seq_bytes(&c, 16, 131072, 2) == (size_t)131072 * per_token + fixed);
		/* ~416 MiB of window + block rounding: 422.5 MiB */
		CHECK_NEAR((double)fixed / (1024.0 * 1024.0), 422.5, 0.01);
		/* T = 4: 4 KV heads per rank, exactly a quarter */
		CHECK(gs_kv_seq_bytes(&c, 4, 131072, 2) * 4 == gs_kv_seq_bytes(&c, 16, 131072, 2));
		/* A sequence shorter than the window: no ring beyond its own blocks */
		CHECK(gs_kv_seq_bytes(&c, 16, 100, 2) == (size_t)62 * 7 * 16 * (2 * 16 * 128 * 2));
	}
	/* A pool for one sequence allocates exactly what the formula says (fp32 on CPU). */
	{
		struct gs_kv_pool p;
		struct gs_kv_seq s;
		int32_t g, l;
		gs_kv_pool_size_for(&c, 1, 4096, 0, &g, &l);
		CHECK(gs_kv_pool_init(&p, &c, 2, g, l, NULL) == GS_OK);
		CHECK(p.cache.bytes == gs_kv_seq_bytes(&c, 2, 4096, 4));
		CHECK(p.cache.ring_blocks == 65);
		CHECK(gs_kv_seq_admit(&p, &s, 4096) == GS_OK);
		CHECK(gs_kv_global_free(&p) == 0 && gs_kv_local_free(&p) == 0);
		CHECK(!gs_kv_can_admit(&p, 1));
		CHECK(gs_kv_seq_prepare(&p, &s, 17) == GS_OK && s.g_used == 2);
		s.n_past = 17;
		CHECK(gs_kv_seq_prepare(&p, &s, 4096) == GS_ERR_RANGE);
		gs_kv_seq_release(&p, &s);
		CHECK(gs_kv_global_free(&p) == g && gs_kv_local_free(&p) == l && p.g_reserved == 0);
		gs_kv_pool_free(&p);
	}
	prefix_cache_tests(&c);
	gs_config_free(&c);
	TEST_DONE();
}
