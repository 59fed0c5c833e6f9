/* The bf16 mode's matmul (gs_cpu_matmul_bf16dp, vdpbf16ps) bit for bit against a plain C loop
 * written here from the order matmul_impl.h states: x rounded to bf16 (round to nearest even),
 * pairs odd-element-first into 16 lanes with one rounding per product-add, subnormal inputs
 * read as zero and subnormal results flushed, blocks of 512, the fixed lane tree. Awkward
 * shapes, every path (decode for m <= 4, GEMM above), 1-3 threads, NaN-poisoned outputs,
 * special values; every row of an m-row call against the same row alone (m = 1); then the
 * backend's numerics switch and its refusal.
 *
 * `test_matmul_bf16 refusal` (run with GS_CPU_FEATURES_MASK=avx512_bf16) checks that the
 * mode is refused with a message naming AVX512_BF16. Without AVX512_BF16 the kernel checks
 * print "Skipped: ..." and exit 77 (ctest SKIP_RETURN_CODE). */
#include "gs_cpu.h"
#include "gs_dtype.h"
#include "gs_kernels.h"
#include "gs_status.h"
#include "gs_test.h"

#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x5eed;

static float rnd(void) /* uniform in [-1, 1) */
{
	return (float)((double)(gs_test_splitmix(&rng) >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

static float ftz(float f)
{
	return fpclassify(f) == FP_SUBNORMAL ? copysignf(0.0f, f) : f;
}

static float bf_daz(uint16_t h)
{
	return ftz(gs_bf16_to_f32(h));
}

/* One output in the stated order, from x and w as bf16. */
static float ref_dot(const uint16_t *x, const uint16_t *w, int k)
{
	/* blocks: nb = ceil(k / 1280), each 32 · ceil(k / (32 · nb)) long, the last shorter */
	int nb = (k + 1279) / 1280, KB = 32 * ((k + 32 * nb - 1) / (32 * nb));
	float y = 0.0f;
	for (int k0 = 0; k0 < k; k0 += KB) {
		int kc = k - k0 < KB ? k - k0 : KB;
		float lane[16] = { 0 };
		for (int p = 0; 2 * p < kc; p++) {
			int e = k0 + 2 * p, o = e + 1;
			float xo = o < k0 + kc ? bf_daz(x[o]) : 0.0f, wo = o < k0 + kc ? bf_daz(w[o]) : 0.0f;
			float xe = bf_daz(x[e]), we = bf_daz(w[e]);
			float *l = &lane[p % 16];
			*l = ftz(fmaf(xo, wo, *l));
			*l = ftz(fmaf(xe, we, *l));
		}
		float v8[8], v4[4];
		for (int i = 0; i < 8; i++)
			v8[i] = lane[i] + lane[i + 8];
		for (int i = 0; i < 4; i++)
			v4[i] = v8[i] + v8[i + 4];
		float s = (v4[0] + v4[2]) + (v4[1] + v4[3]);
		y = k0 == 0 ? s : y + s;
	}
	return y;
}

static int same_bits(float a, float b)
{
	uint32_t ua, ub;
	memcpy(&ua, &a, 4);
	memcpy(&ub, &b, 4);
	return ua == ub;
}

static void test_kernel(void)
{
	static const int ms[] = { 1, 2, 3, 4, 5, 7, 8, 13, 32, 33, 64, 129 };
	static const int ns[] = { 1, 17, 64, 300 };
	static const int ks[] = { 1, 2, 31, 32, 33, 511, 512, 513, 1000, 1280, 1281, 2100, 3900 };
	const int max_m = 129, max_n = 300, max_k = 3900;
	float *x = malloc(sizeof(float) * max_m * max_k);
	uint16_t *xb = malloc(sizeof(uint16_t) * max_m * max_k);
	uint16_t *w = malloc(sizeof(uint16_t) * max_n * max_k);
	float *y = malloc(sizeof(float) * max_m * max_n);
	float *yref = malloc(sizeof(float) * max_m * max_n);
	GS_ASSERT(x && xb && w && y && yref);

	/* mostly ordinary values; some ties of the rounding, subnormals (flushed), values that
	 * round up to the smallest normal bf16, and a wide spread of magnitudes */
	for (int i = 0; i < max_m * max_k; i++) {
		float v = rnd();
		switch (gs_test_splitmix(&rng) % 16) {
		case 0: { uint32_t u = 0x3f808000u | (uint32_t)(gs_test_splitmix(&rng) & 0x007f0000u); memcpy(&v, &u, 4); break; } /* tie */
		case 1: v *= 1e-39f; break;                                  /* fp32 subnormal */
		case 2: { uint32_t u = 0x007fffffu; memcpy(&v, &u, 4); break; } /* rounds to min normal */
		case 3: v *= 1e6f; break;
		default: break;
		}
		x[i] = v;
		xb[i] = gs_f32_to_bf16(v);
	}
	for (int i = 0; i < max_n * max_k; i++)
		w[i] = gs_f32_to_bf16(rnd() * (i % 29 == 0 ? 1e-38f : 1.0f));

	struct gs_threadpool *pools[3];
	for (int t = 0; t < 3; t++) {
		pools[t] = gs_threadpool_create(t + 1);
		GS_ASSERT(pools[t]);
	}
	int cases = 0;
	for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++)
	for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++)
	for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
		int m = ms[mi], n = ns[ni], k = ks[ki];
		if (k > 600 && m * n > 4000)
			continue;
		for (int i = 0; i < m; i++)
			for (int j = 0; j < n; j++)
				yref[(size_t)i * n + j] = ref_dot(xb + (size_t)i * k, w + (size_t)j * k, k);
		for (int t = 0; t < 3; t++) {
			for (int i = 0; i < m * n; i++)
				y[i] = NAN;
			gs_cpu_matmul_bf16dp(pools[t], y, x, w, m, n, k);
			int bad = 0, first = -1;
			for (int i = 0; i < m * n; i++)
				if (!same_bits(y[i], yref[i]) && bad++ == 0)
					first = i;
			CHECK_MSG(bad == 0, "m=%d n=%d k=%d threads=%d: %d outputs differ, first [%d]: %a vs %a", m, n,
				  k, t + 1, bad, first, first >= 0 ? y[first] : 0.0, first >= 0 ? yref[first] : 0.0);
			cases++;
		}
	}
	/* k = 0: empty sums are +0.0, every element written */
	for (int i = 0; i < 64 * 300; i++)
		y[i] = NAN;
	gs_cpu_matmul_bf16dp(pools[1], y, x, w, 64, 300, 0);
	int nz = 0;
	for (int i = 0; i < 64 * 300; i++)
		nz += !same_bits(y[i], 0.0f);
	CHECK(nz == 0);
	fprintf(stderr, "bf16 kernel: %d cases bit-identical to the C loop\n", cases);
	for (int t = 0; t < 3; t++)
		gs_threadpool_free(pools[t]);
	free(x), free(xb), free(w), free(y), free(yref);
}

