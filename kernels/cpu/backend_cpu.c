/* CPU backend: fp32 activations, bf16/f16/f32 weights from the mmap, one thread pool.
 * The heavy matmuls live in matmul*.c; this file holds the element-wise ops and
 * the attention op's hook (the kernel is attention.c), parallelised over rows. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gs_cpu.h"
#include "gs_fmath.h"
#include "gs_kernels.h"

#define GS_CPU_MAX_THREADS 256

/* One rope call's cos/sin: [n][head_dim / 2] each, for positions pos[0..n) at (base, scale). */
struct rope_table {
	int n, head_dim;
	double base, scale;
	int32_t *pos;
	float *cs, *sn;
	size_t cap; /* tokens pos, cs and sn have room for (cs, sn: cap × head_dim / 2) */
};

struct cpu_ctx {
	struct gs_threadpool *tp;
	int n_threads;
	/* Per-thread attention score scratch, grown on demand (amortised; never per token
	 * once the longest context has been seen). */
	float *scores[GS_CPU_MAX_THREADS];
	size_t scores_cap[GS_CPU_MAX_THREADS];
	float *pick;       /* the candidates op's processed row, grown on demand */
	size_t pick_cap;
	enum gs_dtype kv_dtype; /* F32 (0, the default) or BF16 (gs_backend_cpu_set_kv_dtype) */
	enum gs_numerics numerics; /* FP32 (0, the default) or BF16 (gs_backend_cpu_set_numerics) */
	float *xr;         /* bf16 mode, f16/f32 weights: x rounded to bf16, widened; grown on demand */
	size_t xr_cap;
	float *vis;        /* attention_full's packed heads and scores, grown on demand (per image) */
	size_t vis_cap;
	struct rope_table rope[2]; /* the last two rope calls' cos/sin (q and k, local and global layers) */
	int rope_next;             /* the slot the next new table replaces */
};

#define GS_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

/* Split [0, n) into n_threads contiguous ranges. */
static void thread_range(size_t n, int tid, int nth, size_t *lo, size_t *hi)
{
	size_t per = (n + (size_t)nth - 1) / (size_t)nth;
	*lo = per * (size_t)tid;
	*hi = *lo + per;
	if (*lo > n)
		*lo = n;
	if (*hi > n)
		*hi = n;
}

/* ---- matmul ------------------------------------------------------------------- */

static void cpu_matmul(void *vctx, float *y, const float *x, const struct gs_tensor *w, int m)
{
	struct cpu_ctx *ctx = vctx;
	int n = (int)w->rows, k = (int)w->cols;

	if (ctx->numerics == GS_NUMERICS_BF16) {
		if (w->dtype == GS_DTYPE_BF16) {
			gs_cpu_matmul_bf16dp(ctx->tp, y, x, w->data, m, n, k);
			return;
		}
		/* other weight types: the same rounding of x, then the exact fp32 path */
		size_t nx = (size_t)m * (size_t)k;
		if (nx > ctx->xr_cap) {
			float *p = realloc(ctx->xr, nx * sizeof(*p));
			GS_ASSERT(p != NULL);
			ctx->xr = p;
			ctx->xr_cap = nx;
		}
		for (size_t i = 0; i < nx; i++)
			ctx->xr[i] = gs_round_bf16(x[i]);
		x = ctx->xr;
	}
	switch (w->dtype) {
	case GS_DTYPE_BF16:
		gs_cpu_matmul_bf16(ctx->tp, y, x, w->data, m, n, k);
		break;
	case GS_DTYPE_F16:
		gs_cpu_matmul_f16(ctx->tp, y, x, w->data, m, n, k);
		break;
	case GS_DTYPE_F32:
		gs_cpu_matmul_f32(ctx->tp, y, x, w->data, m, n, k);
		break;
	default:
		GS_ASSERT(!"matmul: unsupported weight dtype");
	}
}

/* bf16 weights in the bf16 mode: one dispatch for all (x rounded once); otherwise one matmul
 * each. The same outputs either way. */
