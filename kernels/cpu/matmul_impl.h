/* Internal to kernels/cpu: the per-ISA halves of gs_cpu_matmul_* and of the system benchmarks.
 * matmul.c splits the output columns over threads and calls one range function per thread. */
#ifndef GS_CPU_MATMUL_IMPL_H
#define GS_CPU_MATMUL_IMPL_H

#include <stddef.h>
#include <stdint.h>

enum gs_mm_wtype { GS_MM_W_F32, GS_MM_W_BF16, GS_MM_W_F16, GS_MM_W_COUNT };

/* Up to this many rows of x, a weight row is streamed once and dotted with every x row
 * (decode); above it, tiles of W are converted to fp32 once and reused (prefill GEMM). */
#define GS_MM_DECODE_MAX_M 4

/* ---- the canonical reduction order (batch invariance) -----------------------------------
 * Continuous batching needs y[i][j] to be the same float bits whatever the batch around row i:
 * every path (decode, GEMM, any tile or tail, any thread split, and all three ISA files) sums
 * each output in this one order, fixed by k alone:
 *   - k is cut into blocks of GS_MM_KB (the last one shorter);
 *   - within a block starting at k0, GS_MM_LANES fp32 lanes start at +0.0 and element k0 + t
 *     goes to lane t % 16, in increasing t: lane = fma(x, w, lane) (single rounding); a
 *     partial last group of 16 is padded with x = w = +0.0, i.e. fma(0, 0, lane);
 *   - the lanes are reduced by one fixed tree: v[l] = a[l] + a[l + 8] (l < 8), then
 *     v[l] + v[l + 4], v[l] + v[l + 2], v[0] + v[1]  (gs_mm_tree16 in matmul.c);
 *   - y = s_0, then y = y + s_b for the blocks in order (k = 0: y = +0.0).
 * The AVX2 path keeps the 16 lanes in two ymm, so all paths agree bit for bit. */
#define GS_MM_LANES 16
#define GS_MM_KB 256

/* Column ranges handed to threads are multiples of this (one GEMM panel; 4 cache lines of y). */
#define GS_MM_COL_ALIGN 32

struct gs_mm_args {
	float       *y;  /* [m × n] */
	const float *x;  /* [m × k] */
	const uint16_t *xb; /* bf16 mode: x rounded to bf16 (round to nearest even), k-block major:
			     * see gs_xb_at */
	const void  *w;  /* [n × k], element type wt */
	int          m, n, k;
	enum gs_mm_wtype wt;
};

/* y[:, j0:j1] = x · W[j0:j1, :]ᵀ. Each ISA file provides one. */
void gs_mm_range_scalar(const struct gs_mm_args *a, int j0, int j1);
void gs_mm_range_avx2(const struct gs_mm_args *a, int j0, int j1);
void gs_mm_range_avx512(const struct gs_mm_args *a, int j0, int j1);

/* ---- the bf16 mode's canonical order (gs_cpu_matmul_bf16dp, AVX512_BF16) -------------------
 * x is first rounded to bf16 (round to nearest even, NaN kept, as torch does); W is bf16 as
 * stored. Each output is then summed in one order fixed by k alone, the one vdpbf16ps gives:
 *   - k is cut into nb = ceil(k / GS_MM_BF_KMAX) blocks of kb = 32 · ceil(k / (32 · nb))
 *     elements (the last one shorter): gs_mm_bf_kb(k);
 *   - within a block starting at k0, 16 fp32 lanes start at +0.0 and the element pair p
 *     (elements k0 + 2p, k0 + 2p + 1) goes to lane p % 16, in increasing p, odd element first:
 *       lane = ftz(fma(x[2p+1], w[2p+1], lane)); lane = ftz(fma(x[2p], w[2p], lane))
 *     where bf16 subnormal inputs read as 0 and ftz flushes a subnormal result to a zero of its
 *     sign (each product is exact; checked bit for bit against vdpbf16ps in test_matmul_bf16);
 *     elements past the block's end are x = w = +0.0;
 *   - the 16 lanes are reduced by the same tree as above, and y = s_0 + s_1 + ... in order.
 * Long, even blocks: a lane tree costs about as much as a block's 16 first dot steps, so at
 * 512-element blocks the trees of the 1B shape's k = 1152 (512 + 512 + 128) took ~1/5 of the
 * GEMM. With these blocks (and 12-row panels) the prefill GEMMs of the 1B shape ran 1.09-1.24x
 * faster (tests/bench/ab_kernel.sh). A GEMM tile's 4 x rows and its L1 panel of W rows still
 * fit L1 at 1280. */
#define GS_MM_BF_KMAX 1280
static inline int gs_mm_bf_kb(int k)
{
	int nb = k > 0 ? (k + GS_MM_BF_KMAX - 1) / GS_MM_BF_KMAX : 1;
	return (k + 32 * nb - 1) / (32 * nb) * 32;
}

/* The bf16 x is laid out block by block of k: the block at k0 (kc elements, the last one
 * shorter) holds the m rows' pieces one after another, from xb + m·k0, so a GEMM's sweep over
 * the rows of one block reads one contiguous stretch. For m = 1 this is the plain row. Where
 * row i's piece of block k0 starts: */
static inline const uint16_t *gs_xb_at(const uint16_t *xb, int m, int k0, int kc, int i)
{
	return xb + (size_t)m * (size_t)k0 + (size_t)i * (size_t)kc;
}

/* y[:, j0:j1] = xb · W[j0:j1, :]ᵀ for bf16 W (a->wt == GS_MM_W_BF16), in the order above.
 * jn: the first column of the range this thread computes next (its weights are prefetched
 * while this range ends), or -1 when none. */
void gs_mm_bf_range_avx512bf16(const struct gs_mm_args *a, int j0, int j1, int jn);
/* dst[i] = bf16(src[i]), round to nearest even (gs_f32_to_bf16), n any. */
void gs_round_bf16_avx512(uint16_t *dst, const float *src, size_t n);

/* sysbench helpers: sum of n floats (n a multiple of 64, p 64-byte aligned), and an FMA loop of
 * `iters` iterations returning a value that depends on every result (so it is not elided)
 * and setting *flops to the floating-point operations done. */
float gs_sum_avx512(const float *p, size_t n);
float gs_sum_avx2(const float *p, size_t n);
float gs_fma_loop_avx512(long iters, double *flops);
float gs_fma_loop_avx2(long iters, double *flops);
float gs_dpbf16_loop_avx512bf16(long iters, double *flops);

#endif