/* Batch invariance across paths: every row of an m-row call (the GEMM from m = 5 on, with its k
 * blocks, panels, prefetches and m tails) has the bits of the same row computed alone (m = 1,
 * the decode path), for 1 and 2 threads; and the decode path matches the C loop. k spans
 * several blocks with a short last one (2600: 896 + 896 + 808), n several panels and chunks. */
static void test_paths(void)
{
	static const int ms[] = { 1, 2, 3, 15, 16, 17, 64, 129 };
	enum { MAXM = 129, N = 300, K = 2600 };
	float *x = malloc(sizeof(float) * MAXM * K), *y = malloc(sizeof(float) * MAXM * N);
	float *y1 = malloc(sizeof(float) * N);
	uint16_t *xb = malloc(sizeof(uint16_t) * MAXM * K), *w = malloc(sizeof(uint16_t) * N * K);
	GS_ASSERT(x && y && y1 && xb && w);
	for (int i = 0; i < MAXM * K; i++) {
		x[i] = rnd() * (i % 7 == 0 ? 100.0f : 1.0f);
		xb[i] = gs_f32_to_bf16(x[i]);
	}
	for (int i = 0; i < N * K; i++)
		w[i] = gs_f32_to_bf16(rnd());
	int checked = 0;
	for (int t = 1; t <= 2; t++) {
		struct gs_threadpool *tp = gs_threadpool_create(t);
		GS_ASSERT(tp);
		for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++) {
			int m = ms[mi], bad = 0;
			for (int i = 0; i < m * N; i++)
				y[i] = NAN;
			gs_cpu_matmul_bf16dp(tp, y, x, w, m, N, K);
			for (int i = 0; i < m; i++) {
				for (int j = 0; j < N; j++)
					y1[j] = NAN;
				gs_cpu_matmul_bf16dp(tp, y1, x + (size_t)i * K, w, 1, N, K);
				for (int j = 0; j < N; j++)
					bad += !same_bits(y[(size_t)i * N + j], y1[j]);
				/* the decode path itself against the C loop, on a few columns */
				for (int j = 0; j < N; j += 37)
					bad += !same_bits(y1[j], ref_dot(xb + (size_t)i * K, w + (size_t)j * K, K));
			}
			CHECK_MSG(bad == 0, "m=%d threads=%d: %d outputs differ from the row computed alone", m, t, bad);
			checked++;
		}
		gs_threadpool_free(tp);
	}
	fprintf(stderr, "bf16 paths: %d (m, threads) cases bit-identical to m = 1\n", checked);
	free(x), free(y), free(y1), free(xb), free(w);
}

