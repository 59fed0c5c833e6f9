/* Kernels: the tensor view, the backend vtable and the ops the forward pass uses.
 *
 * Kernels know nothing about Gemma (STYLE.md 1): model quirks live in worker/forward.c.
 * One vtable per backend (STYLE.md 2): gs_backend = { iface; ctx }. The CPU backend keeps
 * activations in fp32 and reads bf16/f16/f32 weights straight from the mmap. */
#ifndef GS_KERNELS_H
#define GS_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_dtype.h"
#include "gs_fmath.h"
#include "gs_status.h"

/* A plain 2-D row-major view: element (r, c) at data + (r * cols + c) * dtype size. */
struct gs_tensor {
	enum gs_dtype dtype;
	int64_t       rows;       /* out_features for nn.Linear weights */
	int64_t       cols;       /* in_features */
	const void   *data;       /* mmap'd or arena memory, not owned */
};

/* One sequence's rows in a batched attention call. Its queries are rows [tok0, tok0 + n_tokens)
 * at positions pos0 + t. Keys at positions < pos0 come from the paged cache: position j is
 * row table[b] * block + j % block of the layer's slab, with b = j / block, taken modulo
 * ring when ring > 0 (sliding layers keep a ring of blocks). Keys at positions >= pos0 are
 * the batch's fresh k/v rows of this sequence. With a bf16 cache the fresh rows are read as
 * they will be stored (rounded to bf16), so a key has one value whether it is fresh or cached
 * and results do not depend on how a prompt was chunked. */
struct gs_attn_seq {
	int32_t        tok0;
	int32_t        n_tokens;
	int32_t        pos0;
	const int32_t *table;     /* block ids; without a ring, an entry < 0 marks a block another
				   * context-parallel group holds (ARCHITECTURE.md §4): its keys,
				   * cached or fresh, are skipped here. Such entries come in whole
				   * GS_KV_CP_UNIT-position units (a multiple of the block); a table
				   * without a ring then covers the fresh positions too. NULL
				   * (no ring): every key is fresh and held here */
	int32_t        ring;      /* 0: table covers every block */
};

/* Context parallelism places a sequence's global-layer KV in units of this many positions
 * (aligned on absolute positions): every block of a unit is held by the same group. */
#define GS_KV_CP_UNIT 64

/* Attention of a ragged batch over one layer (STYLE.md 3: plain data). Query t sees key
 * positions j with j <= pos(t) and pos(t) - j < window, and, with span, also every j in
 * [span[2t], span[2t + 1]) (the soft tokens of the image it belongs to, in both directions, in
 * every layer; ARCHITECTURE.md "Image tokens"). The union is one interval, as pos(t) lies in
 * the span. */
struct gs_attn_args {
	float                    *out;        /* [n_tokens, n_heads * head_dim] */
	const float              *q;          /* [n_tokens, n_heads * head_dim], normed + rotated */
	const float              *k_new;      /* [n_tokens, n_kv_heads * head_dim] this step's keys */
	const float              *v_new;      /* [n_tokens, n_kv_heads * head_dim] */
	const void               *k_cache;    /* this layer's slab [blocks * block, n_kv_heads * head_dim] */
	const void               *v_cache;
	enum gs_dtype             kv_dtype;   /* of the slabs: GS_DTYPE_F32, or GS_DTYPE_BF16 (kv_dtype op) */
	int32_t                   block;      /* positions per block */
	const struct gs_attn_seq *seqs;
	int32_t                   n_seqs;
	const int32_t            *tok_seq;    /* [n_tokens] index into seqs of each row */
	int32_t                   n_tokens;
	int32_t                   n_heads;
	int32_t                   n_kv_heads; /* q head h reads kv head h / (n_heads / n_kv_heads) */
	int32_t                   head_dim;
	int32_t                   window;     /* INT32_MAX: plain causal */
	float                     scale;      /* multiplies q·k */
	float                     softcap;    /* 0: none; else cap * tanh(s / cap) */
	const int32_t            *span;       /* [n_tokens][2] or NULL (text: the causal rule only);
					       * lo == hi: none for that row. Keys past pos(t) must
					       * be this step's fresh rows of the same sequence */
	float                    *part;       /* NULL, or [n_tokens][n_heads][head_dim + 1]: instead
					       * of out (unused then), each (row, head)'s output
					       * normalised over the keys this call saw, then their
					       * lse (natural log of sum exp(score)); no key: o 0,
					       * lse -inf. The attn_merge op's record layout */
};

