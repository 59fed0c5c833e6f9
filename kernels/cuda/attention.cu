/* attention over a ragged batch and the paged KV cache (struct gs_attn_args, gs_kernels.h),
 * the CPU backend's semantics: query row t of sequence s at position p = pos0 + (t - tok0)
 * sees key positions j in [max(0, p - window + 1), p], and with a.span also those of its image
 * span [lo, hi) (bidirectional image attention: the union is one interval, as p lies in the
 * span, and the keys past p are fresh rows of this step); keys j >= pos0 are this step's fresh
 * rows (k_new / v_new row tok0 + j - pos0), older ones come from the layer's slab at row
 * table[b] · block + j % block, b = j / block (mod ring when ring > 0). Query head h reads KV
 * head h / (n_heads / n_kv_heads).
 *
 * Two kernels, one launch each per call, splitting the rows by their sequence's length:
 *
 * Decode and short chunks (sequences with < FA_MIN_ROWS rows in the batch): one warp per (row,
 * head). Lane l holds elements l, l + 32, ... of q and of the output accumulator (head_dim <=
 * 32·EPL). Keys are taken four at a time (four independent dot products and shuffle reductions
 * in flight), scores s = (q·k)·scale, optionally capped, and folded into an online softmax in
 * fp32: running max m, running sum l, acc rescaled by exp(m_old - m_new). out = acc / l.
 *
 * Prefill (sequences with >= FA_MIN_ROWS rows, head_dim <= 256): tiled like FlashAttention-2.
 * A block takes BQ query rows of one sequence and one head, walks the keys its rows can see in
 * tiles of BK (K, then V, staged in shared memory), computes S = Q·Kᵀ and O += P·V on tensor
 * cores, and keeps the online softmax per row in shared memory. The products use 3xTF32: each
 * fp32 operand x = hi + lo with hi = tf32(x), lo = tf32(x - hi), and a·b ≈ a_hi·b_hi +
 * a_hi·b_lo + a_lo·b_hi, fp32 accumulation: about fp32 accuracy (~1e-6 relative) at three
 * tensor-core products, against one fp32 FMA per element of the warp kernel.
 *
 * The cache is fp32 or bf16 (gs_attn_args.kv_dtype; kernels templated on its type); with bf16
 * this step's fresh K/V rows are rounded to bf16 as they are read, so every key has the value it
 * will have once cached and a prompt gives the same results whatever its chunking.
 *
 * Context parallelism (gs_attn_seq.table, ring 0): a key whose block has a table entry < 0 is
 * another group's, cached or fresh, and is skipped as if absent (the warp kernel steps over such
 * blocks, the tiled kernel masks them and skips a tile with no key left). With gs_attn_args.part
 * the kernels write each (row, head)'s record instead of out: o normalised over the keys seen,
 * then lse = m + log(l) of the online softmax; a (row, head) that saw no key gets o 0, lse -inf.
 *
 * Both differ from the CPU's two-pass softmax only in rounding order. Every pointer, seqs[] and
 * the tables included, is device memory: the tiled kernel finds its sequence by scanning
 * seqs[] on the device. Env GS_CUDA_ATTN=simple sends every row to the warp kernel. */
#include <mma.h>

#include "cuda_common.cuh"

#define ATTN_THREADS 128
#define ATTN_WARPS (ATTN_THREADS / 32)
#define ATTN_KEYS 4 /* keys per step of the loop */
#define FA_MIN_ROWS 16 /* a sequence with at least this many rows in the batch takes the tiled kernel */
#define FA_THREADS 128
#define FA_WARPS (FA_THREADS / 32)

/* K/V values as fp32, for a cache of T: cached elements converted exactly, this step's fresh
 * fp32 rows read as they will be stored (rounded to bf16 for a bf16 cache). */
