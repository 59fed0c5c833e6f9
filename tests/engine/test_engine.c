/* Serving engine (T = 1 here; T = 2 runs the same checks under mpirun via gemmashard-worker):
 * batch invariance, KV accounting under churn, sliding-window bounds, admission, chunked
 * prefill. The model is the "tiny" synthetic shape (6 layers, window 8, vocab 262144).
 * `test_engine bf16` runs the numerics-dependent checks (batch invariance across chunkings,
 * chunked prefill, the window) in the bf16 matmul mode; without AVX512_BF16 it says Skipped
 * and exits 77. `test_engine prefix` runs the prefix-cache checks alone: outputs with the cache
 * on equal those with it off, bit for bit (also under eviction and forced hash collisions), and
 * the pool is whole at the end; n > 1 choices share one prefill and equal n = 1 requests with
 * seeds seed + i. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_cpu.h"
#include "gs_engine.h"
#include "gs_test.h"

#define MAX_GEN 64

struct req {
	uint64_t id;
	int32_t prompt[600];
	int32_t n_prompt;
	struct gs_req_params p;
	int32_t out[MAX_GEN];
	int32_t n_out;
	enum gs_finish finish;
};

static uint64_t rng_state = 12345;
static uint32_t rnd(void)
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (uint32_t)(rng_state >> 33);
}

/* Engines made by make_engine: prefix caching off (the default is on). */
static bool no_prefix_cache;

static struct gs_engine *make_engine(const struct gs_model *m, struct gs_backend be, int32_t budget,
				     int32_t max_seqs, int32_t ctx, int32_t gblocks)
{
	struct gs_engine_config c = { .max_batch_tokens = budget, .max_seqs = max_seqs, .max_context = ctx,
				      .kv_global_blocks = gblocks, .candidates = 64, .no_prefix_cache = no_prefix_cache };
	struct gs_engine *e = NULL;
	if (gs_engine_create(m, be, NULL, &c, &e) != GS_OK) {
		fprintf(stderr, "engine: %s\n", gs_last_error());
		exit(1);
	}
	return e;
}

/* Run until idle, recording tokens per request; returns steps. */
static int run_all(struct gs_engine *e, struct req *r, int n, int max_steps)
{
	static struct gs_token_event ev[1024];
	int steps = 0;

	while (!gs_engine_idle(e) && steps < max_steps) {
		int32_t n_ev;
		if (gs_engine_step(e, ev, 1024, &n_ev) != GS_OK) {
			fprintf(stderr, "step: %s\n", gs_last_error());
			exit(1);
		}
		CHECK(gs_engine_kv_consistent(e));
		for (int32_t i = 0; i < n_ev; i++)
			for (int k = 0; k < n; k++)
				if (r[k].id == ev[i].id) {
					if (ev[i].token >= 0 && r[k].n_out < MAX_GEN)
						r[k].out[r[k].n_out++] = ev[i].token;
					if (ev[i].finish)
						r[k].finish = ev[i].finish;
				}
		steps++;
	}
	return steps;
}

static void test_batch_invariance(const struct gs_model *m, struct gs_backend be)
{
	enum { N = 65 };
	static struct req all[N], alone[N];
	struct gs_engine *e;
	int diff = 0;

	for (int i = 0; i < N; i++) {
		struct req *r = &all[i];
		memset(r, 0, sizeof(*r));
		r->id = 1000 + i;
		r->n_prompt = 1 + (int32_t)(rnd() % (i % 5 == 0 ? 300 : 40));
		r->prompt[0] = 2;
		for (int32_t t = 1; t < r->n_prompt; t++)
			r->prompt[t] = 3 + (int32_t)(rnd() % 262000);
		r->p = (struct gs_req_params){ .max_tokens = 4 + (int32_t)(rnd() % 20), .ignore_eos = true };
		r->p.sp = gs_sampling_params_default();
		if (i % 2) { /* half greedy, half seeded sampling with every filter */
			r->p.sp.temperature = 0;
		} else {
			r->p.sp.temperature = 0.9f, r->p.sp.top_k = 40, r->p.sp.top_p = 0.95f, r->p.sp.min_p = 0.01f;
			r->p.sp.repetition_penalty = 1.1f, r->p.sp.seed = 77 + (uint64_t)i;
		}
		alone[i] = *r;
	}
	/* Together: 64 slots, budget 96 -> mixed prefill chunks and decodes in every step. */
	e = make_engine(m, be, 96, 64, 400, 0);
	for (int i = 0; i < N; i++)
		CHECK(gs_engine_submit(e, all[i].id, all[i].prompt, all[i].n_prompt, &all[i].p) == GS_OK);
	run_all(e, all, N, 100000);
	gs_engine_free(e);
	/* Alone, each in a fresh engine with a different budget (other chunking). */
	for (int i = 0; i < N; i++) {
		e = make_engine(m, be, 17, 4, 400, 0);
		CHECK(gs_engine_submit(e, alone[i].id, alone[i].prompt, alone[i].n_prompt, &alone[i].p) == GS_OK);
		run_all(e, &alone[i], 1, 100000);
		gs_engine_free(e);
		CHECK(alone[i].n_out == alone[i].p.max_tokens && alone[i].finish == GS_FINISH_LENGTH);
		if (alone[i].n_out != all[i].n_out || memcmp(alone[i].out, all[i].out, sizeof(int32_t) * (size_t)all[i].n_out))
			diff++;
	}
	CHECK_MSG(diff == 0, "%d of %d requests differ between batched and alone", diff, N);
}