static void cpu_matmul_n(void *vctx, int count, float *const *ys, const float *x, const struct gs_tensor *const *ws,
			 int m)
{
	struct cpu_ctx *ctx = vctx;
	bool fused = ctx->numerics == GS_NUMERICS_BF16 && count <= GS_MM_BF_MAXW;
	for (int i = 0; i < count && fused; i++)
		fused = ws[i]->dtype == GS_DTYPE_BF16 && ws[i]->cols == ws[0]->cols;
	if (!fused) {
		for (int i = 0; i < count; i++)
			cpu_matmul(vctx, ys[i], x, ws[i], m);
		return;
	}
	const uint16_t *w[GS_MM_BF_MAXW];
	int n[GS_MM_BF_MAXW];
	for (int i = 0; i < count; i++)
		w[i] = ws[i]->data, n[i] = (int)ws[i]->rows;
	gs_cpu_matmul_bf16dp_n(ctx->tp, count, ys, x, w, n, m, (int)ws[0]->cols);
}

/* ---- rmsnorm ------------------------------------------------------------------ */

struct rmsnorm_job {
	float *y;
	const float *x, *gain;
	int rows, dim;
	float eps;
	bool add;   /* y += the normed row (rmsnorm_add) */
};

/* y = x · r · gain, or y += that (add): r = 1/sqrt(mean(x²) + eps). */
GS_SIMD_CLONES
static void rmsnorm_row(float *y, const float *x, const float *gain, int dim, float eps, bool add)
{
	/* Sum of squares in double, which keeps the fp32 path closer to the float64 reference:
	 * 8 partial sums (element i into sum i % 8, a fixed order, so it vectorises; one chain of
	 * dependent adds was ~3% of a prefill), added pairwise at the end. */
	double p[8] = { 0 };
	int i8 = dim / 8 * 8;
	for (int i = 0; i < i8; i += 8)
		for (int l = 0; l < 8; l++)
			p[l] += (double)x[i + l] * (double)x[i + l];
	for (int i = i8; i < dim; i++)
		p[i - i8] += (double)x[i] * (double)x[i];
	double ss = ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
	float r = (float)(1.0 / sqrt(ss / dim + (double)eps));
	if (add) {
		for (int i = 0; i < dim; i++) {
			float v = x[i] * r * gain[i];
			y[i] += v;
		}
	} else {
		for (int i = 0; i < dim; i++)
			y[i] = x[i] * r * gain[i];
	}
}

static void rmsnorm_task(void *p, int tid, int nth)
{
	struct rmsnorm_job *j = p;
	size_t lo, hi;

	thread_range((size_t)j->rows, tid, nth, &lo, &hi);
	for (size_t r = lo; r < hi; r++)
		rmsnorm_row(j->y + r * (size_t)j->dim, j->x + r * (size_t)j->dim, j->gain, j->dim, j->eps, j->add);
}

static void rmsnorm_run(struct cpu_ctx *ctx, struct rmsnorm_job *j)
{
	if ((size_t)j->rows * (size_t)j->dim < 16384) /* per-head q/k norms of one token: not worth a dispatch */
		rmsnorm_task(j, 0, 1);
	else
		gs_threadpool_run(ctx->tp, rmsnorm_task, j);
}

static void cpu_rmsnorm(void *vctx, float *y, const float *x, const float *gain, int rows, int dim, float eps)
{
	struct rmsnorm_job j = { y, x, gain, rows, dim, eps, false };
	rmsnorm_run(vctx, &j);
}

static void cpu_rmsnorm_add(void *vctx, float *y, const float *x, const float *gain, int rows, int dim, float eps)
{
	struct rmsnorm_job j = { y, x, gain, rows, dim, eps, true };
	rmsnorm_run(vctx, &j);
}

/* ---- rope --------------------------------------------------------------------- */

