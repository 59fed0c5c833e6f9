/* Element-wise ops over n fp32 values (grid-stride loops): geglu, softcap. Written with
 * explicit roundings where the CPU's fp32 expression has several operations, so nvcc does not
 * contract them into FMAs the CPU does not use; tanhf is the accurate one (no fast-math). The CPU
 * computes GELU as u·σ(2z) with its own exp (gs_fmath.h): the two agree to a few ulp. */
#include "cuda_common.cuh"

#define EW_THREADS 256

/* 0.5 · u · (1 + tanh(√(2/π) · (u + 0.044715 · u³))), evaluated in the CPU's order. */
static __device__ __forceinline__ float gelu_tanh(float u)
{
	const float k = 0.7978845608028654f;
	const float u3 = __fmul_rn(__fmul_rn(__fmul_rn(0.044715f, u), u), u);
	const float t = tanhf(__fmul_rn(k, __fadd_rn(u, u3)));
	return __fmul_rn(__fmul_rn(0.5f, u), __fadd_rn(1.0f, t));
}

__global__ void geglu_kernel(float *__restrict__ out, const float *__restrict__ gate, const float *__restrict__ up,
			     size_t n)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
		out[i] = __fmul_rn(gelu_tanh(gate[i]), up[i]);
}

__global__ void softcap_kernel(float *x, size_t n, float cap)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
		x[i] = __fmul_rn(cap, tanhf(__fdiv_rn(x[i], cap)));
}

__global__ void gelu_kernel(float *y, const float *x, size_t n)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
		y[i] = gelu_tanh(x[i]);
}

/* The vision tower's MLP activation (no gate). */
void gs_cu_gelu(struct gs_cuda_ctx *c, float *y, const float *x, size_t n)
{
	gelu_kernel<<<gs_cu_grid(c, n, EW_THREADS), EW_THREADS, 0, c->stream>>>(y, x, n);
	GS_CU_LAUNCHED(c, "gelu");
}

void gs_cu_geglu(struct gs_cuda_ctx *c, float *out, const float *gate, const float *up, size_t n)
{
	geglu_kernel<<<gs_cu_grid(c, n, EW_THREADS), EW_THREADS, 0, c->stream>>>(out, gate, up, n);
	GS_CU_LAUNCHED(c, "geglu");
}

void gs_cu_softcap(struct gs_cuda_ctx *c, float *x, size_t n, float cap)
{
	softcap_kernel<<<gs_cu_grid(c, n, EW_THREADS), EW_THREADS, 0, c->stream>>>(x, n, cap);
	GS_CU_LAUNCHED(c, "softcap");
}
