/* AVX-512 (F/BW/VL/DQ) matmul kernels; compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq
 * -mf16c -mfma and only called after a run-time CPU check (matmul.c).
 *
 * Weights become fp32 in registers: bf16 by zero-extension and a 16-bit shift (exact), f16 by
 * vcvtph2ps (exact). vdpbf16ps is deliberately not used: it would round x to bf16. */
#include "matmul_impl.h"

#if !defined(__x86_64__)
/* Other architectures: never selected by matmul.c (gs_cpu_isa_supported() is 0 there). */
void gs_mm_range_avx512(const struct gs_mm_args *a, int j0, int j1) { gs_mm_range_scalar(a, j0, j1); }
float gs_sum_avx512(const float *p, size_t n) { (void)p, (void)n; return 0.0f; }
float gs_fma_loop_avx512(long iters, double *flops) { (void)iters; *flops = 0; return 0.0f; }
#else
#include <immintrin.h>
#include <stdint.h>

#define GS_INLINE static inline __attribute__((always_inline))
/* loops over R, M, MR have constant trip counts after inlining; they must be fully unrolled so
 * the accumulator arrays live in registers (gcc -O3 otherwise keeps some in memory) */

/* 16 weights starting at element idx, as fp32. wt is a constant after inlining. */
GS_INLINE __m512 gs_ld_w(const void *w, size_t idx, enum gs_mm_wtype wt)
{
	if (wt == GS_MM_W_F32)
		return _mm512_loadu_ps((const float *)w + idx);
	__m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + idx));
	if (wt == GS_MM_W_F16)
		return _mm512_cvtph_ps(h);
	return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Same for the first popcount(mk) elements; the others are 0 and nothing past them is read. */
