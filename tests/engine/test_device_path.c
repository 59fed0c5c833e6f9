/* The device path of the forward pass and the engine, without a GPU: the CPU backend that
 * declares its memory separate from the host's ("cpu-staged") makes the worker take every step
 * a GPU backend needs: weights and gains moved into backend memory (gs_model_to_backend), the
 * KV pool and the per-step index arrays (ids, positions, row maps, attention sequences, block
 * tables) in backend memory, logits computed there and downloaded. Its kernels are the CPU's,
 * so every result must equal the plain CPU backend's bit for bit: any pointer left on the
 * host, any table packed wrong, any stale upload shows as a difference.
 *   - forward: all-position logits of a 70-token prompt (past the window of 8, several KV
 *     blocks, chunks of 16 rows) then 8 decode steps, on the "tiny" shape;
 *   - engine: 12 requests of different lengths, greedy, 32 tokens each, batched together. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_engine.h"
#include "gs_forward.h"
#include "gs_kernels.h"
#include "gs_model.h"
#include "gs_test.h"

#define N_PROMPT 70
#define N_DECODE 8
#define N_REQ    12
#define N_GEN    32

static void die(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, gs_last_error());
	exit(1);
}

/* All-position logits of the prompt, then the logits of N_DECODE greedy steps. */
static float *run_forward(const struct gs_model *m, struct gs_backend be, const int32_t *prompt)
{
	struct gs_forward *f;
	struct gs_seq *s;
	size_t V = (size_t)m->shard.n_vocab;
	float *lg = malloc(sizeof(float) * V * (N_PROMPT + N_DECODE));
	GS_ASSERT(lg);
	for (size_t i = 0; i < V * (N_PROMPT + N_DECODE); i++)
		lg[i] = NAN; /* poisoned: a row never written fails the comparison */
	if (gs_forward_create(m, be, 16, &f) != GS_OK || gs_seq_create(f, N_PROMPT + N_DECODE, &s) != GS_OK)
		die("forward");
	if (gs_forward_run(f, s, prompt, N_PROMPT, lg, true) != GS_OK)
		die("prefill");
	for (int t = 0; t < N_DECODE; t++) {
		const float *prev = lg + V * (size_t)(N_PROMPT + t - 1);
		int32_t best = 0;
		for (size_t j = 1; j < V; j++)
			if (prev[j] > prev[best])
				best = (int32_t)j;
		if (gs_forward_run(f, s, &best, 1, lg + V * (size_t)(N_PROMPT + t), false) != GS_OK)
			die("decode");
	}
	gs_seq_free(s);
	gs_forward_free(f);
	return lg;
}

struct req_out {
	int32_t tok[N_GEN];
	int     n;
};

static void run_engine(const struct gs_model *m, struct gs_backend be, struct req_out *out)
{
	struct gs_engine_config c = { .max_batch_tokens = 48, .max_seqs = 8, .max_context = 128, .candidates = 64 };
	struct gs_engine *e;
	static struct gs_token_event ev[256];
	if (gs_engine_create(m, be, NULL, &c, &e) != GS_OK)
		die("engine");
	for (int r = 0; r < N_REQ; r++) {
		int32_t prompt[64];
		int n = 3 + r * 5; /* 3 .. 58 tokens: decodes next to chunked prefills */
		struct gs_req_params p = { .max_tokens = N_GEN, .ignore_eos = true };
		p.sp = gs_sampling_params_default();
		p.sp.temperature = 0;
		for (int t = 0; t < n; t++)
			prompt[t] = 2 + (r * 977 + t * 131) % 262000;
		if (gs_engine_submit(e, (uint64_t)r + 1, prompt, n, &p) != GS_OK)
			die("submit");
		out[r].n = 0;
	}
	for (int steps = 0; !gs_engine_idle(e) && steps < 1000; steps++) {
		int32_t n_ev;
		if (gs_engine_step(e, ev, 256, &n_ev) != GS_OK)
			die("step");
		CHECK(gs_engine_kv_consistent(e));
		for (int32_t i = 0; i < n_ev; i++) {
			struct req_out *o = &out[ev[i].id - 1];
			if (ev[i].token >= 0 && o->n < N_GEN)
				o->tok[o->n++] = ev[i].token;
		}
	}
	CHECK(gs_engine_idle(e));
	gs_engine_shutdown(e);
	gs_engine_free(e);
}

int main(void)
{
	struct gs_model *m_host, *m_dev;
	struct gs_backend cpu, staged;
	int32_t prompt[N_PROMPT];

	/* the same seed gives the same weights: one copy stays on the host, one moves */
	if (gs_model_synthetic("tiny", 11, &m_host) != GS_OK || gs_model_synthetic("tiny", 11, &m_dev) != GS_OK)
		die("model");
	if (gs_backend_cpu_create(2, &cpu) != GS_OK || gs_backend_cpu_create_staged(2, &staged) != GS_OK)
		die("backend");
	CHECK(!staged.iface->host_memory && cpu.iface->host_memory);
	const void *host_q = m_dev->layers[0].q.data;
	if (gs_model_to_backend(m_dev, staged) != GS_OK)
		die("to_backend");
	CHECK(m_dev->dev_slab != NULL && m_dev->layers[0].q.data != host_q);
	CHECK(m_dev->slab == NULL && m_dev->gains == NULL); /* host copies dropped */
	/* a host-memory backend leaves the model alone */
	CHECK(gs_model_to_backend(m_host, cpu) == GS_OK && m_host->dev_slab == NULL);

	for (int t = 0; t < N_PROMPT; t++)
		prompt[t] = 2 + (t * 7919) % 262000;
	float *a = run_forward(m_host, cpu, prompt), *b = run_forward(m_dev, staged, prompt);
	size_t V = (size_t)m_host->shard.n_vocab, bad = 0, first = 0;
	for (size_t i = 0; i < V * (N_PROMPT + N_DECODE); i++)
		if (memcmp(&a[i], &b[i], sizeof(float)) != 0 && bad++ == 0)
			first = i;
	CHECK_MSG(bad == 0, "forward: %zu of %zu logits differ, first at row %zu (%.9g vs %.9g)", bad,
		  V * (N_PROMPT + N_DECODE), first / V, a[first], b[first]);
	CHECK(a[0] == a[0]); /* written (not the NaN poison) */
	free(a), free(b);

	static struct req_out ra[N_REQ], rb[N_REQ];
	run_engine(m_host, cpu, ra);
	run_engine(m_dev, staged, rb);
	for (int r = 0; r < N_REQ; r++) {
		CHECK_MSG(ra[r].n == N_GEN && rb[r].n == N_GEN, "request %d: %d and %d tokens", r + 1, ra[r].n, rb[r].n);
		CHECK_MSG(memcmp(ra[r].tok, rb[r].tok, sizeof(ra[r].tok)) == 0, "request %d: tokens differ", r + 1);
	}
	printf("device path (cpu-staged) against the CPU backend: %d logit rows, %d requests x %d tokens compared\n",
	       N_PROMPT + N_DECODE, N_REQ, N_GEN);
	gs_model_free(m_host);
	gs_model_free(m_dev);
	gs_backend_cpu_free(&cpu);
	gs_backend_cpu_free(&staged);
	TEST_DONE();
}
