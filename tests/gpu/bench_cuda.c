/* CUDA backend benchmark (numbers by hand; tests/gpu/run.sh prints them on a GPU machine):
 *
 *   1. device-to-device copy of 1 GiB (cudaMemcpyAsync), best of 5, counted as bytes read +
 *      written (the convention of CUDA's bandwidthTest): the memory roofline here;
 *   2. the backend's matmul on Gemma 3 27B shapes for one tensor-parallel rank (hidden 5376,
 *      intermediate 21504, 32 q heads and 16 kv heads of 128, vocabulary 262208, split by T):
 *      m = 1, 8 (decode GEMV) and 32, 64 (cuBLAS path), as weight bytes streamed per second
 *      and as a fraction of the copy bandwidth;
 *   3. cuBLAS bf16 GEMM (fp32 accumulation) at M=2048 tokens × K=5376 × N=21504, raw and
 *      through the backend (which adds the x -> bf16 conversion).
 *
 * Usage: bench_cuda [--tp T] [--quick]. Exit 77 without a CUDA device. Weights are a constant
 * bf16 pattern (speed does not depend on values); x is random. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_cuda.h"
#include "gs_kernels.h"

#define SKIP 77

#define CU(call)                                                                                   \
	do {                                                                                       \
		cudaError_t e_ = (call);                                                           \
		if (e_ != cudaSuccess) {                                                           \
			fprintf(stderr, "bench_cuda %s:%d: %s: %s\n", __FILE__, __LINE__, #call,   \
				cudaGetErrorString(e_));                                           \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

#define GS(call)                                                                                   \
	do {                                                                                       \
		if ((call) != GS_OK) {                                                             \
			fprintf(stderr, "bench_cuda %s:%d: %s: %s\n", __FILE__, __LINE__, #call,   \
				gs_last_error());                                                  \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

static struct gs_backend be;
static cudaStream_t stream;
static cudaEvent_t ev0, ev1;

static void start(void)
{
	CU(cudaEventRecord(ev0, stream));
}

static double stop_ms(void)
{
	float ms;
	CU(cudaEventRecord(ev1, stream));
	CU(cudaEventSynchronize(ev1));
	CU(cudaEventElapsedTime(&ms, ev0, ev1));
	return ms;
}

static double copy_bandwidth(size_t bytes, int reps)
{
	void *a, *b;
	double best = 1e30;

	GS(gs_cuda_malloc(&be, &a, bytes));
	GS(gs_cuda_malloc(&be, &b, bytes));
	GS(gs_cuda_memset(&be, a, 1, bytes));
	CU(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream)); /* warm-up */
	for (int r = 0; r < reps; r++) {
		double ms;
		start();
		CU(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream));
		ms = stop_ms();
		best = ms < best ? ms : best;
	}
	gs_cuda_free(&be, a);
	gs_cuda_free(&be, b);
	return 2.0 * (double)bytes / (best * 1e-3);
}

struct shape {
	const char *name;
	int n, k;
	void *w;
};

