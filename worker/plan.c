/* Step plan storage and its wire form. The wire form is a flat little-endian record:
 *   magic u32 | stop u32 | n_release u32 | n_seqs u32 | n_ids u32 | release[] i32 |
 *   seqs[] (fixed-size records) | ids[] i32
 * Every rank runs the same binary, so each record is the C struct's fields written one by one. */
#include "gs_plan.h"

#include <stdlib.h>
#include <string.h>

#define GS_PLAN_MAGIC 0x47535031u /* "GSP1" */

enum gs_status gs_plan_init(struct gs_plan *p, int32_t max_seqs, int32_t max_tokens)
{
	memset(p, 0, sizeof(*p));
	p->release = malloc(sizeof(int32_t) * (size_t)max_seqs);
	p->seqs = malloc(sizeof(*p->seqs) * (size_t)max_seqs);
	p->ids = malloc(sizeof(int32_t) * (size_t)max_tokens);
	if (!p->release || !p->seqs || !p->ids) {
		gs_plan_free(p);
		return gs_errorf(GS_ERR_NOMEM, "out of memory for a step plan");
	}
	p->max_seqs = max_seqs;
	p->max_tokens = max_tokens;
	return GS_OK;
}

void gs_plan_free(struct gs_plan *p)
{
	free(p->release);
	free(p->seqs);
	free(p->ids);
	memset(p, 0, sizeof(*p));
}

void gs_plan_reset(struct gs_plan *p)
{
	p->n_release = p->n_seqs = p->n_ids = 0;
	p->stop = false;
}

struct wire_head {
	uint32_t magic, stop, n_release, n_seqs, n_ids;
};

enum gs_status gs_plan_pack(const struct gs_plan *p, uint8_t **buf, size_t *cap, uint64_t *len)
{
	size_t need = sizeof(struct wire_head) + sizeof(int32_t) * (size_t)p->n_release +
		      sizeof(struct gs_plan_seq) * (size_t)p->n_seqs + sizeof(int32_t) * (size_t)p->n_ids;
	struct wire_head h = { GS_PLAN_MAGIC, p->stop, (uint32_t)p->n_release, (uint32_t)p->n_seqs, (uint32_t)p->n_ids };
	uint8_t *w;

	if (need > *cap) {
		uint8_t *nb = realloc(*buf, need);
		if (!nb)
			return gs_errorf(GS_ERR_NOMEM, "out of memory for a %zu-byte plan", need);
		*buf = nb, *cap = need;
	}
	w = *buf;
	memcpy(w, &h, sizeof(h)), w += sizeof(h);
	memcpy(w, p->release, sizeof(int32_t) * (size_t)p->n_release), w += sizeof(int32_t) * (size_t)p->n_release;
	memcpy(w, p->seqs, sizeof(struct gs_plan_seq) * (size_t)p->n_seqs), w += sizeof(struct gs_plan_seq) * (size_t)p->n_seqs;
	memcpy(w, p->ids, sizeof(int32_t) * (size_t)p->n_ids);
	*len = need;
	return GS_OK;
}

enum gs_status gs_plan_unpack(struct gs_plan *p, const uint8_t *buf, size_t len)
{
	struct wire_head h;
	size_t need;

	if (len < sizeof(h))
		return gs_errorf(GS_ERR_FORMAT, "step plan of %zu bytes is truncated", len);
	memcpy(&h, buf, sizeof(h));
	if (h.magic != GS_PLAN_MAGIC)
		return gs_errorf(GS_ERR_FORMAT, "step plan has a bad magic number");
	if (h.n_release > (uint32_t)p->max_seqs || h.n_seqs > (uint32_t)p->max_seqs || h.n_ids > (uint32_t)p->max_tokens)
		return gs_errorf(GS_ERR_FORMAT, "step plan exceeds the engine's limits (%u releases, %u seqs, %u ids)",
				 h.n_release, h.n_seqs, h.n_ids);
	need = sizeof(h) + sizeof(int32_t) * h.n_release + sizeof(struct gs_plan_seq) * h.n_seqs + sizeof(int32_t) * h.n_ids;
	if (len != need)
		return gs_errorf(GS_ERR_FORMAT, "step plan is %zu bytes, its counts say %zu", len, need);
	buf += sizeof(h);
	p->stop = h.stop != 0;
	p->n_release = (int32_t)h.n_release;
	p->n_seqs = (int32_t)h.n_seqs;
	p->n_ids = (int32_t)h.n_ids;
	memcpy(p->release, buf, sizeof(int32_t) * h.n_release), buf += sizeof(int32_t) * h.n_release;
	memcpy(p->seqs, buf, sizeof(struct gs_plan_seq) * h.n_seqs), buf += sizeof(struct gs_plan_seq) * h.n_seqs;
	memcpy(p->ids, buf, sizeof(int32_t) * h.n_ids);
	return GS_OK;
}
