/* The bf16 mode's matmul: bf16 x (rounded once per call) times bf16 W as stored, with vdpbf16ps
 * (AVX512_BF16): 32 multiply-adds per instruction, twice the fp32 FMA's 16, and no conversion of
 * W at all. Compiled with -mavx512bf16 and only called after the run-time probe (matmul.c).
 * Every path sums in the bf16 canonical order of matmul_impl.h, so an output has the same bits
 * whatever m, its row's place, the thread count or the path (one W row at a time for m <= 4,
 * and for m <= 8 when k is one block; the GEMM above). The speed comes from clean register
 * tiles (4 x rows × 6 W rows of zmm accumulators, nothing spilled), 64-byte aligned bf16 x
 * (matmul.c), W prefetched a line per dot step (a panel or 8 rows ahead), and
 * threads taking column ranges from a shared counter (matmul.c). */
#include "matmul_impl.h"

#if !defined(__x86_64__)
/* Other architectures: never selected (gs_cpu_bf16_missing() names the feature there). */
void gs_mm_bf_range_avx512bf16(const struct gs_mm_args *a, int j0, int j1, int jn) { (void)a, (void)j0, (void)j1, (void)jn; }
void gs_round_bf16_avx512(uint16_t *dst, const float *src, size_t n) { (void)dst, (void)src, (void)n; }
float gs_dpbf16_loop_avx512bf16(long iters, double *flops) { (void)iters; *flops = 0; return 0.0f; }
#else
#include <immintrin.h>
#include <stdint.h>

#define GS_INLINE static inline __attribute__((always_inline))
#include "matmul_tree_avx512.h"

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

/* Tree sums of x rows x0..x3 · W rows w0..w5 over kc bf16 elements (one block): lane 4ii + jj of
 * *s4 is output [ii][jj] (jj < 4), lane 4ii + jj of *s2 output [ii][4 + jj] (jj < 2, NR = 6 only);
 * for NR = 1, raw[ii] is x row ii's accumulator itself (no tree).
 * Only the first MR x rows and NR W rows are computed (the other outputs are 0). Accumulator
 * [ii][jj] is its own chain, so MR, NR and the other rows never change its bits. Each step
 * also prefetches (T0: into L1 and L2; T1, into L2 only, ran m = 16 at 0.83-1.02x) the line
 * at its offset of npf rows pf, pf + pstride, ... (weights streamed next), so they come in
 * evenly while the tile computes. Plain pointers
 * and one index, nothing else live in the loop: gcc keeps it all in registers (24 accumulators,
 * 4 x vectors, 1 W vector). */