static void test_kv_churn(const struct gs_model *m, struct gs_backend be)
{
	enum { N = 1000 };
	static struct req r[N];
	static struct gs_token_event ev[1024];
	struct gs_engine_stats st0, st;
	struct gs_engine *e = make_engine(m, be, 64, 16, 80, 0);
	int submitted = 0, cancelled = 0, finished = 0, steps = 0;

	gs_engine_get_stats(e, &st0);
	CHECK(st0.kv_global_free == st0.kv_global_total && st0.kv_local_used == 0);
	while ((submitted < N || !gs_engine_idle(e)) && steps < 200000) {
		int32_t n_ev;
		/* Keep ~40 in flight; cancel a random one now and then (waiting or running). */
		while (submitted < N && submitted - finished - cancelled < 40) {
			struct req *q = &r[submitted];
			q->id = (uint64_t)submitted + 1;
			q->n_prompt = 1 + (int32_t)(rnd() % 50);
			for (int32_t t = 0; t < q->n_prompt; t++)
				q->prompt[t] = 2 + (int32_t)(rnd() % 1000);
			q->p = (struct gs_req_params){ .max_tokens = 1 + (int32_t)(rnd() % 29), .ignore_eos = true };
			q->p.sp = gs_sampling_params_default();
			q->p.sp.seed = (uint64_t)submitted;
			CHECK(gs_engine_submit(e, q->id, q->prompt, q->n_prompt, &q->p) == GS_OK);
			submitted++;
		}
		if (rnd() % 3 == 0 && submitted > 0) {
			int k = (int)(rnd() % (uint32_t)submitted);
			if (!r[k].finish)
				gs_engine_cancel(e, r[k].id);
		}
		CHECK(gs_engine_step(e, ev, 1024, &n_ev) == GS_OK);
		steps++;
		gs_engine_get_stats(e, &st);
		CHECK(st.last_batch_tokens <= 64);
		CHECK(gs_engine_kv_consistent(e));
		for (int32_t i = 0; i < n_ev; i++) {
			struct req *q = &r[ev[i].id - 1];
			if (!ev[i].finish)
				continue;
			if (q->finish)
				CHECK_MSG(0, "request %llu finished twice", (unsigned long long)ev[i].id);
			q->finish = ev[i].finish;
			if (ev[i].finish == GS_FINISH_CANCELLED)
				cancelled++;
			else
				finished++;
		}
	}
	/* One more step releases whatever finished in the last one. */
	{
		int32_t n_ev;
		CHECK(gs_engine_step(e, ev, 1024, &n_ev) == GS_OK);
	}
	gs_engine_get_stats(e, &st);
	CHECK_MSG(finished + cancelled == N, "finished %d + cancelled %d != %d", finished, cancelled, N);
	CHECK_MSG(st.kv_global_free == st0.kv_global_total && st.kv_global_used == 0 && st.kv_local_used == 0,
		  "pool not full at the end: free %d of %d, local used %d", st.kv_global_free, st.kv_global_total,
		  st.kv_local_used);
	fprintf(stderr, "churn: %d finished, %d cancelled in %d steps\n", finished, cancelled, steps);
	gs_engine_free(e);
}

static void test_long_sequence_window(const struct gs_model *m, struct gs_backend be)
{
	/* tiny: window 8 -> ring of 2 blocks; a sequence 20x the window must never hold more.
	 * With the prefix cache on, the ring holds 64 / 16 = 4 blocks more (a step's chunk), and
	 * blocks left behind stay cached (not in use): 6. */
	const int32_t ring = no_prefix_cache ? 2 : 6;
	struct gs_engine *e = make_engine(m, be, 64, 2, 400, 0);
	static struct req r;
	static struct gs_token_event ev[64];
	struct gs_engine_stats st;
	int32_t max_local = 0;

	memset(&r, 0, sizeof(r));
	r.id = 1, r.n_prompt = 20;
	for (int32_t t = 0; t < r.n_prompt; t++)
		r.prompt[t] = 2 + t;
	r.p = (struct gs_req_params){ .max_tokens = 160, .ignore_eos = true };
	r.p.sp = gs_sampling_params_default();
	CHECK(gs_engine_submit(e, 1, r.prompt, r.n_prompt, &r.p) == GS_OK);
	while (!gs_engine_idle(e)) {
		int32_t n_ev;
		CHECK(gs_engine_step(e, ev, 64, &n_ev) == GS_OK);
		gs_engine_get_stats(e, &st);
		if (st.kv_local_used > max_local)
			max_local = st.kv_local_used;
	}
	CHECK_MSG(max_local <= ring, "local-layer blocks peaked at %d for a 180-token sequence with window 8 (ring %d)",
		  max_local, ring);
	CHECK(max_local >= 1);
	gs_engine_free(e);
}

