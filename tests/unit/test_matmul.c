/* gs_cpu_matmul_{bf16,f16,f32} on every instruction-set path this CPU can run, against a
 * float64 reference on awkward shapes, with 1, 2, 3 threads and NaN-poisoned outputs; plus the
 * thread pool itself. */
#include "gs_cpu.h"
#include "gs_dtype.h"
#include "gs_status.h"
#include "gs_test.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float rnd(void) /* uniform in [-1, 1) */
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (float)((double)(rng_state >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

/* ---- thread pool ------------------------------------------------------------------------- */

struct pool_ctx {
	_Atomic int calls[8];
	_Atomic int bad_n;
	int expect_n;
};

static void pool_task(void *ctx, int tid, int n_threads)
{
	struct pool_ctx *c = ctx;
	if (n_threads != c->expect_n || tid < 0 || tid >= n_threads)
		atomic_fetch_add(&c->bad_n, 1);
	else
		atomic_fetch_add(&c->calls[tid], 1);
}

static void test_threadpool(void)
{
	for (int nt = 1; nt <= 4; nt++) {
		struct gs_threadpool *tp = gs_threadpool_create(nt);
		CHECK(tp != NULL);
		if (!tp)
			continue;
		CHECK(gs_threadpool_size(tp) == nt);
		struct pool_ctx c = { .expect_n = nt };
		const int runs = 20000;
		for (int r = 0; r < runs; r++)
			gs_threadpool_run(tp, pool_task, &c);
		CHECK(atomic_load(&c.bad_n) == 0);
		for (int t = 0; t < nt; t++)
			CHECK_MSG(atomic_load(&c.calls[t]) == runs, "nt %d tid %d ran %d of %d", nt, t,
				  atomic_load(&c.calls[t]), runs);
		gs_threadpool_free(tp);
	}
	/* a pool whose workers have gone to sleep (spin budget elapsed) still wakes up */
	setenv("GS_SPIN_US", "0", 1);
	struct gs_threadpool *tp = gs_threadpool_create(3);
	unsetenv("GS_SPIN_US");
	CHECK(tp != NULL);
	if (tp) {
		struct pool_ctx c = { .expect_n = 3 };
		for (int r = 0; r < 2000; r++)
			gs_threadpool_run(tp, pool_task, &c);
		for (int t = 0; t < 3; t++)
			CHECK(atomic_load(&c.calls[t]) == 2000);
		gs_threadpool_free(tp);
	}
	CHECK(gs_threadpool_size(NULL) == 1);
	struct pool_ctx c1 = { .expect_n = 1 };
	gs_threadpool_run(NULL, pool_task, &c1);
	CHECK(atomic_load(&c1.calls[0]) == 1);
}

/* ---- matmul ------------------------------------------------------------------------------- */

enum wkind { W_BF16, W_F16, W_F32, W_COUNT };
static const char *const wkind_name[W_COUNT] = { "bf16", "f16", "f32" };

/* ||y - ref|| / ||den||. A NaN left in y makes this NaN, which fails every comparison. */
static double rel_l2(const float *y, const double *ref, const double *den, size_t n)
{
	double num = 0, dd = 0;
	for (size_t i = 0; i < n; i++) {
		double d = (double)y[i] - ref[i];
		num += d * d;
		dd += den[i] * den[i];
	}
	return dd > 0 ? sqrt(num / dd) : sqrt(num);
}

static void test_matmul(void)
{
	static const int ms[] = { 1, 2, 3, 7, 13, 32, 33, 64, 129 }; /* decode, stream, GEMM paths */
	static const int ns[] = { 1, 17, 64, 300 };
	/* 4133: several k blocks in the decode path, kept to small m*n for run time */
	static const int ks[] = { 1, 15, 16, 33, 256, 1000, 4133 };
	const int max_m = 129, max_n = 300, max_k = 4133;

	float *x = malloc(sizeof(float) * max_m * max_k);
	float *wf = malloc(sizeof(float) * max_n * max_k);    /* exact values of the weights */
	uint16_t *wb = malloc(sizeof(uint16_t) * max_n * max_k);
	uint16_t *wh = malloc(sizeof(uint16_t) * max_n * max_k);
	float *w32 = malloc(sizeof(float) * max_n * max_k);
	float *y = malloc(sizeof(float) * max_m * max_n);
	double *ref = malloc(sizeof(double) * max_m * max_n);
	double *aref = malloc(sizeof(double) * max_m * max_n); /* Σ|x·w|: the sum's scale */
	GS_ASSERT(x && wf && wb && wh && w32 && y && ref && aref);

	for (int i = 0; i < max_m * max_k; i++)
		x[i] = rnd();
	struct gs_threadpool *pools[3];
	for (int t = 0; t < 3; t++) {
		pools[t] = gs_threadpool_create(t + 1);
		GS_ASSERT(pools[t]);
	}

	double worst[GS_CPU_ISA_COUNT][W_COUNT] = { { 0 } }, worst_c[GS_CPU_ISA_COUNT][W_COUNT] = { { 0 } };
	for (int wk = 0; wk < W_COUNT; wk++) {
		/* weights drawn per dtype and then made exactly representable in it, so the
		 * reference sees the same values the kernel does */
		for (int i = 0; i < max_n * max_k; i++) {
			float v = rnd();
			wb[i] = gs_f32_to_bf16(v);
			wh[i] = gs_f32_to_f16(v);
			w32[i] = v;
			wf[i] = wk == W_BF16 ? gs_bf16_to_f32(wb[i]) : wk == W_F16 ? gs_f16_to_f32(wh[i]) : v;
		}
		for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++)
		for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++)
		for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
			int m = ms[mi], n = ns[ni], k = ks[ki];
			if (k > 1000 && m * n > 300)
				continue;
			/* W [n×k] uses the first n*k elements, row stride k */
			for (int i = 0; i < m; i++)
				for (int j = 0; j < n; j++) {
					double s = 0, as = 0;
					for (int l = 0; l < k; l++) {
						double p = (double)x[(size_t)i * k + l] * (double)wf[(size_t)j * k + l];
						s += p;
						as += fabs(p);
					}
					ref[(size_t)i * n + j] = s;
					aref[(size_t)i * n + j] = as;
				}
			for (int isa = 0; isa < GS_CPU_ISA_COUNT; isa++) {
				if (!gs_cpu_isa_supported((enum gs_cpu_isa)isa))
					continue;
				CHECK(gs_cpu_force_isa(gs_cpu_isa_str((enum gs_cpu_isa)isa)) == 0);
				for (int t = 0; t < 3; t++) {
					for (int i = 0; i < m * n; i++)
						y[i] = NAN;
					if (wk == W_BF16)
						gs_cpu_matmul_bf16(pools[t], y, x, wb, m, n, k);
					else if (wk == W_F16)
						gs_cpu_matmul_f16(pools[t], y, x, wh, m, n, k);
					else
						gs_cpu_matmul_f32(pools[t], y, x, w32, m, n, k);
					/* fp32 summation error scales with Σ|x·w|, not with the result:
					 * a single output with heavy cancellation (n = m = 1) can show a
					 * large relative error while being as accurate as fp32 allows.
					 * So: error against Σ|x·w| everywhere, and plain relative L2
					 * where enough outputs average out the cancellation. */
					double ec = rel_l2(y, ref, aref, (size_t)m * n);
					double e = rel_l2(y, ref, ref, (size_t)m * n);
					CHECK_MSG(ec <= 1e-7 && (m * n < 64 || e <= 1e-6),
						  "%s %s m=%d n=%d k=%d threads=%d: rel L2 %g (vs sum|xw| %g)",
						  gs_cpu_isa_str((enum gs_cpu_isa)isa), wkind_name[wk], m,
						  n, k, t + 1, e, ec);
					if (m * n >= 64 && !(e <= worst[isa][wk]))
						worst[isa][wk] = e;
					if (!(ec <= worst_c[isa][wk]))
						worst_c[isa][wk] = ec;
				}
			}
		}
	}
	for (int isa = 0; isa < GS_CPU_ISA_COUNT; isa++)
		if (gs_cpu_isa_supported((enum gs_cpu_isa)isa))
			fprintf(stderr, "%-6s worst rel L2 (m*n >= 64): bf16 %.2e  f16 %.2e  f32 %.2e;"
				" vs sum|xw| (all): %.2e %.2e %.2e\n",
				gs_cpu_isa_str((enum gs_cpu_isa)isa), worst[isa][W_BF16],
				worst[isa][W_F16], worst[isa][W_F32], worst_c[isa][W_BF16],
				worst_c[isa][W_F16], worst_c[isa][W_F32]);

	/* k = 0: an empty sum is 0, and every element must still be written */
	for (int isa = 0; isa < GS_CPU_ISA_COUNT; isa++) {
		if (!gs_cpu_isa_supported((enum gs_cpu_isa)isa))
			continue;
		gs_cpu_force_isa(gs_cpu_isa_str((enum gs_cpu_isa)isa));
		for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++) {
			for (int i = 0; i < ms[mi] * 300; i++)
				y[i] = NAN;
			gs_cpu_matmul_bf16(pools[1], y, x, wb, ms[mi], 300, 0);
			int bad = 0;
			for (int i = 0; i < ms[mi] * 300; i++)
				bad += y[i] != 0.0f;
			CHECK_MSG(bad == 0, "%s k=0 m=%d: %d nonzero", gs_cpu_isa_str((enum gs_cpu_isa)isa),
				  ms[mi], bad);
		}
	}

	/* forcing: unknown names are refused and change nothing; NULL restores the best path */
	CHECK(gs_cpu_force_isa("scalar") == 0);
	CHECK_STREQ(gs_cpu_isa_name(), "scalar");
	CHECK(gs_cpu_force_isa("sse9") == -1);
	CHECK_STREQ(gs_cpu_isa_name(), "scalar");
	CHECK(gs_cpu_force_isa(NULL) == 0);
	fprintf(stderr, "best path on this CPU: %s\n", gs_cpu_isa_name());

	for (int t = 0; t < 3; t++)
		gs_threadpool_free(pools[t]);
	free(x), free(wf), free(wb), free(wh), free(w32), free(y), free(ref), free(aref);
}

