/* Sampling reductions on the CPU: gs_logsumexp and the candidates op (gs_kernels.h) that a
 * backend whose memory is not the host's runs where the logits are. On the CPU backend the
 * engine calls the sampler directly; this implementation serves the "staged" backend (the
 * device path without a GPU) and is the reference the CUDA kernels are tested against. It is
 * written apart from the sampler's own selection (a k-heap here, quickselect there), so the
 * staged engine test also checks one against the other.
 *
 * No FMA contraction: gs_logsumexp must give the sampler's bits on every build. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "gs_cpu.h"
#include "gs_fmath.h"
#include "gs_kernels.h"

float gs_logsumexp(const float *x, size_t n)
{
	float mx = -INFINITY;
	double total = 0.0;

	for (size_t i = 0; i < n; i++) {
		float v = gs_sanitize(x[i]);
		mx = v > mx ? v : mx;
	}
	if (!(mx > -INFINITY))
		return -INFINITY;
	for (size_t b = 0; b < n; b += GS_SUM_BLOCK) {
		size_t end = b + GS_SUM_BLOCK < n ? b + GS_SUM_BLOCK : n, i = b;
		float acc[GS_SUM_LANES] = { 0 };
		for (; i + GS_SUM_LANES <= end; i += GS_SUM_LANES)
			for (size_t j = 0; j < GS_SUM_LANES; j++)
				acc[j] += gs_expf(gs_sanitize(x[i + j]) - mx);
		for (; i < end; i++)
			acc[0] += gs_expf(gs_sanitize(x[i]) - mx);
		total += (double)(((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])));
	}
	return mx + (float)log(total);
}

/* The candidate order: larger value first, equal values (-0.0 == +0.0) by smaller id. */
static inline bool better(float va, int32_t ida, float vb, int32_t idb)
{
	return va > vb || (va == vb && ida < idb);
}

/* Min-heap on `better` reversed: h[0] is the worst entry kept. */
static void sift_down(struct gs_cand *h, int32_t n, int32_t i)
{
	for (;;) {
		int32_t w = i, a = 2 * i + 1, b = a + 1;
		if (a < n && better(h[w].proc, h[w].id, h[a].proc, h[a].id))
			w = a;
		if (b < n && better(h[w].proc, h[w].id, h[b].proc, h[b].id))
			w = b;
		if (w == i)
			return;
		struct gs_cand t = h[i];
		h[i] = h[w];
		h[w] = t;
		i = w;
	}
}

static int cmp_cand(const void *pa, const void *pb)
{
	const struct gs_cand *a = pa, *b = pb;

	return better(a->proc, a->id, b->proc, b->id) ? -1 : better(b->proc, b->id, a->proc, a->id) ? 1 : 0;
}

static inline float clamp_max(float v)
{
	return v > FLT_MAX ? FLT_MAX : v;
}

void gs_cpu_candidates(float **scratch, size_t *scratch_cap, const struct gs_cand_args *a)
{
	const int32_t cols = a->cols, k = a->k, kk = cols < k ? cols : k;

	if ((size_t)cols > *scratch_cap) {
		float *p = realloc(*scratch, sizeof(float) * (size_t)cols);
		GS_ASSERT(p && "candidates: out of memory for the scratch row");
		*scratch = p;
		*scratch_cap = (size_t)cols;
	}
	for (int32_t r = 0; r < a->rows; r++) {
		const struct gs_cand_row *rp = &a->row[r];
		const float *raw = a->logits + (size_t)r * (size_t)cols;
		struct gs_cand *out = a->out + (size_t)r * (size_t)(k + 1);
		float *v = *scratch;
		/* structured output: refused columns are no candidates and not in the log-sum-exp */
		const uint8_t *allow = rp->masked ? a->allow + (size_t)r * (size_t)cols : NULL;

		/* processed logits: temperature everywhere, then the edited tokens from their raw values */
		for (int32_t c = 0; c < cols; c++)
			v[c] = gs_sanitize(raw[c]);
		if (rp->temperature != 1.0f)
			for (int32_t c = 0; c < cols; c++)
				v[c] = clamp_max(v[c] / rp->temperature);
		for (int32_t i = 0; i < rp->n_edit; i++) {
			const struct gs_logit_edit *e = &a->edit[rp->edit0 + i];
			int64_t c = (int64_t)e->id - a->vocab0;
			if (c < 0 || c >= cols)
				continue;
			v[c] = gs_logit_edit_value(raw[c], e, rp->penalty, rp->frequency, rp->presence, rp->temperature);
		}

		/* the best kk by a k-heap over the row in id order, then sorted */
		int32_t n = 0;
		for (int32_t c = 0; c < cols; c++) {
			const int32_t id = a->vocab0 + c;
			if (allow && !allow[c])
				continue;
			if (n < kk) {
				out[n++] = (struct gs_cand){ id, v[c], raw[c] };
				if (n == kk)
					for (int32_t i = kk / 2 - 1; i >= 0; i--)
						sift_down(out, kk, i);
			} else if (better(v[c], id, out[0].proc, out[0].id)) {
				out[0] = (struct gs_cand){ id, v[c], raw[c] };
				sift_down(out, kk, 0);
			}
		}
		qsort(out, (size_t)n, sizeof(*out), cmp_cand);
		for (int32_t i = n; i < k; i++)
			out[i] = (struct gs_cand){ -1, -INFINITY, -INFINITY };
		float lse = -INFINITY;
		if (rp->want_lse && cols && !allow) {
			lse = gs_logsumexp(raw, (size_t)cols);
		} else if (rp->want_lse && cols) { /* over the allowed columns: the others count as -inf */
			for (int32_t c = 0; c < cols; c++)
				v[c] = allow[c] ? raw[c] : -INFINITY;
			lse = gs_logsumexp(v, (size_t)cols);
		}
		out[k] = (struct gs_cand){ -2, 0.0f, lse };
	}
}
