/* The bf16 mode's matmul: bf16 x (rounded once per call) times bf16 W as stored, with vdpbf16ps
 * (AVX512_BF16): 32 multiply-adds per instruction, twice the fp32 FMA's 16, and no conversion of
 * W at all. Compiled with -mavx512bf16 and only called after the run-time probe (matmul.c).
 * Every path sums in the bf16 canonical order of matmul_impl.h, so an output has the same bits
 * whatever m, its row's place, the thread count or the path (decode, streamed, GEMM). */
#include "matmul_impl.h"

#if !defined(__x86_64__)
/* Other architectures: never selected (gs_cpu_bf16_missing() names the feature there). */
void gs_mm_bf_range_avx512bf16(const struct gs_mm_args *a, int j0, int j1) { (void)a, (void)j0, (void)j1; }
void gs_round_bf16_avx512(uint16_t *dst, const float *src, size_t n) { (void)dst, (void)src, (void)n; }
float gs_dpbf16_loop_avx512bf16(long iters, double *flops) { (void)iters; *flops = 0; return 0.0f; }
#else
#include <immintrin.h>
#include <stdint.h>

#define GS_INLINE static inline __attribute__((always_inline))

/* ---- x to bf16 ----------------------------------------------------------------------------
 * Integer round to nearest even, as gs_f32_to_bf16 (torch): vcvtneps2bf16 would flush fp32
 * subnormals first, which differs on the values that round up to the smallest normal bf16. */
GS_INLINE __m256i gs_rne16(__m512 v)
{
	__m512i u = _mm512_castps_si512(v);
	__m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
	__m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
	__m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
	__mmask16 nan = _mm512_cmp_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
					      _mm512_set1_epi32(0x7f800000), _MM_CMPINT_NLE);
	return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(r, nan, q));
}

void gs_round_bf16_avx512(uint16_t *dst, const float *src, size_t n)
{
	size_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm256_storeu_si256((__m256i *)(dst + i), gs_rne16(_mm512_loadu_ps(src + i)));
	if (i < n) {
		__mmask16 mk = (__mmask16)((1u << (n - i)) - 1);
		_mm256_mask_storeu_epi16(dst + i, mk, gs_rne16(_mm512_maskz_loadu_ps(mk, src + i)));
	}
}

/* ---- one tile: MR x rows × NR W rows over one block -------------------------------------- */

/* Same fixed tree as matmul_avx512.c's gs_tree16x16: lane 4q + r holds the tree sum of a[q + 4r]. */
GS_INLINE __m512 gs_tree16x16(const __m512 a[16])
{
	__m512 b[8], c[4], d[2];
	for (int p = 0; p < 8; p++)
		b[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0x44),
				     _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0xee));
	for (int p = 0; p < 4; p++)
		c[p] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * p], b[2 * p + 1], 0x88),
				     _mm512_shuffle_f32x4(b[2 * p], b[2 * p + 1], 0xdd));
	for (int p = 0; p < 2; p++)
		d[p] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * p], c[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
				     _mm512_shuffle_ps(c[2 * p], c[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
	return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
			     _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Tree sums of xr[0..MR) · wr[0..NR) over kc bf16 elements: lane 4ii + jj is output [ii][jj].
 * pf (if not NULL): NR rows prefetched into L2 at the same offsets (one 64-byte line a step).
 * Accumulator [ii][jj] is its own chain, so MR, NR and the other rows never change its bits. */
GS_INLINE __m512 gs_bf_tile(const uint16_t *const *xr, const uint16_t *const *wr, const uint16_t *const *pf,
			    int kc, const int MR, const int NR)
{
	__m512 acc[4][4];
	_Pragma("GCC unroll 4") for (int ii = 0; ii < 4; ii++)
		_Pragma("GCC unroll 4") for (int jj = 0; jj < 4; jj++)
			acc[ii][jj] = _mm512_setzero_ps();
	int t = 0;
	for (; t + 32 <= kc; t += 32) {
		if (pf)
			_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++)
				_mm_prefetch((const char *)(pf[jj] + t), _MM_HINT_T1);
		__m512i xv[4];
		_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
			xv[ii] = _mm512_loadu_si512(xr[ii] + t);
		_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++) {
			__m512bh wv = (__m512bh)_mm512_loadu_si512(wr[jj] + t);
			_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
				acc[ii][jj] = _mm512_dpbf16_ps(acc[ii][jj], (__m512bh)xv[ii], wv);
		}
	}
	if (t < kc) { /* masked: x = w = +0.0 past the block */
		__mmask32 mk = (__mmask32)((1ull << (kc - t)) - 1);
		__m512i xv[4];
		_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
			xv[ii] = _mm512_maskz_loadu_epi16(mk, xr[ii] + t);
		_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++) {
			__m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mk, wr[jj] + t);
			_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
				acc[ii][jj] = _mm512_dpbf16_ps(acc[ii][jj], (__m512bh)xv[ii], wv);
		}
	}
	__m512 a[16];
	_Pragma("GCC unroll 4") for (int ii = 0; ii < 4; ii++)
		_Pragma("GCC unroll 4") for (int jj = 0; jj < 4; jj++)
			a[ii + 4 * jj] = acc[ii][jj];
	return gs_tree16x16(a);
}