/* The cos/sin of a rope call: the table of an earlier call with the same positions, base, scale
 * and head_dim when there is one (q and k of a layer, and every layer of the same kind, share
 * theirs: computing them took ~2% of a prefill), else computed into the least recently made slot.
 * The same double-precision computation either way, so the values do not depend on the cache. */
static const struct rope_table *rope_table_for(struct cpu_ctx *ctx, int n, int head_dim, const int32_t *pos,
					       double base, double pos_scale)
{
	for (int i = 0; i < 2; i++) {
		const struct rope_table *t = &ctx->rope[i];
		if (t->n == n && t->head_dim == head_dim && t->base == base && t->scale == pos_scale && n > 0 &&
		    !memcmp(t->pos, pos, sizeof(*pos) * (size_t)n))
			return t;
	}
	struct rope_table *t = &ctx->rope[ctx->rope_next];
	ctx->rope_next ^= 1;
	int half = head_dim / 2;
	if ((size_t)n > t->cap || t->head_dim != head_dim) {
		size_t cap = (size_t)n > t->cap ? (size_t)n : t->cap;
		free(t->pos), free(t->cs), free(t->sn);
		t->pos = malloc(sizeof(*t->pos) * cap);
		t->cs = malloc(sizeof(float) * cap * (size_t)half);
		t->sn = malloc(sizeof(float) * cap * (size_t)half);
		GS_ASSERT(t->pos && t->cs && t->sn); /* a step's positions; the activations were larger */
		t->cap = cap;
	}
	t->n = n, t->head_dim = head_dim, t->base = base, t->scale = pos_scale;
	memcpy(t->pos, pos, sizeof(*pos) * (size_t)n);
	for (int j = 0; j < half; j++) {
		double inv = pow(base, -2.0 * j / head_dim);
		for (int r = 0; r < n; r++) {
			/* Angle and its cos/sin in double, then fp32: at 128K positions an fp32 angle
			 * would be off by ~1e-2 rad. */
			double a = (double)pos[r] * pos_scale * inv;
			t->cs[(size_t)r * half + j] = (float)cos(a);
			t->sn[(size_t)r * half + j] = (float)sin(a);
		}
	}
	return t;
}

static void cpu_rope(void *vctx, float *x, int n_tokens, int n_heads, int head_dim, const int32_t *pos,
		     double base, double pos_scale)
{
	int half = head_dim / 2;
	if (n_tokens <= 0)
		return;
	const struct rope_table *tab = rope_table_for(vctx, n_tokens, head_dim, pos, base, pos_scale);

	for (int t = 0; t < n_tokens; t++) {
		const float *cs = tab->cs + (size_t)t * half, *sn = tab->sn + (size_t)t * half;
		for (int h = 0; h < n_heads; h++) {
			float *v = x + ((size_t)t * n_heads + h) * head_dim;
			for (int j = 0; j < half; j++) {
				float x0 = v[j], x1 = v[j + half];
				v[j] = x0 * cs[j] - x1 * sn[j];
				v[j + half] = x1 * cs[j] + x0 * sn[j];
			}
		}
	}
}

/* ---- attention ---------------------------------------------------------------- */

/* attention.c: tiled, online softmax, batch-invariant (gs_cpu.h). */
static void cpu_attention(void *vctx, const struct gs_attn_args *a)
{
	struct cpu_ctx *ctx = vctx;

	gs_cpu_attention(ctx->tp, ctx->scores, ctx->scores_cap, a, 0, INT32_MAX, NULL);
}

/* ---- element-wise --------------------------------------------------------------- */

struct ew_job {
	float *y;
	const float *a, *b;
	size_t n;
	float c;
};

/* gs_gelu_tanh (gs_fmath.h) spelled without control flow, so the loop below vectorises (the
 * branches of the shared version kept it scalar: 16% of a bf16 prefill). The same operations in
 * the same order: the same values for every finite u; NaN stays NaN through the final u·σ. */
