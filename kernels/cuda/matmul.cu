/* matmul: y[m, n] = x[m, k] · Wᵀ, W [n, k] row-major (nn.Linear as stored), fp32 x and y.
 *
 *   m < 16 (decode)   GEMV that streams each weight row once: a block of 128 threads owns R
 *                     rows of W and walks k in 16-byte chunks (8 bf16/f16: one 128-bit load,
 *                     evict-first), dotting each chunk with every x row (fp32, read through
 *                     L1); per-thread fp32 FMA chains, then warp-shuffle + shared-memory
 *                     reduction in a fixed order (the result does not depend on m).
 *                     Needs k % 8 == 0 and 16-byte aligned W and x; anything else (odd k, a
 *                     misaligned view, f32 weights) takes a scalar kernel, 4 x rows a pass.
 *   m >= 16 (prefill) bf16 W: x rounded to bf16 once (RNE), cuBLAS GemmEx bf16 × bf16 with
 *                     CUBLAS_COMPUTE_32F (fp32 accumulation on tensor cores) into fp32 y.
 *                     f32 W: GemmEx fp32 with CUBLAS_COMPUTE_32F (no TF32). f16 W: GEMV, 16
 *                     rows a pass (f16 cannot hold Gemma's activations; weights stay exact). */
#include "cuda_common.cuh"

#define GEMV_THREADS 128
#define GEMV_WARPS (GEMV_THREADS / 32)
#define GEMV_MAX_M 16 /* rows of x per vector-kernel pass */
#define GEMV_SCALAR_M 4 /* rows of x per scalar-kernel pass */

/* acc + Σ_e a8[e] · w8[e] over one 16-byte chunk of 8 16-bit weights, in element order. */
template <class L>
static __device__ __forceinline__ float dot8(uint4 w, float4 a, float4 b, float acc)
{
	float2 p;

	p = L::pair(w.x);
	acc = fmaf(a.x, p.x, acc);
	acc = fmaf(a.y, p.y, acc);
	p = L::pair(w.y);
	acc = fmaf(a.z, p.x, acc);
	acc = fmaf(a.w, p.y, acc);
	p = L::pair(w.z);
	acc = fmaf(b.x, p.x, acc);
	acc = fmaf(b.y, p.y, acc);
	p = L::pair(w.w);
	acc = fmaf(b.z, p.x, acc);
	acc = fmaf(b.w, p.y, acc);
	return acc;
}

/* Block b: rows [b·R, b·R + R) of W (clamped at n), all m <= MM rows of x. kc = k / 8. */
template <class L, int MM, int R>
__global__ void __launch_bounds__(GEMV_THREADS)
gemv_vec_kernel(float *__restrict__ y, const float *__restrict__ x, const uint4 *__restrict__ w, int m, int n,
		int kc)
{
	__shared__ float red[GEMV_WARPS][MM * R];
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int row0 = blockIdx.x * R;
	const size_t k = (size_t)kc * 8;
	const uint4 *wr[R];
	float acc[MM][R];

#pragma unroll
	for (int r = 0; r < R; r++)
		wr[r] = w + (size_t)min(row0 + r, n - 1) * kc;
#pragma unroll
	for (int i = 0; i < MM; i++)
#pragma unroll
		for (int r = 0; r < R; r++)
			acc[i][r] = 0.0f;

	for (int c = tid; c < kc; c += GEMV_THREADS) {
		uint4 wv[R];
#pragma unroll
		for (int r = 0; r < R; r++)
			wv[r] = __ldcs(wr[r] + c); /* streamed once: evict-first, keep L1 for x */
#pragma unroll
		for (int i = 0; i < MM; i++) {
			if (i < m) {
				const float4 *xp = reinterpret_cast<const float4 *>(x + (size_t)i * k) + 2 * (size_t)c;
				const float4 a = __ldg(xp), b = __ldg(xp + 1);
#pragma unroll
				for (int r = 0; r < R; r++)
					acc[i][r] = dot8<L>(wv[r], a, b, acc[i][r]);
			}
		}
	}

#pragma unroll
	for (int i = 0; i < MM; i++)
#pragma unroll
		for (int r = 0; r < R; r++) {
			const float v = gs_cu_warp_sum(acc[i][r]);
			if (lane == 0)
				red[warp][i * R + r] = v;
		}
	__syncthreads();
	for (int t = tid; t < MM * R; t += GEMV_THREADS) {
		const int i = t / R, r = t % R;
		if (i < m && row0 + r < n) {
			float s = red[0][t];
#pragma unroll
			for (int wp = 1; wp < GEMV_WARPS; wp++)
				s += red[wp][t];
			y[(size_t)i * n + row0 + r] = s;
		}
	}
}