/* y[ii][0..nr) (+)= lanes 4ii .. 4ii+nr of s, for ii < mr; y rows n apart */
GS_INLINE void gs_tile_store(float *y, size_t n, __m512 s, int mr, int nr, int accumulate)
{
	_Alignas(64) float tmp[16];
	_mm512_store_ps(tmp, s);
	__mmask8 mk = (__mmask8)((1u << nr) - 1);
	for (int ii = 0; ii < mr; ii++) {
		__m128 v = _mm_load_ps(tmp + 4 * ii);
		float *yp = y + (size_t)ii * n;
		if (accumulate)
			v = _mm_add_ps(_mm_maskz_loadu_ps(mk, yp), v);
		_mm_mask_storeu_ps(yp, mk, v);
	}
}

/* ---- decode and small batches: each weight row streamed from memory once ------------------- */

#define GS_BF_R 4 /* weight rows per tile */
#define GS_BF_D 4 /* prefetch distance, in tiles (into L2) */

/* Weight rows j0..j1, GS_BF_R at a time, streamed once (prefetched GS_BF_D tiles ahead) and
 * dotted with every group of MT x rows while in L1; rows past a group's last repeat it
 * (computed, not stored). */
GS_INLINE void gs_bf_rows_range(const struct gs_mm_args *a, int j0, int j1, const int MT)
{
	const int m = a->m, n = a->n, k = a->k;
	const uint16_t *w = a->w;
	for (int j = j0; j < j1; j += GS_BF_R) {
		int nr = j1 - j < GS_BF_R ? j1 - j : GS_BF_R;
		const uint16_t *wr0[GS_BF_R], *pf0[GS_BF_R];
		for (int r = 0; r < GS_BF_R; r++) {
			int jr = j + (r < nr ? r : nr - 1);
			int jp = j + GS_BF_D * GS_BF_R + r;
			wr0[r] = w + (size_t)jr * k;
			pf0[r] = w + (size_t)(jp < n ? jp : n - 1) * k;
		}
		for (int i = 0; i < m; i += MT) {
			int mr = m - i < MT ? m - i : MT;
			__m512 s = _mm512_setzero_ps();
			for (int k0 = 0; k0 < k; k0 += GS_MM_BF_KB) {
				int kc = k - k0 < GS_MM_BF_KB ? k - k0 : GS_MM_BF_KB;
				const uint16_t *xr[4], *wr[GS_BF_R], *pf[GS_BF_R];
				for (int ii = 0; ii < 4; ii++)
					xr[ii] = a->xb + (size_t)(i + (ii < mr ? ii : mr - 1)) * k + k0;
				for (int r = 0; r < GS_BF_R; r++) {
					wr[r] = wr0[r] + k0;
					pf[r] = pf0[r] + k0;
				}
				__m512 t = gs_bf_tile(xr, wr, i == 0 ? pf : NULL, kc, MT, GS_BF_R);
				s = k0 == 0 ? t : _mm512_add_ps(s, t);
			}
			gs_tile_store(a->y + (size_t)i * n + j, (size_t)n, s, mr, nr, 0);
		}
	}
}

#define GS_BF_STREAM_MAX_M 32
#define GS_BF_STREAM_MAX_X (256 << 10) /* bytes of bf16 x swept per weight rows: in L2 */

/* ---- prefill GEMM: 4×4 tiles straight from the bf16 weights -------------------------------
 * No packing: W is already in the format vdpbf16ps takes. Chunks of GS_BF_NC weight rows; in
 * each, k blocks in order (as the canonical order adds them); in each block, panels of GS_BF_NP
 * rows (64 KiB of bf16 at the full block: L2) swept by every group of 4 x rows, the first sweep
 * prefetching the next panel. */
#define GS_BF_NP 16
#define GS_BF_NC 256
#define GS_BF_MB 128 /* x rows per sweep: x block and y chunk stay in L2 (m = 512 thrashed it) */