static void *random_x(size_t n)
{
	float *h = malloc(n * sizeof(float));
	void *d;
	if (!h) {
		fprintf(stderr, "bench_cuda: out of host memory\n");
		exit(1);
	}
	for (size_t i = 0; i < n; i++)
		h[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
	GS(gs_cuda_malloc(&be, &d, n * sizeof(float)));
	GS(gs_cuda_upload(&be, d, h, n * sizeof(float)));
	free(h);
	return d;
}

/* Mean milliseconds of one backend matmul, after warm-up; enough calls for ~2 GB of weights. */
static double time_matmul(const struct shape *s, int m, void *dx, void *dy, int quick)
{
	struct gs_tensor w = { GS_DTYPE_BF16, s->n, s->k, s->w };
	double bytes = 2.0 * s->n * s->k;
	int iters = (int)(2e9 / bytes);

	iters = iters < 5 ? 5 : iters > 200 ? 200 : iters;
	if (quick)
		iters = 2;
	be.iface->matmul(be.ctx, dy, dx, &w, m);
	be.iface->matmul(be.ctx, dy, dx, &w, m);
	start();
	for (int i = 0; i < iters; i++)
		be.iface->matmul(be.ctx, dy, dx, &w, m);
	return stop_ms() / iters;
}

static double gemm_tflops(int M, int N, int K, int reps, int via_backend, double *ms_out)
{
	void *w, *x, *xb, *y;
	cublasHandle_t h;
	const float one = 1.0f, zero = 0.0f;
	struct gs_tensor wt = { GS_DTYPE_BF16, N, K, NULL };
	double best = 1e30;

	GS(gs_cuda_malloc(&be, &w, (size_t)N * K * 2));
	GS(gs_cuda_memset(&be, w, 0x3c, (size_t)N * K * 2));
	x = random_x((size_t)M * K);
	GS(gs_cuda_malloc(&be, &xb, (size_t)M * K * 2));
	GS(gs_cuda_memset(&be, xb, 0x3c, (size_t)M * K * 2));
	GS(gs_cuda_malloc(&be, &y, (size_t)M * N * sizeof(float)));
	wt.data = w;
	if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS || cublasSetStream(h, stream) != CUBLAS_STATUS_SUCCESS) {
		fprintf(stderr, "bench_cuda: cublasCreate failed\n");
		exit(1);
	}
	for (int r = -1; r < reps; r++) { /* r = -1: warm-up */
		double ms;
		cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
		start();
		if (via_backend)
			be.iface->matmul(be.ctx, y, x, &wt, M);
		else
			st = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, w, CUDA_R_16BF, K, xb, CUDA_R_16BF, K,
					  &zero, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
		ms = stop_ms();
		if (st != CUBLAS_STATUS_SUCCESS) {
			fprintf(stderr, "bench_cuda: cublasGemmEx failed (%d)\n", (int)st);
			exit(1);
		}
		if (r >= 0 && ms < best)
			best = ms;
	}
	cublasDestroy(h);
	gs_cuda_free(&be, w);
	gs_cuda_free(&be, x);
	gs_cuda_free(&be, xb);
	gs_cuda_free(&be, y);
	*ms_out = best;
	return 2.0 * M * (double)N * K / (best * 1e-3) / 1e12;
}

