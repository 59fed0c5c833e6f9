/* Row copies inside device memory: scatter (K/V append into the paged cache; a negative row is
 * skipped) and gather (the rows that want logits). One block per row, threads stride over its
 * floats. */
#include "cuda_common.cuh"

#define ROW_THREADS 256

static __device__ __forceinline__ void store_elem(float *d, float v)
{
	*d = v;
}

static __device__ __forceinline__ void store_elem(__nv_bfloat16 *d, float v)
{
	*d = __float2bfloat16_rn(v);
}

/* dst rows of T (float: copy; bf16: round to nearest even, as gs_f32_to_bf16). rows[i] < 0: row i
 * is not stored (a position another context-parallel group holds). */
template <typename T>
__global__ void scatter_rows_kernel(T *__restrict__ dst, const float *__restrict__ src,
				    const int64_t *__restrict__ rows, size_t width)
{
	const int64_t r = rows[blockIdx.x];
	if (r < 0)
		return; /* the whole block: one row */
	T *d = dst + (size_t)r * width;
	const float *s = src + (size_t)blockIdx.x * width;
	for (size_t i = threadIdx.x; i < width; i += blockDim.x)
		store_elem(d + i, s[i]);
}

__global__ void gather_rows_kernel(float *__restrict__ dst, const float *__restrict__ src,
				   const int32_t *__restrict__ rows, size_t width)
{
	float *d = dst + (size_t)blockIdx.x * width;
	const float *s = src + (size_t)rows[blockIdx.x] * width;
	for (size_t i = threadIdx.x; i < width; i += blockDim.x)
		d[i] = s[i];
}

/* gs_synth_bf16 (gs_dtype.h) on the device: the same integer mixing, the same IEEE double and
 * float roundings (no FMA: __fmul_rn), the same round-to-nearest-even bf16 conversion. */
__global__ void fill_synth_bf16_kernel(uint16_t *dst, size_t n, float a, uint64_t seed)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
		uint64_t z = seed + (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ull;
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		float u = __fadd_rn(__fmul_rn((float)((double)(z >> 40) / (double)(1ull << 24)), 2.0f), -1.0f);
		float f = __fmul_rn(u, a);
		uint32_t b = __float_as_uint(f);
		if ((b & 0x7fffffffu) > 0x7f800000u)
			dst[i] = (uint16_t)((b >> 16) | 0x40u);
		else
			dst[i] = (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
	}
}

void gs_cu_fill_synth_bf16(struct gs_cuda_ctx *c, uint16_t *dst, size_t n, float a, uint64_t seed)
{
	fill_synth_bf16_kernel<<<gs_cu_grid(c, n, ROW_THREADS), ROW_THREADS, 0, c->stream>>>(dst, n, a, seed);
	GS_CU_LAUNCHED(c, "fill_synth_bf16");
}

void gs_cu_scatter_rows(struct gs_cuda_ctx *c, void *dst, int dst_bf16, const float *src, const int64_t *rows, int n,
			size_t width)
{
	if (dst_bf16)
		scatter_rows_kernel<__nv_bfloat16><<<n, ROW_THREADS, 0, c->stream>>>((__nv_bfloat16 *)dst, src, rows, width);
	else
		scatter_rows_kernel<float><<<n, ROW_THREADS, 0, c->stream>>>((float *)dst, src, rows, width);
	GS_CU_LAUNCHED(c, "scatter_rows");
}

void gs_cu_gather_rows(struct gs_cuda_ctx *c, float *dst, const float *src, const int32_t *rows, int n,
		       size_t width)
{
	gather_rows_kernel<<<n, ROW_THREADS, 0, c->stream>>>(dst, src, rows, width);
	GS_CU_LAUNCHED(c, "gather_rows");
}