/* Sampling candidates (ARCHITECTURE.md §1 step 4), reduced where the logits are so that only k
 * entries per row cross to the host, never a 262K-wide row. One entry, as the engine gathers
 * it on the leader: */
struct gs_cand {
	int32_t id;    /* global token id; -1: padding (the slice has fewer than k columns);
			* -2: the row's trailer */
	float   proc;  /* processed logit (repetition penalty, then temperature); trailer: 0 */
	float   raw;   /* the model's logit, as it was; trailer: log-sum-exp of the row's raw
			* logits when wanted, else -inf */
};

/* A token of a row whose logit the rank-side stages change (the sampler builds these from the
 * history, logit_bias and min_tokens; rules in engine/gs_sampler.h): distinct ids, any order. */
#define GS_EDIT_SEEN   1 /* in the prompt or generated: the repetition penalty applies */
#define GS_EDIT_MASKED 2 /* min_tokens not reached and an eos/stop id: -inf          */
struct gs_logit_edit {
	int32_t id;     /* global token id                                         */
	int32_t count;  /* times among the generated tokens (frequency, presence)  */
	float   bias;   /* logit_bias; 0: none                                     */
	int32_t flags;  /* GS_EDIT_*                                               */
};

/* Per row of a candidates call (backend memory). */
struct gs_cand_row {
	float   penalty;      /* repetition penalty r; 1: none */
	float   frequency;    /* frequency penalty f; 0: none */
	float   presence;     /* presence penalty p; 0: none */
	float   temperature;  /* divisor; 1: none (greedy rows pass 1) */
	int32_t edit0;        /* this row's edits: edit[edit0 .. edit0 + n_edit), ids outside */
	int32_t n_edit;       /* the slice allowed (skipped)                                  */
	int32_t want_lse;     /* nonzero: the trailer carries the log-sum-exp */
	int32_t masked;       /* nonzero: structured output -- allow[r][c] == 0 drops column c */
};

static inline float gs_logit_clamp(float v)
{
	return v > FLT_MAX ? FLT_MAX : v;
}

/* The processed logit of an edited token, from its raw logit, in this order (vLLM's):
 * sanitise; masked: -inf; + bias; repetition penalty (v > 0 ? v / r : v * r) when seen;
 * when generated c > 0 times, v - c * f, then - p (two roundings, never fused); then / t.
 * Each step clamps +overflow to FLT_MAX. The sampler (engine/sampler.c), the CPU candidates op
 * (kernels/cpu/pick.c) use this function; the CUDA op mirrors it (kernels/cuda/sample.cu). An
 * unedited token is sanitise, then / t. */
static inline float gs_logit_edit_value(float raw, const struct gs_logit_edit *e, float r, float f, float p,
					float t)
{
	float v = gs_sanitize(raw);

	if (e->flags & GS_EDIT_MASKED)
		return -INFINITY;
	if (e->bias != 0.0f)
		v = gs_logit_clamp(v + e->bias);
	if ((e->flags & GS_EDIT_SEEN) && r != 1.0f)
		v = gs_logit_clamp(v > 0.0f ? v / r : v * r);
	if (e->count > 0) {
		float cf = (float)e->count * f;
		v = gs_logit_clamp(v - cf);
		v = gs_logit_clamp(v - p);
	}
	if (t != 1.0f)
		v = gs_logit_clamp(v / t);
	return v;
}

