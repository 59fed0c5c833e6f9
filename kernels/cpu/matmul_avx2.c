/* AVX2 + FMA + F16C matmul kernels; compiled with -mavx2 -mfma -mf16c and only called after a
 * run-time CPU check (matmul.c). Same structure as matmul_avx512.c with 8-lane vectors and 16
 * registers, so the register blocks are smaller. */
#include "matmul_impl.h"

#if !defined(__x86_64__)
/* Other architectures: never selected by matmul.c (gs_cpu_isa_supported() is 0 there). */
void gs_mm_range_avx2(const struct gs_mm_args *a, int j0, int j1) { gs_mm_range_scalar(a, j0, j1); }
float gs_sum_avx2(const float *p, size_t n) { (void)p, (void)n; return 0.0f; }
float gs_fma_loop_avx2(long iters, double *flops) { (void)iters; *flops = 0; return 0.0f; }
#else
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define GS_INLINE static inline __attribute__((always_inline))
/* loops over R, M, MR have constant trip counts after inlining; they must be fully unrolled so
 * the accumulator arrays live in registers (gcc -O3 otherwise keeps some in memory) */

GS_INLINE float gs_w_scalar(const void *w, size_t idx, enum gs_mm_wtype wt)
{
	if (wt == GS_MM_W_F32)
		return ((const float *)w)[idx];
	uint16_t h = ((const uint16_t *)w)[idx];
	if (wt == GS_MM_W_F16)
		return _cvtsh_ss(h);
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* 8 weights starting at element idx, as fp32 */
GS_INLINE __m256 gs_ld_w(const void *w, size_t idx, enum gs_mm_wtype wt)
{
	if (wt == GS_MM_W_F32)
		return _mm256_loadu_ps((const float *)w + idx);
	__m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + idx));
	if (wt == GS_MM_W_F16)
		return _mm256_cvtph_ps(h);
	return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* the first cnt (< 8) weights, zero-padded, without reading past them */
GS_INLINE __m256 gs_ld_w_part(const void *w, size_t idx, int cnt, enum gs_mm_wtype wt)
{
	_Alignas(32) float t[8] = { 0 };
	for (int c = 0; c < cnt; c++)
		t[c] = gs_w_scalar(w, idx + c, wt);
	return _mm256_load_ps(t);
}

/* lane mask for _mm256_maskload_ps/_mm256_maskstore_ps: the first cnt lanes */
GS_INLINE __m256i gs_lane_mask(int cnt)
{
	static const int32_t tbl[16] = { -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0 };
	return _mm256_loadu_si256((const __m256i *)(tbl + 8 - cnt));
}

