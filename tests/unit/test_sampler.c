/* Sampler: HF generate() semantics checked against hand computations and an independent
 * float64 reference; determinism; distributed (candidate) path against the full path. */
#include "gs_kernels.h"
#include "gs_sampler.h"
#include "gs_test.h"

#include <string.h>

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* ---- test-side randomness (independent of the sampler's RNG) ---- */

static uint64_t t_state = 0x1234567887654321ull;

static uint64_t t_next(void)
{
	return gs_test_splitmix(&t_state);
}

static double t_unif(void)
{
	return (double)(t_next() >> 11) * 0x1.0p-53;
}

static double t_normal(void)
{
	double u = t_unif(), v = t_unif();
	return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

static void fill_normal(float *x, int n, double sd)
{
	for (int i = 0; i < n; i++)
		x[i] = (float)(sd * t_normal());
}

/* LLM-shaped logits: a broad body plus a few strong tokens. */
static void fill_peaked(float *x, int n)
{
	fill_normal(x, n, 1.5);
	for (int i = 0; i < 30; i++)
		x[t_next() % (uint64_t)n] += (float)(8.0 + 6.0 * t_unif());
}

static struct gs_sampler *mk(float t, int k, float p, float m, float r, uint64_t seed, int v)
{
	struct gs_sampling_params sp = { .temperature = t, .top_k = k, .top_p = p, .min_p = m,
					 .repetition_penalty = r, .seed = seed };
	struct gs_sampler *s = NULL;
	enum gs_status st = gs_sampler_create(&sp, v, &s);
	CHECK_MSG(st == GS_OK, "create: %s", gs_last_error());
	if (st != GS_OK)
		exit(1);
	return s;
}

/* ---- independent float64 reference of the HF processor chain ---- */

static int cmp_desc_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

struct ref_item {
	double l;
	int id;
};

static int cmp_item_asc(const void *a, const void *b)
{
	const struct ref_item *x = a, *y = b;
	if (x->l != y->l)
		return x->l < y->l ? -1 : 1;
	return y->id - x->id; /* ascending logit; on ties higher id first (removed first) */
}

/* keep[i] = 1 if token i survives; prob[i] its final probability. Returns kept count. */
static int ref_chain(const float *logits, int v, const int *hist, int nh, double t, int k, double p,
		     double m, double r, int *keep, double *prob)
{
	double *l = malloc(sizeof(double) * v), *tmp = malloc(sizeof(double) * v);
	struct ref_item *it = malloc(sizeof(*it) * v);
	for (int i = 0; i < v; i++) {
		l[i] = logits[i];
		keep[i] = 1;
	}
	for (int h = 0; h < nh; h++) { /* gather from the raw logits: once per distinct id */
		int id = hist[h];
		if (id < 0 || id >= v)
			continue;
		double x = logits[id];
		l[id] = x > 0 ? x / r : x * r;
	}
	for (int i = 0; i < v; i++)
		l[i] /= t;
	if (k > 0 && k < v) { /* TopKLogitsWarper: remove < k-th largest */
		memcpy(tmp, l, sizeof(double) * v);
		qsort(tmp, v, sizeof(double), cmp_desc_d);
		for (int i = 0; i < v; i++)
			if (l[i] < tmp[k - 1])
				keep[i] = 0;
	}
	if (p < 1.0) { /* TopPLogitsWarper: ascending cumsum <= 1 - p removed */
		double mx = -INFINITY, z = 0;
		int n = 0;
		for (int i = 0; i < v; i++)
			if (keep[i] && l[i] > mx)
				mx = l[i];
		for (int i = 0; i < v; i++)
			if (keep[i]) {
				z += exp(l[i] - mx);
				it[n].l = l[i];
				it[n++].id = i;
			}
		qsort(it, n, sizeof(*it), cmp_item_asc);
		double cum = 0;
		for (int j = 0; j < n - 1; j++) { /* the last (largest) always stays */
			cum += exp(it[j].l - mx) / z;
			if (cum <= 1.0 - p)
				keep[it[j].id] = 0;
		}
	}
	if (m > 0) { /* MinPLogitsWarper */
		double mx = -INFINITY;
		for (int i = 0; i < v; i++)
			if (keep[i] && l[i] > mx)
				mx = l[i];
		for (int i = 0; i < v; i++)
			if (keep[i] && exp(l[i] - mx) < m)
				keep[i] = 0;
	}
	double mx = -INFINITY, z = 0;
	int n = 0;
	for (int i = 0; i < v; i++)
		if (keep[i] && l[i] > mx)
			mx = l[i];
	for (int i = 0; i < v; i++)
		if (keep[i]) {
			z += exp(l[i] - mx);
			n++;
		}
	for (int i = 0; i < v; i++)
		prob[i] = keep[i] ? exp(l[i] - mx) / z : 0.0;
	free(l);
	free(tmp);
	free(it);
	return n;
}

/* Compares gs_sampler_distribution() with the reference. Returns 1 if the sets match. */
static int dist_matches_ref(struct gs_sampler *s, const float *logits, int v, const int *hist, int nh,
			    double t, int k, double p, double m, double r, int verbose)
{
	int *keep = malloc(sizeof(int) * v), *ids = malloc(sizeof(int) * v);
	double *prob = malloc(sizeof(double) * v);
	float *pr = malloc(sizeof(float) * v);
	int nref = ref_chain(logits, v, hist, nh, t, k, p, m, r, keep, prob);
	size_t n = gs_sampler_distribution(s, logits, v, hist, (size_t)nh, (size_t)v, ids, pr);
	int ok = (int)n == nref;
	double maxerr = 0;
	for (size_t i = 0; ok && i < n; i++) {
		if (!keep[ids[i]])
			ok = 0;
		double e = fabs(pr[i] - prob[ids[i]]);
		if (e > maxerr)
			maxerr = e;
	}
	if (ok && maxerr > 1e-5)
		ok = 0;
	if (!ok && verbose)
		fprintf(stderr, "  dist mismatch: n=%zu ref=%d maxerr=%g (t=%g k=%d p=%g m=%g r=%g v=%d)\n", n,
			nref, maxerr, t, k, p, m, r, v);
	free(keep);
	free(ids);
	free(prob);
	free(pr);
	return ok;
}

/* ---- tests ---- */

static void test_validate(void)
{
	struct gs_sampling_params p = gs_sampling_params_default();
	char why[128];
	struct gs_sampler *s = NULL;

	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_OK);
	CHECK_STREQ(why, "");
	p.top_p = 1.5f;
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_ERR_INVALID_ARG);
	CHECK_STREQ(why, "top_p must be in (0, 1], got 1.5");
	CHECK_STREQ(gs_last_error(), "top_p must be in (0, 1], got 1.5");
	p.top_p = 0.0f;
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_ERR_INVALID_ARG);
	CHECK_STREQ(why, "top_p must be in (0, 1], got 0");
	p.top_p = NAN;
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_ERR_INVALID_ARG);

	p = gs_sampling_params_default();
	p.temperature = -0.5f;
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_ERR_INVALID_ARG);
	CHECK_STREQ(why, "temperature must be a finite number >= 0, got -0.5");
	p.temperature = NAN;
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_ERR_INVALID_ARG);
	p.temperature = INFINITY;
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_ERR_INVALID_ARG);

	p = gs_sampling_params_default();
	p.top_k = -1;
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_ERR_INVALID_ARG);
	CHECK_STREQ(why, "top_k must be >= 0 (0 = off), got -1");

	p = gs_sampling_params_default();
	p.min_p = 1.0f;
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_ERR_INVALID_ARG);
	CHECK_STREQ(why, "min_p must be in [0, 1), got 1");
	p.min_p = -0.1f;
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_ERR_INVALID_ARG);

	p = gs_sampling_params_default();
	p.repetition_penalty = 0.0f;
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_ERR_INVALID_ARG);
	CHECK_STREQ(why, "repetition_penalty must be a finite number > 0, got 0");
	p.repetition_penalty = -1.0f;
	CHECK(gs_sampling_params_validate(&p, NULL, 0) == GS_ERR_INVALID_ARG);

	/* Boundary values that are valid. */
	p = (struct gs_sampling_params){ .temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
					 .repetition_penalty = 1.0f, .seed = 0 };
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_OK);
	p.min_p = 0.999f;
	p.top_p = 1e-9f;
	CHECK(gs_sampling_params_validate(&p, why, sizeof(why)) == GS_OK);

	/* create refuses the same, and a bad vocabulary size. */
	p = gs_sampling_params_default();
	p.min_p = 2.0f;
	CHECK(gs_sampler_create(&p, 10, &s) == GS_ERR_INVALID_ARG && s == NULL);
	CHECK_STREQ(gs_last_error(), "min_p must be in [0, 1), got 2");
	p = gs_sampling_params_default();
	CHECK(gs_sampler_create(&p, 0, &s) == GS_ERR_INVALID_ARG && s == NULL);
	CHECK(strstr(gs_last_error(), "vocabulary size") != NULL);
	gs_sampler_free(NULL);
}

