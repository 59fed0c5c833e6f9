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

struct gs_model {
	struct gs_config         cfg;
	struct gs_safetensors   *st;         /* NULL for synthetic weights */
	void                    *slab;       /* owned synthetic weights, or NULL */
	float                   *gains;      /* owned slab behind every norm gain */
	struct gs_tensor         embed;      /* [V, H]; rows = V actually present */
	struct gs_tensor         lm_head;    /* == embed when tied */
	float                   *final_norm; /* [H] */
	struct gs_layer_weights *layers;     /* [L] */
	int32_t                  n_vocab;    /* logits width = embed rows */
	float                    embed_scale;/* bf16(sqrt(H)), as HF computes it in a bf16 model */
	size_t                   weight_bytes;
	char                     path[512];
};

/* Load config.json and the safetensors checkpoint in dir. Every tensor is checked for
 * presence, dtype and shape against the config; failures name the file/tensor and return
 * GS_ERR_FORMAT / GS_ERR_NOT_FOUND / GS_ERR_IO. With progress, pages are touched up front
 * and progress is printed on stderr when loading takes more than a second. */
enum gs_status gs_model_load(const char *dir, bool touch_pages, struct gs_model **out);

/* Synthetic weights for benchmarks: shape preset ("tiny", "1b", "4b", "27b") filled from a
 * seeded RNG in memory, no checkpoint needed. */
enum gs_status gs_model_synthetic(const char *shape, uint64_t seed, struct gs_model **out);

/* config.json text of a shape preset, or NULL if unknown. */
const char *gs_model_preset_json(const char *shape);

void gs_model_free(struct gs_model *m);

/* Bytes of K+V per token per layer type, for TP degree tp (KV heads split, replicated when
 * tp > Nkv). fp32 on CPU: elem_bytes = 4; bf16 on GPU: 2. */
size_t gs_model_kv_bytes_per_token(const struct gs_config *cfg, int tp, size_t elem_bytes);

#endif