static void test_admission(const struct gs_model *m, struct gs_backend be)
{
	/* Pool of 12 global blocks (192 positions): a 100 + 100 request can never fit; three of
	 * 60 + 20 (5 blocks each) fit two at a time, the third waits. */
	struct gs_engine *e = make_engine(m, be, 256, 8, 1000, 12);
	static struct req r[3];
	static struct gs_token_event ev[64];
	int32_t prompt[100];
	struct gs_req_params big = { .max_tokens = 101, .ignore_eos = true };
	struct gs_engine_stats st;
	bool saw_waiting = false;

	for (int i = 0; i < 100; i++)
		prompt[i] = 5 + i;
	big.sp = gs_sampling_params_default();
	CHECK(gs_engine_submit(e, 99, prompt, 100, &big) == GS_ERR_RANGE);
	CHECK(strstr(gs_last_error(), "can never fit") != NULL);
	for (int i = 0; i < 3; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		r[i].id = (uint64_t)i + 1, r[i].n_prompt = 60;
		memcpy(r[i].prompt, prompt, sizeof(int32_t) * 60);
		r[i].prompt[0] = 1000 + i; /* nothing shared: the prefix cache saves no block */
		r[i].p = (struct gs_req_params){ .max_tokens = 20, .ignore_eos = true };
		r[i].p.sp = gs_sampling_params_default();
		CHECK(gs_engine_submit(e, r[i].id, r[i].prompt, 60, &r[i].p) == GS_OK);
	}
	while (!gs_engine_idle(e)) {
		int32_t n_ev;
		CHECK(gs_engine_step(e, ev, 64, &n_ev) == GS_OK);
		gs_engine_get_stats(e, &st);
		CHECK(st.running <= 2);
		saw_waiting |= st.waiting == 1 && st.running == 2;
		for (int32_t i = 0; i < n_ev; i++)
			if (ev[i].finish)
				r[ev[i].id - 1].finish = ev[i].finish;
	}
	CHECK(saw_waiting);
	for (int i = 0; i < 3; i++)
		CHECK(r[i].finish == GS_FINISH_LENGTH);
	gs_engine_free(e);
}

/* Submit a request of n_prompt + max_tokens (ignore_eos); returns the status. */
static enum gs_status submit_len(struct gs_engine *e, uint64_t id, int32_t n_prompt, int32_t max_tokens)
{
	int32_t prompt[600];
	struct gs_req_params p = { .max_tokens = max_tokens, .ignore_eos = true };

	for (int32_t i = 0; i < n_prompt; i++)
		prompt[i] = 7 + (int32_t)((uint32_t)i * 2654435761u % 50000u) + (int32_t)id * 3;
	p.sp = gs_sampling_params_default();
	return gs_engine_submit(e, id, prompt, n_prompt, &p);
}

/* --kv-mem: the pool is sized from a byte budget (the sliding rings of max_seqs sequences, the
 * rest global blocks, rounded down), the longest servable sequence is min(--ctx, what the global
 * pool holds), a request of exactly that many KV positions (prompt + max_tokens - 1) is admitted
 * and runs to its length, one more is refused at once naming the length; two such requests
 * each fit the pool but not together, so the second waits. Expected sizes computed by hand. */