/* The rank side of gs_sampler_local_candidates (engine/gs_sampler.h), for many rows at once.
 * For column c of row r (token vocab0 + c): v = raw[c] sanitised (NaN -> -inf, +inf ->
 * FLT_MAX), divided by the temperature when it is not 1 (clamped to FLT_MAX); a token with an
 * edit instead gets gs_logit_edit_value(). out[r] gets
 * the top min(k, cols) columns by v (larger first, equal values by smaller id; -0.0 equals
 * +0.0) as {id, v, raw[c]}, then padding up to k, then the trailer: k + 1 entries per row.
 * A masked row's column with allow 0 (a token the grammar refuses) is no candidate and is left
 * out of the log-sum-exp, as if its raw logit were -inf (what the host path does to the row).
 * The same rules and bits as the sampler, so the engine's draws do not depend on where the
 * candidates were made (the log-sum-exp may differ in the last bits between backends). */
struct gs_cand_args {
	struct gs_cand             *out;     /* [rows][k + 1] */
	const float                *logits;  /* [rows, cols] */
	const struct gs_cand_row   *row;     /* [rows] */
	const struct gs_logit_edit *edit;
	const uint8_t              *allow;   /* [rows][cols], read for rows with masked set (may be
					      * NULL when none is) */
	int32_t                     rows, cols, k;
	int32_t                     vocab0;  /* global id of column 0 */
};

struct gs_backend_i {
	const char *name;
	/* y[m, w->rows] = x[m, w->cols] · wᵀ, fp32 accumulation. */
	void (*matmul)(void *ctx, float *y, const float *x, const struct gs_tensor *w, int m);
	/* Optional (NULL: one matmul per weight; gs_matmul_n): ys[i] = x · ws[i]ᵀ for i < count
	 * (at most 4), weights of equal cols sharing x (q/k/v, gate/up), in one dispatch; each
	 * output the same as matmul gives it. */
	void (*matmul_n)(void *ctx, int count, float *const *ys, const float *x, const struct gs_tensor *const *ws,
			 int m);
	/* y[r] = x[r] * rsqrt(mean(x[r]²) + eps) * gain, gain = 1 + w already in fp32. y may be x. */
	void (*rmsnorm)(void *ctx, float *y, const float *x, const float *gain, int rows, int dim, float eps);
	/* y[r] += x[r] * rsqrt(mean(x[r]²) + eps) * gain: a branch's post-norm and the residual add
	 * in one pass (Gemma 3's sandwich norms). y and x are distinct; x is not modified. */
	void (*rmsnorm_add)(void *ctx, float *y, const float *x, const float *gain, int rows, int dim, float eps);
	/* NeoX half-rotation on [n_tokens, n_heads, head_dim] in place; angle = pos[t]·pos_scale·base^(-2j/D). */
	void (*rope)(void *ctx, float *x, int n_tokens, int n_heads, int head_dim, const int32_t *pos,
		     double base, double pos_scale);
	void (*attention)(void *ctx, const struct gs_attn_args *a);
	/* out[i] = gelu_tanh(gate[i]) * up[i] */
	void (*geglu)(void *ctx, float *out, const float *gate, const float *up, size_t n);
	/* out[t] = emb[ids[t] - row0] * scale (fp32) when row0 <= ids[t] < row0 + emb->rows, else
	 * zeros: emb holds a vocabulary range (tensor parallel: the owner writes, then all-reduce). */
	void (*embed)(void *ctx, float *out, const struct gs_tensor *emb, const int32_t *ids, int n, float scale,
		      int64_t row0);
	/* x[i] = cap * tanh(x[i] / cap) */
	void (*softcap)(void *ctx, float *x, size_t n, float cap);
	int (*n_threads)(void *ctx);   /* optional, may be NULL */

