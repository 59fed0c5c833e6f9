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
#include "matmul_tree_avx512.h"
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

GS_INLINE size_t gs_wsize(enum gs_mm_wtype wt)
{
	return wt == GS_MM_W_F32 ? 4 : 2;
}

/* ---- one tile: MR rows of x × NR rows of W over one k block, in the canonical order --------
 * (matmul_impl.h): 16 lanes from +0.0, element t of the block into lane t % 16, masked zeros
 * past kc, then the fixed lane tree. Accumulator [ii][jj] is an independent chain, so the bits of
 * an output do not depend on MR, NR, or on what the other accumulators hold. */


/* Tree sums of x rows xr[0..MR) · W rows wr[0..NR) over kc elements (one block): lane 4ii + jj
 * of the result is output [ii][jj] (other lanes 0). wr rows have element type wt (GS_MM_W_F32 for
 * a packed panel). pf (if not NULL): NR rows to prefetch into L2 at the same offsets. NR = 1:
 * raw[ii] gets x row ii's accumulator itself (no tree; the result is 0). */
GS_INLINE __m512 gs_tile(const float *const *xr, const void *const *wr, const void *const *pf,
			 int kc, const int MR, const int NR, enum gs_mm_wtype wt, __m512 *raw)
{
	const size_t es = gs_wsize(wt);
	__m512 acc[4][4]; /* [ii][jj]; fixed size: MR, NR as bounds would make a VLA */
	_Pragma("GCC unroll 4") for (int ii = 0; ii < 4; ii++)
		_Pragma("GCC unroll 4") for (int jj = 0; jj < 4; jj++)
			acc[ii][jj] = _mm512_setzero_ps();
	int t = 0;
	for (; t + 16 <= kc; t += 16) {
		/* one prefetch per 64-byte line: every step for f32, every other for 16-bit */
		if (pf && (es == 4 || (t & 16) == 0))
			_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++)
				_mm_prefetch((const char *)pf[jj] + (size_t)t * es, _MM_HINT_T1);
		__m512 xv[4];
		_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
			xv[ii] = _mm512_loadu_ps(xr[ii] + t);
		_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++) {
			__m512 wv = gs_ld_w(wr[jj], (size_t)t, wt);
			_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
				acc[ii][jj] = _mm512_fmadd_ps(xv[ii], wv, acc[ii][jj]);
		}
	}
	if (t < kc) { /* masked: x = w = +0.0 past kc, as the canonical order pads */
		__mmask16 mk = (__mmask16)((1u << (kc - t)) - 1);
		__m512 xv[4];
		_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
			xv[ii] = _mm512_maskz_loadu_ps(mk, xr[ii] + t);
		_Pragma("GCC unroll 4") for (int jj = 0; jj < NR; jj++) {
			__m512 wv = gs_ld_w_mask(wr[jj], (size_t)t, mk, wt);
			_Pragma("GCC unroll 4") for (int ii = 0; ii < MR; ii++)
				acc[ii][jj] = _mm512_fmadd_ps(xv[ii], wv, acc[ii][jj]);
		}
	}
	if (NR == 1) { /* one W row: the accumulators themselves, for gs_tree1 */
		_Pragma("GCC unroll 4") for (int ii = 0; ii < 4; ii++)
			raw[ii] = acc[ii][0];
		return _mm512_setzero_ps();
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
		if (accumulate) /* y = y + s_b: the block sums in order */
			v = _mm_add_ps(_mm_maskz_loadu_ps(mk, yp), v);
		_mm_mask_storeu_ps(yp, mk, v);
	}
}

/* ---- decode: M ≤ 4 rows of x, R weight rows at a time, each weight row streamed once -------- */

/* Prefetch distance in tiles, into L2 only: T0 or NTA pull the stream through L1 and evict the
 * slice of x. Measured single-thread on Zen 4 (1B shapes, m = 1): ~65-72% of read bandwidth
 * with this (distance 1 to 8 tiles makes no difference), ~35-55% with the hardware prefetcher
 * alone, ~40-55% with T0 or NTA. */
#define GS_DEC_D 2

/* Weight rows j0..j1, R at a time, each streamed from memory once (prefetched GS_DEC_D tiles
 * ahead) and dotted with every group of MT x rows while it is still in L1.
 *   - Decode of one row (m = 1): R = 1. One W row at a time makes each thread's weights one
 *     sequential stream, which the memory system serves faster than 4 interleaved rows
 *     (1.16-1.36x on 1152-wide rows, 0.9-1.07x on 6912-wide ones, alternated matrix by matrix
 *     in one process); a row's block chains are independent, so the core overlaps them, and
 *     its lane tree is gs_tree1.
 *   - Decode of 2 to 4 rows: MT = m, R = 4. With R = 1 the per-output lane trees (8 ops per
 *     16 FMAs of a block) and the x loads made it compute-bound (0.76-0.9x).
 *   - Small serving batches (4 < m ≤ GS_STREAM_MAX_M): MT = 4, R = 4, where converting the rows
 *     once per group costs less than packing a panel whose strided rows stall the loads (m = 8
 *     ran at ~30% of the FMA peak packed), and each x load serves 4 W rows.
 * Rows past the last of a group repeat it (computed, not stored), so one kernel serves every
 * shape. */