static void test_kv_budget(const struct gs_model *m, struct gs_backend be)
{
	const struct gs_config *cfg = &m->cfg;
	const int32_t S = 3, G = 10, kvh = m->shard.n_kv_heads, D = cfg->head_dim;
	int32_t n_global = 0, ring, pos;
	size_t gb, lb, bytes;
	struct gs_engine_config c = { .max_batch_tokens = 64, .max_seqs = S, .max_context = cfg->max_position,
				      .candidates = 64, .no_prefix_cache = true };
	struct gs_engine *e = NULL;
	struct gs_engine_stats st;
	static struct req r[2];
	static struct gs_token_event ev[64];
	bool saw_waiting = false;

	for (int32_t l = 0; l < cfg->n_layers; l++)
		n_global += !cfg->is_sliding[l];
	CHECK(n_global > 0 && n_global < cfg->n_layers);
	ring = (cfg->sliding_window - 1 + 15) / 16 + 1; /* the window's history can straddle a block */
	gb = (size_t)n_global * 16 * (size_t)kvh * (size_t)D * 2 * 4;  /* K + V, fp32 on the CPU */
	lb = (size_t)(cfg->n_layers - n_global) * 16 * (size_t)kvh * (size_t)D * 2 * 4;
	bytes = (size_t)S * (size_t)ring * lb + (size_t)G * gb + gb - 1; /* one byte short of G + 1 */

	/* Too small: the rings of S sequences alone do not fit; refused naming --kv-mem. */
	c.kv_bytes = (size_t)S * (size_t)ring * lb;
	CHECK(gs_engine_create(m, be, NULL, &c, &e) == GS_ERR_RANGE && !e);
	CHECK(strstr(gs_last_error(), "--kv-mem") != NULL);

	c.kv_bytes = bytes;
	CHECK(gs_engine_create(m, be, NULL, &c, &e) == GS_OK);
	if (!e)
		return;
	gs_engine_get_stats(e, &st);
	pos = G * 16;
	CHECK(st.kv_global_total == G);
	CHECK(st.kv_local_total == S * ring);
	CHECK(st.kv_bytes == (size_t)G * gb + (size_t)S * (size_t)ring * lb);
	CHECK(st.max_context == pos);
	/* one position over: refused at once, naming the longest context */
	CHECK(submit_len(e, 1, pos - 20 + 2, 20) == GS_ERR_RANGE);
	CHECK(strstr(gs_last_error(), "can never fit") != NULL);
	{
		char want[32];
		snprintf(want, sizeof(want), "context of %d tokens", pos);
		CHECK(strstr(gs_last_error(), want) != NULL);
	}
	/* exactly the longest: admitted; a second one waits for the first (fits the pool, not now) */
	for (int i = 0; i < 2; i++) {
		memset(&r[i], 0, sizeof(r[i]));
		r[i].id = (uint64_t)i + 10;
		CHECK(submit_len(e, r[i].id, pos - 20 + 1, 20) == GS_OK);
	}
	while (!gs_engine_idle(e)) {
		int32_t n_ev;
		CHECK(gs_engine_step(e, ev, 64, &n_ev) == GS_OK);
		gs_engine_get_stats(e, &st);
		saw_waiting |= st.waiting == 1 && st.running == 1;
		CHECK(st.running <= 1);
		for (int32_t i = 0; i < n_ev; i++) {
			struct req *q = &r[ev[i].id - 10];
			q->n_out += ev[i].token >= 0;
			if (ev[i].finish)
				q->finish = ev[i].finish;
		}
	}
	CHECK(saw_waiting);
	for (int i = 0; i < 2; i++)
		CHECK(r[i].finish == GS_FINISH_LENGTH && r[i].n_out == 20);
	CHECK(gs_engine_kv_consistent(e));
	gs_engine_free(e);

	/* --ctx below the pool: it is the limit, exact length in, one over out. */
	c.max_context = 100;
	e = NULL;
	CHECK(gs_engine_create(m, be, NULL, &c, &e) == GS_OK);
	if (!e)
		return;
	gs_engine_get_stats(e, &st);
	CHECK(st.max_context == 100 && st.kv_global_total == G);
	CHECK(submit_len(e, 1, 100 - 8 + 2, 8) == GS_ERR_RANGE);
	CHECK(strstr(gs_last_error(), "context of 100 tokens") != NULL);
	CHECK(submit_len(e, 2, 100 - 8 + 1, 8) == GS_OK);
	CHECK(gs_engine_cancel(e, 2) == GS_OK);
	while (!gs_engine_idle(e)) {
		int32_t n_ev;
		CHECK(gs_engine_step(e, ev, 64, &n_ev) == GS_OK);
	}
	gs_engine_free(e);

	/* No budget: the default pool is max_seqs sequences of min(ctx, GS_KV_DEFAULT_CONTEXT). */
	c.kv_bytes = 0;
	c.max_context = cfg->max_position;
	e = NULL;
	CHECK(gs_engine_create(m, be, NULL, &c, &e) == GS_OK);
	if (!e)
		return;
	gs_engine_get_stats(e, &st);
	{
		int32_t dctx = cfg->max_position < GS_KV_DEFAULT_CONTEXT ? cfg->max_position : GS_KV_DEFAULT_CONTEXT;
		int64_t all = (int64_t)S * ((dctx + 15) / 16) * 16;
		CHECK(st.kv_global_total == S * ((dctx + 15) / 16));
		CHECK(st.max_context == (all < cfg->max_position ? all : cfg->max_position));
	}
	gs_engine_free(e);
}

static void test_chunked_prefill(const struct gs_model *m, struct gs_backend be)
{
	/* Four decoding requests, then an 8K-token prompt: with a budget of 256 the prompt takes
	 * 32+ steps, and every one of them must still give each running decode its token. */
	struct gs_engine *e = make_engine(m, be, 256, 8, 8300, 0);
	static int32_t longp[8192];
	static struct gs_token_event ev[64];
	int32_t short_p[4] = { 2, 10, 11, 12 }, n_ev, steps = 0, long_started = 0, gaps = 0;
	struct gs_req_params dp = { .max_tokens = 60, .ignore_eos = true }, lp = { .max_tokens = 2, .ignore_eos = true };
	struct gs_engine_stats st;

	dp.sp = lp.sp = gs_sampling_params_default();
	for (int i = 0; i < 8192; i++)
		longp[i] = 2 + (i * 7919) % 200000;
	for (uint64_t i = 0; i < 4; i++)
		CHECK(gs_engine_submit(e, 10 + i, short_p, 4, &dp) == GS_OK);
	for (int i = 0; i < 3; i++) /* get them decoding */
		CHECK(gs_engine_step(e, ev, 64, &n_ev) == GS_OK);
	CHECK(gs_engine_submit(e, 99, longp, 8192, &lp) == GS_OK);
	while (!gs_engine_idle(e) && steps < 100) {
		int decode_events = 0;
		CHECK(gs_engine_step(e, ev, 64, &n_ev) == GS_OK);
		gs_engine_get_stats(e, &st);
		CHECK_MSG(st.last_batch_tokens <= 256, "step of %d tokens > budget 256", st.last_batch_tokens);
		for (int32_t i = 0; i < n_ev; i++)
			decode_events += ev[i].id >= 10 && ev[i].id < 14;
		if (st.last_batch_tokens > 4) {
			long_started++;
			if (decode_events != 4 && st.last_decode_tokens < 4)
				gaps++;
		}
		steps++;
		if (long_started > 30)
			break;
	}
	CHECK_MSG(long_started >= 30, "the long prompt was prefilled in %d steps", long_started);
	CHECK_MSG(gaps == 0, "%d steps of the long prefill starved a running decode", gaps);
	gs_engine_free(e);
}