static void test_chain_order(void)
{
	const char *names[8];
	struct gs_sampler *s = mk(0.7f, 40, 0.9f, 0.05f, 1.2f, 1, 100);
	size_t n = gs_sampler_chain(s, names, 8);
	CHECK(n == 5);
	if (n == 5) {
		CHECK_STREQ(names[0], "penalties");
		CHECK_STREQ(names[1], "temperature");
		CHECK_STREQ(names[2], "top_k");
		CHECK_STREQ(names[3], "top_p");
		CHECK_STREQ(names[4], "min_p");
	}
	gs_sampler_free(s);
	s = mk(1.0f, 0, 1.0f, 0.0f, 1.0f, 1, 100); /* all off: nothing to run */
	CHECK(gs_sampler_chain(s, names, 8) == 0);
	gs_sampler_free(s);
	s = mk(0.0f, 40, 0.5f, 0.1f, 1.3f, 1, 100); /* greedy: penalty only, like do_sample=False */
	CHECK(gs_sampler_chain(s, names, 8) == 1);
	gs_sampler_free(s);
}

static void test_greedy(void)
{
	const float l[6] = { 1.0f, 5.0f, 3.0f, 5.0f, -2.0f, 4.99f };
	struct gs_sampler *s = mk(0.0f, 0, 1.0f, 0.0f, 1.0f, 7, 6);
	float lp = 0;
	CHECK(gs_sampler_sample(s, l, 6, NULL, 0, &lp) == 1); /* tie 1 vs 3: lowest id */
	double z = 0;
	for (int i = 0; i < 6; i++)
		z += exp(l[i] - 5.0);
	CHECK_NEAR(lp, -log(z), 1e-6);
	gs_sampler_free(s);

	/* temperature below 1e-5 is greedy too; random rows, argmax computed here. */
	enum { V = 3000 };
	static float x[V];
	s = mk(5e-6f, 0, 1.0f, 0.0f, 1.0f, 7, V);
	int bad = 0;
	for (int row = 0; row < 20; row++) {
		fill_normal(x, V, 3.0);
		int best = 0;
		for (int i = 1; i < V; i++)
			if (x[i] > x[best])
				best = i;
		bad += gs_sampler_sample(s, x, V, NULL, 0, NULL) != best;
	}
	CHECK_MSG(bad == 0, "%d rows not argmax", bad);
	gs_sampler_free(s);

	/* NaN from a broken model is never picked. */
	float n3[3] = { NAN, 1.0f, 2.0f };
	s = mk(0.0f, 0, 1.0f, 0.0f, 1.0f, 7, 3);
	CHECK(gs_sampler_sample(s, n3, 3, NULL, 0, NULL) == 2);
	gs_sampler_free(s);
}

static void test_seed(void)
{
	enum { V = 100, N = 1000 };
	float x[V];
	int a[N], b[N], c[N];
	fill_normal(x, V, 1.0);
	struct gs_sampler *s1 = mk(1.0f, 0, 1.0f, 0.0f, 1.0f, 42, V);
	struct gs_sampler *s2 = mk(1.0f, 0, 1.0f, 0.0f, 1.0f, 42, V);
	struct gs_sampler *s3 = mk(1.0f, 0, 1.0f, 0.0f, 1.0f, 43, V);
	for (int i = 0; i < N; i++) {
		a[i] = gs_sampler_sample(s1, x, V, NULL, 0, NULL);
		b[i] = gs_sampler_sample(s2, x, V, NULL, 0, NULL);
		c[i] = gs_sampler_sample(s3, x, V, NULL, 0, NULL);
	}
	int same = 0, diff = 0;
	for (int i = 0; i < N; i++) {
		same += a[i] == b[i];
		diff += a[i] != c[i];
	}
	CHECK_MSG(same == N, "same seed: %d/%d equal", same, N);
	CHECK_MSG(diff > N / 2, "different seed: only %d/%d differ", diff, N);
	/* reset replays the stream */
	gs_sampler_reset(s1);
	int replay = 0;
	for (int i = 0; i < N; i++)
		replay += gs_sampler_sample(s1, x, V, NULL, 0, NULL) == a[i];
	CHECK_MSG(replay == N, "after reset: %d/%d equal", replay, N);
	gs_sampler_free(s1);
	gs_sampler_free(s2);
	gs_sampler_free(s3);

	/* Portability pin: these draws were recorded on x86-64; every machine and build must
	 * give the same (own exp, fixed-order sums, no FMA contraction, xoshiro256**). */
	float y[8] = { 0.5f, -1.0f, 2.0f, 0.0f, 1.2f, -0.3f, 0.8f, -2.0f };
	static const int pin[16] = { 2, 2, 6, 2, 4, 2, 0, 2, 6, 2, 2, 2, 2, 2, 5, 3 };
	struct gs_sampler *s = mk(0.9f, 0, 1.0f, 0.0f, 1.0f, 20240601, 8);
	int got[16], ok = 1;
	for (int i = 0; i < 16; i++) {
		got[i] = gs_sampler_sample(s, y, 8, NULL, 0, NULL);
		ok &= got[i] == pin[i];
	}
	CHECK(ok);
	if (!ok) {
		fprintf(stderr, "  pinned draws now:");
		for (int i = 0; i < 16; i++)
			fprintf(stderr, " %d,", got[i]);
		fputc('\n', stderr);
	}
	gs_sampler_free(s);
}