GS_INLINE void gs_rows_range(const struct gs_mm_args *a, int j0, int j1, const int MT, const int R,
			     enum gs_mm_wtype wt)
{
	const int m = a->m, n = a->n, k = a->k;
	const size_t es = gs_wsize(wt);
	const char *w = a->w;
	for (int j = j0; j < j1; j += R) {
		int nr = j1 - j < R ? j1 - j : R;
		const char *wr0[4], *pf0[4];
		for (int r = 0; r < R; r++) {
			int jr = j + (r < nr ? r : nr - 1);
			int jp = j + GS_DEC_D * (R == 1 ? 4 : R) + r;
			wr0[r] = w + (size_t)jr * k * es;
			pf0[r] = w + (size_t)(jp < n ? jp : n - 1) * k * es;
		}
		for (int i = 0; i < m; i += MT) {
			int mr = m - i < MT ? m - i : MT;
			__m512 s = _mm512_setzero_ps();
			float yv[4] = { 0 };
			for (int k0 = 0; k0 < k; k0 += GS_MM_KB) {
				int kc = k - k0 < GS_MM_KB ? k - k0 : GS_MM_KB;
				const float *xr[4];
				const void *wr[4], *pf[4];
				for (int ii = 0; ii < 4; ii++)
					xr[ii] = a->x + (size_t)(i + (ii < mr ? ii : mr - 1)) * k + k0;
				for (int r = 0; r < R; r++) {
					wr[r] = wr0[r] + (size_t)k0 * es;
					pf[r] = pf0[r] + (size_t)k0 * es;
				}
				/* the first group brings the rows in and prefetches the next ones */
				__m512 raw[4];
				__m512 t = gs_tile(xr, wr, i == 0 ? pf : NULL, kc, MT, R, wt, raw);
				if (R == 1) {
					for (int ii = 0; ii < MT; ii++) {
						float sb = gs_tree1(raw[ii]);
						yv[ii] = k0 == 0 ? sb : yv[ii] + sb;
					}
				} else {
					s = k0 == 0 ? t : _mm512_add_ps(s, t);
				}
			}
			if (R == 1)
				for (int ii = 0; ii < mr; ii++)
					a->y[(size_t)(i + ii) * n + j] = yv[ii];
			else
				gs_tile_store(a->y + (size_t)i * n + j, (size_t)n, s, mr, nr, 0);
		}
	}
}

#define GS_STREAM_MAX_M 32
#define GS_STREAM_MAX_X (512 << 10) /* bytes of x (m × k fp32) swept per weight rows: in L2 */

static void gs_dec_dispatch(const struct gs_mm_args *a, int j0, int j1, enum gs_mm_wtype wt)
{
	_Static_assert(GS_MM_DECODE_MAX_M == 4, "instantiate gs_rows_range for every M");
	switch (a->m) {
	case 1: gs_rows_range(a, j0, j1, 1, 1, wt); break;
	case 2: gs_rows_range(a, j0, j1, 2, 4, wt); break;
	case 3: gs_rows_range(a, j0, j1, 3, 4, wt); break;
	case 4: gs_rows_range(a, j0, j1, 4, 4, wt); break;
	}
}

/* ---- prefill GEMM: 4×4 dot-product tiles on packed fp32 panels of W -------------------------
 * A panel is GS_NP weight rows × one k block, converted to fp32 once per thread and reused by
 * every group of 4 x rows; each tile holds 16 zmm accumulators along k, so every W vector load
 * serves 4 x rows and every x vector load 4 W rows. */

#define GS_NP 64  /* weight rows per panel: 64 KiB of fp32 (L2); 4 KiB slices of x stay in L1 */
#define GS_NC 256 /* weight rows per chunk (see gs_gemm_range) */

/* Per-thread panel buffer: allocated once per thread (TLS), never per call. */
static _Thread_local _Alignas(64) float gs_panel[GS_NP * GS_MM_KB];

/* gs_panel[r][0..kc) = W[j + r][k0 .. k0+kc) as fp32, r < np. pf_j, pf_k0 (pf_j < 0: none): the
 * next panel to be packed, prefetched into L2 row by row while this one converts. Its rows are
 * k apart, a stride the hardware prefetcher does not follow: without this a batch of 8 rows ran
 * at 30% of the FMA peak, bound by the stalls of the pack. */