GS_INLINE float gs_hsum(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* ---- decode ------------------------------------------------------------------------------ */

GS_INLINE void gs_dec_block(const struct gs_mm_args *a, int j, const int R, const int M,
			    enum gs_mm_wtype wt)
{
	const int k = a->k;
	const float *x = a->x;
	__m256 acc[4][GS_MM_DECODE_MAX_M]; /* fixed size: R, M as bounds would make a VLA */
	_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
		_Pragma("GCC unroll 16") for (int i = 0; i < M; i++)
			acc[r][i] = _mm256_setzero_ps();

	int kk = 0;
	for (; kk + 8 <= k; kk += 8) {
		/* L2 prefetch two blocks ahead, one per 64-byte line (see matmul_avx512.c) */
		if (wt == GS_MM_W_F32 ? (kk & 8) == 0 : (kk & 24) == 0)
			_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
				_mm_prefetch((const char *)a->w +
						     ((size_t)(j + 2 * R + r) * k + kk) * (wt == GS_MM_W_F32 ? 4 : 2),
					     _MM_HINT_T1);
		__m256 wv[4];
		_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
			wv[r] = gs_ld_w(a->w, (size_t)(j + r) * k + kk, wt);
		_Pragma("GCC unroll 16") for (int i = 0; i < M; i++) {
			__m256 xv = _mm256_loadu_ps(x + (size_t)i * k + kk);
			_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
				acc[r][i] = _mm256_fmadd_ps(wv[r], xv, acc[r][i]);
		}
	}
	if (kk < k) {
		__m256i lm = gs_lane_mask(k - kk);
		__m256 wv[4];
		_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
			wv[r] = gs_ld_w_part(a->w, (size_t)(j + r) * k + kk, k - kk, wt);
		_Pragma("GCC unroll 16") for (int i = 0; i < M; i++) {
			__m256 xv = _mm256_maskload_ps(x + (size_t)i * k + kk, lm);
			_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
				acc[r][i] = _mm256_fmadd_ps(wv[r], xv, acc[r][i]);
		}
	}
	_Pragma("GCC unroll 16") for (int i = 0; i < M; i++)
		_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
			a->y[(size_t)i * a->n + j + r] = gs_hsum(acc[r][i]);
}

GS_INLINE void gs_dec_range(const struct gs_mm_args *a, int j0, int j1, const int M,
			    enum gs_mm_wtype wt)
{
	/* R*M accumulators + R weights + 1 x must fit in 16 ymm registers */
	int j = j0;
	if (M <= 2) {
		for (; j + 4 <= j1; j += 4)
			gs_dec_block(a, j, 4, M, wt);
	} else {
		for (; j + 2 <= j1; j += 2)
			gs_dec_block(a, j, 2, M, wt);
	}
	for (; j < j1; j++)
		gs_dec_block(a, j, 1, M, wt);
}

static void gs_dec_dispatch(const struct gs_mm_args *a, int j0, int j1, enum gs_mm_wtype wt)
{
	_Static_assert(GS_MM_DECODE_MAX_M == 4, "instantiate gs_dec_range for every M");
	switch (a->m) {
	case 1: gs_dec_range(a, j0, j1, 1, wt); break;
	case 2: gs_dec_range(a, j0, j1, 2, wt); break;
	case 3: gs_dec_range(a, j0, j1, 3, wt); break;
	case 4: gs_dec_range(a, j0, j1, 4, wt); break;
	}
}

/* ---- prefill GEMM ------------------------------------------------------------------------ */

#define GS_NR 16  /* output columns per panel: two ymm */
#define GS_KC 256 /* 16 KiB panel */
#define GS_MR 6   /* 12 accumulators + 2 weights + 1 broadcast = 15 of 16 registers */

static _Thread_local _Alignas(64) float gs_panel[GS_KC * GS_NR];

GS_INLINE void gs_pack_panel(const struct gs_mm_args *a, int j, int cols, int k0, int kc,
			     enum gs_mm_wtype wt)
{
	const int k = a->k;
	for (int c = 0; c < GS_NR; c++) {
		if (c >= cols) {
			for (int kk = 0; kk < kc; kk++)
				gs_panel[kk * GS_NR + c] = 0.0f;
			continue;
		}
		size_t base = (size_t)(j + c) * k + k0;
		for (int kk = 0; kk < kc; kk++)
			gs_panel[kk * GS_NR + c] = gs_w_scalar(a->w, base + kk, wt);
	}
}

GS_INLINE void gs_gemm_ukr(const struct gs_mm_args *a, int i0, int j, int k0, int kc,
			   __m256i m0, __m256i m1, const int MR)
{
	const int k = a->k, n = a->n;
	const float *x = a->x + (size_t)i0 * k + k0;
	float *y = a->y + (size_t)i0 * n + j;
	__m256 c0[GS_MR], c1[GS_MR]; /* fixed size: MR as a bound would make a VLA */
	/* each k block sums from zero, then is added to y (shorter fp32 chains) */
	for (int i = 0; i < MR; i++) {
		c0[i] = _mm256_setzero_ps();
		c1[i] = _mm256_setzero_ps();
	}
	const float *p = gs_panel;
	for (int kk = 0; kk < kc; kk++, p += GS_NR) {
		__m256 w0 = _mm256_load_ps(p);
		__m256 w1 = _mm256_load_ps(p + 8);
		for (int i = 0; i < MR; i++) {
			__m256 xb = _mm256_broadcast_ss(x + (size_t)i * k + kk);
			c0[i] = _mm256_fmadd_ps(xb, w0, c0[i]);
			c1[i] = _mm256_fmadd_ps(xb, w1, c1[i]);
		}
	}
	for (int i = 0; i < MR; i++) {
		if (k0 != 0) {
			c0[i] = _mm256_add_ps(c0[i], _mm256_maskload_ps(y + (size_t)i * n, m0));
			c1[i] = _mm256_add_ps(c1[i], _mm256_maskload_ps(y + (size_t)i * n + 8, m1));
		}
		_mm256_maskstore_ps(y + (size_t)i * n, m0, c0[i]);
		_mm256_maskstore_ps(y + (size_t)i * n + 8, m1, c1[i]);
	}
}

static void gs_gemm_ukr_tail(const struct gs_mm_args *a, int i0, int mr, int j, int k0, int kc,
			     __m256i m0, __m256i m1)
{
	_Static_assert(GS_MR == 6, "instantiate gs_gemm_ukr for every tail");
	switch (mr) {
	case 1: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 1); break;
	case 2: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 2); break;
	case 3: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 3); break;
	case 4: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 4); break;
	case 5: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 5); break;
	}
}