/* The backend's switch: bf16 weights take the kernel above; f32 weights get x rounded the same
 * way and an exact fp32 product (checked against float64 of the rounded x). */
static void test_backend(void)
{
	enum { M = 9, N = 70, K = 300 };
	static float x[M * K], w32[N * K], y[M * N], y2[M * N];
	static uint16_t w[N * K];
	for (int i = 0; i < M * K; i++)
		x[i] = rnd();
	for (int i = 0; i < N * K; i++) {
		w32[i] = rnd();
		w[i] = gs_f32_to_bf16(w32[i]);
	}
	struct gs_backend be;
	GS_ASSERT(gs_backend_cpu_create(2, &be) == GS_OK);
	CHECK(gs_backend_cpu_numerics(&be) == GS_NUMERICS_FP32);
	CHECK(gs_backend_cpu_set_numerics(&be, GS_NUMERICS_BF16) == GS_OK);
	CHECK(gs_backend_cpu_numerics(&be) == GS_NUMERICS_BF16);
	struct gs_tensor tb = { GS_DTYPE_BF16, N, K, w }, tf = { GS_DTYPE_F32, N, K, w32 };
	be.iface->matmul(be.ctx, y, x, &tb, M);
	gs_cpu_matmul_bf16dp(NULL, y2, x, w, M, N, K);
	CHECK(memcmp(y, y2, sizeof(y)) == 0);
	be.iface->matmul(be.ctx, y, x, &tf, M);
	double num = 0, den = 0;
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++) {
			double s = 0;
			for (int l = 0; l < K; l++)
				s += (double)gs_round_bf16(x[i * K + l]) * w32[j * K + l];
			num += (y[i * N + j] - s) * (y[i * N + j] - s);
			den += s * s;
		}
	CHECK_MSG(sqrt(num / den) < 1e-6, "f32 weights in bf16 mode: rel L2 %g", sqrt(num / den));
	CHECK(gs_backend_cpu_set_numerics(&be, GS_NUMERICS_FP32) == GS_OK);
	gs_backend_cpu_free(&be);

	enum gs_numerics nm;
	CHECK(gs_numerics_parse("bf16", "--numerics", &nm) == GS_OK && nm == GS_NUMERICS_BF16);
	CHECK(gs_numerics_parse("fp32", "--numerics", &nm) == GS_OK && nm == GS_NUMERICS_FP32);
	CHECK(gs_numerics_parse("fp16", "--numerics", &nm) == GS_ERR_INVALID_ARG);
	CHECK(strstr(gs_last_error(), "--numerics") && strstr(gs_last_error(), "fp16"));

	double peak = gs_cpu_measure_bf16_peak(NULL);
	CHECK(peak > 0);
}

static int test_refusal(void)
{
	const char *mask = getenv("GS_CPU_FEATURES_MASK");
	CHECK_MSG(mask && strstr(mask, "avx512_bf16"), "run with GS_CPU_FEATURES_MASK=avx512_bf16");
	const char *missing = gs_cpu_bf16_missing();
	CHECK(missing && strcmp(missing, "AVX512_BF16") == 0);
	struct gs_backend be;
	GS_ASSERT(gs_backend_cpu_create(1, &be) == GS_OK);
	CHECK(gs_backend_cpu_set_numerics(&be, GS_NUMERICS_BF16) == GS_ERR_UNSUPPORTED);
	CHECK_MSG(strstr(gs_last_error(), "AVX512_BF16") != NULL, "message: %s", gs_last_error());
	CHECK(gs_backend_cpu_numerics(&be) == GS_NUMERICS_FP32);
	CHECK(gs_backend_cpu_set_numerics(&be, GS_NUMERICS_FP32) == GS_OK);
	gs_backend_cpu_free(&be);
	/* the fp32 kernels still run (the AVX-512 path stays selectable) */
	CHECK(gs_cpu_isa_supported(GS_CPU_ISA_AVX512) == (__builtin_cpu_supports("avx512f") &&
							  __builtin_cpu_supports("avx512bw") &&
							  __builtin_cpu_supports("avx512vl") &&
							  __builtin_cpu_supports("avx512dq")));
	TEST_DONE();
}

