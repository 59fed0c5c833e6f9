/* The context-parallel merge (attn_merge op, kernels/cpu/attn_merge.c) against a float64
 * softmax over all keys: random scores and values, the keys dealt to k in 1..8 parts (some
 * parts empty, their outputs NaN so that reading one shows), each part's (o, lse) computed in
 * float64 and stored as fp32 like a rank's partial; the merge must give the whole softmax.
 * Also: every part empty (0 and -inf, no NaN), a NaN lse (NaN out), logits near ±1e4, part
 * order (within 1e-6, not bitwise), and the backend op on 2 threads = one record at a time,
 * bit for bit. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gs_cpu.h"
#include "gs_kernels.h"
#include "gs_test.h"

static uint64_t rng = 0x5eed0fa77e11ull;

static double unif(void)
{
	return (double)(gs_test_splitmix(&rng) >> 11) * 0x1.0p-53;
}

/* One record: L keys with scores s and values v[L][D]; owner[j] in [0, k). Fills parts
 * (stride n records of D + 1, record index r) and the float64 reference ref[D], ref_lse. */
static void make_record(int L, int D, int k, double scale, float *parts, int n, int r, double *ref, double *ref_lse)
{
	double *s = malloc(sizeof(double) * (size_t)(L ? L : 1));
	double *v = malloc(sizeof(double) * (size_t)(L ? L : 1) * (size_t)D);
	int *owner = malloc(sizeof(int) * (size_t)(L ? L : 1));
	const size_t rec = (size_t)D + 1, part = (size_t)n * rec;
	double mx = -INFINITY, sum = 0;

	for (int j = 0; j < L; j++) {
		s[j] = (unif() * 2 - 1) * scale;
		owner[j] = (int)(unif() * k) % k;
		if (k > 2 && owner[j] == 1) /* part 1 stays empty when k > 2 */
			owner[j] = 0;
		for (int d = 0; d < D; d++)
			v[(size_t)j * D + d] = unif() * 2 - 1;
		if (s[j] > mx)
			mx = s[j];
	}
	for (int d = 0; d < D; d++)
		ref[d] = 0;
	for (int j = 0; j < L; j++) {
		double e = exp(s[j] - mx);
		sum += e;
		for (int d = 0; d < D; d++)
			ref[d] += e * v[(size_t)j * D + d];
	}
	for (int d = 0; d < D; d++)
		ref[d] = L ? ref[d] / sum : 0;
	*ref_lse = L ? mx + log(sum) : -INFINITY;
	for (int i = 0; i < k; i++) {
		float *p = parts + (size_t)i * part + (size_t)r * rec;
		double pm = -INFINITY, ps = 0;
		for (int j = 0; j < L; j++)
			if (owner[j] == i && s[j] > pm)
				pm = s[j];
		if (pm == -INFINITY) {
			for (int d = 0; d < D; d++)
				p[d] = NAN; /* never read */
			p[D] = -INFINITY;
			continue;
		}
		double *o = calloc((size_t)D, sizeof(double));
		for (int j = 0; j < L; j++) {
			if (owner[j] != i)
				continue;
			double e = exp(s[j] - pm);
			ps += e;
			for (int d = 0; d < D; d++)
				o[d] += e * v[(size_t)j * D + d];
		}
		for (int d = 0; d < D; d++)
			p[d] = (float)(o[d] / ps);
		p[D] = (float)(pm + log(ps));
		free(o);
	}
	free(s);
	free(v);
	free(owner);
}

/* max |out - ref| over the record, and the lse's error relative to max(1, |lse|) */
static void errors(const float *out, float lse, const double *ref, double ref_lse, int D, double *e_out, double *e_lse)
{
	double e = 0;
	for (int d = 0; d < D; d++)
		e = fmax(e, fabs((double)out[d] - ref[d]));
	*e_out = e;
	*e_lse = ref_lse == -INFINITY ? (lse == -INFINITY ? 0 : INFINITY)
				      : fabs((double)lse - ref_lse) / fmax(1.0, fabs(ref_lse));
}