static inline float gelu_tanh_flat(float u)
{
	const float k2 = 1.5957691216057308f, lo = -87.0f;
	float t = k2 * (u + 0.044715f * u * u * u);
	/* xc = max(-|t|, lo) through the bits of |t| (non-negative floats order as integers):
	 * a float compare here became a branch, the integer min vectorises */
	uint32_t tb, ab, cb;
	float lo_abs = -lo, xc;
	memcpy(&tb, &t, sizeof(tb));
	memcpy(&cb, &lo_abs, sizeof(cb));
	ab = tb & 0x7fffffffu;
	uint32_t mb = ab < cb ? ab : cb;
	memcpy(&xc, &mb, sizeof(xc));
	xc = -xc;
	int32_t n = (int32_t)(xc * 1.44269504088896341f - 0.5f);
	float r = xc - (float)n * 0.693359375f;
	r = r - (float)n * -2.12194440e-4f;
	float q = 1.9875691500e-4f;
	q = q * r + 1.3981999507e-3f;
	q = q * r + 8.3334519073e-3f;
	q = q * r + 4.1665795894e-2f;
	q = q * r + 1.6666665459e-1f;
	q = q * r + 5.0000001201e-1f;
	float ey = q * (r * r) + r + 1.0f;
	uint32_t bits = (uint32_t)(n + 127) << 23;
	float scale;
	memcpy(&scale, &bits, sizeof(scale));
	ey = ey * scale;
	/* e = at < lo ? 0 : ey; num = t >= 0 ? 1 : e; as bit masks (gcc turns ?: into branches) */
	uint32_t eb, nb, one = 0x3f800000u;
	memcpy(&eb, &ey, sizeof(eb));
	eb &= -(uint32_t)(ab <= cb);           /* |t| <= 87, i.e. -|t| >= lo (NaN: 0, u·σ stays NaN) */
	nb = eb ^ ((eb ^ one) & -(uint32_t)((tb >> 31) == 0)); /* t >= 0 (-0: σ = 1/2 either way) */
	float e, num;
	memcpy(&e, &eb, sizeof(e));
	memcpy(&num, &nb, sizeof(num));
	return u * (num / (1.0f + e));
}

GS_SIMD_CLONES
static void geglu_range(float *y, const float *gate, const float *up, size_t n)
{
	for (size_t i = 0; i < n; i++)
		y[i] = gelu_tanh_flat(gate[i]) * up[i];
}

static void geglu_task(void *p, int tid, int nth)
{
	struct ew_job *j = p;
	size_t lo, hi;

	thread_range(j->n, tid, nth, &lo, &hi);
	geglu_range(j->y + lo, j->a + lo, j->b + lo, hi - lo);
}

static void cpu_geglu(void *vctx, float *out, const float *gate, const float *up, size_t n)
{
	struct cpu_ctx *ctx = vctx;
	struct ew_job j = { out, gate, up, n, 0 };

	if (n < 8192)
		geglu_task(&j, 0, 1);
	else
		gs_threadpool_run(ctx->tp, geglu_task, &j);
}

static void gelu_task(void *p, int tid, int nth)
{
	struct ew_job *j = p;
	size_t lo, hi;

	thread_range(j->n, tid, nth, &lo, &hi);
	for (size_t i = lo; i < hi; i++)
		j->y[i] = gelu_tanh_flat(j->a[i]);
}

static void cpu_gelu(void *vctx, float *y, const float *x, size_t n)
{
	struct cpu_ctx *ctx = vctx;
	struct ew_job j = { y, x, NULL, n, 0 };

	if (n < 8192)
		gelu_task(&j, 0, 1);
	else
		gs_threadpool_run(ctx->tp, gelu_task, &j);
}

/* The rest of the vision tower's ops: kernels/cpu/vision_ops.c. */
static void cpu_layernorm(void *vctx, float *y, const float *x, const float *w, const float *b, int rows, int dim,
			  float eps)
{
	gs_cpu_layernorm(((struct cpu_ctx *)vctx)->tp, y, x, w, b, rows, dim, eps);
}

