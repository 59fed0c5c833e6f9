/* attention over a ragged batch and the paged KV cache (struct gs_attn_args, gs_kernels.h),
 * the CPU backend's semantics: query row t of sequence s at position p = pos0 + (t - tok0)
 * sees key positions j in [max(0, p - window + 1), p]; keys j >= pos0 are this step's fresh
 * rows (k_new / v_new row tok0 + j - pos0), older ones come from the layer's slab at row
 * table[b] · block + j % block, b = j / block (mod ring when ring > 0). Query head h reads KV
 * head h / (n_heads / n_kv_heads).
 *
 * One warp per (row, head), correctness first: lane l holds elements l, l + 32, ... of q and of
 * the output accumulator (head_dim <= 32·EPL). Keys are taken four at a time (four independent
 * dot products and shuffle reductions in flight), scores s = (q·k)·scale, optionally capped,
 * and folded into an online softmax in fp32: running max m, running sum l, acc rescaled by
 * exp(m_old - m_new). out = acc / l. Differs from the CPU's two-pass softmax only in
 * rounding order. Every pointer, seqs[] and the tables included, is device memory. */
#include "cuda_common.cuh"

#define ATTN_THREADS 128
#define ATTN_WARPS (ATTN_THREADS / 32)
#define ATTN_KEYS 4 /* keys per step of the loop */

static __device__ __forceinline__ const float *kv_row(const gs_attn_args &a, const gs_attn_seq &sq,
						      const float *fresh, const float *cache, int32_t j,
						      size_t stride)
{
	int32_t b;

	if (j >= sq.pos0)
		return fresh + (size_t)(sq.tok0 + j - sq.pos0) * stride;
	b = j / a.block;
	if (sq.ring)
		b %= sq.ring;
	return cache + ((size_t)sq.table[b] * (size_t)a.block + (size_t)(j % a.block)) * stride;
}

template <int EPL>
__global__ void __launch_bounds__(ATTN_THREADS) attention_kernel(const gs_attn_args a)
{
	const int lane = threadIdx.x & 31;
	const long long task = (long long)blockIdx.x * ATTN_WARPS + (threadIdx.x >> 5);

	if (task >= (long long)a.n_tokens * a.n_heads)
		return; /* whole warp */
	const int row = (int)(task / a.n_heads), h = (int)(task % a.n_heads);
	const int D = a.head_dim, rep = a.n_heads / a.n_kv_heads;
	const size_t kv_stride = (size_t)a.n_kv_heads * D, q_stride = (size_t)a.n_heads * D;
	const gs_attn_seq sq = a.seqs[a.tok_seq[row]];
	const int32_t pos = sq.pos0 + (row - sq.tok0);
	const int32_t first = (a.window != INT32_MAX && pos - a.window + 1 > 0) ? pos - a.window + 1 : 0;
	const float *q = a.q + (size_t)row * q_stride + (size_t)h * D;
	float *out = a.out + (size_t)row * q_stride + (size_t)h * D;
	const size_t kvh = (size_t)(h / rep) * D;
	float qv[EPL], acc[EPL];
	float m = -INFINITY, l = 0.0f;

#pragma unroll
	for (int e = 0; e < EPL; e++) {
		const int d = lane + 32 * e;
		qv[e] = d < D ? q[d] : 0.0f;
		acc[e] = 0.0f;
	}

	for (int32_t j0 = first; j0 <= pos; j0 += ATTN_KEYS) {
		float s[ATTN_KEYS];

#pragma unroll
		for (int u = 0; u < ATTN_KEYS; u++) { /* j0 + u <= pos is the same on every lane */
			float part = 0.0f;
			if (j0 + u <= pos) {
				const float *kr = kv_row(a, sq, a.k_new, a.k_cache, j0 + u, kv_stride) + kvh;
#pragma unroll
				for (int e = 0; e < EPL; e++) {
					const int d = lane + 32 * e;
					if (d < D)
						part = fmaf(qv[e], kr[d], part);
				}
			}
			s[u] = part;
		}
#pragma unroll
		for (int u = 0; u < ATTN_KEYS; u++)
			s[u] = gs_cu_warp_sum(s[u]);

		float mc = -INFINITY;
#pragma unroll
		for (int u = 0; u < ATTN_KEYS; u++) {
			if (j0 + u <= pos) {
				float v = s[u] * a.scale;
				if (a.softcap > 0)
					v = a.softcap * tanhf(v / a.softcap);
				s[u] = v;
				mc = fmaxf(mc, v);
			}
		}
		const float m_new = fmaxf(m, mc);  /* finite: key j0 is always valid */
		const float corr = expf(m - m_new); /* 0 on the first step (m = -inf) */
		l *= corr;
#pragma unroll
		for (int e = 0; e < EPL; e++)
			acc[e] *= corr;
#pragma unroll
		for (int u = 0; u < ATTN_KEYS; u++) {
			if (j0 + u <= pos) {
				const float p = expf(s[u] - m_new);
				const float *vr = kv_row(a, sq, a.v_new, a.v_cache, j0 + u, kv_stride) + kvh;
				l += p;
#pragma unroll
				for (int e = 0; e < EPL; e++) {
					const int d = lane + 32 * e;
					if (d < D)
						acc[e] = fmaf(p, vr[d], acc[e]);
				}
			}
		}
		m = m_new;
	}

	const float inv = 1.0f / l; /* l >= 1: the max term contributes exp(0) */
#pragma unroll
	for (int e = 0; e < EPL; e++) {
		const int d = lane + 32 * e;
		if (d < D)
			out[d] = acc[e] * inv;
	}
}

template <int EPL>
static void launch(struct gs_cuda_ctx *c, const struct gs_attn_args *a)
{
	const long long tasks = (long long)a->n_tokens * a->n_heads;
	const unsigned blocks = (unsigned)((tasks + ATTN_WARPS - 1) / ATTN_WARPS);

	attention_kernel<EPL><<<blocks, ATTN_THREADS, 0, c->stream>>>(*a);
	GS_CU_LAUNCHED(c, "attention");
}

void gs_cu_attention(struct gs_cuda_ctx *c, const struct gs_attn_args *a)
{
	const int D = a->head_dim;

	if (D <= 32)
		launch<1>(c, a);
	else if (D <= 64)
		launch<2>(c, a);
	else if (D <= 128)
		launch<4>(c, a);
	else if (D <= 256)
		launch<8>(c, a);
	else if (D <= GS_CU_ATTN_MAX_HEAD_DIM)
		launch<16>(c, a);
	else
		GS_ASSERT(!"attention: head_dim above GS_CU_ATTN_MAX_HEAD_DIM");
}