int main(int argc, char **argv)
{
	int tp = 1, quick = 0;
	const int ms[] = { 1, 8, 32, 64 };
	double copy_bw, gemm_ms, gemm_be_ms, tf, tf_be;
	struct cudaDeviceProp prop;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--tp") && i + 1 < argc)
			tp = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--quick"))
			quick = 1;
		else {
			fprintf(stderr, "usage: bench_cuda [--tp T] [--quick]\n");
			return 2;
		}
	}
	if (tp < 1 || 32 % tp != 0) {
		fprintf(stderr, "bench_cuda: --tp must divide 32 (27B query heads)\n");
		return 2;
	}
	if (gs_cuda_device_count() == 0) {
		printf("SKIP: no CUDA device\n");
		return SKIP;
	}
	GS(gs_backend_cuda_create(0, &be));
	stream = (cudaStream_t)gs_backend_cuda_stream(&be);
	CU(cudaEventCreate(&ev0));
	CU(cudaEventCreate(&ev1));
	CU(cudaGetDeviceProperties(&prop, 0));
	printf("device 0: %s, %d SMs, %.1f GiB; 27B shapes for tensor-parallel T=%d%s\n", prop.name,
	       prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, tp, quick ? " (quick: not for numbers)" : "");

	copy_bw = copy_bandwidth(quick ? (64u << 20) : (1u << 30), quick ? 2 : 5);
	printf("device-to-device copy (%s, best of %d): %.0f GB/s (read + write)\n", quick ? "64 MiB" : "1 GiB",
	       quick ? 2 : 5, copy_bw / 1e9);

	{
		int kvh = 16 / tp > 0 ? 16 / tp : 1; /* T > 16: kv heads replicated */
		struct shape shapes[] = {
			{ "q_proj", 32 / tp * 128, 5376, NULL },  { "k_proj", kvh * 128, 5376, NULL },
			{ "v_proj", kvh * 128, 5376, NULL },      { "o_proj", 5376, 32 / tp * 128, NULL },
			{ "gate_proj", 21504 / tp, 5376, NULL },  { "up_proj", 21504 / tp, 5376, NULL },
			{ "down_proj", 5376, 21504 / tp, NULL },  { "lm_head", 262208 / tp, 5376, NULL },
		};
		const int ns = (int)(sizeof(shapes) / sizeof(shapes[0]));
		void *dx, *dy;
		size_t maxn = 0;

		for (int s = 0; s < ns; s++) {
			size_t bytes;
			if (quick && shapes[s].n > 32768)
				shapes[s].n = 32768;
			bytes = (size_t)shapes[s].n * shapes[s].k * 2;
			GS(gs_cuda_malloc(&be, &shapes[s].w, bytes));
			GS(gs_cuda_memset(&be, shapes[s].w, 0x3c, bytes)); /* bf16 0x3c3c ≈ 0.0115 */
			maxn = (size_t)shapes[s].n > maxn ? (size_t)shapes[s].n : maxn;
		}
		dx = random_x((size_t)64 * 21504);
		GS(gs_cuda_malloc(&be, &dy, (size_t)64 * maxn * sizeof(float)));

		printf("\nmatmul, bf16 weights (GB/s of weights streamed; %% of copy bandwidth)\n");
		printf("%-10s %7s %6s", "weight", "n", "k");
		for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++)
			printf(" |  m=%-2d us    GB/s   %%", ms[i]);
		printf("\n");
		for (int s = 0; s < ns; s++) {
			printf("%-10s %7d %6d", shapes[s].name, shapes[s].n, shapes[s].k);
			for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
				double t = time_matmul(&shapes[s], ms[i], dx, dy, quick);
				double bw = 2.0 * shapes[s].n * shapes[s].k / (t * 1e-3);
				printf(" | %8.1f %7.0f %3.0f", t * 1e3, bw / 1e9, 100.0 * bw / copy_bw);
			}
			printf("\n");
		}
		{ /* one decode step's weights of one layer at m = 1 */
			double t = 0, bytes = 0;
			for (int s = 0; s < ns - 1; s++) {
				t += time_matmul(&shapes[s], 1, dx, dy, quick);
				bytes += 2.0 * shapes[s].n * shapes[s].k;
			}
			printf("one layer's 7 matmuls at m=1: %.1f us, %.0f GB/s (%.0f%% of copy)\n", t * 1e3,
			       bytes / (t * 1e-3) / 1e9, 100.0 * bytes / (t * 1e-3) / copy_bw);
		}
		for (int s = 0; s < ns; s++)
			gs_cuda_free(&be, shapes[s].w);
		gs_cuda_free(&be, dx);
		gs_cuda_free(&be, dy);
	}

	{
		int M = quick ? 256 : 2048, N = quick ? 2048 : 21504, K = 5376;
		tf = gemm_tflops(M, N, K, quick ? 1 : 5, 0, &gemm_ms);
		tf_be = gemm_tflops(M, N, K, quick ? 1 : 5, 1, &gemm_be_ms);
		printf("\ncuBLAS bf16 GEMM (fp32 accumulate) M=%d N=%d K=%d: %.3f ms, %.0f TFLOP/s raw; "
		       "%.3f ms, %.0f TFLOP/s through the backend (with x -> bf16)\n",
		       M, N, K, gemm_ms, tf, gemm_be_ms, tf_be);
	}

	CU(cudaEventDestroy(ev0));
	CU(cudaEventDestroy(ev1));
	gs_backend_cuda_free(&be);
	return 0;
}
