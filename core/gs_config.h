/* Hugging Face config.json -> gs_config.
 *
 * Accepts Gemma3ForCausalLM (flat) and Gemma3ForConditionalGeneration (text_config).
 * Every hyper-parameter comes from the file (defaults as Gemma3TextConfig for absent
 * keys); per-layer quantities are expanded once into arrays so forward() never
 * re-derives the layer pattern. Nothing here is specific to a model size. */
#ifndef GS_CONFIG_H
#define GS_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "gs_status.h"

#define GS_MAX_EOS 8
#define GS_MAX_LAYERS 1024 /* num_hidden_layers (Gemma 3 27B has 62) */

/* Gemma3ForConditionalGeneration's image side (reference/gemma3.md §1.3): the SigLIP tower's
 * vision_config and the token ids around images. present is false for text-only models. */
struct gs_vision_config {
	bool    present;               /* a vision_config was given */
	int32_t hidden;                /* vision hidden_size (1152) */
	int32_t intermediate;          /* vision intermediate_size (4304) */
	int32_t n_layers;              /* encoder layers (27) */
	int32_t n_heads;               /* 16; head_dim = hidden / n_heads (72) */
	int32_t image_size;            /* 896: images arrive as image_size^2 RGB */
	int32_t patch_size;            /* 14 */
	double  ln_eps;                /* layer_norm_eps (1e-6) */
	int32_t mm_tokens_per_image;   /* 256 soft tokens per image */
	int32_t boi_id;                /* <start_of_image> 255999 */
	int32_t eoi_id;                /* <end_of_image> 256000 */
	int32_t image_token_id;        /* <image_soft_token> 262144 */
};

struct gs_config {
	char    architecture[64];      /* "Gemma3ForCausalLM" / "Gemma3ForConditionalGeneration" */
	bool    conditional;           /* text part nested in text_config */

	int32_t vocab_size;            /* V from config (tensor shape is authoritative) */
	int32_t hidden;                /* H */
	int32_t intermediate;          /* F */
	int32_t n_layers;              /* L */
	int32_t n_heads;               /* Nq */
	int32_t n_kv_heads;            /* Nkv */
	int32_t head_dim;              /* D */
	double  query_pre_attn_scalar; /* attention scale = qpas^-0.5 */
	int32_t sliding_window;        /* W: visible iff 0 <= i-j < W on sliding layers */
	int32_t sliding_pattern;       /* every n-th layer is global when layer_types absent */
	double  rope_theta;            /* global layers */
	double  rope_local_base;       /* sliding layers */
	double  rope_scale_factor;     /* linear scaling on global layers (1 = none) */
	int32_t max_position;          /* max_position_embeddings */
	double  rms_eps;
	double  final_softcap;         /* 0 = none */
	double  attn_softcap;          /* 0 = none */
	bool    tie_embeddings;
	int32_t bos_id, pad_id;
	int32_t eos_ids[GS_MAX_EOS];
	int32_t n_eos;

	/* Per-layer arrays, [n_layers] each. */
	bool    *is_sliding;
	double  *rope_base;            /* base of the inverse frequencies */
	double  *rope_scale;           /* positions are multiplied by 1/factor */
	int32_t *window;               /* INT32_MAX on global layers */

	struct gs_vision_config vision; /* present only for multimodal checkpoints */
};

/* Parse config.json at path. On failure returns a status with a message naming the file
 * and the problem (missing key, wrong type, contradictory values). */
enum gs_status gs_config_load(const char *path, struct gs_config *cfg);
/* Same from a JSON string already in memory (name is used in messages). */
enum gs_status gs_config_parse(const char *json, size_t len, const char *name, struct gs_config *cfg);
void gs_config_free(struct gs_config *cfg);

int32_t gs_config_n_global(const struct gs_config *cfg);
bool gs_config_is_eos(const struct gs_config *cfg, int32_t id);

/* Read a whole file into a malloc'd NUL-terminated buffer. */
enum gs_status gs_read_file(const char *path, char **out, size_t *len);

#endif
