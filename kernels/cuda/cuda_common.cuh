/* Internal to kernels/cuda (CUDA C++ only): the backend context, error checks, weight loaders
 * and warp/block reductions shared by the op files. */
#ifndef GS_CUDA_COMMON_CUH
#define GS_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "gs_dtype.h"
#include "gs_kernels.h"
#include "gs_status.h"
}
#include "cuda_internal.h"
#include "gs_cuda.h"

struct gs_cuda_ctx {
	int            device;
	int            sm_count;
	cudaStream_t   stream;          /* every op, copy and cuBLAS call (non-blocking, owned) */
	cublasHandle_t blas;            /* bound to stream */
	void          *blas_ws;         /* cuBLAS workspace (set explicitly: Hopper wants 32 MiB) */
	size_t         blas_ws_bytes;
	void          *act_bf16;        /* matmul m >= 16: x rounded to bf16 [m × k] */
	size_t         act_bf16_bytes;
	void          *pick;            /* argmax / top-k results before the copy to the host */
	size_t         pick_bytes;
	void          *cand;            /* candidates op: processed rows, top-k, log-sum-exp */
	size_t         cand_bytes;
	void          *vis_scores;      /* attention_full: heads × query block × n scores */
	size_t         vis_scores_bytes;
	int            sync_each_op;    /* env GS_CUDA_SYNC=1 */
	int            attn_simple;     /* env GS_CUDA_ATTN=simple: the warp kernel for every row */
	int            kv_bf16;         /* env GS_CUDA_KV=bf16: KV cache in bf16 (DESIGN.md §5), else fp32 */
	size_t         smem_optin;      /* shared memory a block may opt in to (bytes) */
};

/* Broken invariant inside an op: log where and why, then abort (GS_ASSERT tier). */
__host__ void gs_cu_fatal(const char *file, int line, const char *what, const char *why) __attribute__((noreturn));
const char *gs_cu_blas_str(cublasStatus_t s);

/* In ops (void): abort on failure. */
#define GS_CU_CHECK(call)                                                                    \
	do {                                                                                 \
		cudaError_t e_ = (call);                                                     \
		if (e_ != cudaSuccess)                                                       \
			gs_cu_fatal(__FILE__, __LINE__, #call, cudaGetErrorString(e_));      \
	} while (0)
#define GS_CUBLAS_CHECK(call)                                                                \
	do {                                                                                 \
		cublasStatus_t s_ = (call);                                                  \
		if (s_ != CUBLAS_STATUS_SUCCESS)                                             \
			gs_cu_fatal(__FILE__, __LINE__, #call, gs_cu_blas_str(s_));          \
	} while (0)
/* In functions returning enum gs_status: record the reason and return GS_ERR_INTERNAL. */
#define GS_CU_TRY(call)                                                                      \
	do {                                                                                 \
		cudaError_t e_ = (call);                                                     \
		if (e_ != cudaSuccess)                                                       \
			return gs_errorf(GS_ERR_INTERNAL, "CUDA %s failed (%s:%d): %s", #call, \
					 __FILE__, __LINE__, cudaGetErrorString(e_));        \
	} while (0)

/* After every kernel launch: launch errors (bad configuration, no kernel image for this GPU)
 * abort naming the op; with GS_CUDA_SYNC=1 also waits and reports faults of that kernel. */
void gs_cu_launched(struct gs_cuda_ctx *c, const char *op, const char *file, int line);
#define GS_CU_LAUNCHED(c, op) gs_cu_launched((c), (op), __FILE__, __LINE__)

/* Grow a device scratch buffer to at least `bytes` (never shrinks). Waits for the stream before
 * freeing the old buffer, which queued kernels may still read. Start-up sizes make it a no-op
 * in steady state. GS_ERR_NOMEM / GS_ERR_INTERNAL on failure. */
enum gs_status gs_cu_scratch(struct gs_cuda_ctx *c, void **buf, size_t *cap, size_t bytes);

/* Blocks for a grid-stride loop over n items: enough to fill the GPU, at least 1. */
static inline unsigned gs_cu_grid(const struct gs_cuda_ctx *c, size_t n, unsigned threads)
{
	size_t want = (n + threads - 1) / threads, cap = (size_t)c->sm_count * 32;
	if (want > cap)
		want = cap;
	return want ? (unsigned)want : 1u;
}

static inline bool gs_cu_aligned16(const void *p)
{
	return ((uintptr_t)p & 15u) == 0;
}

/* ---- weight element loaders: one(w, i) = element i as fp32 (exact for every type);
 * pair(u) = the two 16-bit elements of a little-endian 32-bit word (low half first). ---- */
struct gs_cu_bf16 {
	static __device__ __forceinline__ float one(const void *w, size_t i)
	{
		return __uint_as_float((uint32_t)((const uint16_t *)w)[i] << 16);
	}
	static __device__ __forceinline__ float2 pair(uint32_t u)
	{
		return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
	}
};

struct gs_cu_f16 {
	static __device__ __forceinline__ float one(const void *w, size_t i)
	{
		return __half2float(__ushort_as_half(((const unsigned short *)w)[i]));
	}
	static __device__ __forceinline__ float2 pair(uint32_t u)
	{
		return make_float2(__half2float(__ushort_as_half((unsigned short)(u & 0xffffu))),
				   __half2float(__ushort_as_half((unsigned short)(u >> 16))));
	}
};

struct gs_cu_f32 {
	static __device__ __forceinline__ float one(const void *w, size_t i)
	{
		return ((const float *)w)[i];
	}
};

/* ---- reductions (blockDim.x a multiple of 32, every thread of the block calls) ---------- */
template <typename T>
static __device__ __forceinline__ T gs_cu_warp_sum(T v)
{
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

/* Sum over the block, returned to every thread. Uses 32 T of shared memory. */
template <typename T>
static __device__ __forceinline__ T gs_cu_block_sum(T v)
{
	__shared__ T part[32];
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;

	v = gs_cu_warp_sum(v);
	__syncthreads(); /* part[] may still be read from a previous call */
	if (lane == 0)
		part[warp] = v;
	__syncthreads();
	v = lane < nw ? part[lane] : (T)0;
	return gs_cu_warp_sum(v);
}

#endif