/* ---- prefix caching ------------------------------------------------------------------- */

#define PC_MAX_PROMPT 4200
struct preq {
	uint64_t id;
	int32_t prompt[PC_MAX_PROMPT];
	int32_t n_prompt;
	struct gs_req_params p;
	int32_t out[MAX_GEN];
	int32_t n_out;
	enum gs_finish finish;
};

struct pc_mode {
	const char *name;
	bool cache;
	int32_t gblocks;  /* 0: enough for every slot */
	uint64_t mask;    /* hash mask (forced collisions); 0: leave it */
};

/* Submit r[0, n), run until idle (checking the pool after every step). */
static void pc_phase(struct gs_engine *e, struct preq *r, int n)
{
	static struct gs_token_event ev[64];

	for (int i = 0; i < n; i++)
		CHECK(gs_engine_submit(e, r[i].id, r[i].prompt, r[i].n_prompt, &r[i].p) == GS_OK);
	while (!gs_engine_idle(e)) {
		int32_t n_ev;
		if (gs_engine_step(e, ev, 64, &n_ev) != GS_OK) {
			fprintf(stderr, "step: %s\n", gs_last_error());
			exit(1);
		}
		CHECK(gs_engine_kv_consistent(e));
		for (int32_t i = 0; i < n_ev; i++)
			for (int k = 0; k < n; k++)
				if (r[k].id == ev[i].id) {
					if (ev[i].token >= 0 && r[k].n_out < MAX_GEN)
						r[k].out[r[k].n_out++] = ev[i].token;
					if (ev[i].finish)
						r[k].finish = ev[i].finish;
				}
	}
	/* one more step releases what finished last */
	{
		int32_t n_ev;
		CHECK(gs_engine_step(e, ev, 64, &n_ev) == GS_OK && n_ev == 0);
	}
}

enum { PC_N = 10 };

/* Prompts sharing a 1030-token prefix (S1) and a 4000-token one (S2) on tiny (window 8),
 * identical prompts, a prompt that is a whole number of blocks, two second turns of a chat (first
 * prompt + its output + a new message), and repeats after everything was released.
 * phase_hits: hit tokens of phase 2 (the chat turns). */
static void pc_run(const struct gs_model *m, struct gs_backend be, const struct pc_mode *md, struct preq *r,
		   struct gs_engine_stats *st, uint64_t *phase_hits)
{
	struct gs_engine_config c = { .max_batch_tokens = 256, .max_seqs = 4, .max_context = 4400,
				      .kv_global_blocks = md->gblocks, .candidates = 64, .no_prefix_cache = !md->cache };
	static int32_t s1[1030], s2[4000];
	struct gs_engine *e = NULL;
	struct gs_engine_stats st1;
	uint64_t seed = 4242;

	for (int i = 0; i < 4000; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		s2[i] = 3 + (int32_t)((seed >> 33) % 262000);
		if (i < 1030)
			s1[i] = 3 + (int32_t)((seed >> 13) % 262000);
	}
	if (gs_engine_create(m, be, NULL, &c, &e) != GS_OK) {
		fprintf(stderr, "engine: %s\n", gs_last_error());
		exit(1);
	}
	if (md->mask)
		gs_engine_test_hash_mask(e, md->mask);
	memset(r, 0, sizeof(*r) * PC_N);
	for (int i = 0; i < PC_N; i++) {
		r[i].id = 500 + (uint64_t)i;
		r[i].p = (struct gs_req_params){ .max_tokens = 8, .ignore_eos = true };
		r[i].p.sp = gs_sampling_params_default();
		if (i % 3 == 1) { /* seeded sampling whose penalty reads the whole history */
			r[i].p.sp.temperature = 0.8f, r[i].p.sp.top_k = 20, r[i].p.sp.repetition_penalty = 1.3f;
			r[i].p.sp.seed = 9 + (uint64_t)i;
		} else {
			r[i].p.sp.temperature = 0;
		}
	}
#define PC_SET(k, src, n_src, n_tail)                                                     \
	do {                                                                              \
		memcpy(r[k].prompt, src, sizeof(int32_t) * (size_t)(n_src));              \
		for (int32_t t = 0; t < (n_tail); t++)                                    \
			r[k].prompt[(n_src) + t] = 100 + 37 * (k) + t;                    \
		r[k].n_prompt = (n_src) + (n_tail);                                       \
	} while (0)
	PC_SET(0, s1, 1030, 20);
	PC_SET(1, s1, 1030, 35);
	PC_SET(2, s2, 4000, 10);
	PC_SET(3, s1, 1030, 50);
	PC_SET(4, s1, 1024, 0);           /* 64 whole blocks: the last is computed, not taken */
	memcpy(&r[5], &r[0], sizeof(r[0])); /* identical to r[0] */
	r[5].id = 505;
	pc_phase(e, r, 6);
	gs_engine_get_stats(e, &st1);
	/* phase 2: second turns of r[2] and r[3] */
	for (int k = 6; k < 8; k++) {
		const struct preq *f = &r[k - 4];
		CHECK(f->n_out == 8);
		memcpy(r[k].prompt, f->prompt, sizeof(int32_t) * (size_t)f->n_prompt);
		memcpy(r[k].prompt + f->n_prompt, f->out, sizeof(int32_t) * (size_t)f->n_out);
		r[k].n_prompt = f->n_prompt + f->n_out;
		for (int32_t t = 0; t < 12; t++)
			r[k].prompt[r[k].n_prompt++] = 7000 + t;
	}
	pc_phase(e, r + 6, 2);
	gs_engine_get_stats(e, st);
	*phase_hits = st->prefix_hit_tokens - st1.prefix_hit_tokens;
	/* phase 3: r[0] again, and S2 with another message, after everything was released */
	memcpy(&r[8], &r[0], sizeof(r[0]));
	r[8].id = 508, r[8].n_out = 0, r[8].finish = GS_FINISH_NONE;
	PC_SET(9, s2, 4000, 3);
#undef PC_SET
	pc_phase(e, r + 8, 2);
	gs_engine_get_stats(e, st);
	/* the pool is whole: nothing held, reserved or committed; cached blocks count as free */
	CHECK_MSG(gs_engine_kv_consistent(e), "%s: pool not whole at the end", md->name);
	CHECK(st->kv_global_used == 0 && st->kv_global_reserved == 0 && st->kv_local_used == 0 &&
	      st->kv_global_free == st->kv_global_total);
	gs_engine_free(e);
}