/* Any alignment, any k, any weight type: block b = row b of W, m <= GEMV_SCALAR_M rows of x;
 * y rows are n apart. */
template <class L>
__global__ void __launch_bounds__(GEMV_THREADS)
gemv_scalar_kernel(float *__restrict__ y, const float *__restrict__ x, const void *__restrict__ w, int m, int n,
		   int k)
{
	__shared__ float red[GEMV_WARPS][GEMV_SCALAR_M];
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int row = blockIdx.x;
	const size_t base = (size_t)row * (size_t)k;
	float acc[GEMV_SCALAR_M];

#pragma unroll
	for (int i = 0; i < GEMV_SCALAR_M; i++)
		acc[i] = 0.0f;
	for (int e = tid; e < k; e += GEMV_THREADS) {
		const float wv = L::one(w, base + (size_t)e);
#pragma unroll
		for (int i = 0; i < GEMV_SCALAR_M; i++)
			if (i < m)
				acc[i] = fmaf(x[(size_t)i * k + e], wv, acc[i]);
	}
#pragma unroll
	for (int i = 0; i < GEMV_SCALAR_M; i++) {
		const float v = gs_cu_warp_sum(acc[i]);
		if (lane == 0)
			red[warp][i] = v;
	}
	__syncthreads();
	if (tid < m) {
		float s = red[0][tid];
#pragma unroll
		for (int wp = 1; wp < GEMV_WARPS; wp++)
			s += red[wp][tid];
		y[(size_t)tid * n + row] = s;
	}
}

__global__ void to_bf16_kernel(__nv_bfloat16 *__restrict__ out, const float *__restrict__ in, size_t n)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
		out[i] = __float2bfloat16_rn(in[i]);
}

template <class L, int MM, int R>
static void launch_vec(struct gs_cuda_ctx *c, float *y, const float *x, const void *w, int m, int n, int k)
{
	const unsigned blocks = (unsigned)((n + R - 1) / R);

	gemv_vec_kernel<L, MM, R><<<blocks, GEMV_THREADS, 0, c->stream>>>(y, x, (const uint4 *)w, m, n, k / 8);
	GS_CU_LAUNCHED(c, "matmul (gemv)");
}

/* m <= GEMV_MAX_M rows, vector path. More rows of W per block when there are more x rows, so
 * each x chunk read from L1 serves more weights. */
template <class L>
static void gemv_vec(struct gs_cuda_ctx *c, float *y, const float *x, const void *w, int m, int n, int k)
{
	if (m == 1)
		launch_vec<L, 1, 2>(c, y, x, w, m, n, k);
	else if (m == 2)
		launch_vec<L, 2, 2>(c, y, x, w, m, n, k);
	else if (m <= 4)
		launch_vec<L, 4, 4>(c, y, x, w, m, n, k);
	else if (m <= 8)
		launch_vec<L, 8, 4>(c, y, x, w, m, n, k);
	else
		launch_vec<L, GEMV_MAX_M, 4>(c, y, x, w, m, n, k);
}

template <class L>
static void gemv_scalar(struct gs_cuda_ctx *c, float *y, const float *x, const void *w, int m, int n, int k)
{
	for (int i0 = 0; i0 < m; i0 += GEMV_SCALAR_M) {
		const int mg = m - i0 < GEMV_SCALAR_M ? m - i0 : GEMV_SCALAR_M;
		gemv_scalar_kernel<L><<<(unsigned)n, GEMV_THREADS, 0, c->stream>>>(y + (size_t)i0 * n, x + (size_t)i0 * k,
										   w, mg, n, k);
		GS_CU_LAUNCHED(c, "matmul (scalar gemv)");
	}
}