GS_INLINE __m512 gs_ld_w_mask(const void *w, size_t idx, __mmask16 mk, enum gs_mm_wtype wt)
{
	if (wt == GS_MM_W_F32)
		return _mm512_maskz_loadu_ps(mk, (const float *)w + idx);
	__m256i h = _mm256_maskz_loadu_epi16(mk, (const uint16_t *)w + idx);
	if (wt == GS_MM_W_F16)
		return _mm512_cvtph_ps(h);
	return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* ---- decode: R weight rows × M x rows, each weight row streamed exactly once ------------- */

#define GS_DEC_R 4 /* weight rows per block: 4*M accumulators, x loads shared by 4 rows */
/* Prefetch distance in blocks, into L2 only: T0 pulls the stream through L1 and evicts the
 * slice of x. Measured single-thread on Zen 4 (1B shapes): ~80% of read bandwidth with this,
 * ~35-45% with the hardware prefetcher alone. */
#define GS_DEC_D 2

GS_INLINE size_t gs_wsize(enum gs_mm_wtype wt)
{
	return wt == GS_MM_W_F32 ? 4 : 2;
}

/* y[0..M, j..j+R) (+)= x[0..M, k0..k0+kc) · W[j..j+R, k0..k0+kc)ᵀ.
 * While rows j..j+R are read, the same columns of the rows GS_DEC_D blocks ahead are prefetched:
 * the hardware prefetcher alone ramps up too slowly on rows of a few KiB read as R interleaved
 * streams. */
GS_INLINE void gs_dec_block(const struct gs_mm_args *a, int j, int k0, int kc, const int R,
			    const int M, enum gs_mm_wtype wt)
{
	const int k = a->k;
	const float *x = a->x + k0;
	const size_t es = gs_wsize(wt);
	__m512 acc[GS_DEC_R][GS_MM_DECODE_MAX_M]; /* fixed size: R, M as bounds would make a VLA */
	_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
		_Pragma("GCC unroll 16") for (int i = 0; i < M; i++)
			acc[r][i] = _mm512_setzero_ps();

	int kk = 0;
	for (; kk + 16 <= kc; kk += 16) {
		/* one prefetch per 64-byte line: every iteration for f32, every other for 16-bit */
		if (es == 4 || (kk & 16) == 0)
			_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
				_mm_prefetch((const char *)a->w + ((size_t)(j + GS_DEC_D * R + r) * k + k0 + kk) * es,
					     _MM_HINT_T1);
		__m512 wv[GS_DEC_R];
		_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
			wv[r] = gs_ld_w(a->w, (size_t)(j + r) * k + k0 + kk, wt);
		_Pragma("GCC unroll 16") for (int i = 0; i < M; i++) {
			__m512 xv = _mm512_loadu_ps(x + (size_t)i * k + kk);
			_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
				acc[r][i] = _mm512_fmadd_ps(wv[r], xv, acc[r][i]);
		}
	}
	if (kk < kc) {
		__mmask16 mk = (__mmask16)((1u << (kc - kk)) - 1);
		__m512 wv[GS_DEC_R];
		_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
			wv[r] = gs_ld_w_mask(a->w, (size_t)(j + r) * k + k0 + kk, mk, wt);
		_Pragma("GCC unroll 16") for (int i = 0; i < M; i++) {
			__m512 xv = _mm512_maskz_loadu_ps(mk, x + (size_t)i * k + kk);
			_Pragma("GCC unroll 16") for (int r = 0; r < R; r++)
				acc[r][i] = _mm512_fmadd_ps(wv[r], xv, acc[r][i]);
		}
	}
	_Pragma("GCC unroll 16") for (int i = 0; i < M; i++)
		_Pragma("GCC unroll 16") for (int r = 0; r < R; r++) {
			float s = _mm512_reduce_add_ps(acc[r][i]);
			float *yp = a->y + (size_t)i * a->n + j + r;
			*yp = k0 == 0 ? s : *yp + s;
		}
}

GS_INLINE void gs_dec_range(const struct gs_mm_args *a, int j0, int j1, const int M,
			    enum gs_mm_wtype wt)
{
	/* k is cut into blocks whose slice of x (M rows) stays in L1 (16 KiB) while the weight
	 * stream passes through (rows of k = 6912 are cut in 2 for m = 1) */
	const int R = GS_DEC_R;
	const int kb = 4096 / M / 16 * 16;
	if (a->k == 0) {
		for (int i = 0; i < M; i++)
			for (int j = j0; j < j1; j++)
				a->y[(size_t)i * a->n + j] = 0.0f;
		return;
	}
	for (int k0 = 0; k0 < a->k; k0 += kb) {
		int kc = a->k - k0 < kb ? a->k - k0 : kb;
		int j = j0;
		for (; j + R <= j1; j += R)
			gs_dec_block(a, j, k0, kc, R, M, wt);
		for (; j < j1; j++)
			gs_dec_block(a, j, k0, kc, 1, M, wt);
	}
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

/* ---- prefill GEMM: packed fp32 panels of W reused over all rows of x --------------------- */

#define GS_NR 32  /* output columns per panel: two zmm */
#define GS_KC 256 /* k per panel: 32 KiB of fp32, stays in L1/L2 while all x rows pass */
#define GS_MR 12  /* x rows per micro-kernel: 24 accumulators + 2 weights + 1 broadcast */

/* Per-thread panel buffer: allocated once per thread (TLS), never per call. */
static _Thread_local _Alignas(64) float gs_panel[GS_KC * GS_NR];

/* panel[kk][c] = W[j + c][k0 + kk] as fp32, zero for columns past j1. */
GS_INLINE void gs_pack_panel(const struct gs_mm_args *a, int j, int j1, int k0, int kc,
			     enum gs_mm_wtype wt)
{
	const int k = a->k;
	int cols = j1 - j < GS_NR ? j1 - j : GS_NR;
	/* 16 columns × 16 k at a time: load 16 converted rows, transpose in registers */
	for (int c0 = 0; c0 < GS_NR; c0 += 16) {
		int kk = 0;
		for (; kk < kc; kk += 16) {
			int kn = kc - kk < 16 ? kc - kk : 16;
			__mmask16 mk = (__mmask16)((1u << kn) - 1);
			__m512 r[16];
			for (int c = 0; c < 16; c++) {
				if (c0 + c < cols)
					r[c] = gs_ld_w_mask(a->w, (size_t)(j + c0 + c) * k + k0 + kk, mk, wt);
				else
					r[c] = _mm512_setzero_ps();
			}
			/* 16×16 transpose: r[c][t] -> out[t][c] */
			__m512 t[16];
			for (int c = 0; c < 16; c += 2) {
				t[c] = _mm512_unpacklo_ps(r[c], r[c + 1]);
				t[c + 1] = _mm512_unpackhi_ps(r[c], r[c + 1]);
			}
			for (int c = 0; c < 16; c += 4) {
				r[c] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[c]), _mm512_castps_pd(t[c + 2])));
				r[c + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[c]), _mm512_castps_pd(t[c + 2])));
				r[c + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[c + 1]), _mm512_castps_pd(t[c + 3])));
				r[c + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[c + 1]), _mm512_castps_pd(t[c + 3])));
			}
			/* r[4q + s] now holds, per 128-bit lane L, columns 4q..4q+3 of k = 4L + s */
			for (int q = 0; q < 4; q++) {
				for (int s = 0; s < 4; s++) {
					__m512 v = r[4 * q + s];
					float *dst = gs_panel + (size_t)(kk + s) * GS_NR + c0 + 4 * q;
					/* lane index must be an immediate, even at -O0: spelled out */
					if (s < kn)
						_mm_store_ps(dst, _mm512_extractf32x4_ps(v, 0));
					if (4 + s < kn)
						_mm_store_ps(dst + 4 * GS_NR, _mm512_extractf32x4_ps(v, 1));
					if (8 + s < kn)
						_mm_store_ps(dst + 8 * GS_NR, _mm512_extractf32x4_ps(v, 2));
					if (12 + s < kn)
						_mm_store_ps(dst + 12 * GS_NR, _mm512_extractf32x4_ps(v, 3));
				}
			}
		}
	}
}

