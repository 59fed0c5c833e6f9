/* Internal to kernels/cuda: what backend_cuda.c (plain C: vtable, argument checks) calls in the
 * .cu files. No CUDA type appears here; struct gs_cuda_ctx is defined in cuda_common.cuh.
 * Op launchers get arguments already checked and non-empty (backend_cuda.c returns early on
 * empty shapes), queue work on the context's stream and abort on CUDA errors. */
#ifndef GS_CUDA_INTERNAL_H
#define GS_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "gs_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

struct gs_cuda_ctx;

/* context.cu */
int            gs_cu_device_count(void);
enum gs_status gs_cu_ctx_create(int device, struct gs_cuda_ctx **out);
void           gs_cu_ctx_free(struct gs_cuda_ctx *c);
void          *gs_cu_stream(struct gs_cuda_ctx *c);
int            gs_cu_device(struct gs_cuda_ctx *c);
int            gs_cu_kv_bf16(struct gs_cuda_ctx *c); /* the KV cache in bf16 (GS_CUDA_KV=bf16), else fp32 */
enum gs_status gs_cu_malloc(struct gs_cuda_ctx *c, void **dev, size_t bytes);
void           gs_cu_free(struct gs_cuda_ctx *c, void *dev);
enum gs_status gs_cu_upload(struct gs_cuda_ctx *c, void *dst, const void *src, size_t bytes);
enum gs_status gs_cu_download(struct gs_cuda_ctx *c, void *dst, const void *src, size_t bytes);
enum gs_status gs_cu_memset(struct gs_cuda_ctx *c, void *dst, int byte, size_t bytes);
enum gs_status gs_cu_synchronize(struct gs_cuda_ctx *c);

/* one file per op */
void gs_cu_matmul(struct gs_cuda_ctx *c, float *y, const float *x, const struct gs_tensor *w, int m);
void gs_cu_rmsnorm(struct gs_cuda_ctx *c, float *y, const float *x, const float *gain, int rows, int dim,
		   float eps);
void gs_cu_rmsnorm_add(struct gs_cuda_ctx *c, float *y, const float *x, const float *gain, int rows, int dim,
		       float eps);
void gs_cu_rope(struct gs_cuda_ctx *c, float *x, int n_tokens, int n_heads, int head_dim, const int32_t *pos,
		double base, double pos_scale);
void gs_cu_attention(struct gs_cuda_ctx *c, const struct gs_attn_args *a);
void gs_cu_geglu(struct gs_cuda_ctx *c, float *out, const float *gate, const float *up, size_t n);
void gs_cu_softcap(struct gs_cuda_ctx *c, float *x, size_t n, float cap);
void gs_cu_embed(struct gs_cuda_ctx *c, float *out, const struct gs_tensor *emb, const int32_t *ids, int n,
		 float scale, int64_t row0);
void gs_cu_fill_synth_bf16(struct gs_cuda_ctx *c, uint16_t *dst, size_t n, float a, uint64_t seed);
void gs_cu_scatter_rows(struct gs_cuda_ctx *c, void *dst, int dst_bf16, const float *src, const int64_t *rows, int n,
			size_t width);
void gs_cu_gather_rows(struct gs_cuda_ctx *c, float *dst, const float *src, const int32_t *rows, int n,
		       size_t width);
enum gs_status gs_cu_argmax_rows(struct gs_cuda_ctx *c, const float *logits, int rows, int cols, int32_t *ids,
				 float *vals);
void gs_cu_candidates(struct gs_cuda_ctx *c, const struct gs_cand_args *a);
enum gs_status gs_cu_topk_rows(struct gs_cuda_ctx *c, const float *logits, int rows, int cols, int k,
			       int32_t *ids, float *vals);

/* the vision tower's ops (vision.cu; gelu in elementwise.cu) */
void gs_cu_layernorm(struct gs_cuda_ctx *c, float *y, const float *x, const float *w, const float *b, int rows, int dim,
		     float eps);
void gs_cu_add_rows(struct gs_cuda_ctx *c, float *y, const float *x, const float *b, int rows, int cols);
void gs_cu_gelu(struct gs_cuda_ctx *c, float *y, const float *x, size_t n);
void gs_cu_attn_merge(struct gs_cuda_ctx *c, float *out, float *lse_out, const float *parts, int k, int n,
		      int head_dim);
void gs_cu_attention_full(struct gs_cuda_ctx *c, float *out, const float *q, const float *k, const float *v, int n,
			  int n_heads, int head_dim, float scale);
void gs_cu_avgpool(struct gs_cuda_ctx *c, float *y, const float *x, int side, int k, int dim);
void gs_cu_patches(struct gs_cuda_ctx *c, float *y, const uint8_t *px, int image_size, int patch);

/* Largest head_dim the attention kernel takes (lanes hold head_dim / 32 values each). */
#define GS_CU_ATTN_MAX_HEAD_DIM 512

#ifdef __cplusplus
}
#endif

#endif