/* Any m, as passes of at most GEMV_MAX_M rows (m < 16 is one pass). */
static void gemv(struct gs_cuda_ctx *c, float *y, const float *x, const struct gs_tensor *w, int m, int n, int k)
{
	const bool vec = k % 8 == 0 && gs_cu_aligned16(w->data) && gs_cu_aligned16(x) && w->dtype != GS_DTYPE_F32;

	if (!vec) {
		switch (w->dtype) {
		case GS_DTYPE_BF16: gemv_scalar<gs_cu_bf16>(c, y, x, w->data, m, n, k); return;
		case GS_DTYPE_F16:  gemv_scalar<gs_cu_f16>(c, y, x, w->data, m, n, k); return;
		case GS_DTYPE_F32:  gemv_scalar<gs_cu_f32>(c, y, x, w->data, m, n, k); return;
		default: GS_ASSERT(!"matmul: unsupported weight dtype");
		}
	}
	for (int i0 = 0; i0 < m; i0 += GEMV_MAX_M) {
		const int mg = m - i0 < GEMV_MAX_M ? m - i0 : GEMV_MAX_M;
		float *yg = y + (size_t)i0 * n;
		const float *xg = x + (size_t)i0 * k; /* still 16-byte aligned: k % 8 == 0 */
		if (w->dtype == GS_DTYPE_BF16)
			gemv_vec<gs_cu_bf16>(c, yg, xg, w->data, mg, n, k);
		else
			gemv_vec<gs_cu_f16>(c, yg, xg, w->data, mg, n, k);
	}
}

/* Row-major y[m,n] = x[m,k] · W[n,k]ᵀ is column-major Y[n,m] = Wᵀ · X with W seen as a
 * column-major [k,n] matrix (lda = k) and X as [k,m] (ldb = k): op(A) = T, op(B) = N. */
static void gemm_cublas(struct gs_cuda_ctx *c, float *y, const void *xin, cudaDataType xt, const struct gs_tensor *w,
			cudaDataType wt, int m, int n, int k)
{
	const float one = 1.0f, zero = 0.0f;

	GS_CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, w->data, wt, k, xin, xt, k,
				     &zero, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
	GS_CU_LAUNCHED(c, "matmul (cuBLAS)");
}

void gs_cu_matmul(struct gs_cuda_ctx *c, float *y, const float *x, const struct gs_tensor *w, int m)
{
	const int n = (int)w->rows, k = (int)w->cols;

	if (k == 0) { /* empty sums: the CPU writes zeros */
		GS_CU_CHECK(cudaMemsetAsync(y, 0, (size_t)m * n * sizeof(float), c->stream));
		return;
	}
	if (m >= 16 && w->dtype == GS_DTYPE_BF16) {
		const size_t elems = (size_t)m * k;
		enum gs_status st = gs_cu_scratch(c, &c->act_bf16, &c->act_bf16_bytes, elems * sizeof(__nv_bfloat16));
		if (st != GS_OK)
			gs_cu_fatal(__FILE__, __LINE__, "matmul activation scratch", gs_last_error());
		to_bf16_kernel<<<gs_cu_grid(c, elems, 256), 256, 0, c->stream>>>((__nv_bfloat16 *)c->act_bf16, x, elems);
		GS_CU_LAUNCHED(c, "matmul (x to bf16)");
		gemm_cublas(c, y, c->act_bf16, CUDA_R_16BF, w, CUDA_R_16BF, m, n, k);
		return;
	}
	if (m >= 16 && w->dtype == GS_DTYPE_F32) {
		gemm_cublas(c, y, x, CUDA_R_32F, w, CUDA_R_32F, m, n, k);
		return;
	}
	gemv(c, y, x, w, m, n, k);
}
