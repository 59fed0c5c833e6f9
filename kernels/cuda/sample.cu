/* On-device argmax and top-k per row of fp32 logits, so a 262K-wide vocabulary row never
 * crosses to the host: only k (id, value) pairs per row do.
 *
 * Order: every value maps to an order-preserving 32-bit key (sign-flip trick; NaN -> 0, the
 * lowest), and candidates compare as the 64-bit composite (key << 32) | ~column, so larger
 * values come first and equal values by smaller column. -0.0 ranks just below +0.0.
 *
 * argmax: one block per row, max of composites (thread, warp shuffle, shared memory).
 * top-k:  one block of 1024 threads per row, radix select (as PyTorch's topk): four passes of
 *         8-bit histograms from the most significant digit find the k-th largest key K and
 *         how many elements equal to K belong in the top k; one more pass collects every key
 *         > K (any order) and the first elements == K in column order (block-wide ballot
 *         scan); a bitonic sort of the <= 256 candidates in shared memory orders them. */
#include "cuda_common.cuh"

#define PICK_THREADS 1024
#define PICK_WARPS (PICK_THREADS / 32)

static __device__ __forceinline__ uint32_t order_key(float f)
{
	const uint32_t u = __float_as_uint(f);

	if (isnan(f))
		return 0u;
	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static __device__ __forceinline__ unsigned long long composite(uint32_t key, int col)
{
	return ((unsigned long long)key << 32) | (unsigned long long)(0xffffffffu - (uint32_t)col);
}

static __device__ __forceinline__ int composite_col(unsigned long long c)
{
	return (int)(0xffffffffu - (uint32_t)(c & 0xffffffffull));
}

__global__ void __launch_bounds__(PICK_THREADS)
argmax_kernel(const float *__restrict__ logits, int cols, int32_t *__restrict__ ids, float *__restrict__ vals)
{
	__shared__ unsigned long long part[PICK_WARPS];
	const float *x = logits + (size_t)blockIdx.x * (size_t)cols;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	unsigned long long best = 0; /* below every real composite */

	for (int i = tid; i < cols; i += PICK_THREADS) {
		const unsigned long long cmp = composite(order_key(x[i]), i);
		best = cmp > best ? cmp : best;
	}
#pragma unroll
	for (int o = 16; o > 0; o >>= 1) {
		const unsigned long long other = __shfl_xor_sync(0xffffffffu, best, o);
		best = other > best ? other : best;
	}
	if (lane == 0)
		part[warp] = best;
	__syncthreads();
	if (tid == 0) {
		for (int w = 1; w < PICK_WARPS; w++)
			best = part[w] > best ? part[w] : best;
		const int col = composite_col(best);
		ids[blockIdx.x] = col;
		vals[blockIdx.x] = x[col];
	}
}

__global__ void __launch_bounds__(PICK_THREADS)
topk_kernel(const float *__restrict__ logits, int cols, int k, int32_t *__restrict__ ids, float *__restrict__ vals)
{
	__shared__ unsigned int hist[256];
	__shared__ unsigned long long cand[GS_CUDA_TOPK_MAX];
	__shared__ int warp_ties[PICK_WARPS];
	__shared__ uint32_t s_prefix, s_mask;
	__shared__ int s_remaining, s_gt, s_tie_base;
	const float *x = logits + (size_t)blockIdx.x * (size_t)cols;
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

	if (tid == 0) {
		s_prefix = 0;
		s_mask = 0;
		s_remaining = k;
		s_gt = 0;
		s_tie_base = 0;
	}
	/* 1. Radix select of the k-th largest key, 8 bits a pass from the top. Invariant: at
	 * least s_remaining elements match (key & mask) == prefix. */
	for (int shift = 24; shift >= 0; shift -= 8) {
		for (int i = tid; i < 256; i += PICK_THREADS)
			hist[i] = 0;
		__syncthreads();
		const uint32_t prefix = s_prefix, mask = s_mask;
		for (int base = 0; base < cols; base += PICK_THREADS) { /* uniform trip count */
			const int i = base + tid;
			int bin = 256; /* not counted */
			if (i < cols) {
				const uint32_t key = order_key(x[i]);
				if ((key & mask) == prefix)
					bin = (int)((key >> shift) & 0xffu);
			}
			/* Lanes with the same bin add once (logit exponents crowd a few bins). */
			const unsigned peers = __match_any_sync(0xffffffffu, bin);
			if (bin < 256 && lane == __ffs(peers) - 1)
				atomicAdd(&hist[bin], (unsigned)__popc(peers));
		}
		__syncthreads();
		if (tid == 0) {
			int rem = s_remaining, b = 255;
			for (; b > 0; b--) {
				if ((int)hist[b] >= rem)
					break;
				rem -= (int)hist[b];
			}
			s_prefix = prefix | ((uint32_t)b << shift);
			s_mask = mask | (0xffu << shift);
			s_remaining = rem;
		}
		__syncthreads();
	}
	const uint32_t kth = s_prefix;
	const int ties = s_remaining;    /* elements == kth to take, >= 1 */
	const int n_gt = k - ties;       /* elements > kth: all of them */

	/* 2. Collect: > kth anywhere (atomic slot), == kth in column order (ballot scan). */
	for (int base = 0; base < cols; base += PICK_THREADS) {
		const int i = base + tid;
		const uint32_t key = i < cols ? order_key(x[i]) : 0u;
		const bool gt = i < cols && key > kth, eq = i < cols && key == kth;
		const unsigned bal = __ballot_sync(0xffffffffu, eq);

		if (gt) {
			const int slot = atomicAdd(&s_gt, 1);
			if (slot < n_gt)
				cand[slot] = composite(key, i);
		}
		if (lane == 0)
			warp_ties[warp] = __popc(bal);
		__syncthreads();
		if (eq) {
			int off = s_tie_base + __popc(bal & ((1u << lane) - 1u));
			for (int w = 0; w < warp; w++)
				off += warp_ties[w];
			if (off < ties)
				cand[n_gt + off] = composite(key, i);
		}
		__syncthreads();
		if (tid == 0) {
			int t = 0;
			for (int w = 0; w < PICK_WARPS; w++)
				t += warp_ties[w];
			s_tie_base += t;
		}
		__syncthreads();
	}

	/* 3. Bitonic sort, descending, over the next power of two >= k (padding sorts last). */
	int kp = 1;
	while (kp < k)
		kp <<= 1;
	for (int i = k + tid; i < kp; i += PICK_THREADS)
		cand[i] = 0ull;
	for (int size = 2; size <= kp; size <<= 1) {
		for (int stride = size >> 1; stride > 0; stride >>= 1) {
			__syncthreads();
			for (int t = tid; t < kp; t += PICK_THREADS) {
				const int partner = t ^ stride;
				if (partner > t) {
					const unsigned long long p = cand[t], q = cand[partner];
					const bool desc = (t & size) == 0;
					if (desc ? p < q : p > q) {
						cand[t] = q;
						cand[partner] = p;
					}
				}
			}
		}
	}
	__syncthreads();
	for (int t = tid; t < k; t += PICK_THREADS) {
		const int col = composite_col(cand[t]);
		ids[(size_t)blockIdx.x * k + t] = col;
		vals[(size_t)blockIdx.x * k + t] = x[col];
	}
}

/* Device results in c->pick ([rows] or [rows·k] ids then as many values), then to the host. */
static enum gs_status pick_download(struct gs_cuda_ctx *c, size_t n, int32_t *ids, float *vals)
{
	GS_CU_TRY(cudaMemcpyAsync(ids, c->pick, n * sizeof(int32_t), cudaMemcpyDeviceToHost, c->stream));
	if (vals)
		GS_CU_TRY(cudaMemcpyAsync(vals, (char *)c->pick + n * sizeof(int32_t), n * sizeof(float),
					  cudaMemcpyDeviceToHost, c->stream));
	GS_CU_TRY(cudaStreamSynchronize(c->stream));
	return GS_OK;
}

enum gs_status gs_cu_argmax_rows(struct gs_cuda_ctx *c, const float *logits, int rows, int cols, int32_t *ids,
				 float *vals)
{
	const size_t n = (size_t)rows;

	GS_TRY(gs_cu_scratch(c, &c->pick, &c->pick_bytes, n * (sizeof(int32_t) + sizeof(float))));
	argmax_kernel<<<(unsigned)rows, PICK_THREADS, 0, c->stream>>>(logits, cols, (int32_t *)c->pick,
								       (float *)((char *)c->pick + n * sizeof(int32_t)));
	GS_CU_TRY(cudaGetLastError());
	return pick_download(c, n, ids, vals);
}

enum gs_status gs_cu_topk_rows(struct gs_cuda_ctx *c, const float *logits, int rows, int cols, int k, int32_t *ids,
			       float *vals)
{
	const size_t n = (size_t)rows * (size_t)k;

	GS_TRY(gs_cu_scratch(c, &c->pick, &c->pick_bytes, n * (sizeof(int32_t) + sizeof(float))));
	topk_kernel<<<(unsigned)rows, PICK_THREADS, 0, c->stream>>>(logits, cols, k, (int32_t *)c->pick,
								     (float *)((char *)c->pick + n * sizeof(int32_t)));
	GS_CU_TRY(cudaGetLastError());
	return pick_download(c, n, ids, vals);
}