GS_INLINE void gs_pack_panel(const struct gs_mm_args *a, int j, int np, int k0, int kc,
			     enum gs_mm_wtype wt, int pf_j, int pf_np, int pf_k0, int pf_kc)
{
	const size_t es = gs_wsize(wt);
	for (int r = 0; r < np; r++) {
		size_t base = (size_t)(j + r) * a->k + k0;
		float *dst = gs_panel + (size_t)r * GS_MM_KB;
		int t = 0;
		if (pf_j >= 0 && r < pf_np) {
			const char *p = (const char *)a->w + ((size_t)(pf_j + r) * a->k + pf_k0) * es;
			for (size_t off = 0; off < (size_t)pf_kc * es; off += 64)
				_mm_prefetch(p + off, _MM_HINT_T1);
		}
		for (; t + 16 <= kc; t += 16)
			_mm512_store_ps(dst + t, gs_ld_w(a->w, base + t, wt));
		if (t < kc)
			_mm512_store_ps(dst + t, gs_ld_w_mask(a->w, base + t, (__mmask16)((1u << (kc - t)) - 1), wt));
	}
}

/* Loop order: chunks of GS_NC weight rows; in each, k blocks in order (as the canonical order
 * adds them to y); in each block, panels of GS_NP rows, converted once and swept by every group of
 * 4 x rows. The x slice of one block (m × 1 KiB) stays in L2 across the chunk's panels, and the
 * chunk's y (m × 1 KiB) is read and written once per block. Measured on Zen 4, m = 512, 1 thread:
 * panel-outer (x re-read from L3 per panel) ~15% slower on k = 6912; 32-row panels ~20% slower;
 * chunks of 512 .. all rows within a few % of 256. */
GS_INLINE void gs_gemm_range(const struct gs_mm_args *a, int j0, int j1, enum gs_mm_wtype wt)
{
	const int m = a->m, n = a->n, k = a->k;
	for (int jc = j0; jc < j1; jc += GS_NC) {
		int jc1 = j1 - jc < GS_NC ? j1 : jc + GS_NC;
		for (int k0 = 0; k0 < k; k0 += GS_MM_KB) {
			int kc = k - k0 < GS_MM_KB ? k - k0 : GS_MM_KB;
			for (int jp = jc; jp < jc1; jp += GS_NP) {
				int np = jc1 - jp < GS_NP ? jc1 - jp : GS_NP;
				/* the panel after this one: next in this block, else the chunk's first
				 * in the next block, else the next chunk's first */
				int pj = jp + GS_NP, pk0 = k0;
				if (pj >= jc1) {
					pj = jc, pk0 = k0 + GS_MM_KB;
					if (pk0 >= k)
						pj = jc1, pk0 = 0;
				}
				int pnp = 0, pkc = 0;
				if (pj < j1) {
					int pend = pj < jc1 ? jc1 : (j1 - pj < GS_NC ? j1 : pj + GS_NC);
					pnp = pend - pj < GS_NP ? pend - pj : GS_NP;
					pkc = k - pk0 < GS_MM_KB ? k - pk0 : GS_MM_KB;
				}
				gs_pack_panel(a, jp, np, k0, kc, wt, pj < j1 ? pj : -1, pnp, pk0, pkc);
				for (int i = 0; i < m; i += 4) {
					int mr = m - i < 4 ? m - i : 4;
					const float *xr[4]; /* rows past mr repeat the last one, not stored */
					for (int ii = 0; ii < 4; ii++)
						xr[ii] = a->x + (size_t)(i + (ii < mr ? ii : mr - 1)) * k + k0;
					for (int r = 0; r < np; r += 4) {
						int nr = np - r < 4 ? np - r : 4;
						const void *wr[4];
						for (int jj = 0; jj < 4; jj++)
							wr[jj] = gs_panel + (size_t)(r + (jj < nr ? jj : nr - 1)) * GS_MM_KB;
						__m512 s = gs_tile(xr, wr, NULL, kc, 4, 4, GS_MM_W_F32, NULL);
						gs_tile_store(a->y + (size_t)i * n + jp + r, (size_t)n, s, mr, nr,
							      k0 != 0);
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
	else if (a->m <= GS_STREAM_MAX_M && (size_t)a->m * a->k * sizeof(float) <= GS_STREAM_MAX_X)
		gs_rows_range(a, j0, j1, 4, 4, wt);
	else
		gs_gemm_range(a, j0, j1, wt);
}

static void gs_range_bf16(const struct gs_mm_args *a, int j0, int j1) { gs_range(a, j0, j1, GS_MM_W_BF16); }
static void gs_range_f16(const struct gs_mm_args *a, int j0, int j1) { gs_range(a, j0, j1, GS_MM_W_F16); }
static void gs_range_f32(const struct gs_mm_args *a, int j0, int j1) { gs_range(a, j0, j1, GS_MM_W_F32); }

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
