/* gs_cpu_attention (kernels/cpu/attention.c) against a naive float64 attention written from the
 * rule in gs_kernels.h, on ragged batches: head_dim 16..512, GQA/MQA, sliding windows with a
 * ring of blocks, softcap, image spans, fp32 and bf16 caches, prompts that are no multiple of
 * the tile, decode rows; partial key ranges with (max, sum), merged by attn_merge; and
 * bit-identity of a row computed alone, in a big batch, with another fresh/cached split, with 1,
 * 2 or 3 threads. */
#include "gs_cpu.h"
#include "gs_dtype.h"
#include "gs_kernels.h"
#include "gs_test.h"

#include <stdint.h>
#include <stdlib.h>

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static float rnd(void) /* uniform in [-1, 1) */
{
	return (float)((double)(gs_test_splitmix(&rng_state) >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

/* One layer's shape. */
struct shape {
	int D, n_kv, rep, block, ring; /* ring: 0, or 1 to keep a ring of blocks sized to the window */
	int32_t window;
	float scale, softcap, qamp;
	int bf16, spans;
};

/* One sequence's full history: its positions [0, L), all keys, values, queries; an image at
 * [img0, img1) when img0 < img1. */
struct seqdata {
	int L, img0, img1;
	float *k, *v, *q; /* [L][n_kv * D], [L][n_kv * D], [L][n_heads * D] */
};

static void seq_make(const struct shape *sh, struct seqdata *s, int L, int img0, int img1)
{
	size_t kw = (size_t)sh->n_kv * sh->D, qw = kw * sh->rep;

	s->L = L;
	s->img0 = sh->spans ? img0 : 0;
	s->img1 = sh->spans ? img1 : 0;
	s->k = malloc((size_t)L * kw * sizeof(float));
	s->v = malloc((size_t)L * kw * sizeof(float));
	s->q = malloc((size_t)L * qw * sizeof(float));
	for (size_t i = 0; i < (size_t)L * kw; i++) {
		s->k[i] = rnd();
		s->v[i] = rnd();
	}
	for (size_t i = 0; i < (size_t)L * qw; i++)
		s->q[i] = rnd() * sh->qamp;
}

static void seq_free(struct seqdata *s)
{
	free(s->k);
	free(s->v);
	free(s->q);
}

/* The key as the kernel must see it: bf16 caches hold rounded values, fresh rows too. */
static double key_val(const struct shape *sh, float x)
{
	return sh->bf16 ? (double)gs_round_bf16(x) : (double)x;
}

/* Does the query at position pos of s see key j? (gs_kernels.h's rule, restated.) */
static int sees(const struct shape *sh, const struct seqdata *s, int pos, int j)
{
	int in_img = s->img0 < s->img1 && pos >= s->img0 && pos < s->img1;
	if (in_img && j >= s->img0 && j < s->img1)
		return 1;
	return j <= pos && (int64_t)pos - j < sh->window;
}

/* Naive float64 attention of (pos, head h) over keys [klo, khi): out[D], max, sum. */
static void ref_attn(const struct shape *sh, const struct seqdata *s, int pos, int h, int klo, int khi, double *out,
		     double *mx, double *sum)
{
	int D = sh->D, g = h / sh->rep;
	size_t kw = (size_t)sh->n_kv * D, qw = kw * sh->rep;
	double *sc = malloc((size_t)s->L * sizeof(double));
	double m = -INFINITY, l = 0;

	for (int d = 0; d < D; d++)
		out[d] = 0;
	for (int j = klo; j < khi && j < s->L; j++) {
		sc[j] = -INFINITY;
		if (!sees(sh, s, pos, j))
			continue;
		double dot = 0;
		for (int d = 0; d < D; d++)
			dot += (double)s->q[(size_t)pos * qw + (size_t)h * D + d] *
			       key_val(sh, s->k[(size_t)j * kw + (size_t)g * D + d]);
		dot *= sh->scale;
		if (sh->softcap > 0)
			dot = sh->softcap * tanh(dot / sh->softcap);
		sc[j] = dot;
		if (dot > m)
			m = dot;
	}
	for (int j = klo; j < khi && j < s->L; j++) {
		if (sc[j] == -INFINITY)
			continue;
		double p = exp(sc[j] - m);
		l += p;
		for (int d = 0; d < D; d++)
			out[d] += p * key_val(sh, s->v[(size_t)j * kw + (size_t)g * D + d]);
	}
	for (int d = 0; d < D && l > 0; d++)
		out[d] /= l;
	*mx = m;
	*sum = l;
	free(sc);
}

/* One step: sequence i contributes its positions [p0[i], L) as fresh rows. */
struct step {
	struct gs_attn_args a;
	struct gs_attn_seq seqs[8];
	float *q, *kn, *vn, *out, *ml;
	void *kc, *vc;
	int32_t *tok_seq, *span, *tables;
	int row0[8];
};

static void step_free(struct step *st)
{
	free(st->q);
	free(st->kn);
	free(st->vn);
	free(st->out);
	free(st->ml);
	free(st->kc);
	free(st->vc);
	free(st->tok_seq);
	free(st->span);
	free(st->tables);
}

/* Blocks of one sequence: its whole history, or the ring. */
static int seq_blocks(const struct shape *sh, const struct seqdata *s)
{
	int full = (s->L + sh->block - 1) / sh->block;
	if (!sh->ring) /* (ring layers have a finite window) */
		return full;
	int ring = (sh->window + sh->block - 1) / sh->block + 1;
	return ring < full ? ring : full;
}

static void step_build(const struct shape *sh, struct seqdata *const *sd, const int *p0, int n, struct step *st)
{
	int D = sh->D, n_heads = sh->n_kv * sh->rep, rows = 0, blocks = 0;
	size_t kw = (size_t)sh->n_kv * D, qw = kw * sh->rep, esz = sh->bf16 ? 2 : 4;

	memset(st, 0, sizeof(*st));
	for (int i = 0; i < n; i++) {
		rows += sd[i]->L - p0[i];
		blocks += seq_blocks(sh, sd[i]);
	}
	st->q = malloc((size_t)rows * qw * sizeof(float));
	st->kn = malloc((size_t)rows * kw * sizeof(float));
	st->vn = malloc((size_t)rows * kw * sizeof(float));
	st->out = malloc((size_t)rows * qw * sizeof(float));
	st->ml = malloc((size_t)rows * n_heads * 2 * sizeof(float));
	st->kc = calloc((size_t)blocks * sh->block * kw, esz);
	st->vc = calloc((size_t)blocks * sh->block * kw, esz);
	st->tok_seq = malloc((size_t)rows * sizeof(int32_t));
	st->span = malloc((size_t)rows * 2 * sizeof(int32_t));
	st->tables = malloc((size_t)blocks * sizeof(int32_t));
	for (int b = 0; b < blocks; b++) /* block ids in reverse: the table matters */
		st->tables[b] = blocks - 1 - b;
	int row = 0, tb = 0;
	for (int i = 0; i < n; i++) {
		const struct seqdata *s = sd[i];
		int nb = seq_blocks(sh, s), ring = nb < (s->L + sh->block - 1) / sh->block ? nb : 0;
		st->seqs[i] = (struct gs_attn_seq){ .tok0 = row, .n_tokens = s->L - p0[i], .pos0 = p0[i],
						    .table = st->tables + tb, .ring = ring };
		st->row0[i] = row;
		for (int j = 0; j < p0[i]; j++) { /* cache rows, ascending: a ring keeps the newest */
			int b = j / sh->block;
			size_t r = (size_t)st->tables[tb + (ring ? b % ring : b)] * sh->block + (size_t)(j % sh->block);
			for (size_t e = 0; e < kw; e++) {
				float kx = s->k[(size_t)j * kw + e], vx = s->v[(size_t)j * kw + e];
				if (sh->bf16) {
					((uint16_t *)st->kc)[r * kw + e] = gs_f32_to_bf16(kx);
					((uint16_t *)st->vc)[r * kw + e] = gs_f32_to_bf16(vx);
				} else {
					((float *)st->kc)[r * kw + e] = kx;
					((float *)st->vc)[r * kw + e] = vx;
				}
			}
		}
		for (int pos = p0[i]; pos < s->L; pos++, row++) {
			memcpy(st->q + (size_t)row * qw, s->q + (size_t)pos * qw, qw * sizeof(float));
			memcpy(st->kn + (size_t)row * kw, s->k + (size_t)pos * kw, kw * sizeof(float));
			memcpy(st->vn + (size_t)row * kw, s->v + (size_t)pos * kw, kw * sizeof(float));
			st->tok_seq[row] = i;
			int in_img = s->img0 < s->img1 && pos >= s->img0 && pos < s->img1;
			st->span[2 * row] = in_img ? s->img0 : 0;
			st->span[2 * row + 1] = in_img ? s->img1 : 0;
		}
		tb += nb;
	}
	for (size_t i = 0; i < (size_t)rows * qw; i++)
		st->out[i] = NAN; /* every output must be written */
	st->a = (struct gs_attn_args){
		.out = st->out, .q = st->q, .k_new = st->kn, .v_new = st->vn, .k_cache = st->kc, .v_cache = st->vc,
		.kv_dtype = sh->bf16 ? GS_DTYPE_BF16 : GS_DTYPE_F32, .block = sh->block, .seqs = st->seqs,
		.n_seqs = n, .tok_seq = st->tok_seq, .n_tokens = rows, .n_heads = n_heads, .n_kv_heads = sh->n_kv,
		.head_dim = D, .window = sh->window, .scale = sh->scale, .softcap = sh->softcap,
		.span = sh->spans ? st->span : NULL,
	};
}

struct runner {
	struct gs_threadpool *tp;
	float *scratch[4];
	size_t cap[4];
};

static void run(struct runner *r, struct step *st, int32_t kv_lo, int32_t kv_hi, int want_ml)
{
	gs_cpu_attention(r->tp, r->scratch, r->cap, &st->a, kv_lo, kv_hi, want_ml ? st->ml : NULL);
}

/* Every row and head of the step against ref_attn over [kv_lo, kv_hi). */
static void check_ref(const struct shape *sh, struct seqdata *const *sd, const int *p0, int n, struct runner *r,
		      int32_t kv_lo, int32_t kv_hi, const char *what)
{
	struct step st;
	int D = sh->D, n_heads = sh->n_kv * sh->rep;
	double *ref = malloc((size_t)D * sizeof(double)), worst = 0, worst_ml = 0;
	int bad_empty = 0;

	step_build(sh, sd, p0, n, &st);
	run(r, &st, kv_lo, kv_hi, 1);
	for (int i = 0; i < n; i++)
		for (int pos = p0[i]; pos < sd[i]->L; pos++)
			for (int h = 0; h < n_heads; h++) {
				int row = st.row0[i] + pos - p0[i];
				double mx, sum;
				ref_attn(sh, sd[i], pos, h, kv_lo, kv_hi, ref, &mx, &sum);
				const float *o = st.out + ((size_t)row * n_heads + h) * D;
				const float *ml = st.ml + 2 * ((size_t)row * n_heads + h);
				for (int d = 0; d < D; d++) {
					double e = fabs((double)o[d] - ref[d]);
					if (!(e <= worst)) /* NaN counts */
						worst = isnan(e) ? INFINITY : e;
				}
				if (sum == 0) {
					bad_empty += !(ml[0] == -INFINITY && ml[1] == 0.0f);
				} else {
					double em = fabs(ml[0] - mx), es = fabs(ml[1] - sum) / sum;
					em = em > es ? em : es;
					if (!(em <= worst_ml))
						worst_ml = isnan(em) ? INFINITY : em;
				}
			}
	CHECK_MSG(worst <= 2e-5, "%s: D %d kv %d rep %d window %d: max |out - ref| %.3g", what, D, sh->n_kv, sh->rep,
		  (int)sh->window, worst);
	CHECK_MSG(worst_ml <= 2e-5, "%s: D %d: max error of (max, sum) %.3g", what, D, worst_ml);
	CHECK_MSG(bad_empty == 0, "%s: %d empty (row, head) without (-inf, 0)", what, bad_empty);
	step_free(&st);
	free(ref);
}

/* The partial ranges [0, split) and [split, end) with their (max, sum) as log-sum-exps, merged
 * by the attn_merge op (gs_cpu_attn_merge), give the full attention and its log-sum-exp. */
static void check_merge(const struct shape *sh, struct seqdata *const *sd, const int *p0, int n, struct runner *r,
			int32_t split)
{
	struct step st;
	int D = sh->D, n_heads = sh->n_kv * sh->rep;
	step_build(sh, sd, p0, n, &st);
	size_t recs = (size_t)st.a.n_tokens * n_heads, w = (size_t)D + 1;
	float *full = malloc(recs * D * sizeof(float)), *fml = malloc(recs * 2 * sizeof(float));
	float *parts = malloc(2 * recs * w * sizeof(float)), *merged = malloc(recs * D * sizeof(float));
	float *lse = malloc(recs * sizeof(float));
	double worst = 0, worst_lse = 0;

	run(r, &st, 0, INT32_MAX, 1);
	memcpy(full, st.out, recs * D * sizeof(float));
	memcpy(fml, st.ml, recs * 2 * sizeof(float));
	for (int part = 0; part < 2; part++) {
		run(r, &st, part ? split : 0, part ? INT32_MAX : split, 1);
		for (size_t i = 0; i < recs; i++) {
			float *rec = parts + ((size_t)part * recs + i) * w;
			memcpy(rec, st.out + i * D, (size_t)D * sizeof(float));
			rec[D] = st.ml[2 * i + 1] > 0 ? st.ml[2 * i] + logf(st.ml[2 * i + 1]) : -INFINITY;
		}
	}
	gs_cpu_attn_merge(r->tp, merged, lse, parts, 2, (int)recs, D);
	for (size_t i = 0; i < recs; i++) {
		for (int d = 0; d < D; d++) {
			double e = fabs((double)merged[i * D + d] - full[i * D + d]);
			worst = e > worst || isnan(e) ? (isnan(e) ? INFINITY : e) : worst;
		}
		double e = fabs((double)lse[i] - (fml[2 * i] + log(fml[2 * i + 1])));
		worst_lse = e > worst_lse || isnan(e) ? (isnan(e) ? INFINITY : e) : worst_lse;
	}
	CHECK_MSG(worst <= 1e-5 && worst_lse <= 1e-5, "merge of [0, %d) and [%d, end): D %d: out %.3g, lse %.3g", split,
		  split, D, worst, worst_lse);
	free(full);
	free(fml);
	free(parts);
	free(merged);
	free(lse);
	step_free(&st);
}

/* Outputs of sequence 0's positions [from, L) in step st. */
static const float *seq0_row(const struct step *st, const struct shape *sh, int p0, int pos)
{
	return st->out + (size_t)(st->row0[0] + pos - p0) * sh->n_kv * sh->rep * sh->D;
}

/* Sequence 0's rows computed three ways, with 1, 2, 3 threads: alone with split p0a; after
 * other sequences in one batch with split p0b; as a decode row (its last position alone). */
static void check_invariance(const struct shape *sh, struct seqdata *const *sd, int n, int p0a, int p0b,
			     struct runner *r1, struct runner *r2, struct runner *r3)
{
	struct seqdata *const *others = sd + 1;
	struct seqdata *batch[8];
	int p0s[8], L = sd[0]->L, from = p0a > p0b ? p0a : p0b, bad = 0;
	size_t w = (size_t)sh->n_kv * sh->rep * sh->D * sizeof(float);
	struct step alone, big, dec;

	step_build(sh, sd, &p0a, 1, &alone);
	run(r1, &alone, 0, INT32_MAX, 0);

	for (int i = 0; i < n - 1; i++) { /* the others first: sequence 0's rows move down */
		batch[i] = others[i];
		p0s[i] = others[i]->L / 3;
	}
	batch[n - 1] = sd[0];
	p0s[n - 1] = p0b;
	step_build(sh, batch, p0s, n, &big);
	for (int t = 0; t < 2; t++) {
		run(t ? r3 : r2, &big, 0, INT32_MAX, 0);
		for (int pos = from; pos < L; pos++) {
			const float *x = seq0_row(&alone, sh, p0a, pos);
			const float *y = big.out + (size_t)(big.row0[n - 1] + pos - p0b) * w / sizeof(float);
			bad += memcmp(x, y, w) != 0;
		}
	}
	int p0d = L - 1;
	step_build(sh, sd, &p0d, 1, &dec);
	run(r2, &dec, 0, INT32_MAX, 0);
	bad += memcmp(seq0_row(&alone, sh, p0a, L - 1), dec.out, w) != 0;
	CHECK_MSG(bad == 0, "D %d rep %d window %d bf16 %d: %d rows differ alone / batched / decode", sh->D, sh->rep,
		  (int)sh->window, sh->bf16, bad);
	step_free(&alone);
	step_free(&big);
	step_free(&dec);
}

/* Context parallelism (gs_attn_seq.table < 0, the part output): units of GS_KV_CP_UNIT positions
 * of each sequence alternate between -1 (another group's blocks) and the real ids, then the
 * reverse. Each pass's records equal a float64 attention over the kept units only (o within 1e-5
 * of max|o|, lse within 1e-4; rows with no kept key: o 0, lse -inf), and gs_attn_merge_one of
 * the two passes equals the float64 attention over every key, also for rows whose keys all lie
 * in one pass (the other's lse -inf). */
static void check_cp(struct runner *r)
{
	static const struct shape shapes[] = {
		/* D  kv rep block ring window     scale       softcap qamp bf16 spans */
		{ 64, 2, 2, 16, 0, INT32_MAX, 0.125f, 0.0f, 2.0f, 0, 0 },
		{ 128, 1, 4, 32, 0, 100, 0.0883883f, 20.0f, 4.0f, 1, 0 },
	};
	for (size_t c = 0; c < sizeof(shapes) / sizeof(shapes[0]); c++) {
		const struct shape *sh = &shapes[c];
		struct seqdata s[3];
		struct seqdata *sd[3] = { &s[0], &s[1], &s[2] };
		int p0[3] = { 40, 149, 0 }, D = sh->D, n_heads = sh->n_kv * sh->rep, blocks = 0, bad_empty = 0;
		int one_sided = 0;
		double worst = 0, worst_lse = 0, worst_m = 0, worst_mlse = 0;
		struct step st;

		seq_make(sh, &s[0], 300, 0, 0); /* history 0..39, rows 40..299 */
		seq_make(sh, &s[1], 150, 0, 0); /* a decode row */
		seq_make(sh, &s[2], 100, 0, 0); /* a prompt from 0 */
		step_build(sh, sd, p0, 3, &st);
		for (int i = 0; i < 3; i++)
			blocks += seq_blocks(sh, sd[i]);
		size_t recs = (size_t)st.a.n_tokens * n_heads, w = (size_t)D + 1;
		int32_t *ids = malloc((size_t)blocks * sizeof(int32_t));
		float *parts = malloc(2 * recs * w * sizeof(float));
		float *mo = malloc(recs * (size_t)D * sizeof(float)), *ml = malloc(recs * sizeof(float));
		double *ref = malloc((size_t)D * sizeof(double)), *acc = malloc((size_t)D * sizeof(double));
		memcpy(ids, st.tables, (size_t)blocks * sizeof(int32_t));
		st.a.out = NULL; /* part replaces out */
		for (int pass = 0; pass < 2; pass++) {
			float *pp = parts + (size_t)pass * recs * w;
			/* unit u of sequence i is away when u + i + pass is odd */
			for (int i = 0, tb = 0; i < 3; tb += seq_blocks(sh, sd[i]), i++)
				for (int b = 0; b < seq_blocks(sh, sd[i]); b++) {
					int u = b * sh->block / GS_KV_CP_UNIT;
					st.tables[tb + b] = (u + i + pass) % 2 ? -1 : ids[tb + b];
				}
			for (size_t k = 0; k < recs * w; k++)
				pp[k] = NAN; /* every record must be written */
			st.a.part = pp;
			run(r, &st, 0, INT32_MAX, 0);
			for (int i = 0; i < 3; i++)
				for (int pos = p0[i]; pos < sd[i]->L; pos++)
					for (int h = 0; h < n_heads; h++) {
						const float *rec = pp + ((size_t)(st.row0[i] + pos - p0[i]) * n_heads + h) * w;
						double m = -INFINITY, l = 0, mr = 0, e = 0;
						for (int d = 0; d < D; d++)
							acc[d] = 0;
						/* float64 over the kept units: each unit's (o, max, sum), combined */
						for (int u = 0; u * GS_KV_CP_UNIT < sd[i]->L; u++) {
							double mu, lu;
							if ((u + i + pass) % 2)
								continue;
							ref_attn(sh, sd[i], pos, h, u * GS_KV_CP_UNIT, (u + 1) * GS_KV_CP_UNIT,
								 ref, &mu, &lu);
							if (lu == 0)
								continue;
							double mn = mu > m ? mu : m, a0 = exp(m - mn), a1 = exp(mu - mn);
							for (int d = 0; d < D; d++)
								acc[d] = acc[d] * a0 + ref[d] * lu * a1;
							l = l * a0 + lu * a1;
							m = mn;
						}
						if (l == 0) {
							int zero = rec[D] == -INFINITY;
							for (int d = 0; d < D; d++)
								zero &= rec[d] == 0.0f;
							bad_empty += !zero;
							continue;
						}
						for (int d = 0; d < D; d++) {
							double o = acc[d] / l, ed = fabs((double)rec[d] - o);
							mr = fabs(o) > mr ? fabs(o) : mr;
							e = ed > e || isnan(ed) ? (isnan(ed) ? INFINITY : ed) : e;
						}
						e = mr > 0 ? e / mr : e;
						worst = e > worst ? e : worst;
						double el = fabs((double)rec[D] - (m + log(l)));
						worst_lse = el > worst_lse || isnan(el) ? (isnan(el) ? INFINITY : el) : worst_lse;
					}
		}
		for (size_t k = 0; k < recs; k++) {
			gs_attn_merge_one(mo + k * D, ml + k, parts + k * w, 2, recs, D);
			one_sided += (parts[k * w + D] == -INFINITY) != (parts[(recs + k) * w + D] == -INFINITY);
		}
		for (int i = 0; i < 3; i++)
			for (int pos = p0[i]; pos < sd[i]->L; pos++)
				for (int h = 0; h < n_heads; h++) {
					size_t k = (size_t)(st.row0[i] + pos - p0[i]) * n_heads + h;
					double mx, sum, mr = 0, e = 0;
					ref_attn(sh, sd[i], pos, h, 0, INT32_MAX, ref, &mx, &sum);
					for (int d = 0; d < D; d++) {
						double ed = fabs((double)mo[k * D + d] - ref[d]);
						mr = fabs(ref[d]) > mr ? fabs(ref[d]) : mr;
						e = ed > e || isnan(ed) ? (isnan(ed) ? INFINITY : ed) : e;
					}
					e = mr > 0 ? e / mr : e;
					worst_m = e > worst_m ? e : worst_m;
					double el = fabs((double)ml[k] - (mx + log(sum)));
					worst_mlse = el > worst_mlse || isnan(el) ? (isnan(el) ? INFINITY : el) : worst_mlse;
				}
		CHECK_MSG(worst <= 1e-5 && worst_lse <= 1e-4 && bad_empty == 0,
			  "cp part, D %d: rel err of o %.3g, lse %.3g, %d empty records not (0, -inf)", D, worst, worst_lse,
			  bad_empty);
		CHECK_MSG(worst_m <= 1e-5 && worst_mlse <= 1e-4,
			  "cp merge of two complementary tables, D %d: rel err %.3g, lse %.3g", D, worst_m, worst_mlse);
		CHECK_MSG(one_sided > 0, "cp merge, D %d: no record with its keys all in one part", D);
		free(ids), free(parts), free(mo), free(ml), free(ref), free(acc);
		step_free(&st);
		for (int i = 0; i < 3; i++)
			seq_free(&s[i]);
	}
}

int main(void)
{
	static const struct shape shapes[] = {
		/* D   kv rep block ring window     scale   softcap qamp bf16 spans */
		{ 16, 2, 1, 16, 0, INT32_MAX, 0.25f, 0.0f, 1.0f, 0, 0 },
		{ 72, 1, 8, 16, 1, 40, 0.117851f, 0.0f, 1.0f, 1, 0 },
		{ 128, 2, 2, 32, 0, INT32_MAX, 1.0f, 5.0f, 2.0f, 0, 1 },
		{ 128, 4, 1, 16, 1, 70, 0.0883883f, 0.0f, 8.0f, 0, 1 },
		{ 256, 1, 2, 64, 0, 100, 0.0625f, 0.0f, 1.0f, 1, 1 },
		{ 256, 2, 8, 32, 0, INT32_MAX, 0.0625f, 30.0f, 4.0f, 0, 0 },
		{ 512, 1, 2, 16, 0, INT32_MAX, 0.0441942f, 0.0f, 1.0f, 1, 0 },
	};
	static const char *isas[] = { "avx512", "avx2", "scalar" };
	struct runner r[3] = { 0 };

	for (int t = 0; t < 3; t++) {
		r[t].tp = gs_threadpool_create(t + 1);
		CHECK(r[t].tp != NULL);
		if (!r[t].tp)
			TEST_DONE();
	}
	for (size_t c = 0; c < sizeof(shapes) / sizeof(shapes[0]); c++) {
		const struct shape *sh = &shapes[c];
		struct seqdata s[4];
		struct seqdata *sd[4] = { &s[0], &s[1], &s[2], &s[3] };
		int small = sh->D >= 256;
		seq_make(sh, &s[0], small ? 150 : 203, 60, 93);  /* prompt, an image in it */
		seq_make(sh, &s[1], small ? 70 : 131, 5, 30);
		seq_make(sh, &s[2], 1, 0, 0);                     /* a lone first token */
		seq_make(sh, &s[3], small ? 66 : 97, 64, 65);     /* a one-token image */

		int p0[4] = { 0, 37, 0, 96 < s[3].L - 1 ? 96 : s[3].L - 1 };
		for (int i = 0; i < 3; i++) {
			if (gs_cpu_force_isa(isas[i]) != 0)
				continue;
			check_ref(sh, sd, p0, 4, &r[i], 0, INT32_MAX, isas[i]);
		}
		gs_cpu_force_isa(NULL);
		int dec[4] = { s[0].L - 1, s[1].L - 1, 0, s[3].L - 1 }; /* a decode batch */
		check_ref(sh, sd, dec, 4, &r[1], 0, INT32_MAX, "decode");
		/* partial key ranges and their (max, sum); one range empty for the early rows */
		int p0p[2] = { 50, 0 };
		check_ref(sh, sd, p0p, 2, &r[1], 0, 64, "range [0, 64)");
		check_ref(sh, sd, p0p, 2, &r[1], 64, 130, "range [64, 130)");
		check_ref(sh, sd, p0p, 2, &r[0], 90, INT32_MAX, "range [90, end)");
		check_merge(sh, sd, p0p, 2, &r[1], 100);
		/* bits: another split, after other sequences, as a decode row, 1/2/3 threads */
		check_invariance(sh, sd, 4, 0, 113 < s[0].L - 2 ? 113 : s[0].L - 2, &r[0], &r[1], &r[2]);
		check_invariance(sh, sd, 4, 64, 97, &r[0], &r[1], &r[2]);
		for (int i = 0; i < 4; i++)
			seq_free(&s[i]);
	}
	check_cp(&r[1]);
	for (int t = 0; t < 3; t++) {
		for (int i = 0; i < 4; i++)
			free(r[t].scratch[i]);
		gs_threadpool_free(r[t].tp);
	}
	TEST_DONE();
}