GS_INLINE void gs_bf_tile(const uint16_t *x0, const uint16_t *x1, const uint16_t *x2, const uint16_t *x3,
			  const uint16_t *w0, const uint16_t *w1, const uint16_t *w2, const uint16_t *w3,
			  const uint16_t *w4, const uint16_t *w5, int kc, const int MR, const int NR, __m512 *s4,
			  __m512 *s2, __m512 *raw, const uint16_t *pf, int npf, size_t pstride)
{
	const __m512 z = _mm512_setzero_ps();
	__m512 c0[6] = { z, z, z, z, z, z }, c1[6] = { z, z, z, z, z, z }, c2[6] = { z, z, z, z, z, z },
	       c3[6] = { z, z, z, z, z, z };
	const uint16_t *wr[6] = { w0, w1, w2, w3, w4, w5 };
#define GS_BF_STEP(LD)                                                                                   \
	do {                                                                                             \
		__m512bh a0 = (__m512bh)LD(x0), a1 = a0, a2 = a0, a3 = a0;                              \
		if (MR > 1)                                                                              \
			a1 = (__m512bh)LD(x1);                                                           \
		if (MR > 2)                                                                              \
			a2 = (__m512bh)LD(x2);                                                           \
		if (MR > 3)                                                                              \
			a3 = (__m512bh)LD(x3);                                                           \
		for (int q = 0; q < npf; q++)                                                            \
			_mm_prefetch((const char *)(pf + (size_t)q * pstride + t), _MM_HINT_T0);         \
		_Pragma("GCC unroll 6") for (int jj = 0; jj < NR; jj++) {                                \
			__m512bh b = (__m512bh)LD(wr[jj]);                                               \
			c0[jj] = _mm512_dpbf16_ps(c0[jj], a0, b);                                        \
			if (MR > 1)                                                                      \
				c1[jj] = _mm512_dpbf16_ps(c1[jj], a1, b);                                \
			if (MR > 2)                                                                      \
				c2[jj] = _mm512_dpbf16_ps(c2[jj], a2, b);                                \
			if (MR > 3)                                                                      \
				c3[jj] = _mm512_dpbf16_ps(c3[jj], a3, b);                                \
		}                                                                                        \
	} while (0)
	int t = 0;
#define GS_BF_LD(p) _mm512_loadu_si512((p) + t)
	for (; t + 32 <= kc; t += 32)
		GS_BF_STEP(GS_BF_LD);
#undef GS_BF_LD
	if (t < kc) { /* masked: x = w = +0.0 past the block */
		__mmask32 mk = (__mmask32)((1ull << (kc - t)) - 1);
#define GS_BF_LD(p) _mm512_maskz_loadu_epi16(mk, (p) + t)
		GS_BF_STEP(GS_BF_LD);
#undef GS_BF_LD
	}
#undef GS_BF_STEP
	if (NR == 1) { /* one W row: the MR accumulators themselves, for gs_tree1 */
		raw[0] = c0[0], raw[1] = c1[0], raw[2] = c2[0], raw[3] = c3[0];
		return;
	}
	__m512 a[16] = { c0[0], c1[0], c2[0], c3[0], c0[1], c1[1], c2[1], c3[1],
			 c0[2], c1[2], c2[2], c3[2], c0[3], c1[3], c2[3], c3[3] };
	*s4 = gs_tree16x16(a);
	if (NR > 4) {
		/* columns 4, 5 twice: the second half of the tree repeats the first (gcc merges it) */
		__m512 e[16] = { c0[4], c1[4], c2[4], c3[4], c0[5], c1[5], c2[5], c3[5],
				 c0[4], c1[4], c2[4], c3[4], c0[5], c1[5], c2[5], c3[5] };
		*s2 = gs_tree16x16(e);
	}
}

/* y[ii][0..nr) (+)= lanes 4ii .. 4ii+nr of s, for ii < mr; y rows n apart. Whole rows of 4
 * (the common case) without masks. */
GS_INLINE void gs_tile_store(float *y, size_t n, __m512 s, int mr, int nr, int accumulate)
{
	_Alignas(64) float tmp[16];
	_mm512_store_ps(tmp, s);
	if (nr == 4) {
		for (int ii = 0; ii < mr; ii++) {
			__m128 v = _mm_load_ps(tmp + 4 * ii);
			float *yp = y + (size_t)ii * n;
			if (accumulate)
				v = _mm_add_ps(_mm_loadu_ps(yp), v);
			_mm_storeu_ps(yp, v);
		}
		return;
	}
	__mmask8 mk = (__mmask8)((1u << nr) - 1);
	for (int ii = 0; ii < mr; ii++) {
		__m128 v = _mm_load_ps(tmp + 4 * ii);
		float *yp = y + (size_t)ii * n;
		if (accumulate)
			v = _mm_add_ps(_mm_maskz_loadu_ps(mk, yp), v);
		_mm_mask_storeu_ps(yp, mk, v);
	}
}

/* ---- decode and small batches: each weight row streamed from memory once -------------------
 * One weight row at a time, dotted with every group of MT x rows while in L1: each thread then
 * reads its weights as one sequential stream, which this memory system serves at 1.15-1.2x the
 * rate of four interleaved rows (the 4-row tiles this replaced; measured interleaved in one
 * process). The dependent vdpbf16ps chain of a block is short against its load (up to 40 steps
 * for 2.5 KiB of W), and the chains of consecutive blocks and rows are independent, so the core
 * overlaps them. */

