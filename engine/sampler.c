/* Token sampler: HF generate() logits processors as a chain of stages over a candidate
 * set (semantics in gs_sampler.h). This file is about keeping each stage cheap at a
 * 262144-token vocabulary and bit-reproducible across machines. */

/* FMA contraction changes rounding between builds (x86 baseline has no FMA, ARM contracts
 * by default), and with it which token a seed picks near a cumulative boundary. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off", "tree-vectorize", "no-trapping-math")
#endif

#include "gs_sampler.h"
#include "gs_fmath.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define GS_SAMPLER_GREEDY_T   1e-5f  /* vLLM's threshold: below it sampling is argmax   */
#define GS_SAMPLER_MAX_STAGES 5
#define GS_SAMPLER_MAX_MASK   32     /* eos + stop ids masked until min_tokens             */
#define GS_HEAP_SELECT_MAX    1024   /* k above this: quickselect beats a k-heap          */
#define GS_SORT_SMALL         16     /* insertion sort below this many                    */
#define GS_TOPP_SORT_MAX      4096   /* top_p on sets this small: sort them outright      */
#define GS_TOPP_BUCKETS       2048
#define GS_TOPP_BUCKET_SCALE  64.0f  /* buckets per nat below the max: 32 nats resolved    */
#define GS_TOPP_FIRST_TRY     1024   /* top_p first looks for the nucleus among this many  */

/* ---- numerics shared by every path (same function, same order, same bits) ---- */

/* gs_expf (gs_fmath.h): our own e^x, the same bits on every machine, for x <= 0. */

static float gs_max(const float *x, size_t n)
{
	float m[GS_SUM_LANES];
	size_t i = 0;

	for (size_t j = 0; j < GS_SUM_LANES; j++)
		m[j] = -INFINITY;
	for (; i + GS_SUM_LANES <= n; i += GS_SUM_LANES)
		for (size_t j = 0; j < GS_SUM_LANES; j++)
			m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
	for (; i < n; i++)
		m[0] = x[i] > m[0] ? x[i] : m[0];
	for (size_t j = 1; j < GS_SUM_LANES; j++)
		m[0] = m[j] > m[0] ? m[j] : m[0];
	return m[0];
}

/* e[i] = exp(l[i] - lmax), returns the sum. Float lanes over blocks of GS_SUM_BLOCK (so the
 * loop vectorises and each lane adds only 32 terms), block sums in double, everything in a
 * fixed order: the sum is identical on every machine. blocks (may be NULL) receives each
 * block's sum, so a draw can skip to its block. All -inf counts as uniform. */
static double gs_exp_sum(const float *l, float *e, size_t n, float lmax, double *blocks)
{
	double total = 0.0;

	if (!(lmax > -INFINITY)) {
		for (size_t i = 0; i < n; i++)
			e[i] = 1.0f;
		for (size_t b = 0; blocks && b < n; b += GS_SUM_BLOCK)
			blocks[b / GS_SUM_BLOCK] = (double)(n - b < GS_SUM_BLOCK ? n - b : GS_SUM_BLOCK);
		return (double)n;
	}
	for (size_t b = 0; b < n; b += GS_SUM_BLOCK) {
		size_t end = b + GS_SUM_BLOCK < n ? b + GS_SUM_BLOCK : n, i = b;
		float acc[GS_SUM_LANES] = { 0 };
		for (; i + GS_SUM_LANES <= end; i += GS_SUM_LANES)
			for (size_t j = 0; j < GS_SUM_LANES; j++) {
				float v = gs_expf(l[i + j] - lmax);
				e[i + j] = v;
				acc[j] += v;
			}
		for (; i < end; i++) {
			e[i] = gs_expf(l[i] - lmax);
			acc[0] += e[i];
		}
		double bs = (double)(((acc[0] + acc[1]) + (acc[2] + acc[3])) +
				     ((acc[4] + acc[5]) + (acc[6] + acc[7])));
		if (blocks)
			blocks[b / GS_SUM_BLOCK] = bs;
		total += bs;
	}
	return total;
}

/* gs_exp_sum() over a whole set that also returns, in *above, the mass of the entries with
 * logit >= thr: one pass instead of two for top_p's first try. Same lanes and order. */
static double gs_exp_sum_above(const float *l, float *e, size_t n, float lmax, float thr,
			       double *above)
{
	double total = 0.0, hi = 0.0;

	for (size_t b = 0; b < n; b += GS_SUM_BLOCK) {
		size_t end = b + GS_SUM_BLOCK < n ? b + GS_SUM_BLOCK : n, i = b;
		float acc[GS_SUM_LANES] = { 0 }, acc_hi[GS_SUM_LANES] = { 0 };
		for (; i + GS_SUM_LANES <= end; i += GS_SUM_LANES)
			for (size_t j = 0; j < GS_SUM_LANES; j++) {
				float v = gs_expf(l[i + j] - lmax);
				e[i + j] = v;
				acc[j] += v;
				acc_hi[j] += l[i + j] >= thr ? v : 0.0f;
			}
		for (; i < end; i++) {
			e[i] = gs_expf(l[i] - lmax);
			acc[0] += e[i];
			acc_hi[0] += l[i] >= thr ? e[i] : 0.0f;
		}
		total += (double)(((acc[0] + acc[1]) + (acc[2] + acc[3])) +
				  ((acc[4] + acc[5]) + (acc[6] + acc[7])));
		hi += (double)(((acc_hi[0] + acc_hi[1]) + (acc_hi[2] + acc_hi[3])) +
			       ((acc_hi[4] + acc_hi[5]) + (acc_hi[6] + acc_hi[7])));
	}
	*above = hi;
	return total;
}

