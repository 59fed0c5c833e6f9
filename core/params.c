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
	return GS_OK;
}

