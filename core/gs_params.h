/* Per-request sampling parameters: one definition and one validation for every layer that
 * accepts them (the worker's sampler and batch reader, the coordinator's gRPC and HTTP
 * front ends), so a value is refused with the same message wherever it comes in. */
#ifndef GS_PARAMS_H
#define GS_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "gs_status.h"

#define GS_MAX_LOGIT_BIAS 300 /* entries of logit_bias, as OpenAI allows */

struct gs_sampling_params {
	float    temperature;        /* >= 0; < 1e-5 (e.g. 0): greedy; 1: unchanged          */
	int32_t  top_k;              /* >= 0; 0: off                                          */
	float    top_p;              /* (0, 1]; 1: off                                        */
	float    min_p;              /* [0, 1); 0: off                                        */
	float    repetition_penalty; /* > 0; 1: off; > 1 discourages repeats                  */
	uint64_t seed;               /* per request; same seed, same tokens                   */
	float    presence_penalty;   /* [-2, 2]; 0: off. OpenAI: minus this once for every id   */
	float    frequency_penalty;  /* [-2, 2]; 0: off.  ... generated so far, minus this times */
				     /*   its count; prompt tokens do not count                   */
	int32_t  min_tokens;         /* >= 0: eos and stop ids get -inf until this many tokens  */
	int32_t  n_logit_bias;       /* 0..GS_MAX_LOGIT_BIAS                                    */
	int32_t  logit_bias_id[GS_MAX_LOGIT_BIAS]; /* distinct token ids >= 0 (the vocabulary  */
						   /*   bound is checked where it is known)     */
	float    logit_bias[GS_MAX_LOGIT_BIAS];    /* [-100, 100], added to the logit          */
};

/* HF defaults with sampling on: temperature 1, no truncation, no penalty, no bias, seed 0. */
struct gs_sampling_params gs_sampling_params_default(void);

/* GS_OK, or GS_ERR_INVALID_ARG with a precise reason ("top_p must be in (0, 1], got 1.5")
 * written to why (cap bytes, may be NULL/0) and recorded with gs_errorf(). */
enum gs_status gs_sampling_params_validate(const struct gs_sampling_params *p, char *why, size_t cap);
/* The same, plus every logit_bias id inside a vocabulary of n_vocab tokens. */
enum gs_status gs_sampling_params_validate_vocab(const struct gs_sampling_params *p, int32_t n_vocab, char *why,
						 size_t cap);

#endif
