/* Gemma 3 text-decoder weights: views into the mmap'd checkpoint (or a synthetic slab),
 * validated against gs_config once at load so forward() never checks a shape. */
#ifndef GS_MODEL_H
#define GS_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "gs_config.h"
#include "gs_kernels.h"
#include "gs_status.h"

struct gs_safetensors;
struct gs_vision_weights;

struct gs_layer_weights {
	struct gs_tensor q, k, v, o;         /* [Nq·D, H], [Nkv·D, H], [Nkv·D, H], [H, Nq·D] */
	struct gs_tensor gate, up, down;     /* [F, H], [F, H], [H, F] */
	/* Norm gains, already 1 + w in fp32 (Gemma3RMSNorm multiplies by 1 + w in fp32). */
	float *attn_norm;                    /* [H] input_layernorm */
	float *post_attn_norm;               /* [H] */
	float *pre_ffn_norm;                 /* [H] */
	float *post_ffn_norm;                /* [H] */
	float *q_norm, *k_norm;              /* [D] */
};

/* How a weight is split across the T ranks of a tensor-parallel group (ARCHITECTURE.md §4).
 * Rows of an nn.Linear weight are output features, columns input features. */
enum gs_split {
	GS_SPLIT_MIRRORED,  /* every rank holds all of it (norms) */
	GS_SPLIT_COLUMN,    /* rows by head / MLP column: output stays local */
	GS_SPLIT_ROW,       /* columns: partial sums, followed by exactly one all-reduce */
	GS_SPLIT_VOCAB,     /* embedding rows by vocabulary range */
	GS_SPLIT_COUNT
};

/* This rank's share of the model. T = 1 is the whole model. */
struct gs_shard {
	int     rank, size;      /* position in the TP group, T */
	int32_t q_head0;         /* first query head held */
	int32_t n_heads;         /* query heads held: Nq / T */
	int32_t kv_head0;        /* first KV head held */
	int32_t n_kv_heads;      /* KV heads held: Nkv / T, or 1 replicated when T > Nkv */
	int32_t f0, n_f;         /* MLP columns [f0, f0 + n_f) */
	int32_t vocab0;          /* first vocabulary row held */
	int32_t n_vocab;         /* rows held (the last rank may hold fewer) */
	int32_t vocab_stride;    /* ceil(V / T): padded slice width when gathering logits */
};

struct gs_model {
	struct gs_config         cfg;
	struct gs_shard          shard;
	struct gs_safetensors   *st;         /* NULL for synthetic weights */
	void                    *slab;       /* owned weights (synthetic, or ROW-split copies) */
	float                   *gains;      /* owned slab behind every norm gain */
	struct gs_tensor         embed;      /* [shard.n_vocab, H]: this rank's vocabulary rows */
	struct gs_tensor         lm_head;    /* == embed when tied */
	float                   *final_norm; /* [H] */
	struct gs_layer_weights *layers;     /* [L] */
	int32_t                  n_vocab;    /* V of the whole model = embed_tokens rows */
	float                    embed_scale;/* bf16(sqrt(H)), as HF computes it in a bf16 model */
	size_t                   weight_bytes;  /* bytes this rank holds (views + copies) */
	struct gs_backend        dev;        /* after gs_model_to_backend: whose memory holds it */
	void                    *dev_slab;   /* every weight there (NULL: host memory) */
	void                    *dev_gains;  /* every norm gain there (NULL: host memory) */
	struct gs_vision_weights *vision;    /* SigLIP tower + projector (gs_vision.h); NULL: text-only */
	char                     path[512];
};

/* Check that T can split this config (T divides the query heads and intermediate size; KV
 * heads divisible by T, or T a multiple of them). GS_ERR_INVALID_ARG with the reason. */
enum gs_status gs_shard_plan(const struct gs_config *cfg, int32_t n_vocab, int rank, int size,
			     struct gs_shard *out);

/* Load config.json and the safetensors checkpoint in dir. Every tensor is checked for
 * presence, dtype and shape against the config; failures name the file/tensor and return
 * GS_ERR_FORMAT / GS_ERR_NOT_FOUND / GS_ERR_IO. With touch_pages, this rank's pages are
 * faulted in up front and progress is printed on stderr when that takes over a second. */
enum gs_status gs_model_load(const char *dir, bool touch_pages, struct gs_model **out);
/* The same for rank `rank` of a TP group of `size`: reads only this rank's slices. */
enum gs_status gs_model_load_tp(const char *dir, int rank, int size, bool touch_pages, struct gs_model **out);

/* Synthetic weights for benchmarks: shape preset ("tiny", "1b", "4b", "27b") filled from a
 * seeded RNG in memory, no checkpoint needed; only this rank's slices are generated (the
 * values therefore depend on T: for speed measurements, not for comparisons). */
enum gs_status gs_model_synthetic(const char *shape, uint64_t seed, struct gs_model **out);
enum gs_status gs_model_synthetic_tp(const char *shape, uint64_t seed, int rank, int size, struct gs_model **out);
/* The same weights drawn directly in be's memory when it is a device's (a 27B shape needs no host
 * copy): the values equal gs_model_synthetic_tp's bit for bit. The gains stay on the host until
 * gs_model_to_backend. be NULL or host memory: as _tp. */
enum gs_status gs_model_synthetic_on(const char *shape, uint64_t seed, int rank, int size, const struct gs_backend *be,
				     struct gs_model **out);

/* config.json text of a shape preset, or NULL if unknown. */
const char *gs_model_preset_json(const char *shape);

void gs_model_free(struct gs_model *m);

/* Floats of norm gains a model holds (one slab, mirrored on every rank): per layer 4 of hidden
 * (input, post-attention, pre- and post-feed-forward) and 2 of head_dim (q, k), plus the final. */
static inline size_t gs_model_gains_count(const struct gs_config *cfg)
{
	return (size_t)cfg->n_layers * (4 * (size_t)cfg->hidden + 2 * (size_t)cfg->head_dim) + (size_t)cfg->hidden;
}

/* Move every weight and norm gain into be's memory when it is not host memory (a GPU): one
 * allocation for the weights (tensors 256-byte aligned; skipped when gs_model_synthetic_on drew
 * them there), one for the gains; the host copies (mmap, owned slab) are dropped. No-op for
 * host-memory backends. Call after loading (and the ranks' checkpoint comparison, which reads the
 * gains on the host), before gs_forward_create. */
enum gs_status gs_model_to_backend(struct gs_model *m, struct gs_backend be);

/* Bytes of K+V per token per layer type, for TP degree tp (KV heads split, replicated when
 * tp > Nkv). fp32 on CPU: elem_bytes = 4; bf16 on GPU: 2. */
size_t gs_model_kv_bytes_per_token(const struct gs_config *cfg, int tp, size_t elem_bytes);

/* FLOPs of this rank's decoder-layer matmuls per token (2 · rows · cols of q, k, v, o, gate,
 * up, down over every layer; its slices when T > 1): what benchmarks divide by. The LM head
 * adds 2 · lm_head.rows · lm_head.cols per row that wants logits. */
double gs_model_layer_flops(const struct gs_model *m);

#endif