/* ---- batch invariance ---------------------------------------------------------------------- */

/* Continuous batching needs a request's outputs to be bit-identical whatever else shares the
 * batch: y[i][j] may depend only on x row i, W row j and k, never on m, on the row's position
 * in the batch, on the split of n over threads or on the thread count. Checked with memcmp on
 * every ISA path and weight type, against one reference: the 67-row batch on 2 threads. */
static void bi_matmul(int wk, struct gs_threadpool *tp, float *y, const float *x, const void *w,
		      int m, int n, int k)
{
	if (wk == W_BF16)
		gs_cpu_matmul_bf16(tp, y, x, w, m, n, k);
	else if (wk == W_F16)
		gs_cpu_matmul_f16(tp, y, x, w, m, n, k);
	else
		gs_cpu_matmul_f32(tp, y, x, w, m, n, k);
}

static void test_batch_invariance(void)
{
	enum { M = 67, N = 70, MAXB = 130 }; /* N: three 32-column units, a ragged last one */
	static const int ks[] = { 1, 15, 16, 33, 256, 1000, 1152, 4133 };
	const int max_k = 4133;
	/* batch size, first x row at batch row 0, pool (index: threads - 1); the shifts wrap
	 * around the 67 rows so each row is seen at several positions */
	static const struct { int b, shift, pool; } batches[] = {
		{ 5, 0, 0 }, { 5, 3, 2 }, { 5, 9, 1 }, { 5, 14, 0 }, { 5, 20, 2 }, { 5, 26, 1 },
		{ 5, 31, 0 }, { 5, 37, 2 }, { 5, 42, 1 }, { 5, 48, 0 }, { 5, 53, 2 }, { 5, 59, 1 },
		{ 5, 63, 0 }, { 64, 0, 1 }, { 64, 3, 2 }, { 64, 40, 0 }, { 130, 0, 1 }, { 130, 7, 2 },
		/* small batches too (decode kernels up to GS_MM_DECODE_MAX_M rows; the AVX-512
		 * streaming path for serving batches up to 32 rows) */
		{ 2, 11, 2 }, { 3, 30, 1 }, { 4, 50, 0 }, { 4, 65, 2 }, { 13, 20, 1 }, { 32, 33, 2 },
	};
	float *x = malloc(sizeof(float) * M * max_k);
	float *xb = malloc(sizeof(float) * MAXB * max_k);
	uint16_t *wb = malloc(sizeof(uint16_t) * N * max_k);
	uint16_t *wh = malloc(sizeof(uint16_t) * N * max_k);
	float *w32 = malloc(sizeof(float) * N * max_k);
	float *yfull = malloc(sizeof(float) * M * N);
	float *yb = malloc(sizeof(float) * MAXB * N);
	float *yisa = malloc(sizeof(float) * W_COUNT * M * N); /* first path's yfull per type */
	GS_ASSERT(x && xb && wb && wh && w32 && yfull && yb && yisa);
	struct gs_threadpool *pools[3];
	for (int t = 0; t < 3; t++) {
		pools[t] = gs_threadpool_create(t + 1);
		GS_ASSERT(pools[t]);
	}

	for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
		const int k = ks[ki];
		/* x spans magnitudes so that the summation order shows in the last bits */
		for (int i = 0; i < M * k; i++)
			x[i] = rnd() * (float)(1 << (i % 7));
		for (int i = 0; i < N * k; i++) {
			float v = rnd();
			wb[i] = gs_f32_to_bf16(v);
			wh[i] = gs_f32_to_f16(v);
			w32[i] = v;
		}
		for (int isa = 0; isa < GS_CPU_ISA_COUNT; isa++) {
			if (!gs_cpu_isa_supported((enum gs_cpu_isa)isa))
				continue;
			CHECK(gs_cpu_force_isa(gs_cpu_isa_str((enum gs_cpu_isa)isa)) == 0);
			const char *isa_s = gs_cpu_isa_str((enum gs_cpu_isa)isa);
			for (int wk = 0; wk < W_COUNT; wk++) {
				const void *w = wk == W_BF16 ? (const void *)wb
					      : wk == W_F16 ? (const void *)wh : (const void *)w32;
				for (int i = 0; i < M * N; i++)
					yfull[i] = NAN;
				bi_matmul(wk, pools[1], yfull, x, w, M, N, k);
				/* all paths sum in the same canonical order (matmul_impl.h), so they
				 * agree with each other too */
				float *yi = yisa + (size_t)wk * M * N;
				if (isa == GS_CPU_ISA_SCALAR)
					memcpy(yi, yfull, sizeof(float) * M * N);
				else
					CHECK_MSG(memcmp(yi, yfull, sizeof(float) * M * N) == 0,
						  "%s %s k=%d: differs from the scalar path", isa_s,
						  wkind_name[wk], k);
				int bad_alone = 0, bad_batch = 0, first_row = -1, first_b = 0;
				/* each row alone (decode), 1 and 3 threads */
				for (int i = 0; i < M; i++)
					for (int t = 0; t < 3; t += 2) {
						for (int j = 0; j < N; j++)
							yb[j] = NAN;
						bi_matmul(wk, pools[t], yb, x + (size_t)i * k, w, 1, N, k);
						if (memcmp(yb, yfull + (size_t)i * N, sizeof(float) * N) != 0) {
							if (bad_alone++ == 0)
								first_row = i;
						}
					}
				CHECK_MSG(bad_alone == 0,
					  "%s %s k=%d: %d of %d single-row runs differ from the 67-row batch"
					  " (first: row %d)", isa_s, wkind_name[wk], k, bad_alone, 2 * M,
					  first_row);
				/* the same rows at other positions of batches of 5, 64 and 130 rows */
				for (size_t bi = 0; bi < sizeof(batches) / sizeof(batches[0]); bi++) {
					int b = batches[bi].b, sh = batches[bi].shift;
					for (int r = 0; r < b; r++)
						memcpy(xb + (size_t)r * k, x + (size_t)((r + sh) % M) * k,
						       sizeof(float) * k);
					for (int i = 0; i < b * N; i++)
						yb[i] = NAN;
					bi_matmul(wk, pools[batches[bi].pool], yb, xb, w, b, N, k);
					for (int r = 0; r < b; r++)
						if (memcmp(yb + (size_t)r * N, yfull + (size_t)((r + sh) % M) * N,
							   sizeof(float) * N) != 0) {
							if (bad_batch++ == 0)
								first_b = b;
						}
				}
				CHECK_MSG(bad_batch == 0,
					  "%s %s k=%d: %d batched rows differ from the 67-row batch"
					  " (first in a batch of %d)", isa_s, wkind_name[wk], k, bad_batch,
					  first_b);
			}
		}
	}
	CHECK(gs_cpu_force_isa(NULL) == 0);
	for (int t = 0; t < 3; t++)
		gs_threadpool_free(pools[t]);
	free(x), free(xb), free(wb), free(wh), free(w32), free(yfull), free(yb), free(yisa);
}

int main(void)
{
	test_threadpool();
	test_matmul();
	test_batch_invariance();
	TEST_DONE();
}
