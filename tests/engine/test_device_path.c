/* The device path of the forward pass and the engine, without a GPU: the CPU backend that
 * declares its memory separate from the host's ("cpu-staged") makes the worker take every step
 * a GPU backend needs: weights and gains moved into backend memory (gs_model_to_backend), the
 * KV pool and the per-step index arrays (ids, positions, row maps, attention sequences, block
 * tables) in backend memory, logits computed there and downloaded. Its kernels are the CPU's,
 * so every result must equal the plain CPU backend's bit for bit: any pointer left on the
 * host, any table packed wrong, any stale upload shows as a difference.
 *   - forward: all-position logits of a 70-token prompt (past the window of 8, several KV
 *     blocks, chunks of 16 rows) then 8 decode steps, on the "tiny" shape;
 *   - the same weights drawn directly in backend memory (gs_model_synthetic_on): equal bits;
 *   - engine: 12 requests of different lengths, 32 tokens each, batched together, greedy and
 *     sampled (top_k, top_p, min_p, repetition penalties, logprobs): the plain CPU engine, the
 *     device path making its candidates with the backend's op (no logits download), and the
 *     device path downloading the logits: the same tokens and logprobs, bit for bit.
 * With the argument "cuda" the device backend is the GPU's (ctest gpu_device_path; exit 77,
 * skipped, without a device): the logits must then match per row within GS_CUDA_ROW_TOL relative
 * L2 (cuBLAS rounds activations to bf16 for chunks of 16 rows and more), the greedy requests
 * must give the CPU's tokens, and the GPU's candidates op must draw exactly what the sampler
 * draws from the downloaded GPU logits (logprobs within 1e-5). */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_cuda.h"
#include "gs_engine.h"
#include "gs_forward.h"
#include "gs_seq.h"
#include "gs_kernels.h"
#include "gs_model.h"
#include "gs_test.h"

#define N_PROMPT 70
#define N_DECODE 8
#define N_REQ    12
#define N_GEN    32
#define GS_CUDA_ROW_TOL 5e-3

static void die(const char *what)
{
	fprintf(stderr, "%s: %s\n", what, gs_last_error());
	exit(1);
}

/* All-position logits of the prompt (in chunks of `chunk` rows), then the logits of N_DECODE
 * greedy steps. */
