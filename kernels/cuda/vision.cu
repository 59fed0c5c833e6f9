/* The vision tower's ops (gs_kernels.h "the vision tower's ops"): LayerNorm with bias, row adds,
 * average pooling, patch unfolding, and bidirectional attention over one image as two strided
 * batched fp32 GEMMs (cuBLAS, CUBLAS_COMPUTE_32F: no TF32) around a row softmax. Roundings follow
 * the CPU ops (kernels/cpu/vision_ops.c): mean and variance in double, then fp32 with explicit
 * roundings so nvcc contracts nothing the CPU does not. */
#include "cuda_common.cuh"

#define VIS_THREADS 256

/* ---- layernorm: one block per row --------------------------------------------------- */

__global__ void layernorm_kernel(float *y, const float *x, const float *__restrict__ w, const float *__restrict__ b,
				 int dim, float eps)
{
	const size_t off = (size_t)blockIdx.x * (size_t)dim;
	double s = 0.0, ss = 0.0;

	for (int i = threadIdx.x; i < dim; i += blockDim.x)
		s += (double)x[off + i];
	s = gs_cu_block_sum(s);
	const double mean = s / dim;
	for (int i = threadIdx.x; i < dim; i += blockDim.x) {
		const double d = (double)x[off + i] - mean;
		ss += d * d;
	}
	ss = gs_cu_block_sum(ss);
	const float rs = (float)(1.0 / sqrt(ss / dim + (double)eps)), mf = (float)mean;
	for (int i = threadIdx.x; i < dim; i += blockDim.x)
		y[off + i] = __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(x[off + i], mf), rs), w[i]), b[i]);
}

void gs_cu_layernorm(struct gs_cuda_ctx *c, float *y, const float *x, const float *w, const float *b, int rows, int dim,
		     float eps)
{
	unsigned threads = (unsigned)((dim + 31) / 32 * 32);
	if (threads > VIS_THREADS)
		threads = VIS_THREADS;
	layernorm_kernel<<<(unsigned)rows, threads, 0, c->stream>>>(y, x, w, b, dim, eps);
	GS_CU_LAUNCHED(c, "layernorm");
}

/* ---- add_rows ------------------------------------------------------------------------- */

__global__ void add_rows_kernel(float *y, const float *__restrict__ x, const float *__restrict__ b, size_t n, int cols)
{
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
		const int c = (int)(i % (size_t)cols);
		float t = x ? (b ? __fadd_rn(x[i], b[c]) : x[i]) : b[c];
		y[i] = __fadd_rn(y[i], t);
	}
}

void gs_cu_add_rows(struct gs_cuda_ctx *c, float *y, const float *x, const float *b, int rows, int cols)
{
	size_t n = (size_t)rows * (size_t)cols;
	add_rows_kernel<<<gs_cu_grid(c, n, VIS_THREADS), VIS_THREADS, 0, c->stream>>>(y, x, b, n, cols);
	GS_CU_LAUNCHED(c, "add_rows");
}

/* ---- avgpool: one thread per output element, the k x k block summed in row-major order ---- */

__global__ void avgpool_kernel(float *__restrict__ y, const float *__restrict__ x, int side, int k, int dim)
{
	const int out = side / k;
	const size_t n = (size_t)out * out * dim;
	const float inv = 1.0f / (float)(k * k);

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
		const int d = (int)(i % (size_t)dim), t = (int)(i / (size_t)dim), R = t / out, C = t % out;
		float s = 0.0f;
		for (int a = 0; a < k; a++)
			for (int bb = 0; bb < k; bb++)
				s = __fadd_rn(s, x[((size_t)(R * k + a) * side + (size_t)(C * k + bb)) * dim + d]);
		y[i] = __fmul_rn(s, inv);
	}
}

void gs_cu_avgpool(struct gs_cuda_ctx *c, float *y, const float *x, int side, int k, int dim)
{
	size_t n = (size_t)(side / k) * (size_t)(side / k) * (size_t)dim;
	avgpool_kernel<<<gs_cu_grid(c, n, VIS_THREADS), VIS_THREADS, 0, c->stream>>>(y, x, side, k, dim);
	GS_CU_LAUNCHED(c, "avgpool");
}

/* ---- patches: one thread per output element ------------------------------------------- */