static void cpu_add_rows(void *vctx, float *y, const float *x, const float *b, int rows, int cols)
{
	gs_cpu_add_rows(((struct cpu_ctx *)vctx)->tp, y, x, b, rows, cols);
}

static void cpu_attention_full(void *vctx, float *out, const float *q, const float *k, const float *v, int n,
			       int n_heads, int head_dim, float scale)
{
	struct cpu_ctx *ctx = vctx;

	if (head_dim > GS_CPU_ATTN_MAX_HEAD_DIM) {
		gs_cpu_attention_full(ctx->tp, &ctx->vis, &ctx->vis_cap, out, q, k, v, n, n_heads, head_dim, scale);
		return;
	}
	/* one sequence of n fresh rows whose span is all of them: the tiled kernel's bidirectional
	 * case (about twice the speed of Q·Kᵀ, softmax, P·V through the matmul at SigLIP's shape) */
	int32_t *idx = malloc(sizeof(int32_t) * 3 * (size_t)(n ? n : 1));
	GS_ASSERT(idx != NULL && "attention_full: out of memory for its row index");
	int32_t *tok_seq = idx, *span = idx + n;
	for (int t = 0; t < n; t++) {
		tok_seq[t] = 0;
		span[2 * t] = 0;
		span[2 * t + 1] = n;
	}
	struct gs_attn_seq seq = { .tok0 = 0, .n_tokens = n, .pos0 = 0, .table = NULL, .ring = 0 };
	struct gs_attn_args a = { .out = out, .q = q, .k_new = k, .v_new = v, .kv_dtype = GS_DTYPE_F32,
				  .block = 64, .seqs = &seq, .n_seqs = 1, .tok_seq = tok_seq, .n_tokens = n,
				  .n_heads = n_heads, .n_kv_heads = n_heads, .head_dim = head_dim,
				  .window = INT32_MAX, .scale = scale, .softcap = 0.0f, .span = span };
	gs_cpu_attention(ctx->tp, ctx->scores, ctx->scores_cap, &a, 0, INT32_MAX, NULL);
	free(idx);
}

static void cpu_avgpool(void *vctx, float *y, const float *x, int side, int k, int dim)
{
	gs_cpu_avgpool(y, x, side, k, dim);
}

static void cpu_attn_merge(void *vctx, float *out, float *lse_out, const float *parts, int k, int n, int head_dim)
{
	GS_ASSERT(k >= 1 && n >= 0 && head_dim >= 1);
	gs_cpu_attn_merge(((struct cpu_ctx *)vctx)->tp, out, lse_out, parts, k, n, head_dim);
}

static void cpu_patches(void *vctx, float *y, const uint8_t *px, int image_size, int patch)
{
	gs_cpu_patches(y, px, image_size, patch);
}

static void cpu_embed(void *vctx, float *out, const struct gs_tensor *emb, const int32_t *ids, int n, float scale,
		      int64_t row0)
{
	size_t H = (size_t)emb->cols;

	for (int t = 0; t < n; t++) {
		float *o = out + (size_t)t * H;
		int64_t row = (int64_t)ids[t] - row0;
		if (row < 0 || row >= emb->rows) {
			memset(o, 0, H * sizeof(float));
			continue;
		}
		switch (emb->dtype) {
		case GS_DTYPE_BF16: {
			const uint16_t *r = (const uint16_t *)emb->data + (size_t)row * H;
			for (size_t i = 0; i < H; i++)
				o[i] = gs_bf16_to_f32(r[i]) * scale;
			break;
		}
		case GS_DTYPE_F16: {
			const uint16_t *r = (const uint16_t *)emb->data + (size_t)row * H;
			for (size_t i = 0; i < H; i++)
				o[i] = gs_f16_to_f32(r[i]) * scale;
			break;
		}
		case GS_DTYPE_F32: {
			const float *r = (const float *)emb->data + (size_t)row * H;
			for (size_t i = 0; i < H; i++)
				o[i] = r[i] * scale;
			break;
		}
		default:
			GS_ASSERT(!"embed: unsupported dtype");
		}
	}
}