static void chi_square_case(const float *l, int v, float t, uint64_t seed, double crit)
{
	enum { N = 200000 };
	long count[16] = { 0 };
	double pr[16], z = 0, mx = -INFINITY;
	struct gs_sampler *s = mk(t, 0, 1.0f, 0.0f, 1.0f, seed, v);
	int lp_bad = 0;

	for (int i = 0; i < v; i++)
		mx = fmax(mx, l[i] / t);
	for (int i = 0; i < v; i++)
		z += pr[i] = exp(l[i] / t - mx);
	for (int i = 0; i < v; i++)
		pr[i] /= z;
	for (int i = 0; i < N; i++) {
		float lp;
		int tok = gs_sampler_sample(s, l, v, NULL, 0, &lp);
		if (tok < 0 || tok >= v) {
			lp_bad++;
			continue;
		}
		count[tok]++;
		if (i < 1000 && fabs(lp - log(pr[tok])) > 1e-5)
			lp_bad++;
	}
	double chi2 = 0;
	for (int i = 0; i < v; i++) {
		double e = N * pr[i];
		chi2 += (count[i] - e) * (count[i] - e) / e;
	}
	fprintf(stderr, "  chi-square t=%.2f: %.2f (df %d, limit %.1f)\n", (double)t, chi2, v - 1, crit);
	CHECK_MSG(chi2 < crit, "chi2 %.2f >= %.1f", chi2, crit);
	CHECK_MSG(lp_bad == 0, "%d logprobs off", lp_bad);
	gs_sampler_free(s);
}

static void test_distribution(void)
{
	const float l[8] = { 0.5f, -1.0f, 2.0f, 0.0f, 1.2f, -0.3f, 0.8f, -2.0f };
	/* df = 7: 24.32 is the 0.999 quantile; the wrong distribution gives thousands. */
	chi_square_case(l, 8, 1.0f, 99, 24.32);
	chi_square_case(l, 8, 0.6f, 100, 24.32);
}

static void test_top_k(void)
{
	enum { V = 5000 };
	static float x[V];
	int bad = 0;

	/* top_k = 1 is greedy whenever the max is unique. */
	struct gs_sampler *s = mk(0.8f, 1, 1.0f, 0.0f, 1.0f, 5, V);
	for (int row = 0; row < 30; row++) {
		fill_normal(x, V, 2.0);
		int best = 0;
		for (int i = 1; i < V; i++)
			if (x[i] > x[best])
				best = i;
		float lp = -1;
		bad += gs_sampler_sample(s, x, V, NULL, 0, &lp) != best || lp != 0.0f;
	}
	CHECK_MSG(bad == 0, "top_k=1: %d rows differ from argmax", bad);
	gs_sampler_free(s);

	/* k >= vocabulary is a no-op: draw for draw the same as no top_k. */
	enum { W = 50 };
	float y[W];
	fill_normal(y, W, 1.0);
	struct gs_sampler *off = mk(1.0f, 0, 1.0f, 0.0f, 1.0f, 11, W);
	struct gs_sampler *eq = mk(1.0f, W, 1.0f, 0.0f, 1.0f, 11, W);
	struct gs_sampler *big = mk(1.0f, 10 * W, 1.0f, 0.0f, 1.0f, 11, W);
	int d1 = 0, d2 = 0;
	for (int i = 0; i < 500; i++) {
		int a = gs_sampler_sample(off, y, W, NULL, 0, NULL);
		d1 += gs_sampler_sample(eq, y, W, NULL, 0, NULL) != a;
		d2 += gs_sampler_sample(big, y, W, NULL, 0, NULL) != a;
	}
	CHECK_MSG(d1 == 0 && d2 == 0, "k=V: %d, k>V: %d draws differ", d1, d2);
	gs_sampler_free(off);
	gs_sampler_free(eq);
	gs_sampler_free(big);

	/* k = V - 1 drops exactly the minimum. */
	s = mk(1.0f, W - 1, 1.0f, 0.0f, 1.0f, 11, W);
	CHECK(dist_matches_ref(s, y, W, NULL, 0, 1.0, W - 1, 1.0, 0.0, 1.0, 1));
	gs_sampler_free(s);

	/* Ties at the k-th value are all kept (HF: remove only < k-th). */
	const float t6[6] = { 3.0f, 2.0f, 2.0f, 2.0f, 1.0f, 0.0f };
	int ids[6];
	float pr[6];
	s = mk(1.0f, 2, 1.0f, 0.0f, 1.0f, 1, 6);
	size_t n = gs_sampler_distribution(s, t6, 6, NULL, 0, 6, ids, pr);
	CHECK(n == 4);
	if (n == 4)
		CHECK(ids[0] == 0 && ids[1] == 1 && ids[2] == 2 && ids[3] == 3);
	gs_sampler_free(s);

	/* Random rows against the float64 reference, heap and quickselect paths. */
	int ks[] = { 1, 5, 40, 300, 2000 };
	bad = 0;
	for (int j = 0; j < 5; j++) {
		s = mk(0.9f, ks[j], 1.0f, 0.0f, 1.0f, 3, V);
		fill_normal(x, V, 2.0);
		bad += !dist_matches_ref(s, x, V, NULL, 0, 0.9, ks[j], 1.0, 0.0, 1.0, 1);
		gs_sampler_free(s);
	}
	CHECK_MSG(bad == 0, "%d top_k rows differ from reference", bad);
}