	/* ---- memory the ops work on: device memory of a GPU backend, the heap on the CPU ----
	 * The forward pass keeps activations, the KV cache and its per-step index arrays here, so
	 * the same code drives every backend. host_memory: backend memory is ordinary host memory
	 * (callers may then read and write it directly and skip copies). */
	bool host_memory;
	/* NULL when out of memory (set-up paths, never per token; bytes 0 gives a valid pointer). */
	void *(*alloc)(void *ctx, size_t bytes);
	void (*release)(void *ctx, void *p);     /* NULL: no-op */
	/* Copies between host memory and backend memory, ordered after every op queued before
	 * them; they return when the copy is done. */
	void (*upload)(void *ctx, void *dst, const void *src, size_t bytes);
	void (*download)(void *ctx, void *dst, const void *src, size_t bytes);
	/* Row copies inside backend memory, rows[] in backend memory:
	 *   scatter: dst row rows[i] = src row i      (appending K/V to the paged cache; dst of
	 *            dst_dtype: GS_DTYPE_F32 copies, GS_DTYPE_BF16 rounds to nearest even);
	 *            rows[i] < 0: row i is not stored (a position another context-parallel
	 *            group holds)
	 *   gather:  dst row i       = src row rows[i] (the rows that want logits)
	 * a row is `width` elements. */
	void (*scatter_rows)(void *ctx, void *dst, enum gs_dtype dst_dtype, const float *src, const int64_t *rows,
			     int n, size_t width);
	void (*gather_rows)(void *ctx, float *dst, const float *src, const int32_t *rows, int n, size_t width);
	/* dst[i] = gs_synth_bf16(seed, i, a) for i < n (gs_dtype.h): synthetic weights drawn where
	 * they live, the same bits on every backend. */
	void (*fill_synth_bf16)(void *ctx, uint16_t *dst, size_t n, float a, uint64_t seed);

	/* Sampling candidates (struct gs_cand_args, every pointer in backend memory). Optional
	 * (NULL: the caller downloads the logits); 1 <= k <= cand_max_k when cand_max_k > 0. */
	void (*candidates)(void *ctx, const struct gs_cand_args *a);
	int32_t cand_max_k;
	/* The element type this backend keeps its KV cache in (attention and scatter_rows take
	 * it). Optional: NULL means GS_DTYPE_F32. */
	enum gs_dtype (*kv_dtype)(void *ctx);

	/* ---- the vision tower's ops (model/vision.c); every pointer in backend memory ----
	 * y[r] = (x[r] - mean) * rsqrt(var + eps) * w + b, the biased variance over dim (LayerNorm
	 * with weight and bias); mean and variance in double. y may be x. */
	void (*layernorm)(void *ctx, float *y, const float *x, const float *w, const float *b, int rows, int dim,
			  float eps);
	/* y[r, c] += x[r, c] + b[c], the sum x + b first; x or b may be NULL (that term left out). */
	void (*add_rows)(void *ctx, float *y, const float *x, const float *b, int rows, int cols);
	/* y[i] = gelu_tanh(x[i]) (the geglu op's GELU); y may be x. */
	void (*gelu)(void *ctx, float *y, const float *x, size_t n);
	/* Bidirectional attention over one sequence of n rows (no mask, no cache): for each head h,
	 * out[t, h] = sum_j softmax_j(q[t, h] · k[j, h] * scale) v[j, h]; q, k, v, out are
	 * [n, n_heads * head_dim] and out does not alias them. */
	void (*attention_full)(void *ctx, float *out, const float *q, const float *k, const float *v, int n,
			       int n_heads, int head_dim, float scale);
	/* Average pooling of a side x side grid of rows (row r * side + c, dim wide) over k x k
	 * blocks: y[R * (side / k) + C] = mean of x rows (R·k + i) * side + C·k + j; k divides side. */
	void (*avgpool)(void *ctx, float *y, const float *x, int side, int k, int dim);
	/* The patches of one RGB8 image (px: S·S·3 bytes, row-major, interleaved), normalised as the
	 * reference processor does in fp32, (p * 0.00392156862745098f - 0.5f) / 0.5f, unfolded
	 * channel-major to match a conv weight [out, 3, P, P]: y[r·g + c, ch·P·P + ky·P + kx] =
	 * norm(px[((r·P + ky)·S + c·P + kx)·3 + ch]), g = S / P. */
	void (*patches)(void *ctx, float *y, const uint8_t *px, int image_size, int patch);