static void cpu_softcap(void *vctx, float *x, size_t n, float cap)
{
	for (size_t i = 0; i < n; i++)
		x[i] = cap * tanhf(x[i] / cap);
}

static int cpu_n_threads(void *vctx)
{
	return ((struct cpu_ctx *)vctx)->n_threads;
}

/* ---- memory: the heap ------------------------------------------------------------ */

static void *cpu_alloc(void *vctx, size_t bytes)
{
	/* 64-byte aligned for the vector loads; at least one line so 0 bytes is a valid pointer */
	size_t sz = bytes ? (bytes + 63) / 64 * 64 : 64;
	return aligned_alloc(64, sz);
}

static void cpu_release(void *vctx, void *p)
{
	free(p);
}

static void cpu_copy(void *vctx, void *dst, const void *src, size_t bytes)
{
	if (bytes)
		memcpy(dst, src, bytes);
}

static void cpu_scatter_rows(void *vctx, void *dst, enum gs_dtype dst_dtype, const float *src, const int64_t *rows,
			     int n, size_t width)
{
	GS_ASSERT((dst_dtype == GS_DTYPE_F32 || dst_dtype == GS_DTYPE_BF16) && "scatter_rows: fp32 or bf16 rows");
	for (int i = 0; i < n; i++) {
		const float *s = src + (size_t)i * width;
		if (rows[i] < 0)
			continue;
		if (dst_dtype == GS_DTYPE_F32) {
			memcpy((float *)dst + (size_t)rows[i] * width, s, width * sizeof(float));
		} else {
			uint16_t *d = (uint16_t *)dst + (size_t)rows[i] * width;
			for (size_t j = 0; j < width; j++)
				d[j] = gs_f32_to_bf16(s[j]);
		}
	}
}

static void cpu_gather_rows(void *vctx, float *dst, const float *src, const int32_t *rows, int n, size_t width)
{
	for (int i = 0; i < n; i++)
		memcpy(dst + (size_t)i * width, src + (size_t)rows[i] * width, width * sizeof(float));
}

#define GS_CPU_OPS                                   \
	.matmul = cpu_matmul,                        \
	.matmul_n = cpu_matmul_n,                    \
	.rmsnorm = cpu_rmsnorm,                      \
	.rmsnorm_add = cpu_rmsnorm_add,              \
	.rope = cpu_rope,                            \
	.attention = cpu_attention,                  \
	.geglu = cpu_geglu,                          \
	.embed = cpu_embed,                          \
	.softcap = cpu_softcap,                      \
	.n_threads = cpu_n_threads,                  \
	.alloc = cpu_alloc,                          \
	.release = cpu_release,                      \
	.upload = cpu_copy,                          \
	.download = cpu_copy,                        \
	.scatter_rows = cpu_scatter_rows,            \
	.gather_rows = cpu_gather_rows,              \
	.fill_synth_bf16 = cpu_fill_synth_bf16,      \
	.candidates = cpu_candidates,                \
	.cand_max_k = 0,                             \
	.kv_dtype = cpu_kv_dtype,                    \
	.layernorm = cpu_layernorm,                  \
	.add_rows = cpu_add_rows,                    \
	.gelu = cpu_gelu,                            \
	.attention_full = cpu_attention_full,        \
	.avgpool = cpu_avgpool,                      \
	.patches = cpu_patches,                      \
	.attn_merge = cpu_attn_merge

struct fill_job {
	uint16_t *dst;
	size_t    n;
	float     a;
	uint64_t  seed;
};

static void fill_task(void *p, int tid, int nth)
{
	struct fill_job *j = p;
	size_t lo, hi;

	thread_range(j->n, tid, nth, &lo, &hi);
	for (size_t i = lo; i < hi; i++)
		j->dst[i] = gs_synth_bf16(j->seed, i, j->a);
}

static void cpu_fill_synth_bf16(void *vctx, uint16_t *dst, size_t n, float a, uint64_t seed)
{
	struct fill_job j = { dst, n, a, seed };
	gs_threadpool_run(((struct cpu_ctx *)vctx)->tp, fill_task, &j);
}

