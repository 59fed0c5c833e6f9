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

/* ---- one tile: MR rows of x × NR rows of W over one k block, in the canonical order --------
 * (matmul_impl.h). The 16 lanes of an output live in two ymm: lo = lanes 0-7, hi = lanes 8-15,
 * so the result is bit-identical to the AVX-512 and scalar paths. */

/* the fixed lane tree: fold8 = lo + hi, then v[l] + v[l+4], v[l] + v[l+2], v[0] + v[1] */
GS_INLINE float gs_tree16(__m256 lo, __m256 hi)
{
	return gs_hsum(_mm256_add_ps(lo, hi));
}

#define GS_T_MAX 6 /* MR*NR outputs: 2 ymm each + MR x + 1 w within 16 registers */

/* s[ii][jj] = tree sum of x row xr[ii] · W row wr[jj] over kc elements (one block). pf (if not
 * NULL): NR rows to prefetch into L2 at the same offsets. */
GS_INLINE void gs_tile(const float *const *xr, const void *const *wr, const void *const *pf,
		       int kc, const int MR, const int NR, enum gs_mm_wtype wt, float s[4][4])
{
	const size_t es = wt == GS_MM_W_F32 ? 4 : 2;
	__m256 lo[4][4], hi[4][4]; /* [ii][jj]; only MR*NR <= GS_T_MAX used */
	_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
		_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++)
			lo[ii][jj] = hi[ii][jj] = _mm256_setzero_ps();
	int t = 0;
	for (; t + 16 <= kc; t += 16) {
		if (pf && (es == 4 || (t & 16) == 0))
			_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++)
				_mm_prefetch((const char *)pf[jj] + (size_t)t * es, _MM_HINT_T1);
		__m256 xv[4];
		_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
			xv[ii] = _mm256_loadu_ps(xr[ii] + t);
		_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++) {
			__m256 wv = gs_ld_w(wr[jj], (size_t)t, wt);
			_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
				lo[ii][jj] = _mm256_fmadd_ps(xv[ii], wv, lo[ii][jj]);
		}
		_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
			xv[ii] = _mm256_loadu_ps(xr[ii] + t + 8);
		_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++) {
			__m256 wv = gs_ld_w(wr[jj], (size_t)t + 8, wt);
			_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
				hi[ii][jj] = _mm256_fmadd_ps(xv[ii], wv, hi[ii][jj]);
		}
	}
	if (t < kc) { /* x = w = +0.0 past kc, as the canonical order pads */
		int c0 = kc - t < 8 ? kc - t : 8, c1 = kc - t - c0;
		__m256i m0 = gs_lane_mask(c0), m1 = gs_lane_mask(c1);
		_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++) {
			__m256 w0 = gs_ld_w_part(wr[jj], (size_t)t, c0, wt);
			__m256 w1 = gs_ld_w_part(wr[jj], (size_t)t + 8, c1, wt);
			_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++) {
				lo[ii][jj] = _mm256_fmadd_ps(_mm256_maskload_ps(xr[ii] + t, m0), w0, lo[ii][jj]);
				hi[ii][jj] = _mm256_fmadd_ps(_mm256_maskload_ps(xr[ii] + t + 8, m1), w1, hi[ii][jj]);
			}
		}
	}
	_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
		_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++)
			s[ii][jj] = gs_tree16(lo[ii][jj], hi[ii][jj]);
}

/* ---- decode: M ≤ 4 rows of x, each weight row streamed once --------------------------------- */

GS_INLINE void gs_dec_range(const struct gs_mm_args *a, int j0, int j1, const int M, const int R,
			    enum gs_mm_wtype wt)
{
	const int n = a->n, k = a->k;
	const size_t es = wt == GS_MM_W_F32 ? 4 : 2;
	const char *w = a->w;
	for (int j = j0; j < j1; j += R) {
		int nr = j1 - j < R ? j1 - j : R;
		const void *wr[4], *pf[4];
		const float *xr[4];
		float s[4][4], acc[4][4] = { { 0 } };
		for (int k0 = 0; k0 < k; k0 += GS_MM_KB) {
			int kc = k - k0 < GS_MM_KB ? k - k0 : GS_MM_KB;
			for (int r = 0; r < R; r++) {
				/* rows past nr repeat the last one (computed, not stored) */
				int jr = j + (r < nr ? r : nr - 1), jp = j + 2 * R + r;
				wr[r] = w + ((size_t)jr * k + k0) * es;
				pf[r] = w + ((size_t)(jp < n ? jp : n - 1) * k + k0) * es;
			}
			for (int i = 0; i < M; i++)
				xr[i] = a->x + (size_t)i * k + k0;
			gs_tile(xr, wr, pf, kc, M, R, wt, s);
			for (int i = 0; i < M; i++)
				for (int r = 0; r < R; r++)
					acc[i][r] = k0 == 0 ? s[i][r] : acc[i][r] + s[i][r];
		}
		for (int i = 0; i < M; i++)
			for (int r = 0; r < nr; r++)
				a->y[(size_t)i * n + j + r] = acc[i][r];
	}
}

