/* Step plan storage and its wire form, a protobuf-c gemmashard.engine.StepPlan. */
#include "gs_plan.h"

#include <stdlib.h>
#include <string.h>

#include "engine.pb-c.h"
#include "gs_params_wire.h"

typedef Gemmashard__Engine__StepPlan StepPlan;
typedef Gemmashard__Engine__SeqStep SeqStep;
typedef Gemmashard__Engine__SamplingParams SamplingParams;

/* Preallocated message structs (pack) and a bump arena (unpack). */
struct plan_wire {
	StepPlan        msg;
	SeqStep        *steps;      /* [max_seqs] */
	SeqStep       **step_ptrs;  /* [max_seqs] */
	SamplingParams *params;     /* [max_seqs] */
	ProtobufCBinaryData *bins;  /* the admissions' images (grown at an admission with images) */
	size_t          bins_cap;
	uint8_t        *arena;
	size_t          arena_cap, arena_used;
	ProtobufCAllocator alloc;
};

static void *arena_alloc(void *data, size_t size)
{
	struct plan_wire *w = data;
	size_t off = (w->arena_used + 15) & ~(size_t)15;

	if (off + size > w->arena_cap)
		return NULL; /* unpack then fails cleanly; the caller grows the arena and retries */
	w->arena_used = off + size;
	return w->arena + off;
}

static void arena_free(void *data, void *p) {}

enum gs_status gs_plan_init(struct gs_plan *p, int32_t max_seqs, int32_t max_tokens)
{
	struct plan_wire *w;

	memset(p, 0, sizeof(*p));
	p->release = malloc(sizeof(int32_t) * (size_t)max_seqs);
	p->seqs = malloc(sizeof(*p->seqs) * (size_t)max_seqs);
	p->ids = malloc(sizeof(int32_t) * (size_t)max_tokens);
	w = p->wire = calloc(1, sizeof(struct plan_wire));
	if (w) {
		w->steps = calloc((size_t)max_seqs, sizeof(*w->steps));
		w->step_ptrs = calloc((size_t)max_seqs, sizeof(*w->step_ptrs));
		w->params = calloc((size_t)max_seqs, sizeof(*w->params));
		w->arena_cap = 65536 + (size_t)max_seqs * 256 + (size_t)max_tokens * 8;
		w->arena = malloc(w->arena_cap);
	}
	if (!p->release || !p->seqs || !p->ids || !w || !w->steps || !w->step_ptrs || !w->params || !w->arena) {
		gs_plan_free(p);
		return gs_errorf(GS_ERR_NOMEM, "out of memory for a step plan");
	}
	w->alloc = (ProtobufCAllocator){ .alloc = arena_alloc, .free = arena_free, .allocator_data = w };
	p->max_seqs = max_seqs;
	p->max_tokens = max_tokens;
	return GS_OK;
}

void gs_plan_free(struct gs_plan *p)
{
	struct plan_wire *w = p->wire;

	if (w) {
		free(w->steps);
		free(w->step_ptrs);
		free(w->params);
		free(w->bins);
		free(w->arena);
		free(w);
	}
	free(p->release);
	free(p->seqs);
	free(p->ids);
	free(p->cached);
	free(p->img_buf);
	memset(p, 0, sizeof(*p));
}

void gs_plan_reset(struct gs_plan *p)
{
	p->n_release = p->n_seqs = p->n_ids = p->n_cached = 0;
	p->stop = false;
}

enum gs_status gs_plan_add_cached(struct gs_plan *p, struct gs_plan_seq *ps, const int32_t *blocks, int32_t n)
{
	if (p->n_cached + n > p->cached_cap) {
		int32_t cap = (p->n_cached + n) * 2 + 64;
		int32_t *nc = realloc(p->cached, sizeof(int32_t) * (size_t)cap);
		if (!nc)
			return gs_errorf(GS_ERR_NOMEM, "out of memory for %d cached blocks in a plan", p->n_cached + n);
		p->cached = nc, p->cached_cap = cap;
	}
	ps->cached0 = p->n_cached;
	ps->n_cached = n;
	if (n)
		memcpy(p->cached + p->n_cached, blocks, sizeof(int32_t) * (size_t)n);
	p->n_cached += n;
	return GS_OK;
}

enum gs_status gs_plan_pack(const struct gs_plan *p, uint8_t **buf, size_t *cap, uint64_t *len)
{
	struct plan_wire *w = p->wire;
	size_t need, n_bins = 0;

