/* struct gs_sampling_params <-> gemmashard.engine.SamplingParams (engine.proto): one copy of
 * the field list for the coordinator's Submit, the engine's reader of it and the step plan. */
#ifndef GS_PARAMS_WIRE_H
#define GS_PARAMS_WIRE_H

#include "engine.pb-c.h"
#include "gs_params.h"
#include "gs_status.h"

/* Fills the sampling fields of w (after its _init) from sp; w points into sp's arrays, so sp
 * must outlive the packing. */
void gs_params_to_wire(Gemmashard__Engine__SamplingParams *w, const struct gs_sampling_params *sp);

/* The sampling fields of w into *sp. GS_ERR_FORMAT when the logit_bias lists differ in length
 * or hold more than GS_MAX_LOGIT_BIAS entries (values are checked by the validator). */
enum gs_status gs_params_from_wire(const Gemmashard__Engine__SamplingParams *w, struct gs_sampling_params *sp);

#endif
