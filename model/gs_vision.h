/* The image side of Gemma3ForConditionalGeneration (reference/gemma3.md §4.2, §4.3): the SigLIP
 * vision tower and the multi-modal projector, on the kernels backend (CPU or CUDA), sharded over
 * the tensor-parallel group like the decoder (ARCHITECTURE.md, "Vision tower").
 *
 *   pixels (S·S·3 uint8 RGB) -> x/255, (x - 0.5)/0.5 -> patches [Np, 3·P·P] -> patch matmul + bias
 *   + learned positions -> L pre-LayerNorm encoder layers -> post-LayerNorm -> k×k average pool to
 *   mm_tokens_per_image rows -> RMSNorm (1 + w) -> x @ W_proj -> [mm_tokens, H] rows (fp32).
 *
 * Those rows replace the <image_soft_token> embeddings in the decoder's input (not scaled). */
#ifndef GS_VISION_H
#define GS_VISION_H

#include <stdint.h>

#include "gs_comm.h"
#include "gs_kernels.h"
#include "gs_status.h"

struct gs_model;
struct gs_safetensors;

/* One encoder layer; Hv = vision hidden, Fv = intermediate, this rank's share in brackets. */
struct gs_vision_layer {
	struct gs_tensor q, k, v;            /* [(Nv/T)·Dv, Hv] COLUMN-split by head */
	struct gs_tensor o;                  /* [Hv, (Nv/T)·Dv] ROW-split: one all-reduce */
	struct gs_tensor fc1;                /* [Fv/T, Hv] COLUMN */
	struct gs_tensor fc2;                /* [Hv, Fv/T] ROW: one all-reduce */
	/* fp32, in the vision gain slab (backend memory after gs_model_to_backend) */
	float *ln1_w, *ln1_b;                /* [Hv] */
	float *q_b, *k_b, *v_b;              /* [(Nv/T)·Dv] this rank's heads */
	float *o_b;                          /* [Hv] added once, after the all-reduce */
	float *ln2_w, *ln2_b;                /* [Hv] */
	float *fc1_b;                        /* [Fv/T] */
	float *fc2_b;                        /* [Hv] after the all-reduce */
};

/* The tower and projector weights of a model (gs_model.vision; NULL for text-only models). */
struct gs_vision_weights {
	int32_t                 n_heads;     /* heads held: Nv / T */
	int32_t                 n_f;         /* MLP columns held: Fv / T */
	struct gs_tensor        patch;       /* [Hv, 3·P·P]: the conv weight [Hv, 3, P, P] as a matrix */
	struct gs_tensor        proj;        /* [H, Hv]: mm_input_projection_weight ([Hv, H], x @ W)
					      * transposed once at load, so y = x · projᵀ */
	struct gs_vision_layer *layers;      /* [Lv] */
	float                  *patch_b;     /* [Hv] */
	float                  *pos;         /* [Np, Hv] position embeddings, fp32 */
	float                  *post_w, *post_b; /* [Hv] post_layernorm */
	float                  *mm_norm;     /* [Hv] mm_soft_emb_norm gain, 1 + w */
	float                  *gains;       /* owned fp32 slab behind every float* above (host; NULL
					      * once moved to dev_gains) */
	size_t                  gains_count; /* floats in it */
	void                   *own;         /* owned copies: ROW splits, the transposed projection
					      * (synthetic: every matrix) */
	void                   *dev_slab;    /* after gs_vision_to_backend: every matrix there */
	float                  *dev_gains;   /* and the gain slab */
	size_t                  weight_bytes;
};

/* Load the tower and projector of m (m->cfg.vision.present) from st, in either tensor-name
 * scheme (`vision_tower.vision_model.*` / `multi_modal_projector.*`, or the same under
 * `model.`), this rank's share for T = m->shard.size. Every tensor is checked against the
 * config; errors name the tensor (GS_ERR_NOT_FOUND, GS_ERR_FORMAT) or the split
 * (GS_ERR_INVALID_ARG: T must divide the vision heads and intermediate size). */
enum gs_status gs_vision_load(struct gs_model *m, const struct gs_safetensors *st, const char *dir);
/* Synthetic tower weights for benchmarks (seeded, this rank's share). */
enum gs_status gs_vision_synthetic(struct gs_model *m, uint64_t seed);
/* A model holding only a synthetic tower (and the text config of shape, for the projector's
 * width): benchmarks of the vision path without the text weights. Its text part is empty: use it
 * with gs_vision_to_backend (not gs_model_to_backend) and gs_vision_* only. */
enum gs_status gs_vision_synthetic_model(const char *shape, uint64_t seed, int rank, int size, struct gs_model **out);
/* Move every tower weight and gain into be's memory (gs_model_to_backend calls it). */
enum gs_status gs_vision_to_backend(struct gs_model *m, struct gs_backend be);
/* dev: the backend holding the moved weights (NULL: none moved). */
void gs_vision_weights_free(struct gs_vision_weights *w, const struct gs_backend *dev);

/* FLOPs of one image through the whole tower and projector (all ranks together): matmuls
 * (2·m·n·k) and attention (4·Np²·Hv per layer); what benchmarks divide by. */
double gs_vision_flops(const struct gs_model *m);

/* Workspace for encoding images with m's tower on be (device memory on a GPU), collective over
 * comm (the forward's TP group; NULL when T = 1). Sized for one image; images are encoded one
 * after another. GS_ERR_INVALID_ARG when m has no tower; GS_ERR_NOMEM. */
struct gs_vision;
enum gs_status gs_vision_create(const struct gs_model *m, struct gs_backend be, const struct gs_comm *comm,
				struct gs_vision **out);
void gs_vision_free(struct gs_vision *v);

/* Encode n images (n · S·S·3 bytes in HOST memory, S = image_size, RGB interleaved, rows top
 * to bottom) into n · mm_tokens_per_image rows of the text hidden width H (fp32), written to
 * `out` in the backend's memory (image i's rows at out + i·mm_tokens·H): the projector outputs
 * that replace the <image_soft_token> embeddings. Every rank of the TP group calls it with the
 * same images (collective when comm != NULL); every rank gets all rows. Errors: a failed
 * collective (its status); nothing else can fail once created. */
enum gs_status gs_vision_encode(struct gs_vision *v, const uint8_t *pixels, int32_t n, float *out);

#endif