static void test_top_p(void)
{
	int ids[8];
	float pr[8];
	size_t n;

	/* Exact boundary, by hand: four equal tokens (0.25 each), four impossible ones.
	 * p = 0.5: the third token has 0.5 before it, not < 0.5 -> 2 kept. HF: ascending
	 * cumsum .25 .5 .75 1, removes <= 0.5 -> the same 2 (ties: we keep the lowest ids). */
	const float eq[8] = { -200.0f, 0.0f, -200.0f, 0.0f, 0.0f, -200.0f, 0.0f, -200.0f };
	struct gs_sampler *s = mk(1.0f, 0, 0.5f, 0.0f, 1.0f, 1, 8);
	n = gs_sampler_distribution(s, eq, 8, NULL, 0, 8, ids, pr);
	CHECK(n == 2);
	if (n == 2) {
		CHECK(ids[0] == 1 && ids[1] == 3);
		CHECK(pr[0] == 0.5f && pr[1] == 0.5f);
	}
	gs_sampler_free(s);
	s = mk(1.0f, 0, 0.5000001f, 0.0f, 1.0f, 1, 8); /* just past the boundary: 3 */
	CHECK(gs_sampler_distribution(s, eq, 8, NULL, 0, 8, ids, pr) == 3);
	gs_sampler_free(s);
	s = mk(1.0f, 0, 0.25f, 0.0f, 1.0f, 1, 8); /* exactly one token's mass: 1 */
	CHECK(gs_sampler_distribution(s, eq, 8, NULL, 0, 8, ids, pr) == 1);
	gs_sampler_free(s);
	s = mk(1.0f, 0, 1.0f, 0.0f, 1.0f, 1, 8); /* p = 1 is off: all 8, the -200s at ~0 */
	CHECK(gs_sampler_distribution(s, eq, 8, NULL, 0, 8, ids, pr) == 8);
	gs_sampler_free(s);

	/* Tiny p: only the argmax. */
	enum { V = 20000 };
	static float x[V];
	fill_normal(x, V, 2.0);
	int best = 0;
	for (int i = 1; i < V; i++)
		if (x[i] > x[best])
			best = i;
	s = mk(1.0f, 0, 1e-6f, 0.0f, 1.0f, 1, V);
	int bad = 0;
	for (int i = 0; i < 100; i++)
		bad += gs_sampler_sample(s, x, V, NULL, 0, NULL) != best;
	CHECK_MSG(bad == 0, "tiny top_p: %d draws not the argmax", bad);
	gs_sampler_free(s);

	/* Random rows vs float64 reference: small sets (sort path) and 20000 (bucket path),
	 * broad and peaked logits. */
	bad = 0;
	int rows = 0;
	for (int j = 0; j < 40; j++) {
		int v = j % 2 ? V : 300;
		float p = (float)(0.05 + 0.94 * t_unif());
		float t = (float)(0.5 + t_unif());
		if (j % 4 < 2)
			fill_normal(x, v, 0.5 + 3.0 * t_unif());
		else
			fill_peaked(x, v);
		s = mk(t, 0, p, 0.0f, 1.0f, 1, v);
		bad += !dist_matches_ref(s, x, v, NULL, 0, t, 0, p, 0.0, 1.0, 1);
		rows++;
		gs_sampler_free(s);
	}
	CHECK_MSG(bad == 0, "top_p: %d/%d rows differ from reference", bad, rows);
}

static void test_min_p_and_combined(void)
{
	enum { V = 6000 };
	static float x[V];
	static int hist[500];
	int bad = 0;

	for (int j = 0; j < 10; j++) {
		fill_normal(x, V, 2.5);
		float m = (float)(0.01 + 0.3 * t_unif());
		struct gs_sampler *s = mk(1.0f, 0, 1.0f, m, 1.0f, 1, V);
		bad += !dist_matches_ref(s, x, V, NULL, 0, 1.0, 0, 1.0, m, 1.0, 1);
		gs_sampler_free(s);
	}
	CHECK_MSG(bad == 0, "min_p: %d rows differ from reference", bad);

	/* Whole chain, HF order, against the reference. */
	bad = 0;
	for (int j = 0; j < 20; j++) {
		if (j % 2)
			fill_peaked(x, V);
		else
			fill_normal(x, V, 2.0);
		for (int h = 0; h < 500; h++)
			hist[h] = (int)(t_next() % 200); /* duplicates on purpose */
		int k = j % 3 ? 50 : 0;
		float t = 0.7f, p = 0.85f, m = 0.02f, r = 1.3f;
		struct gs_sampler *s = mk(t, k, p, m, r, 1, V);
		bad += !dist_matches_ref(s, x, V, hist, 500, t, k, p, m, r, 1);
		gs_sampler_free(s);
	}
	CHECK_MSG(bad == 0, "combined: %d rows differ from reference", bad);
}

static void test_repetition_penalty(void)
{
	const float l[4] = { 2.0f, -2.0f, 0.5f, 1.5f };
	const int32_t hist[6] = { 0, 0, 1, 0, 99, -3 }; /* repeats; ids outside are ignored */
	int ids[4];
	float pr[4];

	struct gs_sampler *s = mk(0.0f, 0, 1.0f, 0.0f, 2.0f, 1, 4);
	CHECK(gs_sampler_sample(s, l, 4, NULL, 0, NULL) == 0);
	CHECK(gs_sampler_sample(s, l, 4, hist, 6, NULL) == 3); /* 2 -> 1 < 1.5 */
	gs_sampler_free(s);

	/* Positive divided, negative multiplied, once per distinct id: [1, -4, 0.5, 1.5]. */
	s = mk(1.0f, 0, 1.0f, 0.0f, 2.0f, 1, 4);
	size_t n = gs_sampler_distribution(s, l, 4, hist, 6, 4, ids, pr);
	const double want[4] = { 1.0, -4.0, 0.5, 1.5 };
	double z = 0;
	for (int i = 0; i < 4; i++)
		z += exp(want[i]);
	CHECK(n == 4);
	for (size_t i = 0; i < n; i++)
		CHECK_NEAR(pr[i], exp(want[ids[i]]) / z, 1e-6);
	gs_sampler_free(s);

	/* r < 1 encourages repeats: [4, -1, 0.5, 1.5]. */
	s = mk(1.0f, 0, 1.0f, 0.0f, 0.5f, 1, 4);
	n = gs_sampler_distribution(s, l, 4, hist, 6, 4, ids, pr);
	const double want2[4] = { 4.0, -1.0, 0.5, 1.5 };
	z = 0;
	for (int i = 0; i < 4; i++)
		z += exp(want2[i]);
	for (size_t i = 0; i < n; i++)
		CHECK_NEAR(pr[i], exp(want2[ids[i]]) / z, 1e-6);
	gs_sampler_free(s);
}

static int sample_split(struct gs_sampler *s, const float *x, int v, const int32_t *hist, size_t nh,
			size_t K, int32_t *ids, float *lg, float *lp, bool *exact);

/* OpenAI's stages against a plain float64 loop written here: logit_bias, frequency and
 * presence over the generated tokens only, the min_tokens mask, then temperature. */
