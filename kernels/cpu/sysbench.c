/* Machine ceilings the kernels are judged against: memory read bandwidth (decode matvec is
 * bound by it), fp32 FMA throughput (prefill GEMM is bound by it) and, for the bf16 mode, the
 * vdpbf16ps dot-product throughput. */
#include "gs_cpu.h"

#include "gs_status.h"
#include "matmul_impl.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double gs_now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- read bandwidth ---------------------------------------------------------------------- */

struct gs_bw_task {
	float *buf;
	size_t n;    /* floats, a multiple of 64 * n_threads */
	int fill;    /* 1: first-touch the pages, 0: read */
	enum gs_cpu_isa isa;
	volatile float sink[64];
};

static float gs_sum_scalar(const float *p, size_t n)
{
	float s[8] = { 0 };
	for (size_t i = 0; i < n; i += 8)
		for (int l = 0; l < 8; l++)
			s[l] += p[i + l];
	return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

static void gs_bw_run(void *ctx, int tid, int n_threads)
{
	struct gs_bw_task *t = ctx;
	size_t per = t->n / (size_t)n_threads;
	float *p = t->buf + per * (size_t)tid;
	if (t->fill) {
		/* each thread touches its own slice first, so its pages sit on its NUMA node */
		for (size_t i = 0; i < per; i++)
			p[i] = 1.0f;
		return;
	}
	float s;
	switch (t->isa) {
	case GS_CPU_ISA_AVX512: s = gs_sum_avx512(p, per); break;
	case GS_CPU_ISA_AVX2: s = gs_sum_avx2(p, per); break;
	default: s = gs_sum_scalar(p, per); break;
	}
	t->sink[tid & 63] = s;
}

double gs_cpu_measure_read_bw(struct gs_threadpool *tp, size_t bytes, int reps)
{
	int nt = gs_threadpool_size(tp);
	size_t quantum = (size_t)64 * (size_t)nt;
	size_t n = bytes / sizeof(float) / quantum * quantum;
	if (n == 0 || reps <= 0)
		return 0.0;
	struct gs_bw_task t = { .n = n, .isa = gs_cpu_isa() };
	size_t alloc = n * sizeof(float);
	t.buf = mmap(NULL, alloc, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (t.buf == MAP_FAILED)
		return 0.0;
	madvise(t.buf, alloc, MADV_HUGEPAGE); /* fewer TLB misses, as the mmap'd weights may get */
	t.fill = 1;
	gs_threadpool_run(tp, gs_bw_run, &t);
	t.fill = 0;
	double best = 0.0;
	for (int r = 0; r < reps; r++) {
		double t0 = gs_now_s();
		gs_threadpool_run(tp, gs_bw_run, &t);
		double dt = gs_now_s() - t0;
		double bw = (double)alloc / dt;
		if (bw > best)
			best = bw;
	}
	munmap(t.buf, alloc);
	return best;
}

/* ---- FMA peak ---------------------------------------------------------------------------- */

struct gs_fma_task {
	long iters;
	enum gs_cpu_isa isa;
	int bf16;  /* 1: the vdpbf16ps loop instead */
	double flops[256];
	volatile float sink[256];
};

static float gs_fma_loop_scalar(long iters, double *flops)
{
	float a[16], b = 0.999999f, c = 1e-7f;
	for (int l = 0; l < 16; l++)
		a[l] = 1.0f;
	for (long it = 0; it < iters; it++)
		for (int l = 0; l < 16; l++)
			a[l] = a[l] * b + c;
	*flops = (double)iters * 16 * 2;
	float s = 0;
	for (int l = 0; l < 16; l++)
		s += a[l];
	return s;
}

static void gs_fma_run(void *ctx, int tid, int n_threads)
{
	struct gs_fma_task *t = ctx;
	double fl = 0;
	float s;
	switch (t->bf16 ? GS_CPU_ISA_COUNT : t->isa) {
	case GS_CPU_ISA_COUNT: s = gs_dpbf16_loop_avx512bf16(t->iters, &fl); break;
	case GS_CPU_ISA_AVX512: s = gs_fma_loop_avx512(t->iters, &fl); break;
	case GS_CPU_ISA_AVX2: s = gs_fma_loop_avx2(t->iters, &fl); break;
	default: s = gs_fma_loop_scalar(t->iters, &fl); break;
	}
	if (tid < 256) {
		t->flops[tid] = fl;
		t->sink[tid] = s;
	}
}

static double gs_measure_peak(struct gs_threadpool *tp, int bf16)
{
	struct gs_fma_task t = { .iters = 1000, .isa = gs_cpu_isa(), .bf16 = bf16 };
	int nt = gs_threadpool_size(tp);
	if (nt > 256)
		nt = 256;
	/* grow the loop until one rep takes ~50 ms, so clock ramp-up and dispatch don't count */
	double best = 0.0;
	int measured = 0;
	for (int tries = 0; tries < 40 && measured < 3; tries++) {
		memset(t.flops, 0, sizeof(t.flops));
		double t0 = gs_now_s();
		gs_threadpool_run(tp, gs_fma_run, &t);
		double dt = gs_now_s() - t0;
		if (dt < 0.05) {
			t.iters *= dt < 0.005 ? 10 : 2;
			continue;
		}
		double fl = 0;
		for (int i = 0; i < nt; i++)
			fl += t.flops[i];
		if (fl / dt > best)
			best = fl / dt;
		measured++;
	}
	return best;
}

double gs_cpu_measure_fma_peak(struct gs_threadpool *tp)
{
	return gs_measure_peak(tp, 0);
}

double gs_cpu_measure_bf16_peak(struct gs_threadpool *tp)
{
	return gs_cpu_bf16_missing() ? 0.0 : gs_measure_peak(tp, 1);
}
