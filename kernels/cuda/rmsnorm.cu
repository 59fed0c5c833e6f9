/* rmsnorm: y[r] = x[r] * rsqrt(mean(x[r]²) + eps) * gain, one block per row. As on the CPU, the
 * sum of squares and the reciprocal root are computed in double, then y = (x · r) · gain in
 * fp32 (two roundings, no FMA to contract), so results match the CPU up to the order of the
 * double sum. y may be x: each element is read and written by the same thread after the
 * reduction. */
#include "cuda_common.cuh"

template <bool ADD>
__global__ void rmsnorm_kernel(float *y, const float *x, const float *__restrict__ gain, int dim, float eps)
{
	const size_t off = (size_t)blockIdx.x * (size_t)dim;
	double ss = 0.0;

	for (int i = threadIdx.x; i < dim; i += blockDim.x) {
		const double v = (double)x[off + i];
		ss += v * v;
	}
	ss = gs_cu_block_sum(ss);
	const float r = (float)(1.0 / sqrt(ss / dim + (double)eps));
	for (int i = threadIdx.x; i < dim; i += blockDim.x) {
		const float v = __fmul_rn(__fmul_rn(x[off + i], r), gain[i]);
		y[off + i] = ADD ? __fadd_rn(y[off + i], v) : v;
	}
}

static unsigned rmsnorm_threads(int dim)
{
	/* One warp per 32 elements up to 256 threads: per-head q/k norms (dim 128-256) get one
	 * element per thread, hidden rows (5376) about 21. */
	unsigned threads = (unsigned)((dim + 31) / 32 * 32);
	return threads > 256 ? 256 : threads;
}

void gs_cu_rmsnorm(struct gs_cuda_ctx *c, float *y, const float *x, const float *gain, int rows, int dim, float eps)
{
	rmsnorm_kernel<false><<<(unsigned)rows, rmsnorm_threads(dim), 0, c->stream>>>(y, x, gain, dim, eps);
	GS_CU_LAUNCHED(c, "rmsnorm");
}

/* y[r] += rmsnorm(x[r]) · gain: the sandwich post-norm and the residual add, one kernel. */
void gs_cu_rmsnorm_add(struct gs_cuda_ctx *c, float *y, const float *x, const float *gain, int rows, int dim,
		       float eps)
{
	rmsnorm_kernel<true><<<(unsigned)rows, rmsnorm_threads(dim), 0, c->stream>>>(y, x, gain, dim, eps);
	GS_CU_LAUNCHED(c, "rmsnorm_add");
}
