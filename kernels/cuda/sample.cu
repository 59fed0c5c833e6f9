/* On-device argmax and top-k per row of fp32 logits, so a 262K-wide vocabulary row never
 * crosses to the host: only k (id, value) pairs per row do.
 *
 * Order: every value maps to an order-preserving 32-bit key (sign-flip trick; NaN -> 0, the
 * lowest; -0.0 -> the key of +0.0, as the sampler compares floats), and candidates compare as
 * the 64-bit composite (key << 32) | ~column, so larger values come first and equal values by
 * smaller column.
 *
 * The backend's candidates op (gs_kernels.h, the rank side of distributed sampling) is built
 * from the same top-k: the row's processed logits into scratch (sanitised, temperature; then
 * the edited tokens -- logit_bias, penalties, min_tokens mask -- rewritten from their raw
 * values), top-k over them, and one kernel
 * that writes the k + 1 struct gs_cand entries per row with the raw logits and the row's
 * log-sum-exp. Division and multiplication are IEEE round-to-nearest as on the CPU, so the
 * candidates are the sampler's to the bit; the log-sum-exp (device expf, another summation
 * order) agrees to ~1e-6 relative.
 *
 * argmax: one block per row, max of composites (thread, warp shuffle, shared memory).
 * top-k:  one block of 1024 threads per row, radix select (as PyTorch's topk): four passes of
 *         8-bit histograms from the most significant digit find the k-th largest key K and
 *         how many elements equal to K belong in the top k; one more pass collects every key
 *         > K (any order) and the first elements == K in column order (block-wide ballot
 *         scan); a bitonic sort of the <= 256 candidates in shared memory orders them. */
#include <float.h>

#include "cuda_common.cuh"

#define PICK_THREADS 1024
#define PICK_WARPS (PICK_THREADS / 32)

static __device__ __forceinline__ uint32_t order_key(float f)
{
	const uint32_t u = __float_as_uint(f);

	if (isnan(f))
		return 0u;
	if (f == 0.0f)
		return 0x80000000u; /* -0.0 == +0.0 */
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

/* ---- the candidates op ------------------------------------------------------------------ */

#define CAND_THREADS 256
#define CAND_HIST_BLOCKS 32

static __device__ __forceinline__ float sanitize(float v)
{
	if (isnan(v))
		return -INFINITY;
	return v > FLT_MAX ? FLT_MAX : v;
}

static __device__ __forceinline__ float clamp_max(float v)
{
	return v > FLT_MAX ? FLT_MAX : v;
}

/* The row's structured-output mask (gs_cand_args.allow), or NULL when it has none. */
static __device__ __forceinline__ const uint8_t *row_allow(const uint8_t *allow, const struct gs_cand_row *row, int r,
							   int cols)
{
	return row[r].masked ? allow + (size_t)r * (size_t)cols : NULL;
}

/* proc[r][c] = the sanitised logit divided by the row's temperature (every column); -inf
 * where the row's mask refuses the token. */
__global__ void cand_proc_kernel(float *__restrict__ proc, const float *__restrict__ raw,
				 const struct gs_cand_row *__restrict__ row, const uint8_t *__restrict__ allow, int cols)
{
	const int r = blockIdx.y;
	const float t = row[r].temperature;
	const float *x = raw + (size_t)r * (size_t)cols;
	const uint8_t *al = row_allow(allow, row, r, cols);
	float *y = proc + (size_t)r * (size_t)cols;

	for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < cols; i += gridDim.x * blockDim.x) {
		float v = sanitize(x[i]);
		if (t != 1.0f)
			v = clamp_max(__fdiv_rn(v, t));
		y[i] = al && !al[i] ? -INFINITY : v;
	}
}

/* Then the edited tokens, from their raw values: gs_logit_edit_value() (gs_kernels.h) step
 * for step, every operation rounded on its own (no contraction into an FMA). */
__global__ void cand_edit_kernel(float *__restrict__ proc, const float *__restrict__ raw,
				 const struct gs_cand_row *__restrict__ row, const struct gs_logit_edit *__restrict__ edit,
				 const uint8_t *__restrict__ allow, int cols, int vocab0)
{
	const int r = blockIdx.y;
	const struct gs_cand_row rp = row[r];
	const uint8_t *al = row_allow(allow, row, r, cols);

	for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < rp.n_edit; i += gridDim.x * blockDim.x) {
		const struct gs_logit_edit e = edit[rp.edit0 + i];
		const long long col = (long long)e.id - vocab0;
		if (col < 0 || col >= cols || (al && !al[col]))
			continue; /* outside the slice, or refused by the grammar (stays -inf) */
		float v = sanitize(raw[(size_t)r * (size_t)cols + (size_t)col]);
		if (e.flags & GS_EDIT_MASKED) {
			v = -INFINITY;
		} else {
			if (e.bias != 0.0f)
				v = clamp_max(__fadd_rn(v, e.bias));
			if ((e.flags & GS_EDIT_SEEN) && rp.penalty != 1.0f)
				v = clamp_max(v > 0.0f ? __fdiv_rn(v, rp.penalty) : __fmul_rn(v, rp.penalty));
			if (e.count > 0) {
				const float cf = __fmul_rn((float)e.count, rp.frequency);
				v = clamp_max(__fsub_rn(v, cf));
				v = clamp_max(__fsub_rn(v, rp.presence));
			}
			if (rp.temperature != 1.0f)
				v = clamp_max(__fdiv_rn(v, rp.temperature));
		}
		proc[(size_t)r * (size_t)cols + (size_t)col] = v;
	}
}