#define GS_BF_D 8 /* prefetch distance, in weight rows */
#define GS_BF_ROWS8_MAX 8

/* One W row over one block with 8 x rows x0, x0 + xs, ... (rows past mr repeat the last): raw[ii]
 * is x row ii's accumulator; one prefetch per step of pf (when not NULL) at the step's offset.
 * Batches of 5-8 rows with k in one block (gate/up, q/k/v, o, the LM head of the 1B shape) stream
 * each weight row once through it: 1.02-1.33x the GEMM (median ~1.15x, ab_kernel); with k in
 * several blocks the 8 x rows of every block no longer stay in L1 and the GEMM is 2x faster. */
GS_INLINE void gs_bf_row8(const uint16_t *x0, size_t xs, int mr, const uint16_t *wr, int kc, __m512 raw[8],
			  const uint16_t *pf)
{
	const uint16_t *xr[8];
	for (int ii = 0; ii < 8; ii++)
		xr[ii] = x0 + (size_t)(ii < mr ? ii : mr - 1) * xs;
	__m512 c[8];
	for (int ii = 0; ii < 8; ii++)
		c[ii] = _mm512_setzero_ps();
	int t = 0;
	for (; t + 32 <= kc; t += 32) {
		if (pf)
			_mm_prefetch((const char *)(pf + t), _MM_HINT_T0);
		__m512bh b = (__m512bh)_mm512_loadu_si512(wr + t);
		_Pragma("GCC unroll 8") for (int ii = 0; ii < 8; ii++)
			c[ii] = _mm512_dpbf16_ps(c[ii], (__m512bh)_mm512_loadu_si512(xr[ii] + t), b);
	}
	if (t < kc) { /* masked: x = w = +0.0 past the block */
		__mmask32 mk = (__mmask32)((1ull << (kc - t)) - 1);
		if (pf)
			_mm_prefetch((const char *)(pf + t), _MM_HINT_T0);
		__m512bh b = (__m512bh)_mm512_maskz_loadu_epi16(mk, wr + t);
		_Pragma("GCC unroll 8") for (int ii = 0; ii < 8; ii++)
			c[ii] = _mm512_dpbf16_ps(c[ii], (__m512bh)_mm512_maskz_loadu_epi16(mk, xr[ii] + t), b);
	}
	for (int ii = 0; ii < 8; ii++)
		raw[ii] = c[ii];
}

/* Weight rows j0..j1, one at a time. The row GS_BF_D ahead (past j1: as far into the next
 * range, from jn) is prefetched during the first group's blocks, one line per dot step at the
 * offset the step reads (gs_bf_tile's pf): spread so, the rows ran 1.08-1.17x faster than with
 * a block's 16 prefetches issued together before its steps (tests/bench/ab_kernel.sh, m = 1
 * and 4, the 1B shape's matrices and LM head). */