static void gs_dec_dispatch(const struct gs_mm_args *a, int j0, int j1, enum gs_mm_wtype wt)
{
	_Static_assert(GS_MM_DECODE_MAX_M == 4, "instantiate gs_dec_range for every M");
	switch (a->m) { /* M*R <= GS_T_MAX */
	case 1: gs_dec_range(a, j0, j1, 1, 4, wt); break;
	case 2: gs_dec_range(a, j0, j1, 2, 3, wt); break;
	case 3: gs_dec_range(a, j0, j1, 3, 2, wt); break;
	case 4: gs_dec_range(a, j0, j1, 4, 1, wt); break;
	}
}

/* ---- prefill GEMM: 2×3 dot-product tiles on packed fp32 panels of W ------------------------- */

#define GS_NP 15 /* weight rows per panel (a multiple of the tile's 3): 15 KiB of fp32 */
#define GS_TM 2
#define GS_TN 3

static _Thread_local _Alignas(64) float gs_panel[GS_NP * GS_MM_KB];

GS_INLINE void gs_pack_panel(const struct gs_mm_args *a, int j, int np, int k0, int kc,
			     enum gs_mm_wtype wt)
{
	for (int r = 0; r < np; r++) {
		size_t base = (size_t)(j + r) * a->k + k0;
		float *dst = gs_panel + (size_t)r * GS_MM_KB;
		int t = 0;
		for (; t + 8 <= kc; t += 8)
			_mm256_store_ps(dst + t, gs_ld_w(a->w, base + t, wt));
		for (; t < kc; t++)
			dst[t] = gs_w_scalar(a->w, base + t, wt);
	}
}

GS_INLINE void gs_gemm_range(const struct gs_mm_args *a, int j0, int j1, enum gs_mm_wtype wt)
{
	const int m = a->m, n = a->n, k = a->k;
	for (int jp = j0; jp < j1; jp += GS_NP) {
		int np = j1 - jp < GS_NP ? j1 - jp : GS_NP;
		for (int k0 = 0; k0 < k; k0 += GS_MM_KB) {
			int kc = k - k0 < GS_MM_KB ? k - k0 : GS_MM_KB;
			gs_pack_panel(a, jp, np, k0, kc, wt);
			for (int i = 0; i < m; i += GS_TM) {
				int mr = m - i < GS_TM ? m - i : GS_TM;
				const float *xr[4];
				for (int ii = 0; ii < GS_TM; ii++)
					xr[ii] = a->x + (size_t)(i + (ii < mr ? ii : mr - 1)) * k + k0;
				for (int r = 0; r < np; r += GS_TN) {
					int nr = np - r < GS_TN ? np - r : GS_TN;
					const void *wr[4];
					for (int jj = 0; jj < GS_TN; jj++)
						wr[jj] = gs_panel + (size_t)(r + (jj < nr ? jj : nr - 1)) * GS_MM_KB;
					float s[4][4];
					gs_tile(xr, wr, NULL, kc, GS_TM, GS_TN, GS_MM_W_F32, s);
					for (int ii = 0; ii < mr; ii++)
						for (int jj = 0; jj < nr; jj++) {
							float *yp = a->y + (size_t)(i + ii) * n + jp + r + jj;
							*yp = k0 == 0 ? s[ii][jj] : *yp + s[ii][jj];
						}
				}
			}
		}
	}
}

static void gs_range(const struct gs_mm_args *a, int j0, int j1, enum gs_mm_wtype wt)
{
	if (a->k == 0) { /* empty sums: +0.0 */
		for (int i = 0; i < a->m; i++)
			for (int j = j0; j < j1; j++)
				a->y[(size_t)i * a->n + j] = 0.0f;
		return;
	}
	if (a->m <= GS_MM_DECODE_MAX_M)
		gs_dec_dispatch(a, j0, j1, wt);
	else
		gs_gemm_range(a, j0, j1, wt);
}

static void gs_range_bf16(const struct gs_mm_args *a, int j0, int j1) { gs_range(a, j0, j1, GS_MM_W_BF16); }
static void gs_range_f16(const struct gs_mm_args *a, int j0, int j1) { gs_range(a, j0, j1, GS_MM_W_F16); }
static void gs_range_f32(const struct gs_mm_args *a, int j0, int j1) { gs_range(a, j0, j1, GS_MM_W_F32); }

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