__global__ void patches_kernel(float *__restrict__ y, const uint8_t *__restrict__ px, int S, int P)
{
	const int g = S / P, PP = P * P, W = 3 * PP;
	const size_t n = (size_t)g * g * W;

	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
		const int col = (int)(i % (size_t)W), t = (int)(i / (size_t)W);
		const int r = t / g, cc = t % g, ch = col / PP, ky = (col % PP) / P, kx = col % P;
		const float p = (float)px[(((size_t)r * P + ky) * S + (size_t)cc * P + kx) * 3 + ch];
		y[i] = __fdiv_rn(__fsub_rn(__fmul_rn(p, 0.00392156862745098f), 0.5f), 0.5f);
	}
}

void gs_cu_patches(struct gs_cuda_ctx *c, float *y, const uint8_t *px, int image_size, int patch)
{
	int g = image_size / patch;
	size_t n = (size_t)g * g * 3 * (size_t)patch * (size_t)patch;
	patches_kernel<<<gs_cu_grid(c, n, VIS_THREADS), VIS_THREADS, 0, c->stream>>>(y, px, image_size, patch);
	GS_CU_LAUNCHED(c, "patches");
}

/* ---- attention_full ------------------------------------------------------------------- */

/* One block per score row: s = softmax(s · scale), in place. */
__global__ void softmax_rows_kernel(float *s, int n, float scale)
{
	__shared__ float red[32];
	float *row = s + (size_t)blockIdx.x * (size_t)n;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	float mx = -INFINITY;

	for (int i = threadIdx.x; i < n; i += blockDim.x) {
		const float v = __fmul_rn(row[i], scale);
		row[i] = v;
		mx = fmaxf(mx, v);
	}
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
	if (lane == 0)
		red[warp] = mx;
	__syncthreads();
	mx = lane < nw ? red[lane] : -INFINITY;
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
	float sum = 0.0f;
	for (int i = threadIdx.x; i < n; i += blockDim.x) {
		const float e = expf(__fsub_rn(row[i], mx));
		row[i] = e;
		sum += e;
	}
	sum = gs_cu_block_sum(sum);
	const float inv = __fdiv_rn(1.0f, sum);
	for (int i = threadIdx.x; i < n; i += blockDim.x)
		row[i] = __fmul_rn(row[i], inv);
}

/* Scores of at most this many bytes at once (heads × query block × n). */
#define ATTN_FULL_SCORE_BYTES ((size_t)256 << 20)

void gs_cu_attention_full(struct gs_cuda_ctx *c, float *out, const float *q, const float *k, const float *v, int n,
			  int n_heads, int head_dim, float scale)
{
	const long long ld = (long long)n_heads * head_dim, D = head_dim;
	size_t per_q = (size_t)n_heads * (size_t)n * sizeof(float);
	int B = (int)(ATTN_FULL_SCORE_BYTES / per_q);
	const float one = 1.0f, zero = 0.0f;

	if (B < 1)
		B = 1;
	if (B > n)
		B = n;
	if (gs_cu_scratch(c, &c->vis_scores, &c->vis_scores_bytes, (size_t)B * per_q) != GS_OK)
		gs_cu_fatal(__FILE__, __LINE__, "attention_full", "cannot allocate the score buffer");
	float *s = (float *)c->vis_scores;
	for (int q0 = 0; q0 < n; q0 += B) {
		const int m = n - q0 < B ? n - q0 : B;
		/* per head, column-major: S_h [n × m] = K_hᵀ-view · Q_h-view, i.e. row-major S_h [m, n] = Q Kᵀ */
		GS_CUBLAS_CHECK(cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, head_dim, &one, k,
							   CUDA_R_32F, (int)ld, D, q + (size_t)q0 * ld, CUDA_R_32F,
							   (int)ld, D, &zero, s, CUDA_R_32F, n, (long long)n * m,
							   n_heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
		softmax_rows_kernel<<<(unsigned)(n_heads * m), VIS_THREADS, 0, c->stream>>>(s, n, scale);
		GS_CU_LAUNCHED(c, "attention_full softmax");
		/* per head, column-major: O_h [D × m] = V_h [D × n] · P_h [n × m] into out's strided rows */
		GS_CUBLAS_CHECK(cublasGemmStridedBatchedEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, head_dim, m, n, &one, v,
							   CUDA_R_32F, (int)ld, D, s, CUDA_R_32F, n, (long long)n * m,
							   &zero, out + (size_t)q0 * ld, CUDA_R_32F, (int)ld, D, n_heads,
							   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
	}
}