GS_INLINE void gs_bf_rows_range(const struct gs_mm_args *a, int j0, int j1, int jn, const int MT)
{
	const int m = a->m, n = a->n, k = a->k, kb = gs_mm_bf_kb(k);
	const uint16_t *w = a->w;
	for (int j = j0; j < j1; j++) {
		const uint16_t *wr = w + (size_t)j * k;
		int jp = j + GS_BF_D, npf = 1; /* the row to prefetch */
		if (jp >= j1 && (jn < 0 || (jp = jn + (jp - j1)) >= n))
			npf = 0;
		for (int i = 0; i < m; i += MT) {
			int mr = m - i < MT ? m - i : MT;
			float yv[8] = { 0 };
			for (int k0 = 0; k0 < k; k0 += kb) {
				int kc = k - k0 < kb ? k - k0 : kb;
				const uint16_t *x0 = gs_xb_at(a->xb, m, k0, kc, i);
				__m512 raw[8];
				if (MT == 8) {
					gs_bf_row8(x0, (size_t)kc, mr, wr + k0, kc, raw,
						   npf && i == 0 ? w + (size_t)jp * k + k0 : NULL);
				} else {
					const uint16_t *x1 = x0 + (mr > 1 ? (size_t)kc : 0);
					const uint16_t *x2 = x0 + (size_t)(mr > 2 ? 2 : mr - 1) * kc;
					const uint16_t *x3 = x0 + (size_t)(mr > 3 ? 3 : mr - 1) * kc;
					gs_bf_tile(x0, x1, x2, x3, wr + k0, NULL, NULL, NULL, NULL, NULL, kc, MT, 1, NULL,
						   NULL, raw, w + (size_t)(npf ? jp : 0) * k + k0, npf && i == 0, 0);
				}
				for (int ii = 0; ii < MT; ii++) {
					float sb = gs_tree1(raw[ii]);
					yv[ii] = k0 == 0 ? sb : yv[ii] + sb;
				}
			}
			for (int ii = 0; ii < mr; ii++)
				a->y[(size_t)(i + ii) * n + j] = yv[ii];
		}
	}
}

/* ---- batches and prefill: 4×6 tiles straight from the bf16 weights ------------------------
 * No packing: W is already in the format vdpbf16ps takes. Chunks of GS_BF_NC weight rows; in
 * each, blocks of GS_BF_MB x rows; in each, k blocks in order (as the canonical order adds
 * them); in each, panels of GS_BF_NP weight rows (30 KiB of bf16 at a 1280 block, with the 4 x
 * rows' 10 KiB: L1) swept by every group of 4 x rows (2 tiles of 6 W rows each; panels of 24
 * rows ran 0.87-0.93x as fast). Each panel's tiles prefetch the panel GS_BF_PD ahead in this
 * sweep order, one row per tile (rows spread over the first 12 tiles, or several a tile when
 * there are fewer), a line per dot step, so the weights stream in evenly while the tiles
 * compute (a row's lines all issued before its tile's steps ran m = 16 at 0.73-0.79x). */
#define GS_BF_NR 6
#define GS_BF_NP (2 * GS_BF_NR)
#define GS_BF_NC (8 * GS_BF_NR)
#define GS_BF_MB 128 /* x rows per sweep: x block and y chunk stay in L2 (m = 512 thrashed it) */
#define GS_BF_PD 1   /* prefetch distance, in panels (2 and 4: 0.9-0.97x at m = 16) */

/* The panel d steps after (jp, k0) of chunk [jc, jc1) in this thread's sweep order: the chunk's
 * panels, k block by k block; after its last, the chunk again when more x blocks follow
 * (again), else the next chunk of the range [.., j1), else the first chunk of the next range
 * (from jn, when jn >= 0). 0 when there is none; else *pe is the end of the chunk holding it. */
GS_INLINE int gs_bf_panel_next(int d, int again, int jc, int jc1, int j1, int jn, int n, int k, int kb, int *jp,
			       int *k0, int *pe)
{
	for (; d > 0; d--) {
		*jp += GS_BF_NP;
		if (*jp < jc1)
			continue;
		*jp = jc, *k0 += kb;
		if (*k0 < k)
			continue;
		*k0 = 0;
		if (again)
			continue;
		if (jc1 < j1)
			jc = jc1, jc1 = j1 - jc1 < GS_BF_NC ? j1 : jc1 + GS_BF_NC;
		else if (jn >= 0)
			jc = jn, jc1 = n - jn < GS_BF_NC ? n : jn + GS_BF_NC, j1 = jc1, jn = -1;
		else
			return 0;
		*jp = jc;
	}
	*pe = jc1;
	return 1;
}

