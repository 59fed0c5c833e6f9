/* CUDA backend, host side: the vtable (one static const instance, STYLE.md 2), argument checks
 * done once per call before dispatch (STYLE.md 8), and the public helpers of gs_cuda.h. The
 * kernels live one op per .cu file; context.cu owns the stream, cuBLAS and memory. */
#include <limits.h>
#include <stdint.h>

#include "cuda_internal.h"
#include "gs_cuda.h"

static int weight_dtype_ok(enum gs_dtype t)
{
	return t == GS_DTYPE_BF16 || t == GS_DTYPE_F16 || t == GS_DTYPE_F32;
}

static void cuda_matmul(void *ctx, float *y, const float *x, const struct gs_tensor *w, int m)
{
	GS_ASSERT(weight_dtype_ok(w->dtype) && "matmul: unsupported weight dtype");
	GS_ASSERT(m >= 0 && w->rows >= 0 && w->cols >= 0 && w->rows <= INT_MAX && w->cols <= INT_MAX);
	if (m == 0 || w->rows == 0)
		return;
	gs_cu_matmul(ctx, y, x, w, m);
}

static void cuda_rmsnorm(void *ctx, float *y, const float *x, const float *gain, int rows, int dim, float eps)
{
	GS_ASSERT(rows >= 0 && dim >= 0);
	if (rows == 0 || dim == 0)
		return;
	gs_cu_rmsnorm(ctx, y, x, gain, rows, dim, eps);
}

static void cuda_rmsnorm_add(void *ctx, float *y, const float *x, const float *gain, int rows, int dim, float eps)
{
	GS_ASSERT(rows >= 0 && dim >= 0);
	if (rows == 0 || dim == 0)
		return;
	gs_cu_rmsnorm_add(ctx, y, x, gain, rows, dim, eps);
}

static void cuda_rope(void *ctx, float *x, int n_tokens, int n_heads, int head_dim, const int32_t *pos, double base,
		      double pos_scale)
{
	GS_ASSERT(n_tokens >= 0 && n_heads >= 0 && head_dim >= 0);
	if (n_tokens == 0 || n_heads == 0 || head_dim < 2)
		return;
	gs_cu_rope(ctx, x, n_tokens, n_heads, head_dim, pos, base, pos_scale);
}

static void cuda_attention(void *ctx, const struct gs_attn_args *a)
{
	GS_ASSERT(a->n_tokens >= 0 && a->n_heads > 0 && a->n_kv_heads > 0 && a->n_heads % a->n_kv_heads == 0);
	GS_ASSERT(a->head_dim > 0 && a->head_dim <= GS_CU_ATTN_MAX_HEAD_DIM);
	GS_ASSERT(a->block > 0 && a->window > 0);
	GS_ASSERT((a->kv_dtype == GS_DTYPE_F32 || a->kv_dtype == GS_DTYPE_BF16) && "attention: fp32 or bf16 KV");
	if (a->n_tokens == 0)
		return;
	gs_cu_attention(ctx, a);
}

static void cuda_geglu(void *ctx, float *out, const float *gate, const float *up, size_t n)
{
	if (n)
		gs_cu_geglu(ctx, out, gate, up, n);
}

static void cuda_embed(void *ctx, float *out, const struct gs_tensor *emb, const int32_t *ids, int n, float scale,
		       int64_t row0)
{
	GS_ASSERT(weight_dtype_ok(emb->dtype) && "embed: unsupported dtype");
	GS_ASSERT(n >= 0 && emb->rows >= 0 && emb->cols >= 0);
	if (n == 0 || emb->cols == 0)
		return;
	gs_cu_embed(ctx, out, emb, ids, n, scale, row0);
}

static void cuda_softcap(void *ctx, float *x, size_t n, float cap)
{
	if (n)
		gs_cu_softcap(ctx, x, n, cap);
}

/* Memory ops of the vtable: device memory; a failed copy is a broken invariant (abort with
 * the CUDA reason), like a failed op. */
static void *cuda_alloc(void *ctx, size_t bytes)
{
	void *p = NULL;
	return gs_cu_malloc(ctx, &p, bytes ? bytes : 64) == GS_OK ? p : NULL;
}

static void cuda_release(void *ctx, void *p)
{
	gs_cu_free(ctx, p);
}

static void cuda_upload(void *ctx, void *dst, const void *src, size_t bytes)
{
	if (bytes && gs_cu_upload(ctx, dst, src, bytes) != GS_OK) {
		gs_log(GS_LOG_ERROR, "cuda upload of %zu bytes: %s", bytes, gs_last_error());
		GS_ASSERT(!"cuda upload failed");
	}
}