template <typename T>
struct kv_elem;
template <>
struct kv_elem<float> {
	static __device__ __forceinline__ float cached(const void *row, int d) { return ((const float *)row)[d]; }
	static __device__ __forceinline__ float fresh(float x) { return x; }
};
template <>
struct kv_elem<__nv_bfloat16> {
	static __device__ __forceinline__ float cached(const void *row, int d)
	{
		return __bfloat162float(((const __nv_bfloat16 *)row)[d]);
	}
	static __device__ __forceinline__ float fresh(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
};

/* Where the K (or V) values of position j start, head offset off included: a fresh fp32 row or
 * a cache row of T (exactly one is set). */
struct kv_ptr {
	const float *fresh;
	const void  *cached;
};

template <typename T>
static __device__ __forceinline__ kv_ptr kv_row(const gs_attn_args &a, const gs_attn_seq &sq, const float *fresh,
						const void *cache, int32_t j, size_t stride, size_t off)
{
	int32_t b;
	kv_ptr p = { NULL, NULL };

	if (j >= sq.pos0) {
		p.fresh = fresh + (size_t)(sq.tok0 + j - sq.pos0) * stride + off;
		return p;
	}
	b = j / a.block;
	if (sq.ring)
		b %= sq.ring;
	p.cached = (const T *)cache + ((size_t)sq.table[b] * (size_t)a.block + (size_t)(j % a.block)) * stride + off;
	return p;
}

template <typename T>
static __device__ __forceinline__ float kv_get(const kv_ptr &p, int d)
{
	return p.fresh ? kv_elem<T>::fresh(p.fresh[d]) : kv_elem<T>::cached(p.cached, d);
}

/* Is key position j (cached or fresh) held by another context-parallel group? Only without a
 * ring; a NULL table (no cached block at all) holds nothing elsewhere. */
static __device__ __forceinline__ bool kv_elsewhere(const gs_attn_args &a, const gs_attn_seq &sq, int32_t j)
{
	return !sq.ring && sq.table && sq.table[j / a.block] < 0;
}

/* Where (row, head)'s result goes: out[row][h], or its merge record when a.part is set. */
static __device__ __forceinline__ float *attn_dst(const gs_attn_args &a, int row, int h)
{
	const int D = a.head_dim;
	return a.part ? a.part + ((size_t)row * a.n_heads + h) * (size_t)(D + 1)
		      : a.out + (size_t)row * a.n_heads * D + (size_t)h * D;
}

/* skip_from: rows of sequences with at least this many rows are the tiled kernel's. */
template <int EPL, typename T>
__global__ void __launch_bounds__(ATTN_THREADS) attention_kernel(const gs_attn_args a, int skip_from)
{
	const int lane = threadIdx.x & 31;
	const long long task = (long long)blockIdx.x * ATTN_WARPS + (threadIdx.x >> 5);

	if (task >= (long long)a.n_tokens * a.n_heads)
		return; /* whole warp */
	const int row = (int)(task / a.n_heads), h = (int)(task % a.n_heads);
	const int D = a.head_dim, rep = a.n_heads / a.n_kv_heads;
	const size_t kv_stride = (size_t)a.n_kv_heads * D, q_stride = (size_t)a.n_heads * D;
	const gs_attn_seq sq = a.seqs[a.tok_seq[row]];
	if (sq.n_tokens >= skip_from)
		return; /* whole warp: one row */
	const int32_t pos = sq.pos0 + (row - sq.tok0);
	int32_t first = (a.window != INT32_MAX && pos - a.window + 1 > 0) ? pos - a.window + 1 : 0, last = pos;
	if (a.span && a.span[2 * row] < a.span[2 * row + 1]) { /* its image, both ways */
		first = min(first, a.span[2 * row]);
		last = max(last, a.span[2 * row + 1] - 1);
	}
	const float *q = a.q + (size_t)row * q_stride + (size_t)h * D;
	float *out = attn_dst(a, row, h);
	const bool cp = !sq.ring && sq.table; /* blocks may be another group's */
	const size_t kvh = (size_t)(h / rep) * D;
	float qv[EPL], acc[EPL];
	float m = -INFINITY, l = 0.0f;

#pragma unroll
	for (int e = 0; e < EPL; e++) {
		const int d = lane + 32 * e;
		qv[e] = d < D ? q[d] : 0.0f;
		acc[e] = 0.0f;
	}

	for (int32_t j0 = first; j0 <= last; j0 += ATTN_KEYS) {
		float s[ATTN_KEYS];
		bool ok[ATTN_KEYS]; /* key j0 + u is this row's: the same on every lane */

		if (cp && kv_elsewhere(a, sq, j0)) {
			/* step over the whole groups left in j0's block, keeping j0 = first mod
			 * ATTN_KEYS (the same groups as without skipping); a group that straddles
			 * the block's end is masked key by key below */
			const int32_t whole = ((j0 / a.block + 1) * a.block - j0) / ATTN_KEYS;
			if (whole > 0) {
				j0 += (whole - 1) * ATTN_KEYS;
				continue;
			}
		}
#pragma unroll
		for (int u = 0; u < ATTN_KEYS; u++)
			ok[u] = j0 + u <= last && !(cp && kv_elsewhere(a, sq, j0 + u));
#pragma unroll
		for (int u = 0; u < ATTN_KEYS; u++) {
			float part = 0.0f;
			if (ok[u]) {
				const kv_ptr kr = kv_row<T>(a, sq, a.k_new, a.k_cache, j0 + u, kv_stride, kvh);
#pragma unroll
				for (int e = 0; e < EPL; e++) {
					const int d = lane + 32 * e;
					if (d < D)
						part = fmaf(qv[e], kv_get<T>(kr, d), part);
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
			if (ok[u]) {
				float v = s[u] * a.scale;
				if (a.softcap > 0)
					v = a.softcap * tanhf(v / a.softcap);
				s[u] = v;
				mc = fmaxf(mc, v);
			}
		}
		const float m_new = fmaxf(m, mc);
		if (m_new == -INFINITY)
			continue; /* no key seen yet (a group of another group's keys) */
		const float corr = expf(m - m_new); /* 0 on the first step (m = -inf) */
		l *= corr;
#pragma unroll
		for (int e = 0; e < EPL; e++)
			acc[e] *= corr;
#pragma unroll
		for (int u = 0; u < ATTN_KEYS; u++) {
			if (ok[u]) {
				const float p = expf(s[u] - m_new);
				const kv_ptr vr = kv_row<T>(a, sq, a.v_new, a.v_cache, j0 + u, kv_stride, kvh);
				l += p;
#pragma unroll
				for (int e = 0; e < EPL; e++) {
					const int d = lane + 32 * e;
					if (d < D)
						acc[e] = fmaf(p, kv_get<T>(vr, d), acc[e]);
				}
			}
		}
		m = m_new;
	}

	/* l >= 1 once a key was seen (the max term contributes exp(0)); l = 0: none */
	const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
	for (int e = 0; e < EPL; e++) {
		const int d = lane + 32 * e;
		if (d < D)
			out[d] = acc[e] * inv;
	}
	if (a.part && lane == 0)
		out[D] = l > 0.0f ? m + logf(l) : -INFINITY;
}

/* ---- tiled prefill kernel ------------------------------------------------------------------ */

namespace wmma = nvcuda::wmma;

/* DT: head_dim rounded up to a multiple of 16 (q, k, v zero-padded), BQ query rows and BK keys a
 * tile. Shared memory (floats): Q [BQ][DP], K or V [BK][DP], S then P [BQ][SP], O [BQ][DP], the
 * running max and sum [BQ] each; pitches padded by 8 floats against bank conflicts, every
 * wmma pointer 32-byte aligned. */
template <int DT, int BQ, int BK>
struct fa_cfg {
	static constexpr int DP = DT + 8, SP = BK + 8;
	static constexpr int TPR = FA_THREADS / BQ;  /* threads per row in the softmax */
	static constexpr size_t floats = (size_t)BQ * DP * 2 + (size_t)BK * DP + (size_t)BQ * SP + 2 * (size_t)BQ;
	static constexpr size_t bytes = floats * sizeof(float);
	static_assert(DT % 16 == 0 && BQ % 16 == 0 && BK % 16 == 0, "wmma tiles");
	static_assert(FA_THREADS % BQ == 0 && BK % TPR == 0 && DT % TPR == 0 && 32 % TPR == 0, "softmax lanes");
};

typedef wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa_frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fa_frag_bt;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa_frag_b;
typedef wmma::fragment<wmma::accumulator, 16, 16, 8, float> fa_frag_c;

/* hi = tf32(x) in place, lo = tf32(x - hi). */
template <typename F>
static __device__ __forceinline__ void split_tf32(F &hi, F &lo)
{
#pragma unroll
	for (int i = 0; i < hi.num_elements; i++) {
		const float x = hi.x[i], h = wmma::__float_to_tf32(x);
		hi.x[i] = h;
		lo.x[i] = wmma::__float_to_tf32(x - h);
	}
}

/* acc += a·b in 3xTF32 (a, b loaded as fp32 values). */
template <typename FB>
static __device__ __forceinline__ void mma_3xtf32(fa_frag_c &acc, fa_frag_a &a, FB &b)
{
	fa_frag_a a_lo;
	FB b_lo;

	split_tf32(a, a_lo);
	split_tf32(b, b_lo);
	wmma::mma_sync(acc, a_lo, b, acc);
	wmma::mma_sync(acc, a, b_lo, acc);
	wmma::mma_sync(acc, a, b, acc);
}

/* Keys (or values) j0 .. j0 + BK - 1 of kv head kvh into dst [BK][DP]; zeros past jhi, for keys
 * of another context-parallel group and past D. The keys pass (set_kept) records in kept[c]
 * whether key j0 + c is loaded and returns whether this thread loaded any; the values pass
 * reads kept[]. */
template <int DT, int BK, int DP, typename T>
static __device__ __forceinline__ bool fa_load_kv(float *dst, unsigned char *kept, bool set_kept,
						  const gs_attn_args &a, const gs_attn_seq &sq, const float *fresh,
						  const void *cache, int32_t j0, int32_t jhi, size_t kv_stride, size_t kvh,
						  int D)
{
	const int lane = threadIdx.x & 31;
	bool any = false;

	for (int c = threadIdx.x >> 5; c < BK; c += FA_WARPS) { /* a warp per key row, lanes along d */
		const int32_t j = j0 + c;
		const bool live = set_kept ? j <= jhi && !kv_elsewhere(a, sq, j) : kept[c] != 0;
		if (set_kept && lane == 0)
			kept[c] = live;
		any |= live;
		if (!live) {
			for (int d = lane; d < DT; d += 32)
				dst[c * DP + d] = 0.0f;
			continue;
		}
		const kv_ptr src = kv_row<T>(a, sq, fresh, cache, j, kv_stride, kvh);
		for (int d = lane; d < DT; d += 32)
			dst[c * DP + d] = d < D ? kv_get<T>(src, d) : 0.0f;
	}
	return any;
}

template <int DT, int BQ, int BK, typename T>
__global__ void __launch_bounds__(FA_THREADS) flash_kernel(const gs_attn_args a)
{
	typedef fa_cfg<DT, BQ, BK> cfg;
	constexpr int DP = cfg::DP, SP = cfg::SP, TPR = cfg::TPR, CPT = BK / TPR, DPT = DT / TPR;
	extern __shared__ __align__(128) float fa_smem[];
	float *Qs = fa_smem, *Os = Qs + BQ * DP, *KVs = Os + BQ * DP, *Ss = KVs + BK * DP, *Ms = Ss + BQ * SP,
	      *Ls = Ms + BQ;
	__shared__ int s_seq, s_t0, s_nq, s_jlo, s_jhi;
	__shared__ unsigned char s_kept[BK]; /* key j0 + c of the tile is loaded (fa_load_kv) */
	const int tid = threadIdx.x, warp = tid >> 5, h = blockIdx.y;

	/* this block's tile: the blockIdx.x-th tile of BQ rows over the long sequences in order */
	if (tid == 0) {
		int b = blockIdx.x, found = -1, t0 = 0, nq = 0;
		for (int i = 0; i < a.n_seqs && found < 0; i++) {
			const int n = a.seqs[i].n_tokens;
			if (n < FA_MIN_ROWS)
				continue;
			const int tiles = (n + BQ - 1) / BQ;
			if (b < tiles) {
				found = i;
				t0 = a.seqs[i].tok0 + b * BQ;
				nq = n - b * BQ < BQ ? n - b * BQ : BQ;
			} else {
				b -= tiles;
			}
		}
		s_seq = found, s_t0 = t0, s_nq = nq;
		/* the keys the tile's rows see: window of its first row to its last row, widened by
		 * the image spans of its rows */
		if (found >= 0) {
			const gs_attn_seq &q = a.seqs[found];
			const int32_t pf = q.pos0 + (t0 - q.tok0);
			int32_t jlo = (a.window != INT32_MAX && pf - a.window + 1 > 0) ? pf - a.window + 1 : 0;
			int32_t jhi = pf + nq - 1;
			for (int r = 0; a.span && r < nq; r++) {
				const int32_t lo = a.span[2 * (t0 + r)], hi = a.span[2 * (t0 + r) + 1];
				if (lo < hi) {
					jlo = min(jlo, lo);
					jhi = max(jhi, hi - 1);
				}
			}
			s_jlo = jlo, s_jhi = jhi;
		}
	}
	__syncthreads();
	if (s_seq < 0)
		return; /* the grid is an upper bound: no tile left for this block */
	const gs_attn_seq sq = a.seqs[s_seq];
	const int t0 = s_t0, nq = s_nq, D = a.head_dim, rep = a.n_heads / a.n_kv_heads;
	const size_t kv_stride = (size_t)a.n_kv_heads * D, q_stride = (size_t)a.n_heads * D;
	const size_t kvh = (size_t)(h / rep) * D;
	const int32_t pos_first = sq.pos0 + (t0 - sq.tok0);
	const int32_t jlo = s_jlo, jhi = s_jhi;

	for (int i = tid; i < BQ * DT; i += FA_THREADS) {
		const int r = i / DT, d = i % DT;
		Qs[r * DP + d] = r < nq && d < D ? a.q[(size_t)(t0 + r) * q_stride + (size_t)h * D + d] : 0.0f;
		Os[r * DP + d] = 0.0f;
	}
	for (int r = tid; r < BQ; r += FA_THREADS) {
		Ms[r] = -INFINITY;
		Ls[r] = 0.0f;
	}
	/* softmax lanes: row sr, columns [sc * CPT, +CPT) of S and [sc * DPT, +DPT) of O */
	const int sr = tid / TPR, sc = tid % TPR;
	const int32_t pos_r = pos_first + sr;
	const bool row_live = sr < nq;
	const int32_t span_lo = row_live && a.span ? a.span[2 * (t0 + sr)] : 0;
	const int32_t span_hi = row_live && a.span ? a.span[2 * (t0 + sr) + 1] : 0;

	for (int32_t j0 = jlo; j0 <= jhi; j0 += BK) {
		__syncthreads(); /* the previous tile's P·V is done with KVs, Ss and s_kept */
		const bool any = fa_load_kv<DT, BK, DP, T>(KVs, s_kept, true, a, sq, a.k_new, a.k_cache, j0, jhi,
							   kv_stride, kvh, D);
		if (!__syncthreads_or(any))
			continue; /* every key of the tile is another group's: nothing to add */

		/* S = Q·Kᵀ: B = Kᵀ is K [key][d] read column-major */
		for (int t = warp; t < (BQ / 16) * (BK / 16); t += FA_WARPS) {
			const int ti = t / (BK / 16), tj = t % (BK / 16);
			fa_frag_c acc;
			wmma::fill_fragment(acc, 0.0f);
			for (int kk = 0; kk < DT; kk += 8) {
				fa_frag_a fq;
				fa_frag_bt fk;
				wmma::load_matrix_sync(fq, Qs + ti * 16 * DP + kk, DP);
				wmma::load_matrix_sync(fk, KVs + tj * 16 * DP + kk, DP);
				mma_3xtf32(acc, fq, fk);
			}
			wmma::store_matrix_sync(Ss + ti * 16 * SP + tj * 16, acc, SP, wmma::mem_row_major);
		}
		__syncthreads();

		/* online softmax of row sr over this tile; P replaces S; the row of O is rescaled */
		{
			const float m_old = Ms[sr];
			float v[CPT], mx = -INFINITY, sum = 0.0f, corr;
#pragma unroll
			for (int c = 0; c < CPT; c++) {
				const int32_t j = j0 + sc * CPT + c;
				float x = Ss[sr * SP + sc * CPT + c] * a.scale;
				if (a.softcap > 0)
					x = a.softcap * tanhf(x / a.softcap);
				const bool seen = s_kept[sc * CPT + c] &&
						  ((j <= pos_r && pos_r - j < a.window) || (j >= span_lo && j < span_hi));
				v[c] = row_live && seen ? x : -INFINITY;
				mx = fmaxf(mx, v[c]);
			}
#pragma unroll
			for (int o = TPR / 2; o > 0; o >>= 1)
				mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
			const float m_new = fmaxf(m_old, mx);
			if (m_new == -INFINITY) { /* nothing visible yet (or a padding row) */
				corr = 1.0f;
#pragma unroll
				for (int c = 0; c < CPT; c++)
					v[c] = 0.0f;
			} else {
				corr = expf(m_old - m_new); /* 0 when m_old = -inf: O and l are still 0 */
#pragma unroll
				for (int c = 0; c < CPT; c++) {
					v[c] = expf(v[c] - m_new);
					sum += v[c];
				}
			}
#pragma unroll
			for (int c = 0; c < CPT; c++)
				Ss[sr * SP + sc * CPT + c] = v[c];
#pragma unroll
			for (int o = TPR / 2; o > 0; o >>= 1)
				sum += __shfl_xor_sync(0xffffffffu, sum, o);
#pragma unroll
			for (int d = 0; d < DPT; d++)
				Os[sr * DP + sc * DPT + d] *= corr;
			__syncwarp(); /* every lane of the row has read Ms[sr] */
			if (sc == 0) {
				Ms[sr] = m_new;
				Ls[sr] = Ls[sr] * corr + sum;
			}
		}
		/* V over K: every warp finished S = Q·Kᵀ before the barrier above */
		fa_load_kv<DT, BK, DP, T>(KVs, s_kept, false, a, sq, a.v_new, a.v_cache, j0, jhi, kv_stride, kvh, D);
		__syncthreads();

		/* O += P·V: B = V [key][d] row-major */
		for (int t = warp; t < (BQ / 16) * (DT / 16); t += FA_WARPS) {
			const int ti = t / (DT / 16), tj = t % (DT / 16);
			fa_frag_c acc;
			wmma::load_matrix_sync(acc, Os + ti * 16 * DP + tj * 16, DP, wmma::mem_row_major);
			for (int kk = 0; kk < BK; kk += 8) {
				fa_frag_a fp;
				fa_frag_b fv;
				wmma::load_matrix_sync(fp, Ss + ti * 16 * SP + kk, SP);
				wmma::load_matrix_sync(fv, KVs + kk * DP + tj * 16, DP);
				mma_3xtf32(acc, fp, fv);
			}
			wmma::store_matrix_sync(Os + ti * 16 * DP + tj * 16, acc, DP, wmma::mem_row_major);
		}
	}
	__syncthreads();
	/* l >= 1 for a row that saw a key (exp(0) at the max); l = 0: none (all another group's) */
	for (int i = tid; i < BQ * DT; i += FA_THREADS) {
		const int r = i / DT, d = i % DT;
		if (r < nq && d < D)
			attn_dst(a, t0 + r, h)[d] = Ls[r] > 0.0f ? Os[r * DP + d] / Ls[r] : 0.0f;
	}
	for (int r = tid; a.part && r < nq; r += FA_THREADS)
		attn_dst(a, t0 + r, h)[D] = Ls[r] > 0.0f ? Ms[r] + logf(Ls[r]) : -INFINITY;
}

template <int DT, int BQ, int BK, typename T>
static void launch_flash(struct gs_cuda_ctx *c, const struct gs_attn_args *a)
{
	typedef fa_cfg<DT, BQ, BK> cfg;
	/* upper bound on the tiles: each long sequence adds at most one partial tile */
	const long long long_seqs = a->n_seqs < a->n_tokens / FA_MIN_ROWS ? a->n_seqs : a->n_tokens / FA_MIN_ROWS;
	const long long tiles = a->n_tokens / BQ + long_seqs + 1;
	static uint64_t opted_in; /* devices (bit per index) where the kernel may use cfg::bytes */
	const uint64_t bit = c->device < 64 ? 1ull << c->device : 0;

	GS_ASSERT(cfg::bytes <= c->smem_optin && "attention: tiled kernel needs more shared memory than the device has");
	GS_ASSERT(tiles <= INT32_MAX && a->n_heads <= 65535);
	if (!(opted_in & bit)) {
		GS_CU_CHECK(cudaFuncSetAttribute(flash_kernel<DT, BQ, BK, T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
						 (int)cfg::bytes));
		opted_in |= bit;
	}
	flash_kernel<DT, BQ, BK, T><<<dim3((unsigned)tiles, (unsigned)a->n_heads), FA_THREADS, cfg::bytes, c->stream>>>(*a);
	GS_CU_LAUNCHED(c, "attention (tiled)");
}

template <int EPL, typename T>
static void launch(struct gs_cuda_ctx *c, const struct gs_attn_args *a, int skip_from)
{
	const long long tasks = (long long)a->n_tokens * a->n_heads;
	const unsigned blocks = (unsigned)((tasks + ATTN_WARPS - 1) / ATTN_WARPS);

	attention_kernel<EPL, T><<<blocks, ATTN_THREADS, 0, c->stream>>>(*a, skip_from);
	GS_CU_LAUNCHED(c, "attention");
}

template <typename T>
static void attention(struct gs_cuda_ctx *c, const struct gs_attn_args *a)
{
	const int D = a->head_dim;
	/* The tiled kernel when some sequence may have FA_MIN_ROWS rows (not in a pure decode step:
	 * as many rows as sequences means one row each); the warp kernel unless one sequence holds
	 * every row (then the tiled kernel has them all). */
	const bool tiled = !c->attn_simple && D <= 256 && a->n_tokens >= FA_MIN_ROWS && a->n_tokens > a->n_seqs;
	const int skip_from = tiled ? FA_MIN_ROWS : INT32_MAX;

	if (!tiled || a->n_seqs > 1) {
		if (D <= 32)
			launch<1, T>(c, a, skip_from);
		else if (D <= 64)
			launch<2, T>(c, a, skip_from);
		else if (D <= 128)
			launch<4, T>(c, a, skip_from);
		else if (D <= 256)
			launch<8, T>(c, a, skip_from);
		else if (D <= GS_CU_ATTN_MAX_HEAD_DIM)
			launch<16, T>(c, a, skip_from);
		else
			GS_ASSERT(!"attention: head_dim above GS_CU_ATTN_MAX_HEAD_DIM");
	}
	if (tiled) {
		if (D <= 32)
			launch_flash<32, 64, 64, T>(c, a);
		else if (D <= 64)
			launch_flash<64, 64, 64, T>(c, a);
		else if (D <= 128)
			launch_flash<128, 64, 64, T>(c, a);
		else
			launch_flash<256, 32, 32, T>(c, a);
	}
}

void gs_cu_attention(struct gs_cuda_ctx *c, const struct gs_attn_args *a)
{
	if (a->kv_dtype == GS_DTYPE_BF16)
		attention<__nv_bfloat16>(c, a);
	else
		attention<float>(c, a);
}
