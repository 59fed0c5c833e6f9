/* The step plan the leader broadcasts to every rank of an engine each iteration. */
#ifndef GS_PLAN_H
#define GS_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_engine.h"
#include "gs_status.h"

struct gs_plan_seq {
	int32_t              slot;           /* sequence slot on every rank */
	int32_t              tok0, n_tokens; /* its rows in ids */
	bool                 want_logits;
	bool                 admit;          /* first appearance: reserve KV, create the sampler */
	uint64_t             id;             /* admit only */
	int32_t              max_positions;  /* admit only */
	int32_t              cp_k, cp_first; /* admit only: context-parallel placement (gs_kv_cp_owner) */
	struct gs_req_params params;         /* admit only */
	int32_t              cached0, n_cached; /* admit only: its prefix-cache blocks in cached */
	const uint8_t       *images;         /* admit only: n_images images of image_bytes each, one
					      * after another (leader: the request's copy; followers:
					      * the plan's img_buf); NULL: none */
	int32_t              n_images;
	int64_t              image_bytes;
};

struct gs_plan {
	int32_t             n_release;
	int32_t            *release;         /* [max_seqs] slots to free before anything else */
	int32_t             n_seqs;
	struct gs_plan_seq *seqs;            /* [max_seqs] */
	int32_t             n_ids;
	int32_t            *ids;             /* [max_tokens] */
	int32_t             n_cached, cached_cap;
	int32_t            *cached;          /* cached blocks of this plan's admissions (grown) */
	uint8_t            *img_buf;         /* followers: the admissions' images of the last unpack */
	size_t              img_cap;
	bool                stop;            /* followers return */
	int32_t             max_seqs, max_tokens;
	/* Wire form: protobuf-c StepPlan (proto/engine.proto). Message structs for packing and
	 * an arena for unpacking are preallocated, so a step allocates nothing. */
	void               *wire;            /* opaque: see plan.c */
};

enum gs_status gs_plan_init(struct gs_plan *p, int32_t max_seqs, int32_t max_tokens);
void gs_plan_free(struct gs_plan *p);
void gs_plan_reset(struct gs_plan *p);
/* Append n cached block ids for entry ps (an admission). */
enum gs_status gs_plan_add_cached(struct gs_plan *p, struct gs_plan_seq *ps, const int32_t *blocks, int32_t n);

/* Serialise as a gemmashard.engine.StepPlan into *buf (grown as needed) / parse one; unpack
 * checks every count and slot against the plan's capacity before writing (a malformed plan is
 * GS_ERR_FORMAT, never an overflow). */
enum gs_status gs_plan_pack(const struct gs_plan *p, uint8_t **buf, size_t *cap, uint64_t *len);
enum gs_status gs_plan_unpack(struct gs_plan *p, const uint8_t *buf, size_t len);

#endif
