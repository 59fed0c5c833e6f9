/* Row copies inside device memory: scatter (K/V append into the paged cache) and gather (the
 * rows that want logits). One block per row, threads stride over its floats. */
#include "cuda_common.cuh"

#define ROW_THREADS 256

__global__ void scatter_rows_kernel(float *__restrict__ dst, const float *__restrict__ src,
				    const int64_t *__restrict__ rows, size_t width)
{
	float *d = dst + (size_t)rows[blockIdx.x] * width;
	const float *s = src + (size_t)blockIdx.x * width;
	for (size_t i = threadIdx.x; i < width; i += blockDim.x)
		d[i] = s[i];
}

__global__ void gather_rows_kernel(float *__restrict__ dst, const float *__restrict__ src,
				   const int32_t *__restrict__ rows, size_t width)
{
	float *d = dst + (size_t)blockIdx.x * width;
	const float *s = src + (size_t)rows[blockIdx.x] * width;
	for (size_t i = threadIdx.x; i < width; i += blockDim.x)
		d[i] = s[i];
}

void gs_cu_scatter_rows(struct gs_cuda_ctx *c, float *dst, const float *src, const int64_t *rows, int n,
			size_t width)
{
	scatter_rows_kernel<<<n, ROW_THREADS, 0, c->stream>>>(dst, src, rows, width);
	GS_CU_LAUNCHED(c, "scatter_rows");
}

void gs_cu_gather_rows(struct gs_cuda_ctx *c, float *dst, const float *src, const int32_t *rows, int n,
		       size_t width)
{
	gather_rows_kernel<<<n, ROW_THREADS, 0, c->stream>>>(dst, src, rows, width);
	GS_CU_LAUNCHED(c, "gather_rows");
}