/* y[i0 .. i0+MR, j .. j+32) (+)= x[i0.., k0 .. k0+kc) · panel */
GS_INLINE void gs_gemm_ukr(const struct gs_mm_args *a, int i0, int j, int k0, int kc,
			   __mmask16 m0, __mmask16 m1, const int MR)
{
	const int k = a->k, n = a->n;
	const float *x = a->x + (size_t)i0 * k + k0;
	float *y = a->y + (size_t)i0 * n + j;
	__m512 c0[GS_MR], c1[GS_MR]; /* fixed size: MR as a bound would make a VLA */
	/* each k block sums from zero and is then added to y: chains of GS_KC terms instead of k
	 * keep the fp32 error of long rows (k = 6912, 21504) down at no cost */
	for (int i = 0; i < MR; i++) {
		c0[i] = _mm512_setzero_ps();
		c1[i] = _mm512_setzero_ps();
	}
	const float *p = gs_panel;
	for (int kk = 0; kk < kc; kk++, p += GS_NR) {
		__m512 w0 = _mm512_load_ps(p);
		__m512 w1 = _mm512_load_ps(p + 16);
		for (int i = 0; i < MR; i++) {
			__m512 xb = _mm512_set1_ps(x[(size_t)i * k + kk]);
			c0[i] = _mm512_fmadd_ps(xb, w0, c0[i]);
			c1[i] = _mm512_fmadd_ps(xb, w1, c1[i]);
		}
	}
	for (int i = 0; i < MR; i++) {
		if (k0 != 0) {
			c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, y + (size_t)i * n));
			c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, y + (size_t)i * n + 16));
		}
		_mm512_mask_storeu_ps(y + (size_t)i * n, m0, c0[i]);
		_mm512_mask_storeu_ps(y + (size_t)i * n + 16, m1, c1[i]);
	}
}

