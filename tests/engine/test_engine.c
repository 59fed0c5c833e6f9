/* Serving engine (T = 1 here; T = 2 runs the same checks under mpirun via gemmashard-worker):
 * batch invariance, KV accounting under churn, sliding-window bounds, admission, chunked
 * prefill. The model is the "tiny" synthetic shape (6 layers, window 8, vocab 262144). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static struct gs_engine *make_engine(const struct gs_model *m, struct gs_backend be, int32_t budget,
				     int32_t max_seqs, int32_t ctx, int32_t gblocks)
{
	struct gs_engine_config c = { .max_batch_tokens = budget, .max_seqs = max_seqs, .max_context = ctx,
				      .kv_global_blocks = gblocks, .candidates = 64 };
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
	/* tiny: window 8 -> ring of 2 blocks; a sequence 20x the window must never hold more. */
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
	CHECK_MSG(max_local <= 2, "local-layer blocks peaked at %d for a 180-token sequence with window 8", max_local);
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

int main(int argc, char **argv)
{
	struct gs_model *m;
	struct gs_backend be;

	if (gs_model_synthetic("tiny", 7, &m) != GS_OK || gs_backend_cpu_create(2, &be) != GS_OK) {
		fprintf(stderr, "%s\n", gs_last_error());
		return 1;
	}
	test_admission(m, be);
	test_long_sequence_window(m, be);
	test_chunked_prefill(m, be);
	test_kv_churn(m, be);
	test_batch_invariance(m, be);
	gs_backend_cpu_free(&be);
	gs_model_free(m);
	TEST_DONE();
}