static float *run_forward_chunked(const struct gs_model *m, struct gs_backend be, const int32_t *prompt, int chunk)
{
	struct gs_forward *f;
	struct gs_seq *s;
	size_t V = (size_t)m->shard.n_vocab;
	float *lg = malloc(sizeof(float) * V * (N_PROMPT + N_DECODE));
	GS_ASSERT(lg);
	for (size_t i = 0; i < V * (N_PROMPT + N_DECODE); i++)
		lg[i] = NAN; /* poisoned: a row never written fails the comparison */
	if (gs_forward_create(m, be, chunk, &f) != GS_OK || gs_seq_create(f, N_PROMPT + N_DECODE, &s) != GS_OK)
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

static float *run_forward(const struct gs_model *m, struct gs_backend be, const int32_t *prompt)
{
	return run_forward_chunked(m, be, prompt, 16);
}

/* Worst per-row relative L2 of b against a over the N_PROMPT + N_DECODE rows. */
static double worst_row_l2(const float *a, const float *b, size_t V)
{
	double worst = 0;
	for (size_t r = 0; r < N_PROMPT + N_DECODE; r++) {
		double num = 0, den = 0;
		for (size_t j = 0; j < V; j++) {
			double d = (double)b[r * V + j] - a[r * V + j];
			num += d * d, den += (double)a[r * V + j] * a[r * V + j];
		}
		double e = sqrt(num / (den > 0 ? den : 1));
		if (!(e <= worst))
			worst = e; /* NaN too */
	}
	return worst;
}

static void compare_logits(const char *what, const float *a, const float *b, size_t V, bool cuda);

/* The KV cache in bf16, as a GPU keeps it, on the CPU kernels: the staged device path equals the
 * plain backend bit for bit; a prompt fed in chunks of 16 equals one fed whole (fresh rows are
 * read as they will be stored, so a key has one value fresh or cached); and the logits differ
 * from the fp32 cache's by bf16 rounding only (more than 0, less than 1e-2). */
static void test_bf16_kv(const struct gs_model *m_host, struct gs_backend cpu, const struct gs_model *m_dev,
			 struct gs_backend dev, const int32_t *prompt, const float *f32_logits)
{
	size_t V = (size_t)m_host->shard.n_vocab;
	gs_backend_cpu_set_kv_dtype(&cpu, GS_DTYPE_BF16);
	gs_backend_cpu_set_kv_dtype(&dev, GS_DTYPE_BF16);
	float *a = run_forward(m_host, cpu, prompt), *b = run_forward(m_dev, dev, prompt);
	float *whole = run_forward_chunked(m_host, cpu, prompt, N_PROMPT);
	compare_logits("bf16 KV, staged vs plain", a, b, V, false);
	compare_logits("bf16 KV, chunks of 16 vs the prompt whole", a, whole, V, false);
	double e = worst_row_l2(f32_logits, a, V);
	CHECK_MSG(e > 0 && e < 1e-2, "bf16 KV against fp32 KV: worst row relative L2 %.3g (want in (0, 1e-2))", e);
	printf("bf16 KV cache on the CPU kernels: worst row relative L2 against the fp32 cache %.3g\n", e);
	gs_backend_cpu_set_kv_dtype(&cpu, GS_DTYPE_F32);
	gs_backend_cpu_set_kv_dtype(&dev, GS_DTYPE_F32);
	free(a), free(b), free(whole);
}

/* Bit for bit on the staged CPU backend; per-row relative L2 on a GPU. */
static void compare_logits(const char *what, const float *a, const float *b, size_t V, bool cuda)
{
	size_t rows = N_PROMPT + N_DECODE;
	if (!cuda) {
		size_t bad = 0, first = 0;
		for (size_t i = 0; i < V * rows; i++)
			if (memcmp(&a[i], &b[i], sizeof(float)) != 0 && bad++ == 0)
				first = i;
		CHECK_MSG(bad == 0, "forward (%s): %zu of %zu logits differ, first at row %zu (%.9g vs %.9g)", what, bad,
			  V * rows, first / V, a[first], b[first]);
		return;
	}
	double worst = worst_row_l2(a, b, V);
	CHECK_MSG(worst <= GS_CUDA_ROW_TOL, "forward (%s): worst row relative L2 %.3g", what, worst);
	printf("forward on CUDA (%s): worst row relative L2 against the CPU %.3g over %zu rows\n", what, worst, rows);
}

struct req_out {
	int32_t tok[N_GEN];
	float   lp[N_GEN];                      /* logprob of each token */
	int32_t top[N_GEN][5];                  /* top-5 alternatives */
	float   top_lp[N_GEN][5];
	int     n;
};

/* Request r's sampling: every third greedy (some with a repetition penalty and logprobs), the
 * rest drawn with a seed through top_k, top_p, min_p, penalties above and below 1. */
static struct gs_req_params req_params(int r)
{
	struct gs_req_params p = { .max_tokens = N_GEN, .ignore_eos = true };
	p.sp = gs_sampling_params_default();
	p.sp.seed = 1000 + (uint64_t)r;
	switch (r % 6) {
	case 0: p.sp.temperature = 0; break;
	case 1: p.sp.temperature = 0.8f, p.sp.top_k = 40, p.logprobs = true; break;
	case 2: p.sp.temperature = 1.3f, p.sp.top_p = 0.9f, p.sp.repetition_penalty = 1.3f; break;
	case 3: p.sp.temperature = 0, p.sp.repetition_penalty = 1.5f, p.logprobs = true, p.top_logprobs = 5; break;
	case 4: p.sp.temperature = 0.7f, p.sp.min_p = 0.05f, p.sp.repetition_penalty = 0.8f, p.top_logprobs = 3; break;
	default: p.sp.temperature = 1.0f, p.sp.top_k = 8; break;
	}
	if (r >= 6) { /* the OpenAI stages: penalties over generated tokens, biases, min_tokens + stop id */
		p.sp.frequency_penalty = 0.7f;
		p.sp.presence_penalty = r % 2 ? 0.4f : -0.3f;
		p.sp.n_logit_bias = 2;
		p.sp.logit_bias_id[0] = 2 + (r * 977 + 131) % 262000, p.sp.logit_bias[0] = 3.0f; /* a prompt token */
		p.sp.logit_bias_id[1] = 1000 + r, p.sp.logit_bias[1] = r % 3 ? -5.0f : 9.0f;
		p.sp.min_tokens = 4;
		p.stop_ids[p.n_stop_ids++] = 1000 + r + 1;
	}
	return p;
}

static bool req_greedy(int r)
{
	return r % 6 == 0 || r % 6 == 3;
}

/* N_REQ requests of 3 .. 58 tokens (decodes next to chunked prefills), batched together.
 * host_cands: the engine downloads the logits rows and takes the candidates on the host. */
static void run_engine(const struct gs_model *m, struct gs_backend be, bool host_cands, struct req_out *out)
{
	struct gs_engine_config c = { .max_batch_tokens = 48, .max_seqs = 8, .max_context = 128, .candidates = 64,
				      .host_candidates = host_cands };
	struct gs_engine *e;
	struct gs_engine_stats st;
	static struct gs_token_event ev[256];
	if (gs_engine_create(m, be, NULL, &c, &e) != GS_OK)
		die("engine");
	gs_engine_get_stats(e, &st);
	/* the device path makes its candidates on the backend unless told not to */
	CHECK_MSG(st.device_candidates == (!be.iface->host_memory && !host_cands),
		  "candidates on the device: %d with %s, host_candidates %d", st.device_candidates, be.iface->name,
		  host_cands);
	for (int r = 0; r < N_REQ; r++) {
		int32_t prompt[64];
		int n = 3 + r * 5;
		struct gs_req_params p = req_params(r);
		for (int t = 0; t < n; t++)
			prompt[t] = 2 + (r * 977 + t * 131) % 262000;
		prompt[n - 1] = prompt[0]; /* a repeat in the history */
		if (gs_engine_submit(e, (uint64_t)r + 1, prompt, n, &p) != GS_OK)
			die("submit");
		memset(&out[r], 0, sizeof(out[r]));
	}
	for (int steps = 0; !gs_engine_idle(e) && steps < 1000; steps++) {
		int32_t n_ev;
		if (gs_engine_step(e, ev, 256, &n_ev) != GS_OK)
			die("step");
		CHECK(gs_engine_kv_consistent(e));
		for (int32_t i = 0; i < n_ev; i++) {
			struct req_out *o = &out[ev[i].id - 1];
			if (ev[i].token < 0 || o->n >= N_GEN)
				continue;
			o->tok[o->n] = ev[i].token;
			o->lp[o->n] = ev[i].logprob;
			for (int j = 0; j < ev[i].n_top && j < 5; j++)
				o->top[o->n][j] = ev[i].top_ids[j], o->top_lp[o->n][j] = ev[i].top_logprobs[j];
			o->n++;
		}
	}
	CHECK(gs_engine_idle(e));
	gs_engine_shutdown(e);
	gs_engine_free(e);
}

/* Tokens and top ids equal; logprobs equal within lp_tol (0: the same bits). only_greedy: the
 * greedy requests' tokens only (a GPU's logits differ from the CPU's: draws may part, and near
 * ties among the top alternatives may swap), logprobs within lp_tol. */
static void compare_requests(const char *what, const struct req_out *a, const struct req_out *b, double lp_tol,
			     bool only_greedy)
{
	for (int r = 0; r < N_REQ; r++) {
		if (only_greedy && !req_greedy(r))
			continue;
		int at = -1;
		double worst = 0;
		for (int t = 0; t < N_GEN && at < 0; t++) {
			if (a[r].tok[t] != b[r].tok[t] ||
			    (!only_greedy && memcmp(a[r].top[t], b[r].top[t], sizeof(a[r].top[t])) != 0))
				at = t;
			double d = fabs((double)a[r].lp[t] - b[r].lp[t]);
			for (int j = 0; j < 5 && !only_greedy; j++) {
				double dj = fabs((double)a[r].top_lp[t][j] - b[r].top_lp[t][j]);
				d = dj > d || dj != dj ? dj : d;
			}
			worst = d > worst || d != d ? d : worst;
		}
		CHECK_MSG(a[r].n == N_GEN && b[r].n == N_GEN, "%s, request %d: %d and %d tokens", what, r + 1, a[r].n,
			  b[r].n);
		CHECK_MSG(at < 0, "%s, request %d: tokens differ from step %d (%d vs %d)", what, r + 1, at,
			  at < 0 ? 0 : a[r].tok[at], at < 0 ? 0 : b[r].tok[at]);
		if (lp_tol == 0)
			CHECK_MSG(memcmp(a[r].lp, b[r].lp, sizeof(a[r].lp)) == 0 &&
				  memcmp(a[r].top_lp, b[r].top_lp, sizeof(a[r].top_lp)) == 0,
				  "%s, request %d: logprobs differ (worst %.3g)", what, r + 1, worst);
		else
			CHECK_MSG(worst <= lp_tol, "%s, request %d: logprobs differ by %.3g", what, r + 1, worst);
	}
}

int main(int argc, char **argv)
{
	struct gs_model *m_host, *m_dev;
	struct gs_backend cpu, dev;
	int32_t prompt[N_PROMPT];
	bool cuda = argc > 1 && strcmp(argv[1], "cuda") == 0;

	if (cuda && gs_cuda_device_count() < 1) {
		printf("SKIP: %s\n", gs_cuda_built() ? "no CUDA device" : "built without CUDA");
		return 77;
	}
	/* the same seed gives the same weights: one copy stays on the host, one moves */
	if (gs_model_synthetic("tiny", 11, &m_host) != GS_OK || gs_model_synthetic("tiny", 11, &m_dev) != GS_OK)
		die("model");
	if (gs_backend_cpu_create(2, &cpu) != GS_OK ||
	    (cuda ? gs_backend_cuda_create(0, &dev) : gs_backend_cpu_create_staged(2, &dev)) != GS_OK)
		die("backend");
	CHECK(!dev.iface->host_memory && cpu.iface->host_memory);
	/* The CPU reference keeps its KV cache as the device does (a GPU: bf16 unless GS_CUDA_KV=f32),
	 * so the comparison measures the kernels, not the cache's precision. */
	gs_backend_cpu_set_kv_dtype(&cpu, dev.iface->kv_dtype ? dev.iface->kv_dtype(dev.ctx) : GS_DTYPE_F32);
	const void *host_q = m_dev->layers[0].q.data;
	if (gs_model_to_backend(m_dev, dev) != GS_OK)
		die("to_backend");
	CHECK(m_dev->dev_slab != NULL && m_dev->layers[0].q.data != host_q);
	CHECK(m_dev->slab == NULL && m_dev->gains == NULL); /* host copies dropped */
	/* a host-memory backend leaves the model alone */
	CHECK(gs_model_to_backend(m_host, cpu) == GS_OK && m_host->dev_slab == NULL);

	for (int t = 0; t < N_PROMPT; t++)
		prompt[t] = 2 + (t * 7919) % 262000;
	/* a third copy drawn directly in the device's memory (gs_model_synthetic_on): the same bits */
	struct gs_model *m_drawn;
	if (gs_model_synthetic_on("tiny", 11, 0, 1, &dev, &m_drawn) != GS_OK)
		die("synthetic_on");
	CHECK(m_drawn->dev_slab != NULL && m_drawn->slab == NULL && m_drawn->gains != NULL);
	if (gs_model_to_backend(m_drawn, dev) != GS_OK)
		die("to_backend (gains)");
	CHECK(m_drawn->gains == NULL && m_drawn->dev_gains != NULL);
	{
		size_t nq = (size_t)m_host->layers[1].down.rows * (size_t)m_host->layers[1].down.cols;
		uint16_t *h = malloc(nq * sizeof(uint16_t));
		GS_ASSERT(h);
		dev.iface->download(dev.ctx, h, m_drawn->layers[1].down.data, nq * sizeof(uint16_t));
		CHECK_MSG(memcmp(h, m_host->layers[1].down.data, nq * sizeof(uint16_t)) == 0,
			  "weights drawn on the device differ from the host's");
		free(h);
	}

	float *a = run_forward(m_host, cpu, prompt), *b = run_forward(m_dev, dev, prompt);
	float *c = run_forward(m_drawn, dev, prompt);
	compare_logits("moved weights", a, b, (size_t)m_host->shard.n_vocab, cuda);
	compare_logits("weights drawn on the device", a, c, (size_t)m_host->shard.n_vocab, cuda);
	CHECK(a[0] == a[0]); /* written (not the NaN poison) */
	if (!cuda)
		test_bf16_kv(m_host, cpu, m_dev, dev, prompt, a);
	free(a), free(b), free(c);
	gs_model_free(m_drawn);

	/* The engine: the plain CPU backend (candidates by the sampler on the host) against the
	 * device path with the backend's candidates op, and with the logits downloaded instead. */
	static struct req_out ra[N_REQ], rb[N_REQ], rc[N_REQ];
	run_engine(m_host, cpu, false, ra);
	run_engine(m_dev, dev, false, rb);
	run_engine(m_dev, dev, true, rc);
	if (!cuda) {
		compare_requests("device candidates vs CPU", ra, rb, 0, false);
		compare_requests("downloaded logits vs CPU", ra, rc, 0, false);
	} else {
		/* the same GPU logits either way: the same draws; the log-sum-exp in the last bits */
		compare_requests("GPU candidates vs downloaded GPU logits", rc, rb, 1e-5, false);
		compare_requests("GPU vs CPU, greedy requests", ra, rb, 5e-2, true);
	}
	printf("device path (%s) against the CPU backend: %d logit rows x 2 models, %d requests x %d tokens (greedy and sampled) x 3 engines compared\n",
	       dev.iface->name, N_PROMPT + N_DECODE, N_REQ, N_GEN);
	gs_model_free(m_host);
	gs_model_free(m_dev);
	gs_backend_cpu_free(&cpu);
	if (cuda)
		gs_backend_cuda_free(&dev);
	else
		gs_backend_cpu_free(&dev);
	TEST_DONE();
}