static void test_openai_stages(void)
{
	enum { V = 8 };
	const float l[V] = { 1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 0.25f, 4.0f, 2.5f };
	const int32_t hist[8] = { 0, 1, 1, /* prompt */ 1, 2, 2, 2, 5 };
	struct gs_sampling_params sp = gs_sampling_params_default();
	sp.temperature = 0.7f;
	sp.frequency_penalty = 0.5f;
	sp.presence_penalty = 0.3f;
	sp.min_tokens = 6;
	sp.n_logit_bias = 2;
	sp.logit_bias_id[0] = 3, sp.logit_bias[0] = 2.5f;
	sp.logit_bias_id[1] = 6, sp.logit_bias[1] = -100.0f;
	const int32_t eos[2] = { 7, 7 };
	int ids[V];
	float pr[V];

	for (int gen = 5; gen <= 6; gen++) { /* 5 generated: 7 masked; 6: min_tokens reached */
		struct gs_sampler *s;
		GS_ASSERT(gs_sampler_create(&sp, V, &s) == GS_OK);
		CHECK(gs_sampler_set_min_tokens_ids(s, eos, 2) == GS_OK);
		gs_sampler_set_prompt(s, (size_t)(8 - gen));
		double ref[V], z = 0;
		int count[V] = { 0 };
		for (int h = 8 - gen; h < 8; h++)
			count[hist[h]]++;
		for (int i = 0; i < V; i++) {
			ref[i] = l[i] + (i == 3 ? 2.5 : i == 6 ? -100.0 : 0.0);
			if (count[i] > 0)
				ref[i] -= count[i] * 0.5 + 0.3;
			if (i == 7 && gen < 6)
				ref[i] = -INFINITY;
			ref[i] /= 0.7;
			z += exp(ref[i]);
		}
		size_t n = gs_sampler_distribution(s, l, V, hist, 8, V, ids, pr);
		CHECK(n == V);
		for (size_t i = 0; i < n; i++)
			CHECK_NEAR(pr[i], exp(ref[ids[i]]) / z, 1e-6);
		gs_sampler_free(s);
	}

	/* +100 on one token makes greedy pick it every time; -100 on the greedy token moves it. */
	struct gs_sampling_params g = gs_sampling_params_default();
	g.temperature = 0.0f;
	g.n_logit_bias = 1;
	g.logit_bias_id[0] = 2, g.logit_bias[0] = 100.0f;
	struct gs_sampler *s;
	GS_ASSERT(gs_sampler_create(&g, V, &s) == GS_OK);
	CHECK(gs_sampler_sample(s, l, V, NULL, 0, NULL) == 2);
	gs_sampler_free(s);
	g.logit_bias_id[0] = 6, g.logit_bias[0] = -100.0f;
	GS_ASSERT(gs_sampler_create(&g, V, &s) == GS_OK);
	CHECK(gs_sampler_sample(s, l, V, NULL, 0, NULL) == 4);
	gs_sampler_free(s);

	/* validation names the field */
	struct gs_sampling_params b = gs_sampling_params_default();
	char why[256];
	b.presence_penalty = 2.5f;
	CHECK(gs_sampling_params_validate(&b, why, sizeof(why)) == GS_ERR_INVALID_ARG && strstr(why, "presence_penalty"));
	b = gs_sampling_params_default();
	b.frequency_penalty = -2.01f;
	CHECK(gs_sampling_params_validate(&b, why, sizeof(why)) == GS_ERR_INVALID_ARG && strstr(why, "frequency_penalty"));
	b = gs_sampling_params_default();
	b.n_logit_bias = 2, b.logit_bias_id[0] = 5, b.logit_bias_id[1] = 5;
	CHECK(gs_sampling_params_validate(&b, why, sizeof(why)) == GS_ERR_INVALID_ARG && strstr(why, "logit_bias"));
	b.logit_bias_id[1] = 9, b.logit_bias[1] = 100.5f;
	CHECK(gs_sampling_params_validate(&b, why, sizeof(why)) == GS_ERR_INVALID_ARG && strstr(why, "[-100, 100]"));
	b.logit_bias[1] = 1.0f;
	CHECK(gs_sampling_params_validate_vocab(&b, 9, why, sizeof(why)) == GS_ERR_INVALID_ARG && strstr(why, "vocabulary"));
	CHECK(gs_sampling_params_validate_vocab(&b, 10, why, sizeof(why)) == GS_OK);
	gs_clear_error();

	/* Split over 4 ranks (uneven slices, the leader's merge) = the full vocabulary, draw for
	 * draw, with every stage on: greedy and top_k <= K are exact (gs_sampler.h). */
	enum { VV = 5000, STEPS = 200, K = 64 };
	static float x[VV];
	static int32_t hh[STEPS + 32], cid[4 * K];
	static float clg[4 * K];
	for (int mode = 0; mode < 2; mode++) {
		struct gs_sampling_params q = gs_sampling_params_default();
		q.temperature = mode ? 0.9f : 0.0f;
		q.top_k = mode ? 40 : 0;
		q.frequency_penalty = 0.8f, q.presence_penalty = -0.5f, q.repetition_penalty = 1.1f;
		q.min_tokens = 50;
		q.n_logit_bias = 3;
		q.logit_bias_id[0] = 17, q.logit_bias[0] = 6.0f;
		q.logit_bias_id[1] = VV / 2, q.logit_bias[1] = -3.0f;
		q.logit_bias_id[2] = VV - 1, q.logit_bias[2] = 4.0f;
		q.seed = 99;
		const int32_t m[2] = { 1, VV / 7 };
		struct gs_sampler *full, *dist;
		GS_ASSERT(gs_sampler_create(&q, VV, &full) == GS_OK && gs_sampler_create(&q, VV, &dist) == GS_OK);
		gs_sampler_set_min_tokens_ids(full, m, 2), gs_sampler_set_min_tokens_ids(dist, m, 2);
		size_t nh = 0;
		for (int i = 0; i < 32; i++)
			hh[nh++] = (int32_t)(t_next() % VV);
		gs_sampler_set_prompt(full, nh), gs_sampler_set_prompt(dist, nh);
		int diff = 0, masked = 0;
		for (int step = 0; step < STEPS; step++) {
			fill_peaked(x, VV);
			x[1] += 30.0f, x[VV / 7] += 30.0f; /* the masked ids would win */
			bool exact = false;
			int a = gs_sampler_sample(full, x, VV, hh, nh, NULL);
			int c = sample_split(dist, x, VV, hh, nh, K, cid, clg, NULL, &exact);
			diff += a != c || !exact;
			masked += step < 50 && (a == 1 || a == VV / 7);
			hh[nh++] = a;
		}
		fprintf(stderr, "  openai stages split (%s): %d/%d draws differ\n", mode ? "top_k" : "greedy", diff, STEPS);
		CHECK_MSG(diff == 0, "openai stages, mode %d: %d split draws differ", mode, diff);
		CHECK_MSG(masked == 0, "min_tokens: a masked id came out %d times", masked);
		gs_sampler_free(full), gs_sampler_free(dist);
	}
}