GS_INLINE void gs_bf_gemm_range(const struct gs_mm_args *a, int j0, int j1, int jn)
{
	const int m = a->m, n = a->n, k = a->k, kb = gs_mm_bf_kb(k);
	const uint16_t *w = a->w;
	for (int jc = j0; jc < j1; jc += GS_BF_NC) {
		int jc1 = j1 - jc < GS_BF_NC ? j1 : jc + GS_BF_NC;
		for (int i0 = 0; i0 < m; i0 += GS_BF_MB) {
		int i1 = m - i0 < GS_BF_MB ? m : i0 + GS_BF_MB;
		int U = (i1 - i0 + 3) / 4 * (GS_BF_NP / GS_BF_NR); /* tiles per full panel */
		for (int k0 = 0; k0 < k; k0 += kb) {
			int kc = k - k0 < kb ? k - k0 : kb;
			for (int jp = jc; jp < jc1; jp += GS_BF_NP) {
				int np = jc1 - jp < GS_BF_NP ? jc1 - jp : GS_BF_NP;
				int pj = jp, pk0 = k0, pe = 0, pnp = 0; /* the panel to prefetch: rows [pj, pj + pnp) */
				if (gs_bf_panel_next(GS_BF_PD, i1 < m, jc, jc1, j1, jn, n, k, kb, &pj, &pk0, &pe))
					pnp = pe - pj < GS_BF_NP ? pe - pj : GS_BF_NP;
				for (int i = i0, u = 0; i < i1; i += 4) {
					int mr = i1 - i < 4 ? i1 - i : 4;
					const uint16_t *x0 = gs_xb_at(a->xb, m, k0, kc, i);
					const uint16_t *x1 = x0 + (mr > 1 ? (size_t)kc : 0);
					const uint16_t *x2 = x0 + (size_t)(mr > 2 ? 2 : mr - 1) * kc;
					const uint16_t *x3 = x0 + (size_t)(mr > 3 ? 3 : mr - 1) * kc;
					for (int r = 0; r < np; r += GS_BF_NR, u++) {
						int nr = np - r < GS_BF_NR ? np - r : GS_BF_NR;
						const uint16_t *wr[GS_BF_NR];
						for (int jj = 0; jj < GS_BF_NR; jj++)
							wr[jj] = w + (size_t)(jp + r + (jj < nr ? jj : nr - 1)) * k + k0;
						/* this tile prefetches next-panel rows u, u + U, ... */
						int npf = u < pnp ? (pnp - 1 - u) / U + 1 : 0;
						__m512 s4, s2;
						gs_bf_tile(x0, x1, x2, x3, wr[0], wr[1], wr[2], wr[3], wr[4], wr[5], kc, 4,
							   GS_BF_NR, &s4, &s2, NULL, w + (size_t)(npf ? pj + u : 0) * k + pk0, npf,
							   (size_t)U * k);
						float *yp = a->y + (size_t)i * n + jp + r;
						gs_tile_store(yp, (size_t)n, s4, mr, nr < 4 ? nr : 4, k0 != 0);
						if (nr > 4)
							gs_tile_store(yp + 4, (size_t)n, s2, mr, nr - 4, k0 != 0);
					}
				}
			}
		}
		}
	}
}

void gs_mm_bf_range_avx512bf16(const struct gs_mm_args *a, int j0, int j1, int jn)
{
	if (a->k == 0) { /* empty sums: +0.0 */
		for (int i = 0; i < a->m; i++)
			for (int j = j0; j < j1; j++)
				a->y[(size_t)i * a->n + j] = 0.0f;
		return;
	}
	switch (a->m) {
	case 1: gs_bf_rows_range(a, j0, j1, jn, 1); return;
	case 2: gs_bf_rows_range(a, j0, j1, jn, 2); return;
	case 3: gs_bf_rows_range(a, j0, j1, jn, 3); return;
	case 4: gs_bf_rows_range(a, j0, j1, jn, 4); return;
	default:
		if (a->m <= GS_BF_ROWS8_MAX && a->k <= GS_MM_BF_KMAX) {
			gs_bf_rows_range(a, j0, j1, jn, 8);
			return;
		}
		break;
	}
	gs_bf_gemm_range(a, j0, j1, jn);
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