/* ---- RNG: xoshiro256** seeded through splitmix64 (Blackman & Vigna) ---- */

static uint64_t gs_splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline uint64_t gs_rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t gs_xoshiro_next(uint64_t st[4])
{
	uint64_t result = gs_rotl(st[1] * 5, 7) * 9;
	uint64_t t = st[1] << 17;

	st[2] ^= st[0];
	st[3] ^= st[1];
	st[1] ^= st[2];
	st[0] ^= st[3];
	st[2] ^= t;
	st[3] = gs_rotl(st[3], 45);
	return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double gs_rng_uniform(uint64_t st[4])
{
	return (double)(gs_xoshiro_next(st) >> 11) * 0x1.0p-53;
}

static void gs_rng_seed(uint64_t st[4], uint64_t seed)
{
	uint64_t x = seed;
	for (int i = 0; i < 4; i++)
		st[i] = gs_splitmix64(&x);
}

/* ---- orderings (both total: ids are distinct) ----
 * by logit: logit descending, id ascending on ties -- what top_k/top_p walk;
 * by id: id ascending -- the order every draw walks, so that the same final set gives the
 * same token whichever path (full vocabulary, merged candidates) and stages built it. */

static inline bool gs_before(bool by_id, int32_t ida, float la, int32_t idb, float lb)
{
	if (by_id)
		return ida < idb;
	return la > lb || (la == lb && ida < idb);
}

static inline void gs_swap(int32_t *id, float *l, size_t a, size_t b)
{
	int32_t ti = id[a];
	float tl = l[a];
	id[a] = id[b];
	l[a] = l[b];
	id[b] = ti;
	l[b] = tl;
}

/* Heap whose root is the element that sorts last. */
static void gs_sift_last(bool by_id, int32_t *id, float *l, size_t n, size_t i)
{
	for (;;) {
		size_t m = i, a = 2 * i + 1, b = a + 1;
		if (a < n && gs_before(by_id, id[m], l[m], id[a], l[a]))
			m = a;
		if (b < n && gs_before(by_id, id[m], l[m], id[b], l[b]))
			m = b;
		if (m == i)
			return;
		gs_swap(id, l, i, m);
		i = m;
	}
}

static void gs_heapsort(bool by_id, int32_t *id, float *l, size_t n)
{
	for (size_t i = n / 2; i-- > 0;)
		gs_sift_last(by_id, id, l, n, i);
	for (size_t end = n; end-- > 1;) {
		gs_swap(id, l, 0, end);
		gs_sift_last(by_id, id, l, end, 0);
	}
}

/* Introsort on the parallel arrays: quicksort, heapsort when it degrades, insertion sort
 * for small ranges. The order is total, so any correct sort gives the same array. */
static void gs_sort_range(bool by_id, int32_t *id, float *l, size_t n, int depth)
{
	while (n > GS_SORT_SMALL) {
		if (depth-- == 0) {
			gs_heapsort(by_id, id, l, n);
			return;
		}
		size_t mid = n / 2;
		if (gs_before(by_id, id[mid], l[mid], id[0], l[0]))
			gs_swap(id, l, 0, mid);
		if (gs_before(by_id, id[n - 1], l[n - 1], id[0], l[0]))
			gs_swap(id, l, 0, n - 1);
		if (gs_before(by_id, id[n - 1], l[n - 1], id[mid], l[mid]))
			gs_swap(id, l, mid, n - 1);
		int32_t pid = id[mid];
		float pl = l[mid];
		/* Hoare partition: [0, j] sorts before-or-at the pivot, (j, n) at-or-after. */
		ptrdiff_t i = -1, j = (ptrdiff_t)n;
		for (;;) {
			do
				i++;
			while (gs_before(by_id, id[i], l[i], pid, pl));
			do
				j--;
			while (gs_before(by_id, pid, pl, id[j], l[j]));
			if (i >= j)
				break;
			gs_swap(id, l, (size_t)i, (size_t)j);
		}
		size_t left = (size_t)j + 1, right = n - left;
		if (left < right) {
			gs_sort_range(by_id, id, l, left, depth);
			id += left;
			l += left;
			n = right;
		} else {
			gs_sort_range(by_id, id + left, l + left, right, depth);
			n = left;
		}
	}
	for (size_t i = 1; i < n; i++) {
		int32_t ci = id[i];
		float cl = l[i];
		size_t j = i;
		for (; j > 0 && gs_before(by_id, ci, cl, id[j - 1], l[j - 1]); j--) {
			id[j] = id[j - 1];
			l[j] = l[j - 1];
		}
		id[j] = ci;
		l[j] = cl;
	}
}

static void gs_sort_arrays(bool by_id, int32_t *id, float *l, size_t n)
{
	int depth = 2;
	for (size_t m = n; m > 1; m >>= 1)
		depth += 2;
	gs_sort_range(by_id, id, l, n, depth);
}

static void gs_candidates_sort(struct gs_candidates *c)
{
	if (!c->sorted)
		gs_sort_arrays(false, c->id, c->logit, c->n);
	c->sorted = true;
}

/* ---- selection: the k-th largest value without sorting everything ---- */

static void gs_sift_min(float *h, size_t n, size_t i)
{
	for (;;) {
		size_t m = i, a = 2 * i + 1, b = a + 1;
		if (a < n && h[a] < h[m])
			m = a;
		if (b < n && h[b] < h[m])
			m = b;
		if (m == i)
			return;
		float t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

/* Value at index k of a[0..n) sorted descending (a is permuted). Three-way partition so
 * long runs of equal logits (-inf after a filter, ties) cost one pass. */
static float gs_quickselect_desc(float *a, size_t n, size_t k)
{
	size_t lo = 0, hi = n;

	for (;;) {
		if (hi - lo <= 1)
			return a[lo];
		float x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1];
		float pv = x > y ? (y > z ? y : (x > z ? z : x)) : (x > z ? x : (y > z ? z : y));
		size_t lt = lo, i = lo, gt = hi;
		while (i < gt) {
			if (a[i] > pv) {
				float t = a[i];
				a[i++] = a[lt];
				a[lt++] = t;
			} else if (a[i] < pv) {
				float t = a[i];
				a[i] = a[--gt];
				a[gt] = t;
			} else {
				i++;
			}
		}
		if (k < lt)
			hi = lt;
		else if (k >= gt)
			lo = gt;
		else
			return pv;
	}
}

/* Does any of x[0..GS_SCAN_CHUNK) pass thr (ge: >=, else >)? Vectorises to compares and an
 * OR, so sparse hits over a 262144-entry set cost a streaming pass, not a branch each. */
#define GS_SCAN_CHUNK 16
static inline bool gs_chunk_any(const float *x, float thr, bool ge)
{
	int any = 0;
	if (ge)
		for (int j = 0; j < GS_SCAN_CHUNK; j++)
			any |= x[j] >= thr;
	else
		for (int j = 0; j < GS_SCAN_CHUNK; j++)
			any |= x[j] > thr;
	return any != 0;
}

/* Moves entries with logit >= v to the front, keeping their order. */
static void gs_compact_ge(struct gs_candidates *c, float v)
{
	size_t j = 0, i = 0;
	for (; i < c->n; i++) {
		if ((i & (GS_SCAN_CHUNK - 1)) == 0 && i + GS_SCAN_CHUNK <= c->n &&
		    !gs_chunk_any(c->logit + i, v, true)) {
			i += GS_SCAN_CHUNK - 1;
			continue;
		}
		if (c->logit[i] >= v) {
			c->id[j] = c->id[i];
			c->logit[j] = c->logit[i];
			j++;
		}
	}
	c->n = j;
}

/* k-th largest of x[0..n), 1 <= k <= n. scratch: n floats, distinct from x. */
static float gs_kth_largest(const float *x, size_t n, size_t k, float *scratch)
{
	GS_ASSERT(k >= 1 && k <= n);
	if (k > GS_HEAP_SELECT_MAX) {
		memcpy(scratch, x, n * sizeof(float));
		return gs_quickselect_desc(scratch, n, k - 1);
	}
	/* Min-heap of the k largest so far: nearly every element fails the root test, so this
	 * is one streaming pass for the usual k = 20..256. */
	float *h = scratch;
	memcpy(h, x, k * sizeof(float));
	for (size_t i = k / 2; i-- > 0;)
		gs_sift_min(h, k, i);
	size_t i = k;
	for (; i < n && (i & (GS_SCAN_CHUNK - 1)); i++) {
		if (x[i] > h[0]) {
			h[0] = x[i];
			gs_sift_min(h, k, 0);
		}
	}
	for (; i < n; i++) {
		if ((i & (GS_SCAN_CHUNK - 1)) == 0 && i + GS_SCAN_CHUNK <= n &&
		    !gs_chunk_any(x + i, h[0], false)) {
			i += GS_SCAN_CHUNK - 1;
			continue;
		}
		if (x[i] > h[0]) {
			h[0] = x[i];
			gs_sift_min(h, k, 0);
		}
	}
	return h[0];
}

/* ---- stages ---- */

/* logit_bias, repetition/frequency/presence penalties and the min_tokens mask touch few ids:
 * the sampler lists them (struct gs_logit_edit, gs_kernels.h) and each gets its value from
 * its raw logit by gs_logit_edit_value(), the function the candidates ops use too. Reading
 * the raw logit makes an id that occurs many times in the history penalised once (HF's
 * gather/scatter). */
struct gs_edits_ctx {
	struct gs_sampler *s;
	const float       *raw;       /* [n] the caller's logits for ids base .. base+n-1 */
	int32_t            base;
	const int32_t     *history;
	size_t             n_history;
};

static void gs_edits_apply(void *ctx, struct gs_candidates *c);

struct gs_temperature_ctx {
	float t;
};

static void gs_temperature_apply(void *ctx, struct gs_candidates *c)
{
	const float t = ((struct gs_temperature_ctx *)ctx)->t;

	/* Division, not multiplication by 1/t: HF divides, and the rank and leader paths
	 * must produce the same bits. */
	for (size_t i = 0; i < c->n; i++) {
		float v = c->logit[i] / t;
		c->logit[i] = v > FLT_MAX ? FLT_MAX : v;
	}
}

struct gs_top_k_ctx {
	size_t k;
};

static void gs_top_k_apply(void *ctx, struct gs_candidates *c)
{
	const size_t k = ((struct gs_top_k_ctx *)ctx)->k;

	if (k >= c->n)
		return;
	if (c->sorted) {
		float v = c->logit[k - 1];
		size_t n = k;
		while (n < c->n && c->logit[n] >= v)
			n++;
		c->n = n;
		return;
	}
	float v = gs_kth_largest(c->logit, c->n, k, c->p);
	gs_compact_ge(c, v);
	/* Sorted from here on: top_p needs it, and the draw order must not depend on whether
	 * the set came from the full vocabulary or from merged candidates. */
	gs_candidates_sort(c);
}

struct gs_top_p_ctx {
	float   p;
	double *mass; /* [GS_TOPP_BUCKETS] */
	float  *heap; /* [GS_TOPP_FIRST_TRY] */
};

static inline size_t gs_topp_bucket(float lmax, float l)
{
	float d = (lmax - l) * GS_TOPP_BUCKET_SCALE;
	return d < (float)(GS_TOPP_BUCKETS - 1) ? (size_t)d : GS_TOPP_BUCKETS - 1;
}

/* top_p on a large unsorted set (the full vocabulary) without sorting it: histogram the
 * mass by logit distance from the max, walk buckets from the top to the one where the
 * mass reaches p, sort only the logits of that bucket (plus one more as rounding margin)
 * to find the exact cut value v and how many ties at v stay, then compact in id order.
 * Everything above the boundary bucket stays without being sorted. */
static void gs_top_p_bucketed(struct gs_top_p_ctx *tc, struct gs_candidates *c)
{
	float lmax = gs_max(c->logit, c->n);

	if (!(lmax > -INFINITY)) { /* all -inf, uniform: the first ceil(p * n) ids */
		size_t keep = (size_t)ceil((double)tc->p * (double)c->n);
		c->n = keep < 1 ? 1 : keep < c->n ? keep : c->n;
		return;
	}
	/* LLM logits are peaked: the nucleus is usually inside the top few hundred, and one
	 * heap pass finds those. Only if their mass falls short, bucket the rest. */
	float v = gs_kth_largest(c->logit, c->n, GS_TOPP_FIRST_TRY, tc->heap);
	double top;
	double z = gs_exp_sum_above(c->logit, c->p, c->n, lmax, v, &top);
	double target = (double)tc->p * z;
	if (top >= target) {
		gs_compact_ge(c, v);
		gs_candidates_sort(c);
		double cum = 0.0;
		size_t keep = 0;
		while (keep < c->n && cum < target)
			cum += gs_expf(c->logit[keep++] - lmax);
		c->n = keep;
		return;
	}
	memset(tc->mass, 0, GS_TOPP_BUCKETS * sizeof(double));
	for (size_t i = 0; i < c->n; i++)
		tc->mass[gs_topp_bucket(lmax, c->logit[i])] += c->p[i];
	double before = 0.0;
	size_t b = 0;
	for (; b < GS_TOPP_BUCKETS - 1; b++) {
		if (before + tc->mass[b] >= target)
			break;
		before += tc->mass[b];
	}
	size_t last = b + 1 < GS_TOPP_BUCKETS ? b + 1 : GS_TOPP_BUCKETS - 1;

	/* Logits of the boundary buckets into p (free now: e is recomputed from the logit). */
	float *bl = c->p;
	size_t m = 0;
	for (size_t i = 0; i < c->n; i++) {
		size_t k = gs_topp_bucket(lmax, c->logit[i]);
		if (k >= b && k <= last)
			bl[m++] = c->logit[i];
	}
	GS_ASSERT(m > 0); /* bucket b holds mass, so a member */
	for (size_t i = m / 2; i-- > 0;) /* min-heap, then pop: descending */
		gs_sift_min(bl, m, i);
	for (size_t end = m; end-- > 1;) {
		float t = bl[0];
		bl[0] = bl[end];
		bl[end] = t;
		gs_sift_min(bl, end, 0);
	}
	/* Same rule as the sorted path: an entry stays iff the mass before it is < target.
	 * The first boundary entry always stays (before < target by the walk). If rounding
	 * leaves the target unreached, the whole boundary stays. */
	double cum = before;
	size_t kept = 0;
	while (kept < m && cum < target)
		cum += gs_expf(bl[kept++] - lmax);
	v = bl[kept - 1];
	size_t ties = 0;
	for (size_t i = 0; i < kept; i++)
		ties += bl[i] == v;
	/* Compact in id order; ties at v go to the lowest ids, as in the sorted order. */
	size_t j = 0;
	for (size_t i = 0; i < c->n; i++) {
		float l = c->logit[i];
		if (l > v || (l == v && ties > 0)) {
			ties -= l == v;
			c->id[j] = c->id[i];
			c->logit[j] = l;
			j++;
		}
	}
	c->n = j;
}

static void gs_top_p_apply(void *ctx, struct gs_candidates *c)
{
	struct gs_top_p_ctx *tc = ctx;

	if (c->n <= 1)
		return;
	if (!c->sorted && c->n > GS_TOPP_SORT_MAX) {
		gs_top_p_bucketed(tc, c);
		return;
	}
	gs_candidates_sort(c);
	double z = gs_exp_sum(c->logit, c->p, c->n, c->logit[0], NULL);
	/* Token i stays iff the mass strictly before it is < p (HF: ascending cumsum > 1-p).
	 * The first token always stays: its prefix mass is 0 and target > 0. */
	double target = (double)tc->p * z, cum = 0.0;
	size_t keep = 0;
	while (keep < c->n && cum < target)
		cum += c->p[keep++];
	c->n = keep;
}

struct gs_min_p_ctx {
	float m;
};

static void gs_min_p_apply(void *ctx, struct gs_candidates *c)
{
	const float m = ((struct gs_min_p_ctx *)ctx)->m;
	float lmax = c->sorted ? c->logit[0] : gs_max(c->logit, c->n);

	if (c->n == 0 || !(lmax > -INFINITY))
		return;
	/* prob_i / max_prob = exp(logit_i - max): no normaliser needed. Order is kept. */
	gs_exp_sum(c->logit, c->p, c->n, lmax, NULL);
	size_t j = 0;
	for (size_t i = 0; i < c->n; i++) {
		if (c->p[i] >= m) {
			c->id[j] = c->id[i];
			c->logit[j] = c->logit[i];
			j++;
		}
	}
	c->n = j;
}

static const struct gs_sampler_stage_i gs_stage_edits = {
	.name = "penalties",
	.apply = gs_edits_apply,
	.reset = NULL,
};
static const struct gs_sampler_stage_i gs_stage_temperature = {
	.name = "temperature",
	.apply = gs_temperature_apply,
	.reset = NULL,
};
static const struct gs_sampler_stage_i gs_stage_top_k = {
	.name = "top_k",
	.apply = gs_top_k_apply,
	.reset = NULL,
};
static const struct gs_sampler_stage_i gs_stage_top_p = {
	.name = "top_p",
	.apply = gs_top_p_apply,
	.reset = NULL,
};
static const struct gs_sampler_stage_i gs_stage_min_p = {
	.name = "min_p",
	.apply = gs_min_p_apply,
	.reset = NULL,
};

/* ---- the sampler ---- */

struct gs_sampler {
	struct gs_sampling_params params;
	bool                      greedy;
	int32_t                   n_vocab;  /* scratch capacity */
	uint64_t                  rng[4];
	struct gs_sampler_stage   stage[GS_SAMPLER_MAX_STAGES];
	size_t                    n_stage;
	size_t                    n_pre;    /* stages [0, n_pre) see raw logits and run on ranks */
	struct gs_edits_ctx       edits;
	struct gs_logit_edit     *edit;     /* [edit_cap] this call's edits (grown, see reserve) */
	size_t                    edit_cap;
	size_t                    n_prompt; /* history[0, n_prompt) is the prompt              */
	int32_t                   mask_id[GS_SAMPLER_MAX_MASK]; /* eos/stop ids for min_tokens */
	size_t                    n_mask;
	struct gs_temperature_ctx temperature;
	struct gs_top_k_ctx       top_k;
	struct gs_top_p_ctx       top_p;
	struct gs_min_p_ctx       min_p;
	double                    mass[GS_TOPP_BUCKETS];
	float                     heap[GS_TOPP_FIRST_TRY];
	double                   *block;    /* [n_vocab / GS_SUM_BLOCK + 1] block sums of a draw */
	int32_t                  *id;       /* [n_vocab] \                          */
	float                    *logit;    /* [n_vocab]  > one allocation (slab)   */
	float                    *p;        /* [n_vocab] /                          */
};

static void gs_sampler_add(struct gs_sampler *s, const struct gs_sampler_stage_i *iface, void *ctx)
{
	GS_ASSERT(s->n_stage < GS_SAMPLER_MAX_STAGES);
	s->stage[s->n_stage++] = (struct gs_sampler_stage){ .iface = iface, .ctx = ctx };
}

enum gs_status gs_sampler_create(const struct gs_sampling_params *p, int32_t n_vocab,
				 struct gs_sampler **out)
{
	*out = NULL;
	GS_TRY(gs_sampling_params_validate(p, NULL, 0));
	if (n_vocab <= 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "sampler: vocabulary size must be > 0, got %d",
				 (int)n_vocab);

	struct gs_sampler *s = calloc(1, sizeof(*s));
	if (!s)
		return gs_errorf(GS_ERR_NOMEM, "sampler: out of memory");
	size_t v = (size_t)n_vocab, nb = v / GS_SUM_BLOCK + 1;
	void *slab = malloc(nb * sizeof(double) + v * (sizeof(int32_t) + 2 * sizeof(float)));
	if (!slab) {
		free(s);
		return gs_errorf(GS_ERR_NOMEM, "sampler: cannot allocate scratch for %d tokens",
				 (int)n_vocab);
	}
	s->block = slab;
	s->id = (int32_t *)(s->block + nb);
	s->logit = (float *)(s->id + v);
	s->p = s->logit + v;
	s->params = *p;
	s->n_vocab = n_vocab;
	s->greedy = p->temperature < GS_SAMPLER_GREEDY_T;

	/* HF order; only active stages join, so "off" costs nothing per token. */
	s->edits.s = s;
	if (p->repetition_penalty != 1.0f || p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f ||
	    p->n_logit_bias > 0 || p->min_tokens > 0)
		gs_sampler_add(s, &gs_stage_edits, &s->edits);
	if (!s->greedy) {
		s->temperature.t = p->temperature;
		if (p->temperature != 1.0f)
			gs_sampler_add(s, &gs_stage_temperature, &s->temperature);
	}
	s->n_pre = s->n_stage;
	if (!s->greedy) {
		s->top_k.k = (size_t)p->top_k;
		s->top_p.p = p->top_p;
		s->top_p.mass = s->mass;
		s->top_p.heap = s->heap;
		s->min_p.m = p->min_p;
		if (p->top_k > 0)
			gs_sampler_add(s, &gs_stage_top_k, &s->top_k);
		if (p->top_p < 1.0f)
			gs_sampler_add(s, &gs_stage_top_p, &s->top_p);
		if (p->min_p > 0.0f)
			gs_sampler_add(s, &gs_stage_min_p, &s->min_p);
	}
	gs_rng_seed(s->rng, p->seed);
	*out = s;
	return GS_OK;
}

void gs_sampler_rank_params(const struct gs_sampler *s, float *penalty, float *frequency, float *presence,
			    float *temperature)
{
	*penalty = s->params.repetition_penalty;
	*frequency = s->params.frequency_penalty;
	*presence = s->params.presence_penalty;
	*temperature = s->greedy ? 1.0f : s->params.temperature;
}

void gs_sampler_set_prompt(struct gs_sampler *s, size_t n_prompt)
{
	s->n_prompt = n_prompt;
}

enum gs_status gs_sampler_set_min_tokens_ids(struct gs_sampler *s, const int32_t *ids, size_t n)
{
	s->n_mask = 0;
	for (size_t i = 0; i < n; i++) {
		bool dup = false;
		for (size_t j = 0; j < s->n_mask; j++)
			dup |= s->mask_id[j] == ids[i];
		if (dup)
			continue;
		if (s->n_mask == GS_SAMPLER_MAX_MASK)
			return gs_errorf(GS_ERR_INVALID_ARG, "sampler: more than %d eos and stop ids", GS_SAMPLER_MAX_MASK);
		s->mask_id[s->n_mask++] = ids[i];
	}
	return GS_OK;
}

enum gs_status gs_sampler_reserve(struct gs_sampler *s, size_t n_history)
{
	size_t need = n_history + (size_t)s->params.n_logit_bias + GS_SAMPLER_MAX_MASK;

	if (need <= s->edit_cap || !(s->n_pre > 0 && s->stage[0].iface == &gs_stage_edits))
		return GS_OK; /* enough, or no penalties stage: never any edits */
	struct gs_logit_edit *e = realloc(s->edit, need * sizeof(*e));
	if (!e)
		return gs_errorf(GS_ERR_NOMEM, "sampler: cannot allocate %zu logit edits", need);
	s->edit = e;
	s->edit_cap = need;
	return GS_OK;
}

static int gs_edit_cmp(const void *a, const void *b)
{
	const struct gs_logit_edit *x = a, *y = b;

	return (x->id > y->id) - (x->id < y->id);
}

/* The distinct ids of [base, base + n_slice) whose logit this call changes, in s->edit
 * (sorted by id). Grows the buffer when the caller did not reserve enough. */
static size_t gs_sampler_build_edits(struct gs_sampler *s, int32_t base, int32_t n_slice, const int32_t *history,
				     size_t n_history)
{
	const struct gs_sampling_params *p = &s->params;
	const bool rep = p->repetition_penalty != 1.0f, fp = p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f;
	const size_t n_gen = n_history > s->n_prompt ? n_history - s->n_prompt : 0;
	size_t n = 0;

	if (!history)
		n_history = 0;
	if (gs_sampler_reserve(s, n_history) != GS_OK)
		GS_ASSERT(!"sampler: out of memory for logit edits (reserve at admission)");
	for (size_t h = 0; h < n_history && (rep || fp); h++) {
		int64_t j = (int64_t)history[h] - base;
		bool gen = h >= s->n_prompt;
		if (j < 0 || j >= n_slice || (!rep && !gen))
			continue;
		s->edit[n++] = (struct gs_logit_edit){ .id = history[h], .count = gen && fp ? 1 : 0,
						       .flags = rep ? GS_EDIT_SEEN : 0 };
	}
	for (int32_t i = 0; i < p->n_logit_bias; i++) {
		int64_t j = (int64_t)p->logit_bias_id[i] - base;
		if (j >= 0 && j < n_slice)
			s->edit[n++] = (struct gs_logit_edit){ .id = p->logit_bias_id[i], .bias = p->logit_bias[i] };
	}
	if (n_gen < (size_t)p->min_tokens)
		for (size_t i = 0; i < s->n_mask; i++) {
			int64_t j = (int64_t)s->mask_id[i] - base;
			if (j >= 0 && j < n_slice)
				s->edit[n++] = (struct gs_logit_edit){ .id = s->mask_id[i], .flags = GS_EDIT_MASKED };
		}
	if (n < 2)
		return n;
	qsort(s->edit, n, sizeof(*s->edit), gs_edit_cmp);
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		if (m > 0 && s->edit[m - 1].id == s->edit[i].id) {
			struct gs_logit_edit *d = &s->edit[m - 1];
			d->count += s->edit[i].count;
			d->bias += s->edit[i].bias; /* at most one entry carries a bias */
			d->flags |= s->edit[i].flags;
		} else {
			s->edit[m++] = s->edit[i];
		}
	}
	return m;
}

size_t gs_sampler_rank_edits(struct gs_sampler *s, int32_t vocab0, int32_t n_slice, const int32_t *history,
			     size_t n_history, const struct gs_logit_edit **out)
{
	size_t n = 0;

	if (s->n_pre > 0 && s->stage[0].iface == &gs_stage_edits)
		n = gs_sampler_build_edits(s, vocab0, n_slice, history, n_history);
	*out = s->edit;
	return n;
}

static void gs_edits_apply(void *ctx, struct gs_candidates *c)
{
	struct gs_edits_ctx *ec = ctx;
	struct gs_sampler *s = ec->s;

	/* Needs the identity layout the loader produced: entry i is id base + i. */
	GS_ASSERT(!c->sorted && (c->n == 0 || (c->id[0] == ec->base &&
					      c->id[c->n - 1] == ec->base + (int32_t)(c->n - 1))));
	size_t n = gs_sampler_build_edits(s, ec->base, (int32_t)c->n, ec->history, ec->n_history);
	float r, f, p, t;
	gs_sampler_rank_params(s, &r, &f, &p, &t);
	for (size_t i = 0; i < n; i++) {
		int64_t j = (int64_t)s->edit[i].id - ec->base;
		c->logit[j] = gs_logit_edit_value(ec->raw[j], &s->edit[i], r, f, p, 1.0f);
	}
}

void gs_sampler_free(struct gs_sampler *s)
{
	if (!s)
		return;
	free(s->block);
	free(s->edit);
	free(s);
}

void gs_sampler_reset(struct gs_sampler *s)
{
	gs_rng_seed(s->rng, s->params.seed);
	for (size_t i = 0; i < s->n_stage; i++)
		if (s->stage[i].iface->reset)
			s->stage[i].iface->reset(s->stage[i].ctx);
}

size_t gs_sampler_chain(const struct gs_sampler *s, const char **names, size_t cap)
{
	for (size_t i = 0; i < s->n_stage && i < cap; i++)
		names[i] = s->stage[i].iface->name;
	return s->n_stage;
}

static struct gs_candidates gs_sampler_scratch(struct gs_sampler *s)
{
	return (struct gs_candidates){ .id = s->id, .logit = s->logit, .p = s->p, .n = 0, .sorted = false };
}

/* Copies caller logits for ids base..base+n-1 into scratch and points the edits stage at them. */
static void gs_sampler_load(struct gs_sampler *s, struct gs_candidates *c, const float *x,
			    int32_t base, int32_t n, const int32_t *history, size_t n_history)
{
	for (int32_t i = 0; i < n; i++) {
		c->id[i] = base + i;
		c->logit[i] = gs_sanitize(x[i]);
	}
	c->n = (size_t)n;
	c->sorted = false;
	s->edits.raw = x;
	s->edits.base = base;
	s->edits.history = history;
	s->edits.n_history = history ? n_history : 0;
}

static void gs_sampler_run(struct gs_sampler *s, struct gs_candidates *c, size_t from, size_t to)
{
	for (size_t i = from; i < to; i++)
		s->stage[i].iface->apply(s->stage[i].ctx, c);
}

/* Greedy: highest logit, lowest id on ties (unsorted sets are in id order). */
static size_t gs_argmax(const struct gs_candidates *c)
{
	if (c->sorted)
		return 0;
	float m = gs_max(c->logit, c->n);
	for (size_t i = 0; i < c->n; i++)
		if (c->logit[i] == m)
			return i;
	return 0;
}

/* Picks from the final set: argmax, or one uniform draw walked in id order, which is what
 * makes the rank/leader path reproduce the full-vocabulary path draw for draw whenever the
 * final sets agree. */
static int32_t gs_sampler_pick(struct gs_sampler *s, struct gs_candidates *c, float *logprob_out)
{
	GS_ASSERT(c->n > 0);
	if (s->greedy) {
		size_t best = gs_argmax(c);
		if (logprob_out) {
			float lmax = c->logit[best];
			double z = gs_exp_sum(c->logit, c->p, c->n, lmax, NULL);
			*logprob_out = (float)-log(z);
		}
		return c->id[best];
	}
	float lmax = c->sorted ? c->logit[0] : gs_max(c->logit, c->n);
	if (c->sorted) {
		/* Sorted sets are the small ones (after top_k/top_p, merged candidates). */
		gs_sort_arrays(true, c->id, c->logit, c->n);
		c->sorted = false;
	}
	double z = gs_exp_sum(c->logit, c->p, c->n, lmax, s->block);
	double u = gs_rng_uniform(s->rng) * z, cum = 0.0;
	/* Find the block by the same block sums that make z (so u < z always lands in one),
	 * then walk inside it. Zero-probability entries are never picked, even if rounding
	 * inside the block leaves u past the element sum. */
	size_t nb = (c->n + GS_SUM_BLOCK - 1) / GS_SUM_BLOCK, b = 0;
	for (; b + 1 < nb; b++) {
		if (s->block[b] > 0.0 && u < cum + s->block[b])
			break;
		cum += s->block[b];
	}
	while (b > 0 && !(s->block[b] > 0.0)) /* rounding ran past the end: last nonempty */
		b--;
	size_t pick = b * GS_SUM_BLOCK, end = pick + GS_SUM_BLOCK < c->n ? pick + GS_SUM_BLOCK : c->n;
	for (size_t i = pick; i < end; i++) {
		if (c->p[i] > 0.0f) {
			pick = i;
			cum += c->p[i];
			if (u < cum)
				break;
		}
	}
	if (logprob_out) {
		if (lmax > -INFINITY)
			*logprob_out = (float)((double)c->logit[pick] - (double)lmax - log(z));
		else
			*logprob_out = (float)-log(z);
	}
	return c->id[pick];
}

int32_t gs_sampler_sample(struct gs_sampler *s, const float *logits, int32_t n_vocab,
			  const int32_t *history, size_t n_history, float *logprob_out)
{
	GS_ASSERT(n_vocab > 0 && n_vocab <= s->n_vocab);
	struct gs_candidates c = gs_sampler_scratch(s);

	gs_sampler_load(s, &c, logits, 0, n_vocab, history, n_history);
	gs_sampler_run(s, &c, 0, s->n_stage);
	return gs_sampler_pick(s, &c, logprob_out);
}

size_t gs_sampler_distribution(struct gs_sampler *s, const float *logits, int32_t n_vocab,
			       const int32_t *history, size_t n_history, size_t cap,
			       int32_t *ids_out, float *probs_out)
{
	GS_ASSERT(n_vocab > 0 && n_vocab <= s->n_vocab);
	struct gs_candidates c = gs_sampler_scratch(s);

	gs_sampler_load(s, &c, logits, 0, n_vocab, history, n_history);
	gs_sampler_run(s, &c, 0, s->n_stage);
	gs_candidates_sort(&c);
	double z = gs_exp_sum(c.logit, c.p, c.n, c.logit[0], NULL);
	for (size_t i = 0; i < c.n && i < cap; i++) {
		ids_out[i] = c.id[i];
		probs_out[i] = (float)(c.p[i] / z);
	}
	return c.n;
}

size_t gs_sampler_local_candidates(struct gs_sampler *s, const float *logits_slice,
				   int32_t vocab_offset, int32_t n_slice,
				   const int32_t *history, size_t n_history, size_t max_out,
				   int32_t *ids_out, float *logits_out)
{
	GS_ASSERT(vocab_offset >= 0 && n_slice >= 0 && n_slice <= s->n_vocab);
	if (n_slice == 0 || max_out == 0)
		return 0;
	struct gs_candidates c = gs_sampler_scratch(s);

	gs_sampler_load(s, &c, logits_slice, vocab_offset, n_slice, history, n_history);
	gs_sampler_run(s, &c, 0, s->n_pre);
	size_t m = max_out < c.n ? max_out : c.n, j = 0;
	if (m == c.n) {
		memcpy(ids_out, c.id, m * sizeof(int32_t));
		memcpy(logits_out, c.logit, m * sizeof(float));
	} else {
		/* Exactly m: everything above the m-th value, then ties at it by ascending id
		 * (the scan is in id order), so the rank's cut is the global order's cut. */
		float v = gs_kth_largest(c.logit, c.n, m, c.p);
		for (size_t i = 0; i < c.n; i++) {
			if (c.logit[i] > v) {
				ids_out[j] = c.id[i];
				logits_out[j++] = c.logit[i];
			}
		}
		for (size_t i = 0; i < c.n && j < m; i++) {
			if (c.logit[i] == v) {
				ids_out[j] = c.id[i];
				logits_out[j++] = c.logit[i];
			}
		}
		GS_ASSERT(j == m);
	}
	gs_sort_arrays(false, ids_out, logits_out, m);
	return m;
}

void gs_candidate_tail_add(struct gs_candidate_tail *t, const float *logits_out, size_t n_out,
			   int32_t n_slice)
{
	if (n_slice <= 0 || (int64_t)n_out >= (int64_t)n_slice)
		return;
	t->n += (int64_t)n_slice - (int64_t)n_out;
	/* Output is sorted, so its last logit bounds everything the rank left out. */
	float bound = n_out ? logits_out[n_out - 1] : INFINITY;
	if (bound > t->max_logit)
		t->max_logit = bound;
}

/* Would the full vocabulary have produced the same final set? c is sorted, unfiltered.
 * tau bounds every left-out logit; E = n_tail * exp(tau - max) bounds their mass. */
static bool gs_candidates_exact(struct gs_sampler *s, struct gs_candidates *c,
				const struct gs_candidate_tail *tail)
{
	const struct gs_sampling_params *p = &s->params;

	if (!tail || tail->n == 0 || s->greedy)
		return true;
	float tau = tail->max_logit, lmax = c->logit[0];
	if (p->top_k > 0)
		/* The k-th value is above every left-out logit: the kept set is complete, and
		 * top_p/min_p after it see exactly the full path's set. */
		return (size_t)p->top_k <= c->n && c->logit[p->top_k - 1] > tau;
	if (!(lmax > -INFINITY))
		return false;
	double ebound = (double)tail->n * exp((double)tau - (double)lmax);
	if (p->top_p < 1.0f) {
		double z = gs_exp_sum(c->logit, c->p, c->n, lmax, NULL), cum = 0.0;
		double target = (double)p->top_p * z;
		size_t j = 0;
		while (j < c->n && cum < target)
			cum += c->p[j++];
		/* Cut after entry j-1 for every Z in [z, z + E], and no left-out token ranks
		 * before that entry. */
		return j > 0 && c->logit[j - 1] > tau && cum >= (double)p->top_p * (z + ebound);
	}
	if (p->min_p > 0.0f)
		return exp((double)tau - (double)lmax) < (double)p->min_p;
	return ebound == 0.0;
}

int32_t gs_sampler_sample_candidates_ex(struct gs_sampler *s, const int32_t *ids,
					const float *logits, size_t n,
					const struct gs_candidate_tail *tail,
					float *logprob_out, bool *exact_out)
{
	if (exact_out)
		*exact_out = false;
	if (n == 0)
		return -1;
	GS_ASSERT(n <= (size_t)s->n_vocab);
	struct gs_candidates c = gs_sampler_scratch(s);

	memcpy(c.id, ids, n * sizeof(int32_t));
	for (size_t i = 0; i < n; i++)
		c.logit[i] = gs_sanitize(logits[i]);
	c.n = n;
	c.sorted = false;
	gs_candidates_sort(&c);
	if (exact_out)
		*exact_out = gs_candidates_exact(s, &c, tail);
	gs_sampler_run(s, &c, s->n_pre, s->n_stage);
	return gs_sampler_pick(s, &c, logprob_out);
}

int32_t gs_sampler_sample_candidates(struct gs_sampler *s, const int32_t *ids, const float *logits,
				     size_t n, float *logprob_out)
{
	return gs_sampler_sample_candidates_ex(s, ids, logits, n, NULL, logprob_out, NULL);
}