	for (int32_t i = 0; i < p->n_seqs; i++)
		n_bins += p->seqs[i].admit && p->seqs[i].images ? (size_t)p->seqs[i].n_images : 0;
	if (n_bins > w->bins_cap) {
		ProtobufCBinaryData *nb = realloc(w->bins, sizeof(*nb) * n_bins);
		if (!nb)
			return gs_errorf(GS_ERR_NOMEM, "out of memory for %zu images in a plan", n_bins);
		w->bins = nb, w->bins_cap = n_bins;
	}
	n_bins = 0;
	gemmashard__engine__step_plan__init(&w->msg);
	w->msg.n_release = (size_t)p->n_release;
	w->msg.release = p->release;
	w->msg.n_seqs = (size_t)p->n_seqs;
	w->msg.seqs = w->step_ptrs;
	w->msg.stop = p->stop;
	for (int32_t i = 0; i < p->n_seqs; i++) {
		const struct gs_plan_seq *s = &p->seqs[i];
		SeqStep *m = &w->steps[i];
		gemmashard__engine__seq_step__init(m);
		m->slot = s->slot;
		m->n_tokens = (size_t)s->n_tokens;
		m->tokens = p->ids + s->tok0;
		m->want_logits = s->want_logits;
		m->admit = s->admit;
		if (s->admit) {
			SamplingParams *sp = &w->params[i];
			gemmashard__engine__sampling_params__init(sp);
			gs_params_to_wire(sp, &s->params.sp);
			sp->max_tokens = s->params.max_tokens;
			sp->n_stop_ids = (size_t)s->params.n_stop_ids;
			sp->stop_ids = (int32_t *)s->params.stop_ids;
			sp->ignore_eos = s->params.ignore_eos;
			sp->top_logprobs = s->params.top_logprobs;
			sp->logprobs = s->params.logprobs;
			if (s->params.response_format)
				sp->response_format = (char *)s->params.response_format;
			m->request_id = s->id;
			m->max_positions = s->max_positions;
			m->cp_k = s->cp_k;
			m->cp_first = s->cp_first;
			m->params = sp;
			m->n_cached_blocks = (size_t)s->n_cached;
			m->cached_blocks = s->n_cached ? p->cached + s->cached0 : NULL;
			if (s->images && s->n_images > 0) {
				m->n_images = (size_t)s->n_images;
				m->images = w->bins + n_bins;
				for (int32_t k = 0; k < s->n_images; k++)
					w->bins[n_bins++] = (ProtobufCBinaryData){
						.len = (size_t)s->image_bytes,
						.data = (uint8_t *)s->images + (size_t)k * (size_t)s->image_bytes };
			}
		}
		w->step_ptrs[i] = m;
	}
	need = gemmashard__engine__step_plan__get_packed_size(&w->msg);
	if (need > *cap) {
		uint8_t *nb = realloc(*buf, need);
		if (!nb)
			return gs_errorf(GS_ERR_NOMEM, "out of memory for a %zu-byte plan", need);
		*buf = nb, *cap = need;
	}
	*len = gemmashard__engine__step_plan__pack(&w->msg, *buf);
	return GS_OK;
}

/* Copy a parsed message into the plan, checking it against the plan's limits. */
static enum gs_status from_msg(struct gs_plan *p, const StepPlan *m)
{
	int32_t ids = 0;
	size_t img_bytes = 0;