static void cuda_download(void *ctx, void *dst, const void *src, size_t bytes)
{
	if (bytes && gs_cu_download(ctx, dst, src, bytes) != GS_OK) {
		gs_log(GS_LOG_ERROR, "cuda download of %zu bytes: %s", bytes, gs_last_error());
		GS_ASSERT(!"cuda download failed");
	}
}

static void cuda_scatter_rows(void *ctx, void *dst, enum gs_dtype dst_dtype, const float *src, const int64_t *rows,
			      int n, size_t width)
{
	GS_ASSERT((dst_dtype == GS_DTYPE_F32 || dst_dtype == GS_DTYPE_BF16) && "scatter_rows: fp32 or bf16 rows");
	if (n > 0 && width > 0)
		gs_cu_scatter_rows(ctx, dst, dst_dtype == GS_DTYPE_BF16, src, rows, n, width);
}

static enum gs_dtype cuda_kv_dtype(void *ctx)
{
	return gs_cu_kv_bf16(ctx) ? GS_DTYPE_BF16 : GS_DTYPE_F32;
}

static void cuda_gather_rows(void *ctx, float *dst, const float *src, const int32_t *rows, int n, size_t width)
{
	if (n > 0 && width > 0)
		gs_cu_gather_rows(ctx, dst, src, rows, n, width);
}

static void cuda_fill_synth_bf16(void *ctx, uint16_t *dst, size_t n, float a, uint64_t seed)
{
	if (n)
		gs_cu_fill_synth_bf16(ctx, dst, n, a, seed);
}

static void cuda_candidates(void *ctx, const struct gs_cand_args *a)
{
	GS_ASSERT(a->rows >= 0 && a->rows <= 65535 && a->cols >= 0 && a->k >= 1 && a->k <= GS_CUDA_TOPK_MAX);
	if (a->rows > 0)
		gs_cu_candidates(ctx, a);
}

/* ---- the vision tower's ops (vision.cu) ---- */

static void cuda_layernorm(void *ctx, float *y, const float *x, const float *w, const float *b, int rows, int dim,
			   float eps)
{
	GS_ASSERT(rows >= 0 && dim >= 0);
	if (rows && dim)
		gs_cu_layernorm(ctx, y, x, w, b, rows, dim, eps);
}

static void cuda_add_rows(void *ctx, float *y, const float *x, const float *b, int rows, int cols)
{
	GS_ASSERT(rows >= 0 && cols >= 0);
	if (rows && cols && (x || b))
		gs_cu_add_rows(ctx, y, x, b, rows, cols);
}

static void cuda_gelu(void *ctx, float *y, const float *x, size_t n)
{
	if (n)
		gs_cu_gelu(ctx, y, x, n);
}

static void cuda_attention_full(void *ctx, float *out, const float *q, const float *k, const float *v, int n,
				int n_heads, int head_dim, float scale)
{
	GS_ASSERT(n >= 0 && n_heads > 0 && head_dim > 0);
	if (n)
		gs_cu_attention_full(ctx, out, q, k, v, n, n_heads, head_dim, scale);
}

static void cuda_avgpool(void *ctx, float *y, const float *x, int side, int k, int dim)
{
	GS_ASSERT(k > 0 && side % k == 0 && dim >= 0);
	if (side && dim)
		gs_cu_avgpool(ctx, y, x, side, k, dim);
}

static void cuda_patches(void *ctx, float *y, const uint8_t *px, int image_size, int patch)
{
	GS_ASSERT(patch > 0 && image_size % patch == 0);
	if (image_size)
		gs_cu_patches(ctx, y, px, image_size, patch);
}

static void cuda_attn_merge(void *ctx, float *out, float *lse_out, const float *parts, int k, int n, int head_dim)
{
	GS_ASSERT(k >= 1 && n >= 0 && head_dim >= 1);
	if (n)
		gs_cu_attn_merge(ctx, out, lse_out, parts, k, n, head_dim);
}

static const struct gs_backend_i gs_backend_cuda_i = {
	.name = "cuda",
	.matmul = cuda_matmul,
	.rmsnorm = cuda_rmsnorm,
	.rmsnorm_add = cuda_rmsnorm_add,
	.rope = cuda_rope,
	.attention = cuda_attention,
	.geglu = cuda_geglu,
	.embed = cuda_embed,
	.softcap = cuda_softcap,
	.n_threads = NULL,
	.host_memory = false,
	.alloc = cuda_alloc,
	.release = cuda_release,
	.upload = cuda_upload,
	.download = cuda_download,
	.scatter_rows = cuda_scatter_rows,
	.gather_rows = cuda_gather_rows,
	.fill_synth_bf16 = cuda_fill_synth_bf16,
	.candidates = cuda_candidates,
	.cand_max_k = GS_CUDA_TOPK_MAX,
	.kv_dtype = cuda_kv_dtype,
	.layernorm = cuda_layernorm,
	.add_rows = cuda_add_rows,
	.gelu = cuda_gelu,
	.attention_full = cuda_attention_full,
	.avgpool = cuda_avgpool,
	.patches = cuda_patches,
	.attn_merge = cuda_attn_merge,
};