/* Splits logits into 4 uneven slices, runs the rank side on each, merges, draws. */
static int sample_split(struct gs_sampler *s, const float *x, int v, const int32_t *hist, size_t nh,
			size_t K, int32_t *ids, float *lg, float *lp, bool *exact)
{
	const int cut[5] = { 0, v / 7, v / 2, v / 2 + v / 5, v };
	struct gs_candidate_tail tail = GS_CANDIDATE_TAIL_NONE;
	size_t n = 0;
	for (int r = 0; r < 4; r++) {
		int ns = cut[r + 1] - cut[r];
		size_t got = gs_sampler_local_candidates(s, x + cut[r], cut[r], ns, hist, nh, K, ids + n, lg + n);
		gs_candidate_tail_add(&tail, lg + n, got, ns);
		n += got;
	}
	/* The leader sees the ranks' lists in rank order; shuffle so order cannot matter. */
	for (size_t i = n; i > 1; i--) {
		size_t j = t_next() % i;
		int32_t ti = ids[i - 1];
		float tl = lg[i - 1];
		ids[i - 1] = ids[j];
		lg[i - 1] = lg[j];
		ids[j] = ti;
		lg[j] = tl;
	}
	return gs_sampler_sample_candidates_ex(s, ids, lg, n, &tail, lp, exact);
}

static void candidate_case(const char *name, float t, int k, float p, float m, float r, int peaked,
			   int expect_exact)
{
	enum { V = 10000, STEPS = 300, K = 64 };
	static float x[V];
	static int32_t hist[STEPS + 64], ids[4 * K];
	static float lg[4 * K];
	struct gs_sampler *full = mk(t, k, p, m, r, 777, V);
	struct gs_sampler *dist = mk(t, k, p, m, r, 777, V);
	size_t nh = 0;
	int diff = 0, lpdiff = 0, n_exact = 0, exact_but_diff = 0;

	for (int i = 0; i < 64; i++)
		hist[nh++] = (int32_t)(t_next() % V);
	for (int step = 0; step < STEPS; step++) {
		if (peaked)
			fill_peaked(x, V);
		else
			fill_normal(x, V, 2.0);
		/* make penalised tokens matter: boost a few history ids */
		for (int i = 0; i < 5; i++)
			x[hist[t_next() % nh]] += 8.0f;
		float lp1 = 0, lp2 = 0;
		bool exact = false;
		int a = gs_sampler_sample(full, x, V, hist, nh, &lp1);
		int b = sample_split(dist, x, V, hist, nh, K, ids, lg, &lp2, &exact);
		diff += a != b;
		n_exact += exact;
		exact_but_diff += exact && a != b;
		if (t >= 1e-5f && a == b && lp1 != lp2)
			lpdiff++;
		hist[nh++] = a;
		if (nh == STEPS + 64)
			nh = 64;
	}
	fprintf(stderr, "  candidates %-26s: %d/%d draws differ, %d/%d reported exact\n", name, diff, STEPS,
		n_exact, STEPS);
	if (expect_exact) {
		CHECK_MSG(diff == 0, "%s: %d draws differ", name, diff);
		CHECK_MSG(lpdiff == 0, "%s: %d logprobs differ", name, lpdiff);
		CHECK_MSG(n_exact == STEPS, "%s: only %d exact", name, n_exact);
	}
	/* Whatever the parameters, a draw reported exact must be the full path's draw. */
	CHECK_MSG(exact_but_diff == 0, "%s: %d exact draws differ", name, exact_but_diff);
	gs_sampler_free(full);
	gs_sampler_free(dist);
}

static void test_candidates(void)
{
	candidate_case("greedy + penalty", 0.0f, 0, 1.0f, 0.0f, 1.3f, 0, 1);
	candidate_case("top_k=40 t=0.8 p=0.9 m=0.02", 0.8f, 40, 0.9f, 0.02f, 1.3f, 0, 1);
	candidate_case("top_k=64=K t=1.2", 1.2f, 64, 1.0f, 0.0f, 1.0f, 0, 1);
	candidate_case("top_p=0.9 peaked (approx)", 1.0f, 0, 0.9f, 0.0f, 1.1f, 1, 0);
	candidate_case("min_p=0.05 peaked (approx)", 1.0f, 0, 1.0f, 0.05f, 1.0f, 1, 0);

	/* Temperature alone over a truncated set is never exact; a complete set always is. */
	enum { V = 1000 };
	static float x[V];
	static int32_t ids[V];
	static float lg[V];
	fill_normal(x, V, 1.0);
	struct gs_sampler *s = mk(1.0f, 0, 1.0f, 0.0f, 1.0f, 3, V);
	bool exact = true;
	sample_split(s, x, V, NULL, 0, 16, ids, lg, NULL, &exact);
	CHECK(!exact);
	sample_split(s, x, V, NULL, 0, V, ids, lg, NULL, &exact);
	CHECK(exact);
	CHECK(gs_sampler_sample_candidates(s, ids, lg, 0, NULL) == -1);
	gs_sampler_free(s);

	/* local candidates: exactly max_out, sorted, ties cut by lowest id. */
	float tie[6] = { 1.0f, 3.0f, 3.0f, 2.0f, 3.0f, 0.0f };
	int32_t oi[6];
	float ol[6];
	s = mk(1.0f, 0, 1.0f, 0.0f, 1.0f, 3, 6);
	size_t n = gs_sampler_local_candidates(s, tie, 100, 6, NULL, 0, 2, oi, ol);
	CHECK(n == 2 && oi[0] == 101 && oi[1] == 102 && ol[1] == 3.0f);
	gs_sampler_free(s);
}


/* Row r's parameters for the candidates-op test: every rank-side stage in some rows. */
static struct gs_sampling_params op_params(int r, int32_t vocab0)
{
	struct gs_sampling_params sp = gs_sampling_params_default();
	sp.temperature = r == 0 ? 0.0f : 0.5f + 0.25f * (float)r;
	sp.repetition_penalty = r % 3 == 0 ? 1.0f : r % 3 == 1 ? 1.4f : 0.7f;
	sp.frequency_penalty = r % 2 ? 0.6f : r == 4 ? -1.5f : 0.0f;
	sp.presence_penalty = r % 3 == 2 ? -0.4f : r % 4 == 1 ? 1.25f : 0.0f;
	sp.min_tokens = r >= 4 ? 1000 : 0;
	if (r % 2 == 0) { /* biases inside and outside the slice, both signs */
		sp.n_logit_bias = 4;
		sp.logit_bias_id[0] = vocab0 + 20, sp.logit_bias[0] = 100.0f;
		sp.logit_bias_id[1] = vocab0 + 21, sp.logit_bias[1] = -37.5f;
		sp.logit_bias_id[2] = vocab0 - 3, sp.logit_bias[2] = 5.0f;
		sp.logit_bias_id[3] = vocab0 + 10, sp.logit_bias[3] = 2.0f; /* on the NaN */
	}
	return sp;
}