	if (m->n_release > (size_t)p->max_seqs || m->n_seqs > (size_t)p->max_seqs)
		return gs_errorf(GS_ERR_FORMAT, "step plan exceeds the engine's limits (%zu releases, %zu seqs)",
				 m->n_release, m->n_seqs);
	for (size_t i = 0; i < m->n_seqs; i++) {
		const SeqStep *s = m->seqs[i];
		if (s->n_tokens < 1 || s->n_tokens > (size_t)(p->max_tokens - ids) || s->slot < 0 || s->slot >= p->max_seqs)
			return gs_errorf(GS_ERR_FORMAT, "step plan entry %zu: slot %d with %zu tokens is out of range", i,
					 s->slot, s->n_tokens);
		if (s->admit && (!s->params || s->params->n_stop_ids > GS_MAX_STOP_IDS ||
				 s->params->n_logit_bias_ids != s->params->n_logit_bias_values ||
				 s->params->n_logit_bias_ids > GS_MAX_LOGIT_BIAS))
			return gs_errorf(GS_ERR_FORMAT, "step plan entry %zu: admission without valid parameters", i);
		if (s->n_images && (!s->admit || s->n_images > INT32_MAX))
			return gs_errorf(GS_ERR_FORMAT, "step plan entry %zu: images outside an admission", i);
		for (size_t k = 0; k < s->n_images; k++) { /* all of one size (the engine checks which) */
			if (!s->images[k].len || s->images[k].len != s->images[0].len)
				return gs_errorf(GS_ERR_FORMAT, "step plan entry %zu: image %zu has %zu bytes, image 0 %zu",
						 i, k, s->images[k].len, s->images[0].len);
			img_bytes += s->images[k].len;
		}
		ids += (int32_t)s->n_tokens;
	}
	if (img_bytes > p->img_cap) {
		uint8_t *nb = realloc(p->img_buf, img_bytes);
		if (!nb)
			return gs_errorf(GS_ERR_NOMEM, "out of memory for %zu bytes of images in a plan", img_bytes);
		p->img_buf = nb, p->img_cap = img_bytes;
	}
	img_bytes = 0;
	p->stop = m->stop;
	p->n_release = (int32_t)m->n_release;
	if (m->n_release) /* an empty repeated field is a NULL pointer */
		memcpy(p->release, m->release, sizeof(int32_t) * m->n_release);
	p->n_seqs = (int32_t)m->n_seqs;
	p->n_ids = p->n_cached = 0;
	for (size_t i = 0; i < m->n_seqs; i++) {
		const SeqStep *s = m->seqs[i];
		struct gs_plan_seq *d = &p->seqs[i];
		memset(d, 0, sizeof(*d));
		d->slot = s->slot;
		d->tok0 = p->n_ids;
		d->n_tokens = (int32_t)s->n_tokens;
		d->want_logits = s->want_logits;
		d->admit = s->admit;
		memcpy(p->ids + p->n_ids, s->tokens, sizeof(int32_t) * s->n_tokens);
		p->n_ids += (int32_t)s->n_tokens;
		if (s->admit) {
			const SamplingParams *sp = s->params;
			d->id = s->request_id;
			d->max_positions = s->max_positions;
			d->cp_k = s->cp_k;
			d->cp_first = s->cp_first;
			GS_TRY(gs_params_from_wire(sp, &d->params.sp)); /* counts checked above */
			d->params.max_tokens = sp->max_tokens;
			d->params.n_stop_ids = (int32_t)sp->n_stop_ids;
			if (sp->n_stop_ids)
				memcpy(d->params.stop_ids, sp->stop_ids, sizeof(int32_t) * sp->n_stop_ids);
			d->params.ignore_eos = sp->ignore_eos;
			d->params.top_logprobs = sp->top_logprobs;
			d->params.logprobs = sp->logprobs;
			/* in the unpack arena: apply_admit copies it before the next plan */
			d->params.response_format = sp->response_format && sp->response_format[0] ? sp->response_format : NULL;
			if (s->n_cached_blocks > (size_t)INT32_MAX / 2)
				return gs_errorf(GS_ERR_FORMAT, "step plan entry %zu: %zu cached blocks", i,
						 s->n_cached_blocks);
			GS_TRY(gs_plan_add_cached(p, d, s->cached_blocks, (int32_t)s->n_cached_blocks));
			if (s->n_images) {
				d->images = p->img_buf + img_bytes;
				d->n_images = (int32_t)s->n_images;
				d->image_bytes = (int64_t)s->images[0].len;
				for (size_t k = 0; k < s->n_images; k++) {
					memcpy(p->img_buf + img_bytes, s->images[k].data, s->images[k].len);
					img_bytes += s->images[k].len;
				}
			}
		}
	}
	return GS_OK;
}

enum gs_status gs_plan_unpack(struct gs_plan *p, const uint8_t *buf, size_t len)
{
	struct plan_wire *w = p->wire;
	StepPlan *m;
	enum gs_status st;

	for (;;) {
		w->arena_used = 0;
		m = gemmashard__engine__step_plan__unpack(&w->alloc, len, buf);
		/* A parsed message is at most ~40x its wire size (a few bytes of SeqStep unpack to a
		 * struct; a 1-byte varint to an int32): failing below that, the arena was too small. */
		if (m || w->arena_cap >= 64 * len + 65536)
			break;
		/* Out of arena (an unusually large plan): grow it once, between steps. */
		{
			size_t cap = w->arena_cap * 2 + len * 4;
			uint8_t *na = realloc(w->arena, cap);
			if (!na)
				return gs_errorf(GS_ERR_NOMEM, "out of memory for a %zu-byte plan", len);
			w->arena = na, w->arena_cap = cap;
		}
	}
	if (!m)
		return gs_errorf(GS_ERR_FORMAT, "malformed StepPlan (%zu bytes)", len);
	st = from_msg(p, m);
	return st; /* the arena is reused by the next unpack */
}
