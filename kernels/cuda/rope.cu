/* rope: NeoX half rotation on x[n_tokens, n_heads, head_dim] in place. One thread per
 * (token, j < head_dim / 2) computes the angle pos·pos_scale·base^(-2j/D) and its cos/sin in
 * double exactly as the CPU writes it, rounds them to fp32, then rotates that pair in every
 * head. The rotation is written with explicit roundings (no FMA contraction) so it matches the
 * CPU's fp32 arithmetic; at 128K positions an fp32 angle would be off by ~1e-2 rad. */
#include "cuda_common.cuh"

__global__ void rope_kernel(float *x, int n_tokens, int n_heads, int head_dim, const int32_t *__restrict__ pos,
			    double base, double pos_scale)
{
	const int half = head_dim / 2;
	const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (idx >= (size_t)n_tokens * (size_t)half)
		return;
	const int t = (int)(idx / (size_t)half), j = (int)(idx % (size_t)half);
	const double p = (double)pos[t] * pos_scale;
	const double inv = pow(base, -2.0 * j / head_dim);
	const double a = p * inv;
	const float cs = (float)cos(a), sn = (float)sin(a);

	for (int h = 0; h < n_heads; h++) {
		float *v = x + ((size_t)t * n_heads + h) * head_dim;
		const float x0 = v[j], x1 = v[j + half];
		v[j] = __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
		v[j + half] = __fadd_rn(__fmul_rn(x1, cs), __fmul_rn(x0, sn));
	}
}

void gs_cu_rope(struct gs_cuda_ctx *c, float *x, int n_tokens, int n_heads, int head_dim, const int32_t *pos,
		double base, double pos_scale)
{
	const size_t n = (size_t)n_tokens * (size_t)(head_dim / 2);
	const unsigned threads = 128;

	if (n == 0 || n_heads == 0)
		return;
	rope_kernel<<<(unsigned)((n + threads - 1) / threads), threads, 0, c->stream>>>(x, n_tokens, n_heads, head_dim,
											 pos, base, pos_scale);
	GS_CU_LAUNCHED(c, "rope");
}