static void cpu_candidates(void *vctx, const struct gs_cand_args *a)
{
	struct cpu_ctx *ctx = vctx;

	GS_ASSERT(a->rows >= 0 && a->cols >= 0 && a->k >= 1);
	gs_cpu_candidates(&ctx->pick, &ctx->pick_cap, a);
}

static enum gs_dtype cpu_kv_dtype(void *vctx)
{
	return ((struct cpu_ctx *)vctx)->kv_dtype;
}

void gs_backend_cpu_set_kv_dtype(struct gs_backend *be, enum gs_dtype t)
{
	GS_ASSERT(t == GS_DTYPE_F32 || t == GS_DTYPE_BF16);
	((struct cpu_ctx *)be->ctx)->kv_dtype = t;
}

enum gs_status gs_backend_cpu_set_numerics(struct gs_backend *be, enum gs_numerics n)
{
	GS_ASSERT((unsigned)n < GS_NUMERICS_COUNT);
	const char *missing = n == GS_NUMERICS_BF16 ? gs_cpu_bf16_missing() : NULL;
	if (missing)
		return gs_errorf(GS_ERR_UNSUPPORTED,
				 "numerics bf16 needs a CPU with %s (vdpbf16ps), which this one lacks; use --numerics fp32",
				 missing);
	((struct cpu_ctx *)be->ctx)->numerics = n;
	return GS_OK;
}

enum gs_numerics gs_backend_cpu_numerics(const struct gs_backend *be)
{
	return ((const struct cpu_ctx *)be->ctx)->numerics;
}

static const struct gs_backend_i gs_backend_cpu_i = { .name = "cpu", .host_memory = true, GS_CPU_OPS };

/* The same ops, but declaring its memory separate from the host's, as a GPU's is: callers then
 * take every path a device backend needs (weights moved into backend memory, logits downloaded),
 * which the tests check against the plain CPU backend without a GPU. */
static const struct gs_backend_i gs_backend_cpu_staged_i = { .name = "cpu-staged", .host_memory = false,
							     GS_CPU_OPS };

enum gs_status gs_backend_cpu_create_staged(int n_threads, struct gs_backend *out)
{
	GS_TRY(gs_backend_cpu_create(n_threads, out));
	out->iface = &gs_backend_cpu_staged_i;
	return GS_OK;
}

enum gs_status gs_backend_cpu_create(int n_threads, struct gs_backend *out)
{
	struct cpu_ctx *ctx = calloc(1, sizeof(*ctx));

	if (!ctx)
		return gs_errorf(GS_ERR_NOMEM, "cpu backend: out of memory");
	ctx->tp = gs_threadpool_create(n_threads);
	if (!ctx->tp) {
		free(ctx);
		return gs_errorf(GS_ERR_INTERNAL, "cpu backend: cannot start %d threads", n_threads);
	}
	ctx->n_threads = gs_threadpool_size(ctx->tp);
	GS_ASSERT(ctx->n_threads <= GS_CPU_MAX_THREADS);
	out->iface = &gs_backend_cpu_i;
	out->ctx = ctx;
	return GS_OK;
}

void gs_backend_cpu_free(struct gs_backend *be)
{
	struct cpu_ctx *ctx = be->ctx;

	if (!ctx)
		return;
	for (int i = 0; i < GS_CPU_MAX_THREADS; i++)
		free(ctx->scores[i]);
	free(ctx->pick);
	free(ctx->xr);
	free(ctx->vis);
	for (int i = 0; i < 2; i++)
		free(ctx->rope[i].pos), free(ctx->rope[i].cs), free(ctx->rope[i].sn);
	gs_threadpool_free(ctx->tp);
	free(ctx);
	be->ctx = NULL;
}

struct gs_threadpool *gs_backend_cpu_pool(const struct gs_backend *be)
{
	return ((struct cpu_ctx *)be->ctx)->tp;
}