/* lse[r]: log-sum-exp of the row's sanitised raw logits when wanted, else -inf. One block per
 * row; the max, then fp32 partial sums per thread (<= 256 terms each at 262K columns), the
 * block's sum in double. */
__global__ void __launch_bounds__(PICK_THREADS)
cand_lse_kernel(float *__restrict__ lse, const float *__restrict__ raw, const struct gs_cand_row *__restrict__ row,
		const uint8_t *__restrict__ allow, int cols)
{
	__shared__ float part[PICK_WARPS];
	const int r = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const float *x = raw + (size_t)r * (size_t)cols;
	const uint8_t *al = row_allow(allow, row, r, cols);
	float mx = -INFINITY;

	if (!row[r].want_lse || cols == 0) { /* uniform over the block */
		if (tid == 0)
			lse[r] = -INFINITY;
		return;
	}
	for (int i = tid; i < cols; i += PICK_THREADS)
		mx = fmaxf(mx, al && !al[i] ? -INFINITY : sanitize(x[i]));
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
	if (lane == 0)
		part[warp] = mx;
	__syncthreads();
	mx = part[0];
	for (int w = 1; w < PICK_WARPS; w++)
		mx = fmaxf(mx, part[w]);
	if (!(mx > -INFINITY)) { /* every logit -inf or NaN: uniform */
		if (tid == 0)
			lse[r] = -INFINITY;
		return;
	}
	float acc = 0.0f;
	for (int i = tid; i < cols; i += PICK_THREADS)
		acc += al && !al[i] ? 0.0f : expf(sanitize(x[i]) - mx);
	const double total = gs_cu_block_sum<double>((double)acc);
	if (tid == 0)
		lse[r] = mx + (float)log(total);
}

/* out[r] = the kk best {id, proc, raw}, padding to k, the trailer: k + 1 entries a row. */
__global__ void cand_finish_kernel(struct gs_cand *__restrict__ out, const int32_t *__restrict__ top_col,
				   const float *__restrict__ top_val, const float *__restrict__ raw,
				   const float *__restrict__ lse, const struct gs_cand_row *__restrict__ row,
				   const uint8_t *__restrict__ allow, int cols, int k, int kk, int vocab0)
{
	const int r = blockIdx.x;
	const uint8_t *al = row_allow(allow, row, r, cols);

	for (int i = threadIdx.x; i <= k; i += blockDim.x) {
		struct gs_cand e;
		const int col = i < kk ? top_col[(size_t)r * kk + i] : 0;
		if (i < kk && !(al && !al[col])) {
			e.id = vocab0 + col;
			e.proc = top_val[(size_t)r * kk + i];
			e.raw = raw[(size_t)r * (size_t)cols + (size_t)col];
		} else if (i < k) { /* padding, or a column the grammar refuses: no candidate */
			e.id = -1;
			e.proc = -INFINITY;
			e.raw = -INFINITY;
		} else {
			e.id = -2;
			e.proc = 0.0f;
			e.raw = lse[r];
		}
		out[(size_t)r * (size_t)(k + 1) + i] = e;
	}
}

void gs_cu_candidates(struct gs_cuda_ctx *c, const struct gs_cand_args *a)
{
	const int rows = a->rows, cols = a->cols, k = a->k, kk = cols < k ? cols : k;
	const size_t n_proc = (size_t)rows * (size_t)cols, n_top = (size_t)rows * (size_t)kk;
	const size_t bytes = sizeof(float) * n_proc + (sizeof(int32_t) + sizeof(float)) * n_top + sizeof(float) * rows;

	if (gs_cu_scratch(c, &c->cand, &c->cand_bytes, bytes) != GS_OK)
		gs_cu_fatal(__FILE__, __LINE__, "candidates scratch", gs_last_error());
	float *proc = (float *)c->cand;
	int32_t *top_col = (int32_t *)(proc + n_proc);
	float *top_val = (float *)(top_col + n_top);
	float *lse = top_val + n_top;

	if (kk > 0) {
		const unsigned gx = (unsigned)((cols + CAND_THREADS - 1) / CAND_THREADS);
		cand_proc_kernel<<<dim3(gx < 64 ? gx : 64, (unsigned)rows), CAND_THREADS, 0, c->stream>>>(proc, a->logits,
													 a->row, a->allow, cols);
		GS_CU_LAUNCHED(c, "candidates (processed logits)");
		cand_edit_kernel<<<dim3(CAND_HIST_BLOCKS, (unsigned)rows), CAND_THREADS, 0, c->stream>>>(
			proc, a->logits, a->row, a->edit, a->allow, cols, a->vocab0);
		GS_CU_LAUNCHED(c, "candidates (logit edits)");
		topk_kernel<<<(unsigned)rows, PICK_THREADS, 0, c->stream>>>(proc, cols, kk, top_col, top_val);
		GS_CU_LAUNCHED(c, "candidates (top-k)");
	}
	cand_lse_kernel<<<(unsigned)rows, PICK_THREADS, 0, c->stream>>>(lse, a->logits, a->row, a->allow, cols);
	GS_CU_LAUNCHED(c, "candidates (log-sum-exp)");
	cand_finish_kernel<<<(unsigned)rows, CAND_THREADS, 0, c->stream>>>(a->out, top_col, top_val, a->logits, lse,
									     a->row, a->allow, cols, k, kk, a->vocab0);
	GS_CU_LAUNCHED(c, "candidates (entries)");
}
