#include "gs_params_wire.h"

#include <string.h>

void gs_params_to_wire(Gemmashard__Engine__SamplingParams *w, const struct gs_sampling_params *sp)
{
	w->temperature = sp->temperature;
	w->top_k = sp->top_k;
	w->top_p = sp->top_p;
	w->min_p = sp->min_p;
	w->repetition_penalty = sp->repetition_penalty;
	w->seed = sp->seed;
	w->presence_penalty = sp->presence_penalty;
	w->frequency_penalty = sp->frequency_penalty;
	w->min_tokens = sp->min_tokens;
	w->n_logit_bias_ids = (size_t)sp->n_logit_bias;
	w->logit_bias_ids = (int32_t *)sp->logit_bias_id;
	w->n_logit_bias_values = (size_t)sp->n_logit_bias;
	w->logit_bias_values = (float *)sp->logit_bias;
}

enum gs_status gs_params_from_wire(const Gemmashard__Engine__SamplingParams *w, struct gs_sampling_params *sp)
{
	if (w->n_logit_bias_ids != w->n_logit_bias_values || w->n_logit_bias_ids > GS_MAX_LOGIT_BIAS)
		return gs_errorf(GS_ERR_FORMAT, "sampling params: logit_bias with %zu ids and %zu values (at most %d)",
				 w->n_logit_bias_ids, w->n_logit_bias_values, GS_MAX_LOGIT_BIAS);
	*sp = gs_sampling_params_default();
	sp->temperature = w->temperature;
	sp->top_k = w->top_k;
	sp->top_p = w->top_p;
	sp->min_p = w->min_p;
	sp->repetition_penalty = w->repetition_penalty;
	sp->seed = w->seed;
	sp->presence_penalty = w->presence_penalty;
	sp->frequency_penalty = w->frequency_penalty;
	sp->min_tokens = w->min_tokens;
	sp->n_logit_bias = (int32_t)w->n_logit_bias_ids;
	if (w->n_logit_bias_ids) {
		memcpy(sp->logit_bias_id, w->logit_bias_ids, sizeof(int32_t) * w->n_logit_bias_ids);
		memcpy(sp->logit_bias, w->logit_bias_values, sizeof(float) * w->n_logit_bias_ids);
	}
	return GS_OK;
}