static void test_prefix_cache(const struct gs_model *m, struct gs_backend be)
{
	static const struct pc_mode modes[] = {
		{ "off", false, 0, 0 },
		{ "on", true, 0, 0 },
		/* 300 blocks: one long request at a time, the cache evicted under it */
		{ "on, small pool", true, 300, 0 },
		/* every hash one of four values: hits decided by the token ids and parents */
		{ "on, forced collisions", true, 0, 3 },
	};
	static struct preq ref[PC_N], got[PC_N];
	struct gs_engine_stats st, st_on = { 0 };
	uint64_t ph, ph_on = 0;

	pc_run(m, be, &modes[0], ref, &st, &ph);
	CHECK(!st.prefix_cache && st.prefix_hit_tokens == 0 && st.prefix_query_tokens == 0);
	for (size_t k = 1; k < sizeof(modes) / sizeof(modes[0]); k++) {
		int diff = 0;
		pc_run(m, be, &modes[k], got, &st, &ph);
		for (int i = 0; i < PC_N; i++)
			if (got[i].n_out != 8 || got[i].n_out != ref[i].n_out || got[i].n_prompt != ref[i].n_prompt ||
			    memcmp(got[i].out, ref[i].out, sizeof(int32_t) * 8))
				diff++;
		CHECK_MSG(diff == 0, "prefix cache %s: %d of %d requests differ from the cache off", modes[k].name, diff,
			  PC_N);
		fprintf(stderr, "prefix cache %s: %llu of %llu prompt tokens hit (chat turns: %llu of %d), %llu evictions\n",
			modes[k].name, (unsigned long long)st.prefix_hit_tokens, (unsigned long long)st.prefix_query_tokens,
			(unsigned long long)ph, got[6].n_prompt + got[7].n_prompt, (unsigned long long)st.prefix_evictions);
		CHECK(st.prefix_cache && st.prefix_query_tokens > 0);
		if (k == 1) {
			st_on = st, ph_on = ph;
			/* the chat turns take their first turn's whole blocks: 4017 positions -> 251 blocks,
			 * 1087 -> 67 */
			CHECK_MSG(ph == (251 + 67) * 16, "chat turns hit %llu tokens", (unsigned long long)ph);
			CHECK(st.prefix_hit_tokens >= ph + 3 * 1024 + 63 * 16 && st.prefix_evictions == 0);
		} else if (k == 2) {
			CHECK(st.prefix_evictions > 0 && st.prefix_hit_tokens > 0);
		} else {
			CHECK(st.prefix_hit_tokens == st_on.prefix_hit_tokens && ph == ph_on);
		}
	}
}

/* ---- n > 1: one prefill shared through the prefix cache --------------------------------- */

struct nreq {
	int32_t out[MAX_GEN], n_out;
	float lp[MAX_GEN], top[MAX_GEN][5];
	int32_t top_ids[MAX_GEN][5];
	enum gs_finish finish;
};

/* Submit one request (id, n choices) and run until idle and released; choice i lands in o[i]. */
static void n_run(struct gs_engine *e, uint64_t id, const int32_t *prompt, int32_t n_prompt,
		  const struct gs_req_params *p, struct nreq *o)
{
	static struct gs_token_event ev[64];
	int32_t n = p->n > 1 ? p->n : 1, n_ev;

	memset(o, 0, sizeof(*o) * (size_t)n);
	CHECK(gs_engine_submit(e, id, prompt, n_prompt, p) == GS_OK);
	for (int steps = 0; !gs_engine_idle(e) && steps < 500; steps++) {
		CHECK(gs_engine_step(e, ev, 64, &n_ev) == GS_OK);
		CHECK(gs_engine_kv_consistent(e));
		for (int32_t i = 0; i < n_ev; i++) {
			CHECK(ev[i].id >= id && ev[i].id < id + (uint64_t)n);
			struct nreq *q = &o[ev[i].id - id];
			if (ev[i].token >= 0 && q->n_out < MAX_GEN) {
				q->lp[q->n_out] = ev[i].logprob;
				CHECK(ev[i].n_top == 5);
				memcpy(q->top[q->n_out], ev[i].top_logprobs, sizeof(q->top[0]));
				memcpy(q->top_ids[q->n_out], ev[i].top_ids, sizeof(q->top_ids[0]));
				q->out[q->n_out++] = ev[i].token;
			}
			if (ev[i].finish)
				q->finish = ev[i].finish;
		}
	}
	CHECK(gs_engine_step(e, ev, 64, &n_ev) == GS_OK && n_ev == 0); /* releases the last */
	CHECK(gs_engine_kv_consistent(e));
}

