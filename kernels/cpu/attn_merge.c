/* The context-parallel merge of partial attention results (gs_kernels.h attn_merge): the
 * log-sum-exp rule of ../shared/reference/context-parallel.md §1, in part order, guarded for
 * parts that saw no key (lse -inf: weight 0 and its output never read, so no 0·NaN). */
#include <math.h>
#include <stdbool.h>

#include "gs_cpu.h"

/* out[0..D) and *lse of one record from k parts of stride D + 1 floats, n records apart. */
void gs_attn_merge_one(float *out, float *lse, const float *parts, int k, size_t n, int D)
{
	const size_t rec = (size_t)D + 1, part = n * rec;
	float mx = -INFINITY;
	bool nan = false;

	for (int i = 0; i < k; i++) {
		float l = parts[(size_t)i * part + (size_t)D];
		nan |= isnan(l);
		if (l > mx)
			mx = l;
	}
	for (int d = 0; d < D; d++)
		out[d] = 0.0f;
	if (nan || mx == -INFINITY || mx == INFINITY) {
		float v = nan || mx == INFINITY ? NAN : 0.0f;
		if (v != 0.0f)
			for (int d = 0; d < D; d++)
				out[d] = v;
		if (lse)
			*lse = nan || mx == INFINITY ? NAN : -INFINITY;
		return;
	}
	float w_sum = 0.0f;
	for (int i = 0; i < k; i++) {
		const float *p = parts + (size_t)i * part;
		float l = p[D];
		if (l == -INFINITY)
			continue; /* an empty part: weight 0, its output unread */
		float w = expf(l - mx);
		w_sum += w;
		for (int d = 0; d < D; d++)
			out[d] += w * p[d];
	}
	float inv = 1.0f / w_sum; /* >= 1: the part with lse == mx weighs exp(0) */
	for (int d = 0; d < D; d++)
		out[d] *= inv;
	if (lse)
		*lse = mx + logf(w_sum);
}

struct merge_job {
	float *out, *lse;
	const float *parts;
	int k, n, D;
};

static void merge_task(void *p, int tid, int nth)
{
	const struct merge_job *j = p;
	size_t per = ((size_t)j->n + (size_t)nth - 1) / (size_t)nth;
	size_t lo = per * (size_t)tid < (size_t)j->n ? per * (size_t)tid : (size_t)j->n;
	size_t hi = lo + per < (size_t)j->n ? lo + per : (size_t)j->n;

	for (size_t r = lo; r < hi; r++)
		gs_attn_merge_one(j->out + r * (size_t)j->D, j->lse ? j->lse + r : NULL,
				  j->parts + r * ((size_t)j->D + 1), j->k, (size_t)j->n, j->D);
}

void gs_cpu_attn_merge(struct gs_threadpool *tp, float *out, float *lse, const float *parts, int k, int n, int D)
{
	struct merge_job j = { out, lse, parts, k, n, D };

	if ((size_t)n * (size_t)D * (size_t)k < 65536 || !tp)
		merge_task(&j, 0, 1);
	else
		gs_threadpool_run(tp, merge_task, &j);
}