int main(void)
{
	static const int Ds[] = { 1, 16, 128 };
	double worst = 0, worst_lse = 0, worst_big = 0, worst_perm = 0;
	struct gs_backend be;

	CHECK(gs_backend_cpu_create(2, &be) == GS_OK);
	CHECK(be.iface->attn_merge != NULL);
	for (int di = 0; di < 3; di++) {
		const int D = Ds[di];
		for (int k = 1; k <= 8; k++) {
			for (int big = 0; big < 2; big++) {
				const int n = 37;
				float *parts = malloc(sizeof(float) * (size_t)k * n * (D + 1));
				float *perm = malloc(sizeof(float) * (size_t)k * n * (D + 1));
				float *out = malloc(sizeof(float) * (size_t)n * D), *one = malloc(sizeof(float) * (size_t)D);
				float *lse = malloc(sizeof(float) * (size_t)n);
				double *ref = malloc(sizeof(double) * (size_t)n * D), *ref_lse = malloc(sizeof(double) * n);
				for (int r = 0; r < n; r++)
					make_record(r == 0 ? 0 : (int)(unif() * 80), D, k, big ? 1e4 : 12.0, parts, n, r,
						    ref + (size_t)r * D, ref_lse + r);
				be.iface->attn_merge(be.ctx, out, lse, parts, k, n, D);
				for (int r = 0; r < n; r++) {
					double eo, el;
					bool finite = true;
					errors(out + (size_t)r * D, lse[r], ref + (size_t)r * D, ref_lse[r], D, &eo, &el);
					for (int d = 0; d < D; d++)
						finite &= isfinite(out[(size_t)r * D + d]);
					CHECK_MSG(finite, "D %d k %d record %d: a non-finite output", D, k, r);
					if (big)
						worst_big = fmax(worst_big, eo);
					else
						worst = fmax(worst, eo);
					worst_lse = fmax(worst_lse, el);
					/* the op on 2 threads = one record at a time, bit for bit */
					float l1;
					gs_attn_merge_one(one, &l1, parts + (size_t)r * (D + 1), k, (size_t)n, D);
					CHECK_MSG(!memcmp(one, out + (size_t)r * D, sizeof(float) * (size_t)D) &&
							  !memcmp(&l1, &lse[r], sizeof(float)),
						  "D %d k %d record %d: threaded op differs from one record", D, k, r);
				}
				/* the parts reversed: the same result within 1e-6 */
				for (int i = 0; i < k; i++)
					memcpy(perm + (size_t)i * n * (D + 1), parts + (size_t)(k - 1 - i) * n * (D + 1),
					       sizeof(float) * (size_t)n * (D + 1));
				float *out2 = malloc(sizeof(float) * (size_t)n * D);
				be.iface->attn_merge(be.ctx, out2, NULL, perm, k, n, D);
				for (size_t i = 0; i < (size_t)n * D; i++)
					worst_perm = fmax(worst_perm, fabs((double)out2[i] - out[i]));
				/* record 0 had no key at all: zeros and -inf */
				bool zero = lse[0] == -INFINITY;
				for (int d = 0; d < D; d++)
					zero &= out[d] == 0.0f;
				CHECK_MSG(zero, "D %d k %d: a record with no key gives 0 and -inf", D, k);
				free(out2);
				free(parts);
				free(perm);
				free(out);
				free(one);
				free(lse);
				free(ref);
				free(ref_lse);
			}
		}
	}
	fprintf(stderr, "max |merged - float64|: %.3g (|s| <= 12), %.3g (|s| <= 1e4); lse rel %.3g; reversed parts %.3g\n",
		worst, worst_big, worst_lse, worst_perm);
	CHECK_MSG(worst <= 2e-6, "merged output vs float64: %g", worst);
	/* near ±1e4 the fp32 lse itself carries ~5e-4 of absolute rounding, which becomes a
	 * relative error of the weights: the payload's own limit, not the merge's */
	CHECK_MSG(worst_big <= 2e-3, "merged output vs float64 at |s| ~ 1e4: %g", worst_big);
	CHECK_MSG(worst_lse <= 1e-6, "lse vs float64 (relative): %g", worst_lse);
	CHECK_MSG(worst_perm <= 1e-6, "parts in reverse order: %g", worst_perm);

	/* a NaN lse: NaN out, never a silent number */
	{
		float parts[2 * 3] = { 0.5f, 0.25f, 0.0f, 1.0f, 2.0f, NAN }, out[2], l;
		be.iface->attn_merge(be.ctx, out, &l, parts, 2, 1, 2);
		CHECK(isnan(out[0]) && isnan(out[1]) && isnan(l));
	}
	/* one part: its own output and lse, exactly */
	{
		float parts[3] = { 0.125f, -3.5f, 7.25f }, out[2], l;
		be.iface->attn_merge(be.ctx, out, &l, parts, 1, 1, 2);
		CHECK(out[0] == 0.125f && out[1] == -3.5f && l == 7.25f);
	}
	gs_backend_cpu_free(&be);
	TEST_DONE();
}