	/* ---- context parallelism (ARCHITECTURE.md §4): merge of partial attention results ----
	 * k partial results over disjoint key sets of the same n (row, head) records: parts is
	 * [k][n][head_dim + 1], each record a normalised output o[head_dim] then its lse (natural
	 * log of the sum of exp(score) over that part's keys; -inf: the part saw no key, and its o
	 * is never read). out[n][head_dim] = sum_i w_i o_i / sum_i w_i with w_i = exp(lse_i - max_i
	 * lse_i), summed in part order; lse_out (NULL: not wanted) = max + log sum_i w_i. A record
	 * with every part empty gets out 0 and lse -inf (never 0·NaN); a NaN or +inf lse gives NaN. */
	void (*attn_merge)(void *ctx, float *out, float *lse_out, const float *parts, int k, int n, int head_dim);
};

struct gs_backend {
	const struct gs_backend_i *iface;
	void *ctx;
};

/* ys[i] = x · ws[i]ᵀ for i < count (<= 4, equal cols): the backend's matmul_n, else its matmul
 * once per weight. */
static inline void gs_matmul_n(const struct gs_backend_i *be, void *ctx, int count, float *const *ys, const float *x,
			       const struct gs_tensor *const *ws, int m)
{
	if (be->matmul_n) {
		be->matmul_n(ctx, count, ys, x, ws, m);
		return;
	}
	for (int i = 0; i < count; i++)
		be->matmul(ctx, ys[i], x, ws[i], m);
}

/* CPU backend with n_threads workers (<= 0: all online CPUs, or env GS_THREADS). */
enum gs_status gs_backend_cpu_create(int n_threads, struct gs_backend *out);
/* The CPU backend presenting its memory as a device's (host_memory false): for tests of the
 * device paths without a GPU. Freed with gs_backend_cpu_free. */
enum gs_status gs_backend_cpu_create_staged(int n_threads, struct gs_backend *out);
void gs_backend_cpu_free(struct gs_backend *be);
/* The KV cache of pools made afterwards on this backend: GS_DTYPE_F32 (default) or GS_DTYPE_BF16,
 * as a GPU keeps it (tests of that path without a GPU). */
void gs_backend_cpu_set_kv_dtype(struct gs_backend *be, enum gs_dtype t);
struct gs_threadpool *gs_backend_cpu_pool(const struct gs_backend *be);

/* Matmul numerics of the CPU backend (ARCHITECTURE.md §3):
 *   fp32: x and the accumulation fp32, weights widened exactly (the default);
 *   bf16: x rounded to bf16 at each matmul input (as a bf16 Hugging Face model does), weights
 *         as stored, fp32 accumulation in one fixed order (vdpbf16ps; needs AVX512_BF16).
 * Both are batch-invariant. Everything outside the matmuls stays fp32 in both. */
enum gs_numerics { GS_NUMERICS_FP32, GS_NUMERICS_BF16, GS_NUMERICS_COUNT };
const char *gs_numerics_name(enum gs_numerics n);          /* "fp32", "bf16" */
/* "fp32" or "bf16" -> *out; else GS_ERR_INVALID_ARG naming `what` (e.g. "--numerics"). */
enum gs_status gs_numerics_parse(const char *s, const char *what, enum gs_numerics *out);
/* Select the mode of a CPU backend (plain or staged), before its first op. bf16 on a CPU without
 * AVX512_BF16 (or with it hidden by GS_CPU_FEATURES_MASK): GS_ERR_UNSUPPORTED, and the message
 * names the missing feature. */
enum gs_status gs_backend_cpu_set_numerics(struct gs_backend *be, enum gs_numerics n);
enum gs_numerics gs_backend_cpu_numerics(const struct gs_backend *be);

#endif