static struct gs_cuda_ctx *ctx_of(const struct gs_backend *be)
{
	return be && be->iface == &gs_backend_cuda_i ? be->ctx : NULL;
}

#define CTX_OR_FAIL(c, be)                                                                   \
	do {                                                                                 \
		(c) = ctx_of(be);                                                            \
		if (!(c))                                                                    \
			return gs_errorf(GS_ERR_INVALID_ARG, "%s: not a CUDA backend", __func__); \
	} while (0)

int gs_cuda_built(void)
{
	return 1;
}

int gs_cuda_device_count(void)
{
	return gs_cu_device_count();
}

enum gs_status gs_backend_cuda_create(int device, struct gs_backend *out)
{
	struct gs_cuda_ctx *c;

	GS_TRY(gs_cu_ctx_create(device, &c));
	out->iface = &gs_backend_cuda_i;
	out->ctx = c;
	return GS_OK;
}

void gs_backend_cuda_free(struct gs_backend *be)
{
	struct gs_cuda_ctx *c = ctx_of(be);

	if (!c)
		return;
	gs_cu_ctx_free(c);
	be->ctx = NULL;
}

void *gs_backend_cuda_stream(const struct gs_backend *be)
{
	struct gs_cuda_ctx *c = ctx_of(be);

	return c ? gs_cu_stream(c) : NULL;
}

int gs_backend_cuda_device(const struct gs_backend *be)
{
	struct gs_cuda_ctx *c = ctx_of(be);

	return c ? gs_cu_device(c) : -1;
}

enum gs_status gs_cuda_malloc(const struct gs_backend *be, void **dev, size_t bytes)
{
	struct gs_cuda_ctx *c;

	*dev = NULL;
	CTX_OR_FAIL(c, be);
	return gs_cu_malloc(c, dev, bytes);
}

void gs_cuda_free(const struct gs_backend *be, void *dev)
{
	struct gs_cuda_ctx *c = ctx_of(be);

	if (c)
		gs_cu_free(c, dev);
}

enum gs_status gs_cuda_upload(const struct gs_backend *be, void *dev_dst, const void *host_src, size_t bytes)
{
	struct gs_cuda_ctx *c;

	CTX_OR_FAIL(c, be);
	return gs_cu_upload(c, dev_dst, host_src, bytes);
}

enum gs_status gs_cuda_download(const struct gs_backend *be, void *host_dst, const void *dev_src, size_t bytes)
{
	struct gs_cuda_ctx *c;

	CTX_OR_FAIL(c, be);
	return gs_cu_download(c, host_dst, dev_src, bytes);
}

enum gs_status gs_cuda_memset(const struct gs_backend *be, void *dev_dst, int byte, size_t bytes)
{
	struct gs_cuda_ctx *c;

	CTX_OR_FAIL(c, be);
	return gs_cu_memset(c, dev_dst, byte, bytes);
}

enum gs_status gs_cuda_synchronize(const struct gs_backend *be)
{
	struct gs_cuda_ctx *c;

	CTX_OR_FAIL(c, be);
	return gs_cu_synchronize(c);
}

enum gs_status gs_cuda_argmax_rows(const struct gs_backend *be, const float *logits, int rows, int cols,
				   int32_t *ids_host, float *vals_host)
{
	struct gs_cuda_ctx *c;

	CTX_OR_FAIL(c, be);
	if (rows < 0 || cols < 1)
		return gs_errorf(GS_ERR_INVALID_ARG, "argmax of %d rows × %d columns", rows, cols);
	if (rows == 0)
		return GS_OK;
	return gs_cu_argmax_rows(c, logits, rows, cols, ids_host, vals_host);
}

enum gs_status gs_cuda_topk_rows(const struct gs_backend *be, const float *logits, int rows, int cols, int k,
				 int32_t *ids_host, float *vals_host)
{
	struct gs_cuda_ctx *c;

	CTX_OR_FAIL(c, be);
	if (rows < 0 || cols < 1 || k < 1 || k > GS_CUDA_TOPK_MAX || k > cols)
		return gs_errorf(GS_ERR_INVALID_ARG, "top-%d of %d rows × %d columns (need 1 <= k <= min(%d, columns))", k,
				 rows, cols, GS_CUDA_TOPK_MAX);
	if (rows == 0)
		return GS_OK;
	return gs_cu_topk_rows(c, logits, rows, cols, k, ids_host, vals_host);
}