static void gs_gemm_ukr_tail(const struct gs_mm_args *a, int i0, int mr, int j, int k0, int kc,
			     __mmask16 m0, __mmask16 m1)
{
	_Static_assert(GS_MR == 12, "instantiate gs_gemm_ukr for every tail");
	switch (mr) {
	case 1: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 1); break;
	case 2: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 2); break;
	case 3: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 3); break;
	case 4: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 4); break;
	case 5: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 5); break;
	case 6: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 6); break;
	case 7: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 7); break;
	case 8: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 8); break;
	case 9: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 9); break;
	case 10: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 10); break;
	case 11: gs_gemm_ukr(a, i0, j, k0, kc, m0, m1, 11); break;
	}
}

GS_INLINE void gs_gemm_range(const struct gs_mm_args *a, int j0, int j1, enum gs_mm_wtype wt)
{
	const int m = a->m, k = a->k;
	for (int j = j0; j < j1; j += GS_NR) {
		int cols = j1 - j < GS_NR ? j1 - j : GS_NR;
		__mmask16 m0 = (__mmask16)(cols >= 16 ? 0xffffu : (1u << cols) - 1);
		__mmask16 m1 = (__mmask16)(cols >= 32 ? 0xffffu : cols > 16 ? (1u << (cols - 16)) - 1 : 0);
		if (k == 0) {
			for (int i = 0; i < m; i++) {
				_mm512_mask_storeu_ps(a->y + (size_t)i * a->n + j, m0, _mm512_setzero_ps());
				_mm512_mask_storeu_ps(a->y + (size_t)i * a->n + j + 16, m1, _mm512_setzero_ps());
			}
			continue;
		}
		for (int k0 = 0; k0 < k; k0 += GS_KC) {
			int kc = k - k0 < GS_KC ? k - k0 : GS_KC;
			gs_pack_panel(a, j, j1, k0, kc, wt);
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

void gs_mm_range_avx512(const struct gs_mm_args *a, int j0, int j1)
{
	switch (a->wt) {
	case GS_MM_W_BF16: gs_range_bf16(a, j0, j1); break;
	case GS_MM_W_F16: gs_range_f16(a, j0, j1); break;
	case GS_MM_W_F32: gs_range_f32(a, j0, j1); break;
	case GS_MM_W_COUNT: break;
	}
}

/* ---- sysbench helpers ------------------------------------------------------------------- */

float gs_sum_avx512(const float *p, size_t n)
{
	/* 4 accumulators: the loads, not the add latency, must be the limit */
	__m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
	for (size_t i = 0; i < n; i += 64) {
		s0 = _mm512_add_ps(s0, _mm512_load_ps(p + i));
		s1 = _mm512_add_ps(s1, _mm512_load_ps(p + i + 16));
		s2 = _mm512_add_ps(s2, _mm512_load_ps(p + i + 32));
		s3 = _mm512_add_ps(s3, _mm512_load_ps(p + i + 48));
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

float gs_fma_loop_avx512(long iters, double *flops)
{
	/* 12 independent chains cover FMA latency (4 cycles) × 2 pipes with room to spare */
	__m512 a0 = _mm512_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
	__m512 a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
	__m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
	for (long it = 0; it < iters; it++) {
		/* opaque to the compiler, so identical chains cannot be merged or folded */
		__asm__("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
		__asm__("" : "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
		a0 = _mm512_fmadd_ps(a0, b, c); a1 = _mm512_fmadd_ps(a1, b, c);
		a2 = _mm512_fmadd_ps(a2, b, c); a3 = _mm512_fmadd_ps(a3, b, c);
		a4 = _mm512_fmadd_ps(a4, b, c); a5 = _mm512_fmadd_ps(a5, b, c);
		a6 = _mm512_fmadd_ps(a6, b, c); a7 = _mm512_fmadd_ps(a7, b, c);
		a8 = _mm512_fmadd_ps(a8, b, c); a9 = _mm512_fmadd_ps(a9, b, c);
		a10 = _mm512_fmadd_ps(a10, b, c); a11 = _mm512_fmadd_ps(a11, b, c);
	}
	*flops = (double)iters * 12 * 16 * 2;
	__m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
				 _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
	s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
	return _mm512_reduce_add_ps(s);
}

#endif /* __x86_64__ */
