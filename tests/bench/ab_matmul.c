/* Two builds of one CPU matmul kernel file, alternated matrix by matrix in one process, so both
 * see the same memory bandwidth: this VM's moves by 2x within seconds, which whole-run
 * benchmarks cannot separate from a 10% change. Built and run by tests/bench/ab_kernel.sh, which
 * compiles the kernel file of two git revisions with their range functions renamed to range_A /
 * range_B. Each call runs one range function per thread over a static half of the columns.
 *   ab_matmul M N K NW ROUNDS   (NW matrices of N × K bf16 weights, each call a different one)
 * Prints the GB/s of weights and GFLOP/s of each, and the B/A speed ratio. */
#include "gs_cpu.h"
#include "gs_util.h"
#include "matmul_impl.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#ifdef AB_BF16 /* matmul_bf16dp.c: bf16 x, a next-range hint */
void range_A(const struct gs_mm_args *a, int j0, int j1, int jn);
void range_B(const struct gs_mm_args *a, int j0, int j1, int jn);
#define CALL(f, a, j0, j1) f(a, j0, j1, -1)
#else /* matmul_avx512.c */
void range_A(const struct gs_mm_args *a, int j0, int j1);
void range_B(const struct gs_mm_args *a, int j0, int j1);
#define CALL(f, a, j0, j1) f(a, j0, j1)
#endif

struct task {
	struct gs_mm_args a;
	int b;
};

static void run(void *ctx, int tid, int nt)
{
	struct task *t = ctx;
	int units = (t->a.n + GS_MM_COL_ALIGN - 1) / GS_MM_COL_ALIGN;
	int j0 = units * tid / nt * GS_MM_COL_ALIGN, j1 = units * (tid + 1) / nt * GS_MM_COL_ALIGN;
	j1 = j1 < t->a.n ? j1 : t->a.n;
	if (j0 >= j1)
		return;
	if (t->b)
		CALL(range_B, &t->a, j0, j1);
	else
		CALL(range_A, &t->a, j0, j1);
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s M N K NW ROUNDS\n", argv[0]);
		return 2;
	}
	int m = atoi(argv[1]), n = atoi(argv[2]), k = atoi(argv[3]), nw = atoi(argv[4]), rounds = atoi(argv[5]);
	if (m < 1 || n < 1 || k < 1 || nw < 2 || rounds < 1) {
		fprintf(stderr, "ab_matmul: M, N, K, ROUNDS >= 1 and NW >= 2\n");
		return 2;
	}
	struct gs_threadpool *tp = gs_threadpool_create(0);
	size_t wb = (size_t)n * k * 2, huge = (size_t)2 << 20, wall = (wb * nw + huge - 1) / huge * huge;
	float *x = aligned_alloc(64, ((size_t)m * k * 4 + 63) / 64 * 64);
	uint16_t *xb = aligned_alloc(64, ((size_t)m * k * 2 + 63) / 64 * 64);
	float *y = aligned_alloc(64, ((size_t)m * n * 4 + 63) / 64 * 64);
	uint16_t *w = aligned_alloc(huge, wall);
	if (!tp || !x || !xb || !y || !w) {
		fprintf(stderr, "ab_matmul: out of memory (%zu MiB of weights)\n", wall >> 20);
		return 1;
	}
	madvise(w, wall, MADV_HUGEPAGE);
	for (size_t i = 0; i < (size_t)n * k * nw; i++) /* bf16 in [1, 2): no subnormals, no overflow */
		w[i] = (uint16_t)(0x3f80 + (i * 40503u) % 0x80);
	for (size_t i = 0; i < (size_t)m * k; i++) {
		x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
		xb[i] = (uint16_t)(0x3f00 + (i * 2654435761u) % 0x100);
	}
	double t[2] = { 0, 0 };
	for (int r = 0; r < rounds; r++)
		for (int q = 0; q < nw; q++) {
			struct task tk = { .a = { .y = y, .x = x, .xb = xb, .w = w + (size_t)q * n * k, .m = m, .n = n,
						  .k = k, .wt = GS_MM_W_BF16 },
					   .b = (q + r) & 1 };
			double t0 = gs_now_s();
			gs_threadpool_run(tp, run, &tk);
			t[tk.b] += gs_now_s() - t0;
		}
	double bytes = (double)wb * nw * rounds / 2, flops = 2.0 * m * n * k * nw * rounds / 2;
	printf("m=%d n=%d k=%d, %d matrices x %d rounds, %d threads: A %.1f GB/s %.1f GFLOP/s | B %.1f GB/s %.1f "
	       "GFLOP/s | B/A %.3f\n", m, n, k, nw, rounds, gs_threadpool_size(tp), bytes / t[0] / 1e9,
	       flops / t[0] / 1e9, bytes / t[1] / 1e9, flops / t[1] / 1e9, t[0] / t[1]);
	return 0;
}
