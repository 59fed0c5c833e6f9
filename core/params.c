#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#include "gs_params.h"

struct gs_sampling_params gs_sampling_params_default(void)
{
	return (struct gs_sampling_params){
		.temperature = 1.0f,
		.top_k = 0,
		.top_p = 1.0f,
		.min_p = 0.0f,
		.repetition_penalty = 1.0f,
		.seed = 0,
		.presence_penalty = 0.0f,
		.frequency_penalty = 0.0f,
		.min_tokens = 0,
		.n_logit_bias = 0,
	};
}

static enum gs_status gs_sampler_invalid(char *why, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static enum gs_status gs_sampler_invalid(char *why, size_t cap, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (why && cap)
		snprintf(why, cap, "%s", msg);
	return gs_errorf(GS_ERR_INVALID_ARG, "%s", msg);
}

enum gs_status gs_sampling_params_validate(const struct gs_sampling_params *p, char *why, size_t cap)
{
	if (why && cap)
		why[0] = '\0';
	if (!p)
		return gs_sampler_invalid(why, cap, "sampling parameters missing");
	if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
		return gs_sampler_invalid(why, cap, "temperature must be a finite number >= 0, got %g",
					  (double)p->temperature);
	if (p->top_k < 0)
		return gs_sampler_invalid(why, cap, "top_k must be >= 0 (0 = off), got %d", (int)p->top_k);
	if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
		return gs_sampler_invalid(why, cap, "top_p must be in (0, 1], got %g", (double)p->top_p);
	if (!(p->min_p >= 0.0f && p->min_p < 1.0f))
		return gs_sampler_invalid(why, cap, "min_p must be in [0, 1), got %g", (double)p->min_p);
	if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
		return gs_sampler_invalid(why, cap, "repetition_penalty must be a finite number > 0, got %g",
					  (double)p->repetition_penalty);
	if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
		return gs_sampler_invalid(why, cap, "presence_penalty must be in [-2, 2], got %g",
					  (double)p->presence_penalty);
	if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
		return gs_sampler_invalid(why, cap, "frequency_penalty must be in [-2, 2], got %g",
					  (double)p->frequency_penalty);
	if (p->min_tokens < 0)
		return gs_sampler_invalid(why, cap, "min_tokens must be >= 0, got %d", (int)p->min_tokens);
	if (p->n_logit_bias < 0 || p->n_logit_bias > GS_MAX_LOGIT_BIAS)
		return gs_sampler_invalid(why, cap, "logit_bias may hold at most %d entries, got %d",
					  GS_MAX_LOGIT_BIAS, (int)p->n_logit_bias);
	for (int32_t i = 0; i < p->n_logit_bias; i++) {
		if (p->logit_bias_id[i] < 0)
			return gs_sampler_invalid(why, cap, "logit_bias: token id %d is negative",
						  (int)p->logit_bias_id[i]);
		if (!(p->logit_bias[i] >= -100.0f && p->logit_bias[i] <= 100.0f))
			return gs_sampler_invalid(why, cap, "logit_bias: the bias of token %d must be in [-100, 100], got %g",
						  (int)p->logit_bias_id[i], (double)p->logit_bias[i]);
		for (int32_t j = 0; j < i; j++)
			if (p->logit_bias_id[j] == p->logit_bias_id[i])
				return gs_sampler_invalid(why, cap, "logit_bias: token id %d is given twice",
							  (int)p->logit_bias_id[i]);
	}
	return GS_OK;
}

enum gs_status gs_sampling_params_validate_vocab(const struct gs_sampling_params *p, int32_t n_vocab, char *why,
						 size_t cap)
{
	GS_TRY(gs_sampling_params_validate(p, why, cap));
	for (int32_t i = 0; i < p->n_logit_bias; i++)
		if (p->logit_bias_id[i] >= n_vocab)
			return gs_sampler_invalid(why, cap, "logit_bias: token id %d is outside the vocabulary (0..%d)",
						  (int)p->logit_bias_id[i], (int)n_vocab - 1);
	return GS_OK;
}