/* The backend candidates op (gs_kernels.h; the CPU backend's, which the CUDA one is tested
 * against) against gs_sampler_local_candidates + gs_logsumexp, row by row, bit for bit: rows
 * with ties across the cut, NaN, +-inf, -0.0 next to +0.0, a vocabulary offset, histories with
 * repeats and ids outside the slice, penalties above and below 1, frequency and presence
 * penalties, logit biases, min_tokens masks, and a slice shorter than k. The op gets the edits
 * the sampler lists (gs_sampler_rank_edits), as the engine passes them. */
static void test_candidates_op(void)
{
	enum { ROWS = 7, COLS = 3000, K = 64, HMAX = 400 };
	static float lg[ROWS * COLS];
	static int32_t hist[ROWS * HMAX];
	static struct gs_logit_edit edits[ROWS * (HMAX + 64)];
	static struct gs_cand out[ROWS * (K + 1)];
	struct gs_cand_row rows[ROWS];
	struct gs_sampler *smp[ROWS];
	int32_t h0[ROWS], nhist[ROWS];
	const int32_t vocab0 = 5000, mask[3] = { vocab0 + 30, vocab0 + 31, vocab0 + 99999 };
	struct gs_backend be;
	GS_ASSERT(gs_backend_cpu_create(1, &be) == GS_OK);
	CHECK(be.iface->candidates != NULL);

	int32_t nh = 0, ne = 0;
	for (int r = 0; r < ROWS; r++) {
		float *x = lg + (size_t)r * COLS;
		fill_normal(x, COLS, 2.0);
		for (int i = 0; i < COLS; i++)   /* coarse values: many exact ties */
			x[i] = roundf(x[i] * 4.0f) / 4.0f;
		x[10] = NAN, x[11] = INFINITY, x[12] = -INFINITY, x[13] = -0.0f, x[14] = 0.0f, x[15] = -0.0f;
		x[30] = 50.0f; /* masked by min_tokens in rows 4.. */
		struct gs_sampling_params sp = op_params(r, vocab0);
		GS_ASSERT(gs_sampler_create(&sp, 262144, &smp[r]) == GS_OK);
		GS_ASSERT(gs_sampler_set_min_tokens_ids(smp[r], mask, 3) == GS_OK);
		h0[r] = nh, nhist[r] = r * 60;
		for (int h = 0; h < nhist[r]; h++) /* repeats, ids below and above the slice */
			hist[nh + h] = vocab0 - 50 + (int32_t)(t_next() % (COLS + 100));
		if (nhist[r] > 40) /* -0.0 and NaN penalised, in the prompt and generated */
			hist[nh] = vocab0 + 13, hist[nh + 1] = vocab0 + 10, hist[nh + 35] = vocab0 + 13;
		gs_sampler_set_prompt(smp[r], (size_t)nhist[r] / 2);
		const struct gs_logit_edit *ed;
		size_t n = gs_sampler_rank_edits(smp[r], vocab0, COLS, hist + nh, (size_t)nhist[r], &ed);
		if (n)
			memcpy(edits + ne, ed, sizeof(*ed) * n);
		rows[r] = (struct gs_cand_row){ .edit0 = ne, .n_edit = (int32_t)n, .want_lse = r != 2 };
		gs_sampler_rank_params(smp[r], &rows[r].penalty, &rows[r].frequency, &rows[r].presence,
				       &rows[r].temperature);
		nh += nhist[r];
		ne += (int32_t)n;
	}
	CHECK(rows[0].n_edit == 3); /* greedy, bias only: 3 of its 4 ids in the slice */
	CHECK(rows[5].n_edit > 2);  /* history, and the 2 masked ids in the slice */
	for (int pass = 0; pass < 2; pass++) {
		/* pass 1: the last rows' slice is shorter than k (the last rank of a vocabulary split) */
		int32_t cols = pass == 0 ? COLS : 40;
		for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++)
			out[i] = (struct gs_cand){ 12345, NAN, NAN }; /* poison */
		struct gs_cand_args a = { .out = out, .logits = lg, .row = rows, .edit = edits, .rows = ROWS,
					  .cols = cols, .k = K, .vocab0 = vocab0 };
		if (pass == 1) /* rows are COLS apart in lg: copy each row's first 40 together */
			for (int r = 1; r < ROWS; r++)
				memmove(lg + (size_t)r * cols, lg + (size_t)r * COLS, sizeof(float) * (size_t)cols);
		be.iface->candidates(be.ctx, &a);
		for (int r = 0; r < ROWS; r++) {
			const float *x = lg + (size_t)r * cols;
			const struct gs_cand *o = out + (size_t)r * (K + 1);
			int32_t ids[K];
			float pl[K];
			size_t n = gs_sampler_local_candidates(smp[r], x, vocab0, cols, hist + h0[r], (size_t)nhist[r], K,
							       ids, pl);
			int bad = 0;
			for (size_t i = 0; i < n; i++)
				bad += o[i].id != ids[i] || memcmp(&o[i].proc, &pl[i], sizeof(float)) != 0 ||
				       memcmp(&o[i].raw, &x[ids[i] - vocab0], sizeof(float)) != 0;
			for (size_t i = n; i < K; i++)
				bad += o[i].id != -1 || o[i].proc != -INFINITY || o[i].raw != -INFINITY;
			float lse = rows[r].want_lse ? gs_logsumexp(x, (size_t)cols) : -INFINITY;
			bad += o[K].id != -2 || o[K].proc != 0.0f || memcmp(&o[K].raw, &lse, sizeof(float)) != 0;
			CHECK_MSG(bad == 0 && n == (size_t)(cols < K ? cols : K),
				  "candidates op, %d columns, row %d: %d entries differ from the sampler's (%zu)", cols, r,
				  bad, n);
		}
	}
	for (int r = 0; r < ROWS; r++)
		gs_sampler_free(smp[r]);
	gs_backend_cpu_free(&be);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Min and median of single calls: the CI box is shared, so the mean mostly measures
 * the neighbours. */
static void time_case(const char *name, const float *x, int v, const int32_t *hist, size_t nh, float t,
		      int k, float p, float m, float r)
{
	enum { ITERS = 41 };
	double dt[ITERS];
	struct gs_sampler *s = mk(t, k, p, m, r, 9, v);
	gs_sampler_sample(s, x, v, hist, nh, NULL); /* warm */
	for (int i = 0; i < ITERS; i++) {
		double t0 = now_s();
		gs_sampler_sample(s, x, v, hist, nh, NULL);
		dt[i] = now_s() - t0;
	}
	qsort(dt, ITERS, sizeof(double), cmp_dbl);
	fprintf(stderr, "  timing V=%d %-38s min %7.3f  median %7.3f ms/call\n", v, name, dt[0] * 1e3,
		dt[ITERS / 2] * 1e3);
	CHECK(dt[0] > 0);
	gs_sampler_free(s);
}