GS_INLINE void gs_bf_gemm_range(const struct gs_mm_args *a, int j0, int j1)
{
	const int m = a->m, n = a->n, k = a->k;
	const uint16_t *w = a->w;
	for (int jc = j0; jc < j1; jc += GS_BF_NC) {
		int jc1 = j1 - jc < GS_BF_NC ? j1 : jc + GS_BF_NC;
		for (int i0 = 0; i0 < m; i0 += GS_BF_MB) {
		int i1 = m - i0 < GS_BF_MB ? m : i0 + GS_BF_MB;
		for (int k0 = 0; k0 < k; k0 += GS_MM_BF_KB) {
			int kc = k - k0 < GS_MM_BF_KB ? k - k0 : GS_MM_BF_KB;
			for (int jp = jc; jp < jc1; jp += GS_BF_NP) {
				int np = jc1 - jp < GS_BF_NP ? jc1 - jp : GS_BF_NP;
				/* the next panel: next in this block, else the chunk's first in the next
				 * block, else the next chunk's first (clamped to the last row) */
				int pj = jp + GS_BF_NP, pk0 = k0;
				if (pj >= jc1) {
					pj = jc, pk0 = k0 + GS_MM_BF_KB;
					if (pk0 >= k)
						pj = jc1, pk0 = 0;
				}
				for (int i = i0; i < i1; i += 4) {
					int mr = i1 - i < 4 ? i1 - i : 4;
					const uint16_t *xr[4];
					for (int ii = 0; ii < 4; ii++)
						xr[ii] = a->xb + (size_t)(i + (ii < mr ? ii : mr - 1)) * k + k0;
					for (int r = 0; r < np; r += 4) {
						int nr = np - r < 4 ? np - r : 4;
						const uint16_t *wr[4], *pf[4];
						for (int jj = 0; jj < 4; jj++) {
							int row = jp + r + (jj < nr ? jj : nr - 1);
							int prow = pj + r + jj < n ? pj + r + jj : n - 1;
							wr[jj] = w + (size_t)row * k + k0;
							pf[jj] = w + (size_t)prow * k + pk0;
						}
						/* the prefetch reads up to kc elements of the next block's rows:
						 * in bounds, as W has k columns and pk0 + kc <= k or pk0 = 0 */
						int pkc = k - pk0 < kc ? k - pk0 : kc;
						__m512 s = gs_bf_tile(xr, wr, i == i0 && pkc == kc ? pf : NULL, kc, 4, 4);
						gs_tile_store(a->y + (size_t)i * n + jp + r, (size_t)n, s, mr, nr, k0 != 0);
					}
				}
			}
		}
		}
	}
}

void gs_mm_bf_range_avx512bf16(const struct gs_mm_args *a, int j0, int j1)
{
	if (a->k == 0) { /* empty sums: +0.0 */
		for (int i = 0; i < a->m; i++)
			for (int j = j0; j < j1; j++)
				a->y[(size_t)i * a->n + j] = 0.0f;
		return;
	}
	switch (a->m) {
	case 1: gs_bf_rows_range(a, j0, j1, 1); return;
	case 2: gs_bf_rows_range(a, j0, j1, 2); return;
	case 3: gs_bf_rows_range(a, j0, j1, 3); return;
	case 4: gs_bf_rows_range(a, j0, j1, 4); return;
	default: break;
	}
	if (a->m <= GS_BF_STREAM_MAX_M && (size_t)a->m * a->k * 2 <= GS_BF_STREAM_MAX_X)
		gs_bf_rows_range(a, j0, j1, 4);
	else
		gs_bf_gemm_range(a, j0, j1);
}

/* ---- sysbench: the dot-product peak -------------------------------------------------------- */

float gs_dpbf16_loop_avx512bf16(long iters, double *flops)
{
	/* 12 independent chains, as the fp32 FMA loop (vdpbf16ps latency 6 on Zen 4) */
	__m512 a0 = _mm512_set1_ps(1.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
	__m512 a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
	__m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3380);
	for (long it = 0; it < iters; it++) {
		__asm__("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
		__asm__("" : "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
		a0 = _mm512_dpbf16_ps(a0, b, c); a1 = _mm512_dpbf16_ps(a1, b, c);
		a2 = _mm512_dpbf16_ps(a2, b, c); a3 = _mm512_dpbf16_ps(a3, b, c);
		a4 = _mm512_dpbf16_ps(a4, b, c); a5 = _mm512_dpbf16_ps(a5, b, c);
		a6 = _mm512_dpbf16_ps(a6, b, c); a7 = _mm512_dpbf16_ps(a7, b, c);
		a8 = _mm512_dpbf16_ps(a8, b, c); a9 = _mm512_dpbf16_ps(a9, b, c);
		a10 = _mm512_dpbf16_ps(a10, b, c); a11 = _mm512_dpbf16_ps(a11, b, c);
	}
	*flops = (double)iters * 12 * 32 * 2; /* 32 multiply-adds per instruction */
	__m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
				 _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
	s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
	return _mm512_reduce_add_ps(s);
}

#endif /* __x86_64__ */