static bool nreq_equal(const struct nreq *a, const struct nreq *b)
{
	return a->n_out == b->n_out && a->finish == b->finish &&
	       !memcmp(a->out, b->out, sizeof(int32_t) * (size_t)a->n_out) &&
	       !memcmp(a->lp, b->lp, sizeof(float) * (size_t)a->n_out) &&
	       !memcmp(a->top, b->top, sizeof(a->top[0]) * (size_t)a->n_out) &&
	       !memcmp(a->top_ids, b->top_ids, sizeof(a->top_ids[0]) * (size_t)a->n_out);
}

/* Greedy n = 3: three choices equal to n = 1. Sampled n = 4 with seed s at T = 1 and T = 2:
 * choice i equals an n = 1 request with seed s + i, tokens and logprobs bit for bit (the
 * references run on an engine with the cache off, so every one of their prompts is computed
 * in full). The prompt is computed once: 100 tokens, then 4 per further choice (the partial
 * last block; the 6 full blocks come from the cache). */
static void test_n_choices(const struct gs_model *m, struct gs_backend be)
{
	enum { P = 100, GEN = 12 };
	static struct nreq got[GS_MAX_N], ref[GS_MAX_N];
	int32_t prompt[P];
	struct gs_engine_config c = { .max_batch_tokens = 256, .max_seqs = 8, .max_context = 512, .candidates = 64 };
	struct gs_engine *on = NULL, *off = NULL;
	struct gs_engine_stats s0, s1;
	const float temps[3] = { 0.0f, 1.0f, 2.0f };
	const int32_t ns[3] = { 3, 4, 4 };

	CHECK(gs_engine_create(m, be, NULL, &c, &on) == GS_OK);
	c.no_prefix_cache = true;
	CHECK(gs_engine_create(m, be, NULL, &c, &off) == GS_OK);
	for (int k = 0; k < 3; k++) {
		struct gs_req_params p = { .max_tokens = GEN, .ignore_eos = true, .logprobs = true, .top_logprobs = 5 };
		p.sp = gs_sampling_params_default();
		p.sp.temperature = temps[k];
		p.sp.seed = 4242 + (uint64_t)k * 100;
		for (int32_t i = 0; i < P; i++)
			prompt[i] = (int32_t)(2 + rnd() % 260000); /* a fresh prompt per group: no hit across */
		gs_engine_get_stats(on, &s0);
		p.n = ns[k];
		n_run(on, 1000 + (uint64_t)k * 10, prompt, P, &p, got);
		gs_engine_get_stats(on, &s1);
		CHECK_MSG(s1.tokens_prefill - s0.tokens_prefill == (uint64_t)(P + (ns[k] - 1) * (P - 96)),
			  "n = %d: %llu prompt tokens computed, want %d", ns[k],
			  (unsigned long long)(s1.tokens_prefill - s0.tokens_prefill), P + (ns[k] - 1) * (P - 96));
		CHECK(s1.prefix_hit_tokens - s0.prefix_hit_tokens == (uint64_t)((ns[k] - 1) * 96));
		p.n = 1;
		for (int32_t i = 0; i < ns[k]; i++) {
			struct gs_req_params pi = p;
			pi.sp.seed = p.sp.seed + (uint64_t)i;
			n_run(off, 2000 + (uint64_t)k * 10 + (uint64_t)i, prompt, P, &pi, &ref[i]);
		}
		int32_t same01 = nreq_equal(&got[0], &got[1]);
		for (int32_t i = 0; i < ns[k]; i++) {
			CHECK(got[i].n_out == GEN && got[i].finish == GS_FINISH_LENGTH);
			CHECK_MSG(nreq_equal(&got[i], &ref[i]), "T = %g: choice %d differs from n = 1 with seed + %d",
				  (double)temps[k], i, i);
			CHECK_MSG(nreq_equal(&got[i], &ref[temps[k] == 0.0f ? 0 : i]), "greedy choices differ");
		}
		/* sampled choices differ from each other (different seeds), greedy ones do not */
		CHECK(temps[k] == 0.0f ? same01 : !same01);
		fprintf(stderr, "n = %d at temperature %g: prompt tokens computed %llu (n = 1: %d), cache hits %llu\n",
			ns[k], (double)temps[k], (unsigned long long)(s1.tokens_prefill - s0.tokens_prefill), P,
			(unsigned long long)(s1.prefix_hit_tokens - s0.prefix_hit_tokens));
	}
	/* the same n = 4 with the cache off: no sharing, the same choices */
	{
		struct gs_req_params p = { .max_tokens = GEN, .ignore_eos = true, .logprobs = true, .top_logprobs = 5, .n = 4 };
		p.sp = gs_sampling_params_default();
		p.sp.temperature = 2.0f;
		p.sp.seed = 4242 + 200;
		n_run(off, 3000, prompt, P, &p, got);
		for (int32_t i = 0; i < 4; i++)
			CHECK(nreq_equal(&got[i], &ref[i]));
	}
	/* refusals: n over the limit, more choices than sequences */
	{
		struct gs_req_params p = { .max_tokens = GEN, .n = GS_MAX_N + 1 };
		p.sp = gs_sampling_params_default();
		CHECK(gs_engine_submit(on, 1, prompt, P, &p) == GS_ERR_INVALID_ARG);
		CHECK(strstr(gs_last_error(), "n must be in 1..8") != NULL);
		p.n = -1;
		CHECK(gs_engine_submit(on, 1, prompt, P, &p) == GS_ERR_INVALID_ARG);
		gs_engine_free(off);
		c.max_seqs = 2;
		c.no_prefix_cache = false;
		CHECK(gs_engine_create(m, be, NULL, &c, &off) == GS_OK);
		p.n = 3;
		CHECK(gs_engine_submit(off, 1, prompt, P, &p) == GS_ERR_RANGE);
		CHECK(gs_engine_idle(off));
	}
	/* admission reserves for all n and never preempts: with 4 slots, one of them running A,
	 * a group of n = 4 waits (no event of it, no slot taken) until A is released, and B
	 * behind it waits too (the head is never overtaken) */
	{
		static struct gs_token_event ev[64];
		struct gs_req_params a = { .max_tokens = 20, .ignore_eos = true }, g = a, b = a;
		int32_t n_ev, steps = 0, a_done = -1, g_first = -1, b_first = -1, g_events = 0;
		gs_engine_free(off);
		c.max_seqs = 4;
		CHECK(gs_engine_create(m, be, NULL, &c, &off) == GS_OK);
		a.sp = g.sp = b.sp = gs_sampling_params_default();
		g.n = 4;
		g.max_tokens = 3;
		CHECK(gs_engine_submit(off, 1, prompt, P, &a) == GS_OK);
		CHECK(gs_engine_step(off, ev, 64, &n_ev) == GS_OK); /* A admitted */
		CHECK(gs_engine_submit(off, 10, prompt, P, &g) == GS_OK);
		CHECK(gs_engine_submit(off, 20, prompt + 1, P - 1, &b) == GS_OK);
		for (; !gs_engine_idle(off) && steps < 200; steps++) {
			struct gs_engine_stats st;
			CHECK(gs_engine_step(off, ev, 64, &n_ev) == GS_OK);
			CHECK(gs_engine_kv_consistent(off));
			gs_engine_get_stats(off, &st);
			CHECK(st.running <= 4);
			for (int32_t i = 0; i < n_ev; i++) {
				if (ev[i].id == 1 && ev[i].finish)
					a_done = steps;
				if (ev[i].id >= 10 && ev[i].id < 14) {
					g_events++;
					if (g_first < 0)
						g_first = steps;
				}
				if (ev[i].id == 20 && b_first < 0)
					b_first = steps;
			}
		}
		CHECK_MSG(a_done >= 0 && g_first > a_done && b_first > a_done && g_events == 4 * 3,
			  "group admission: A done at step %d, group's first event %d, B's %d, %d group events", a_done,
			  g_first, b_first, g_events);
		CHECK(gs_engine_step(off, ev, 64, &n_ev) == GS_OK && gs_engine_kv_consistent(off));
	}
	CHECK(gs_engine_idle(on) && gs_engine_kv_consistent(on));
	gs_engine_free(on);
	gs_engine_free(off);
}