GS_INLINE void gs_gemm_range(const struct gs_mm_args *a, int j0, int j1, enum gs_mm_wtype wt)
{
	const int m = a->m, k = a->k;
	for (int j = j0; j < j1; j += GS_NR) {
		int cols = j1 - j < GS_NR ? j1 - j : GS_NR;
		__m256i m0 = gs_lane_mask(cols >= 8 ? 8 : cols);
		__m256i m1 = gs_lane_mask(cols >= 16 ? 8 : cols > 8 ? cols - 8 : 0);
		if (k == 0) {
			for (int i = 0; i < m; i++) {
				_mm256_maskstore_ps(a->y + (size_t)i * a->n + j, m0, _mm256_setzero_ps());
				_mm256_maskstore_ps(a->y + (size_t)i * a->n + j + 8, m1, _mm256_setzero_ps());
			}
			continue;
		}
		for (int k0 = 0; k0 < k; k0 += GS_KC) {
			int kc = k - k0 < GS_KC ? k - k0 : GS_KC;
			gs_pack_panel(a, j, cols, k0, kc, wt);
			int i = 0;
			for (; i + GS_MR <= m; i += GS_MR)
				gs_gemm_ukr(a, i, j, k0, kc, m0, m1, GS_MR);
			if (i < m)
				gs_gemm_ukr_tail(a, i, m - i, j, k0, kc, m0, m1);
		}
	}
}

static void gs_range_bf16(const struct gs_mm_args *a, int j0, int j1)
{
	if (a->m <= GS_MM_DECODE_MAX_M)
		gs_dec_dispatch(a, j0, j1, GS_MM_W_BF16);
	else
		gs_gemm_range(a, j0, j1, GS_MM_W_BF16);
}

static void gs_range_f16(const struct gs_mm_args *a, int j0, int j1)
{
	if (a->m <= GS_MM_DECODE_MAX_M)
		gs_dec_dispatch(a, j0, j1, GS_MM_W_F16);
	else
		gs_gemm_range(a, j0, j1, GS_MM_W_F16);
}

static void gs_range_f32(const struct gs_mm_args *a, int j0, int j1)
{
	if (a->m <= GS_MM_DECODE_MAX_M)
		gs_dec_dispatch(a, j0, j1, GS_MM_W_F32);
	else
		gs_gemm_range(a, j0, j1, GS_MM_W_F32);
}

void gs_mm_range_avx2(const struct gs_mm_args *a, int j0, int j1)
{
	switch (a->wt) {
	case GS_MM_W_BF16: gs_range_bf16(a, j0, j1); break;
	case GS_MM_W_F16: gs_range_f16(a, j0, j1); break;
	case GS_MM_W_F32: gs_range_f32(a, j0, j1); break;
	case GS_MM_W_COUNT: break;
	}
}

/* ---- sysbench helpers ------------------------------------------------------------------- */

float gs_sum_avx2(const float *p, size_t n)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
	for (size_t i = 0; i < n; i += 32) {
		s0 = _mm256_add_ps(s0, _mm256_load_ps(p + i));
		s1 = _mm256_add_ps(s1, _mm256_load_ps(p + i + 8));
		s2 = _mm256_add_ps(s2, _mm256_load_ps(p + i + 16));
		s3 = _mm256_add_ps(s3, _mm256_load_ps(p + i + 24));
	}
	return gs_hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

float gs_fma_loop_avx2(long iters, double *flops)
{
	/* 12 chains: FMA latency 4-5 cycles × 2 pipes needs at least 10 in flight */
	__m256 a0 = _mm256_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
	__m256 a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
	__m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
	for (long it = 0; it < iters; it++) {
		/* opaque to the compiler, so identical chains cannot be merged or folded */
		__asm__("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));
		__asm__("" : "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
		a0 = _mm256_fmadd_ps(a0, b, c); a1 = _mm256_fmadd_ps(a1, b, c);
		a2 = _mm256_fmadd_ps(a2, b, c); a3 = _mm256_fmadd_ps(a3, b, c);
		a4 = _mm256_fmadd_ps(a4, b, c); a5 = _mm256_fmadd_ps(a5, b, c);
		a6 = _mm256_fmadd_ps(a6, b, c); a7 = _mm256_fmadd_ps(a7, b, c);
		a8 = _mm256_fmadd_ps(a8, b, c); a9 = _mm256_fmadd_ps(a9, b, c);
		a10 = _mm256_fmadd_ps(a10, b, c); a11 = _mm256_fmadd_ps(a11, b, c);
	}
	*flops = (double)iters * 12 * 8 * 2;
	__m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
				 _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
	s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
	return gs_hsum(s);
}

#endif /* __x86_64__ */
