/* Per-request sampling parameters: one definition and one validation for every layer that
 * accepts them (the worker's sampler and batch reader, the coordinator's gRPC and HTTP
 * front ends), so a value is refused with the same message wherever it comes in. */
#ifndef GS_PARAMS_H
#define GS_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "gs_status.h"

struct gs_sampling_params {
	float    temperature;        /* >= 0; < 1e-5 (e.g. 0): greedy; 1: unchanged          */
	int32_t  top_k;              /* >= 0; 0: off                                          */
	float    top_p;              /* (0, 1]; 1: off                                        */
	float    min_p;              /* [0, 1); 0: off                                        */
	float    repetition_penalty; /* > 0; 1: off; > 1 discourages repeats                  */
	uint64_t seed;               /* per request; same seed, same tokens                   */
};

/* HF defaults with sampling on: temperature 1, no truncation, no penalty, seed 0. */
struct gs_sampling_params gs_sampling_params_default(void);

/* GS_OK, or GS_ERR_INVALID_ARG with a precise reason ("top_p must be in (0, 1], got 1.5")
 * written to why (cap bytes, may be NULL/0) and recorded with gs_errorf(). */
enum gs_status gs_sampling_params_validate(const struct gs_sampling_params *p, char *why, size_t cap);

#endif