static void test_timing(void)
{
	enum { V = 262144, NH = 1000, K = 256 };
	float *x = malloc(sizeof(float) * V), *y = malloc(sizeof(float) * V);
	static int32_t hist[NH], ids[4 * K];
	static float lg[4 * K];
	for (int i = 0; i < NH; i++)
		hist[i] = (int32_t)(t_next() % V);
	fill_peaked(x, V);
	fill_normal(y, V, 2.0);

	struct gs_sampler *np = mk(1.0f, 0, 0.9f, 0.0f, 1.0f, 9, V);
	size_t nuc_peaked = gs_sampler_distribution(np, x, V, NULL, 0, 0, NULL, NULL);
	size_t nuc_broad = gs_sampler_distribution(np, y, V, NULL, 0, 0, NULL, NULL);
	gs_sampler_free(np);
	fprintf(stderr, "  -- peaked (LLM-like) logits, history %d; p=0.9 nucleus %zu tokens --\n", NH,
		nuc_peaked);
	time_case("greedy", x, V, hist, NH, 0.0f, 0, 1.0f, 0.0f, 1.0f);
	time_case("greedy + repetition_penalty 1.1", x, V, hist, NH, 0.0f, 0, 1.0f, 0.0f, 1.1f);
	time_case("temperature 0.8 only", x, V, hist, NH, 0.8f, 0, 1.0f, 0.0f, 1.0f);
	time_case("top_k=40", x, V, hist, NH, 1.0f, 40, 1.0f, 0.0f, 1.0f);
	time_case("top_p=0.9", x, V, hist, NH, 1.0f, 0, 0.9f, 0.0f, 1.0f);
	time_case("min_p=0.05", x, V, hist, NH, 1.0f, 0, 1.0f, 0.05f, 1.0f);
	time_case("all: r=1.1 t=0.8 k=40 p=0.9 m=0.05", x, V, hist, NH, 0.8f, 40, 0.9f, 0.05f, 1.1f);
	{ /* the OpenAI stages: penalties over a 1000-token history (500 generated) and 300 biases */
		struct gs_sampling_params sp = gs_sampling_params_default();
		sp.temperature = 0.0f;
		sp.frequency_penalty = 0.5f, sp.presence_penalty = 0.5f, sp.repetition_penalty = 1.1f;
		sp.n_logit_bias = GS_MAX_LOGIT_BIAS;
		for (int i = 0; i < GS_MAX_LOGIT_BIAS; i++)
			sp.logit_bias_id[i] = i * 800, sp.logit_bias[i] = 1.0f;
		struct gs_sampler *o;
		GS_ASSERT(gs_sampler_create(&sp, V, &o) == GS_OK);
		gs_sampler_set_prompt(o, NH / 2);
		gs_sampler_sample(o, x, V, hist, NH, NULL);
		double best = 1e9;
		for (int i = 0; i < 21; i++) {
			double t0 = now_s();
			gs_sampler_sample(o, x, V, hist, NH, NULL);
			best = now_s() - t0 < best ? now_s() - t0 : best;
		}
		fprintf(stderr, "  timing V=%d %-38s min %7.3f ms/call\n", V, "greedy + freq/pres/rep + 300 biases", best * 1e3);
		gs_sampler_free(o);
	}
	fprintf(stderr, "  -- broad N(0, 2) logits; p=0.9 nucleus %zu tokens (worst-case-ish) --\n", nuc_broad);
	time_case("top_p=0.9", y, V, hist, NH, 1.0f, 0, 0.9f, 0.0f, 1.0f);
	time_case("top_k=40", y, V, hist, NH, 1.0f, 40, 1.0f, 0.0f, 1.0f);

	struct gs_sampler *s = mk(0.8f, 40, 0.9f, 0.05f, 1.1f, 9, V);
	const int iters = 40;
	double t0 = now_s();
	size_t n = 0;
	for (int i = 0; i < iters; i++)
		n = gs_sampler_local_candidates(s, x + V / 4, V / 4, V / 4, hist, NH, K, ids, lg);
	double dl = (now_s() - t0) / iters;
	for (int r = 0; r < 4; r++)
		n = gs_sampler_local_candidates(s, x + r * (V / 4), r * (V / 4), V / 4, hist, NH, K,
						ids + r * K, lg + r * K);
	t0 = now_s();
	for (int i = 0; i < iters; i++)
		gs_sampler_sample_candidates(s, ids, lg, 4 * K, NULL);
	double dm = (now_s() - t0) / iters;
	fprintf(stderr, "  timing local_candidates (slice %d, K=%d): %.3f ms; merge+draw (%d cands): %.3f ms\n",
		V / 4, K, dl * 1e3, 4 * K, dm * 1e3);
	CHECK(n == K);
	gs_sampler_free(s);
	free(x);
	free(y);
}

/* gs_logsumexp against a float64 two-pass reference (libm exp), on ragged lengths, wide and
 * narrow ranges, NaN and -inf entries. */
static void test_logsumexp(void)
{
	static float x[262144 + 13];
	uint64_t st = 12345;
	const size_t lens[] = { 1, 7, 8, 255, 256, 257, 1000, 131072, 262144 + 13 };

	for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
		for (int scale = 1; scale <= 30; scale *= 30) {
			size_t n = lens[li];
			double mx = -INFINITY, sum = 0;
			for (size_t i = 0; i < n; i++) {
				st = st * 6364136223846793005ull + 1442695040888963407ull;
				x[i] = (float)((double)(st >> 11) / 9007199254740992.0 - 0.5) * (float)scale;
				mx = x[i] > mx ? x[i] : mx;
			}
			for (size_t i = 0; i < n; i++)
				sum += exp((double)x[i] - mx);
			double ref = mx + log(sum);
			float got = gs_logsumexp(x, n);
			CHECK_MSG(fabs(got - ref) <= 1e-5 * fmax(1.0, fabs(ref)), "n %zu scale %d: %.9g vs %.9g", n, scale,
				  (double)got, ref);
		}
	}
	x[0] = NAN, x[1] = -INFINITY, x[2] = 0.0f;
	CHECK_NEAR(gs_logsumexp(x, 3), 0.0, 1e-6);
	x[0] = x[1] = -INFINITY;
	CHECK(gs_logsumexp(x, 2) == -INFINITY && gs_logsumexp(x, 0) == -INFINITY);
}

int main(int argc, char **argv)
{
	test_validate();
	test_logsumexp();
	test_chain_order();
	test_openai_stages();
	test_greedy();
	test_seed();
	test_distribution();
	test_top_k();
	test_top_p();
	test_min_p_and_combined();
	test_repetition_penalty();
	test_candidates();
	test_candidates_op();
	if (!getenv("GS_TEST_NO_TIMING"))
		test_timing();
	TEST_DONE();
}