/* Several weights sharing x in one dispatch (gs_cpu_matmul_bf16dp_n: q/k/v, gate/up): every
 * output has the bits of the weight's own call, for weights whose boundaries fall inside the
 * threads' column ranges (n = 300, 64, 17 after each other), decode and GEMM m, 1-3 threads;
 * and the CPU backend's matmul_n equals its matmul in both modes. */
static void test_grouped(void)
{
	enum { MAXM = 33, K = 1300 };
	static const int ns[3] = { 300, 64, 17 }, ms[] = { 1, 4, 5, 16, 33 };
	float *x = malloc(sizeof(float) * MAXM * K), *y1[3], *yn[3];
	uint16_t *w[3];
	for (int i = 0; i < MAXM * K; i++)
		x[i] = rnd();
	for (int q = 0; q < 3; q++) {
		w[q] = malloc(sizeof(uint16_t) * ns[q] * K);
		y1[q] = malloc(sizeof(float) * MAXM * ns[q]);
		yn[q] = malloc(sizeof(float) * MAXM * ns[q]);
		GS_ASSERT(w[q] && y1[q] && yn[q]);
		for (int i = 0; i < ns[q] * K; i++)
			w[q][i] = gs_f32_to_bf16(rnd());
	}
	int cases = 0;
	for (int t = 1; t <= 3; t++) {
		struct gs_threadpool *tp = gs_threadpool_create(t);
		GS_ASSERT(tp);
		for (size_t mi = 0; mi < sizeof(ms) / sizeof(ms[0]); mi++) {
			int m = ms[mi], bad = 0;
			for (int q = 0; q < 3; q++) {
				gs_cpu_matmul_bf16dp(tp, y1[q], x, w[q], m, ns[q], K);
				for (int i = 0; i < m * ns[q]; i++)
					yn[q][i] = NAN;
			}
			gs_cpu_matmul_bf16dp_n(tp, 3, yn, x, (const uint16_t *const *)w, ns, m, K);
			for (int q = 0; q < 3; q++)
				for (int i = 0; i < m * ns[q]; i++)
					bad += !same_bits(y1[q][i], yn[q][i]);
			CHECK_MSG(bad == 0, "grouped m=%d threads=%d: %d outputs differ from the single calls", m, t, bad);
			cases++;
		}
		gs_threadpool_free(tp);
	}
	/* the backend op, both modes, weights as tensors */
	for (int mode = 0; mode < 2; mode++) {
		struct gs_backend be;
		GS_ASSERT(gs_backend_cpu_create(2, &be) == GS_OK);
		GS_ASSERT(gs_backend_cpu_set_numerics(&be, mode ? GS_NUMERICS_BF16 : GS_NUMERICS_FP32) == GS_OK);
		struct gs_tensor tw[3];
		const struct gs_tensor *pw[3];
		for (int q = 0; q < 3; q++) {
			tw[q] = (struct gs_tensor){ .data = w[q], .dtype = GS_DTYPE_BF16, .rows = ns[q], .cols = K };
			pw[q] = &tw[q];
		}
		int bad = 0;
		for (int q = 0; q < 3; q++) {
			be.iface->matmul(be.ctx, y1[q], x, pw[q], 16);
			for (int i = 0; i < 16 * ns[q]; i++)
				yn[q][i] = NAN;
		}
		gs_matmul_n(be.iface, be.ctx, 3, yn, x, pw, 16);
		for (int q = 0; q < 3; q++)
			for (int i = 0; i < 16 * ns[q]; i++)
				bad += !same_bits(y1[q][i], yn[q][i]);
		CHECK_MSG(bad == 0, "backend matmul_n (%s): %d outputs differ from matmul", mode ? "bf16" : "fp32", bad);
		cases++;
		gs_backend_cpu_free(&be);
	}
	printf("bf16 grouped matmuls: %d cases bit-identical to one call per weight\n", cases);
	for (int q = 0; q < 3; q++)
		free(w[q]), free(y1[q]), free(yn[q]);
	free(x);
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "refusal") == 0)
		return test_refusal();
	const char *missing = gs_cpu_bf16_missing();
	if (missing) {
		struct gs_backend be;
		GS_ASSERT(gs_backend_cpu_create(1, &be) == GS_OK);
		CHECK(gs_backend_cpu_set_numerics(&be, GS_NUMERICS_BF16) == GS_ERR_UNSUPPORTED);
		CHECK(strstr(gs_last_error(), missing) != NULL);
		gs_backend_cpu_free(&be);
		if (gs_test_failures)
			TEST_DONE();
		printf("Skipped: this CPU lacks %s, the bf16 mode is refused\n", missing);
		return 77;
	}
	test_kernel();
	test_paths();
	test_backend();
	test_grouped();
	TEST_DONE();
}
