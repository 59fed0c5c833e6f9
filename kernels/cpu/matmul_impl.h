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

/* Column ranges handed to threads are multiples of this (one GEMM panel; 4 cache lines of y). */
#define GS_MM_COL_ALIGN 32

struct gs_mm_args {
	float       *y;  /* [m × n] */
	const float *x;  /* [m × k] */
	const void  *w;  /* [n × k], element type wt */
	int          m, n, k;
	enum gs_mm_wtype wt;
};

/* y[:, j0:j1] = x · W[j0:j1, :]ᵀ. Each ISA file provides one. */
void gs_mm_range_scalar(const struct gs_mm_args *a, int j0, int j1);
void gs_mm_range_avx2(const struct gs_mm_args *a, int j0, int j1);
void gs_mm_range_avx512(const struct gs_mm_args *a, int j0, int j1);

/* sysbench helpers: sum of n floats (n a multiple of 64, p 64-byte aligned), and an FMA loop of
 * `iters` iterations returning a value that depends on every result (so it is not elided)
 * and setting *flops to the floating-point operations done. */
float gs_sum_avx512(const float *p, size_t n);
float gs_sum_avx2(const float *p, size_t n);
float gs_fma_loop_avx512(long iters, double *flops);
float gs_fma_loop_avx2(long iters, double *flops);

#endif
