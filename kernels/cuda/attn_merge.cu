/* The context-parallel merge of partial attention results (gs_kernels.h attn_merge), the same
 * rule and order as kernels/cpu/attn_merge.c: one thread per output element, each reading the
 * k lse values of its record (k is the number of context-parallel groups: a handful). */
#include "cuda_common.cuh"

#define MERGE_THREADS 256

/* out[i] and (its record's d == 0 thread) lse_out[r] for one output element i = r·D + d. */
__device__ void attn_merge_elem(float *out, float *lse_out, const float *__restrict__ parts, int k, int n, int D,
				size_t i)
{
	const size_t rec = (size_t)D + 1, part = (size_t)n * rec;
	const size_t r = i / (size_t)D;
	const int d = (int)(i % (size_t)D);
	const float *p0 = parts + r * rec;
	float mx = -INFINITY;
	bool nan = false;

	for (int j = 0; j < k; j++) {
		const float l = p0[(size_t)j * part + (size_t)D];
		nan |= isnan(l);
		mx = l > mx ? l : mx;
	}
	if (nan || mx == -INFINITY || mx == INFINITY) {
		const bool bad = nan || mx == INFINITY;
		out[i] = bad ? NAN : 0.0f;
		if (lse_out && d == 0)
			lse_out[r] = bad ? NAN : -INFINITY;
		return;
	}
	float w_sum = 0.0f, acc = 0.0f;
	for (int j = 0; j < k; j++) {
		const float *p = p0 + (size_t)j * part;
		const float l = p[D];
		if (l == -INFINITY)
			continue; /* an empty part: weight 0, its output unread */
		const float w = expf(__fsub_rn(l, mx));
		w_sum = __fadd_rn(w_sum, w);
		acc = __fadd_rn(acc, __fmul_rn(w, p[d]));
	}
	out[i] = __fmul_rn(acc, __fdiv_rn(1.0f, w_sum));
	if (lse_out && d == 0)
		lse_out[r] = __fadd_rn(mx, logf(w_sum));
}

__global__ void attn_merge_kernel(float *out, float *lse_out, const float *__restrict__ parts, int k, int n, int D)
{
	const size_t total = (size_t)n * (size_t)D;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
		attn_merge_elem(out, lse_out, parts, k, n, D, i);
}

void gs_cu_attn_merge(struct gs_cuda_ctx *c, float *out, float *lse_out, const float *parts, int k, int n, int head_dim)
{
	size_t total = (size_t)n * (size_t)head_dim;
	attn_merge_kernel<<<gs_cu_grid(c, total, MERGE_THREADS), MERGE_THREADS, 0, c->stream>>>(out, lse_out, parts, k,
												 n, head_dim);
	GS_CU_LAUNCHED(c, "attn_merge");
}