int main(int argc, char **argv)
{
	struct gs_model *m;
	struct gs_backend be;
	enum gs_numerics nm = GS_NUMERICS_FP32;
	bool prefix = argc > 1 && !strcmp(argv[1], "prefix"); /* the prefix-cache checks alone */

	if (argc > 1 && !prefix && gs_numerics_parse(argv[1], "test_engine's argument", &nm) != GS_OK) {
		fprintf(stderr, "%s\n", gs_last_error());
		return 2;
	}
	if (nm == GS_NUMERICS_BF16 && gs_cpu_bf16_missing()) {
		printf("Skipped: this CPU lacks %s, the bf16 mode is refused\n", gs_cpu_bf16_missing());
		return 77;
	}
	if (gs_model_synthetic("tiny", 7, &m) != GS_OK || gs_backend_cpu_create(2, &be) != GS_OK ||
	    gs_backend_cpu_set_numerics(&be, nm) != GS_OK) {
		fprintf(stderr, "%s\n", gs_last_error());
		return 1;
	}
	if (prefix) {
		test_n_choices(m, be);
		test_prefix_cache(m, be);
	} else if (nm == GS_NUMERICS_FP32) {
		test_admission(m, be);
		test_kv_budget(m, be);
		test_kv_churn(m, be);
	}
	if (!prefix) {
		test_long_sequence_window(m, be);
		no_prefix_cache = true;
		test_long_sequence_window(m, be);
		no_prefix_cache = false;
		test_chunked_prefill(m, be);
		test_batch_invariance(m, be);
	}
	gs_backend_cpu_free(&be);
	gs_model_free(m);
	TEST_DONE();
}
