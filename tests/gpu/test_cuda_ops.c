/* Every op of the CUDA backend against the CPU backend (STYLE.md 10), on random inputs of
 * several shapes: odd sizes, k not a multiple of 8, a misaligned weight view, m = 1, 3, 15
 * (decode GEMV), 16, 64 (cuBLAS), GQA 8:1 and 2:1, windows shorter than the sequence, ragged
 * sequences over shuffled block tables and rings, context-parallel tables (64-position units of
 * another group's blocks, history and fresh rows) and the attn_merge record output (part), and
 * scatter_rows with rows not stored. Then argmax / top-k against a host sort, and
 * the candidates op (sampling on the device) against the CPU backend's.
 *
 * Out-of-place outputs are poisoned first (memset 0xFF = NaN) so an element the kernel never
 * writes fails; in-place ops (rope, softcap, in-place rmsnorm) start from the input.
 * Errors are relative L2 = ||gpu - cpu|| / ||cpu|| and max = max|gpu - cpu| / max|cpu|, with
 * a tolerance per op (its reason beside it). GS_CUDA_SYNC=1 is set so a faulting kernel is
 * named by the op that launched it.
 *
 * Exit 77 (ctest SKIP_RETURN_CODE) without a CUDA device: never a silent pass. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_cuda.h"
#include "gs_kernels.h"
#include "gs_test.h"

#define SKIP 77

/* Tolerances (relative L2, max relative to max|cpu|):
 * - GEMV (m < 16) and fp32 cuBLAS: both sides fp32 x, exact weights, fp32 accumulation in a
 *   different order: ~u·sqrt(k) ≈ 1e-6 expected; 2e-5 / 5e-5 leaves margin yet catches any
 *   conversion or indexing slip (those are O(1e-3) or worse). */
#define TOL_FP32_DOT_L2 2e-5
#define TOL_FP32_DOT_MAX 5e-5
/* - bf16 cuBLAS (m >= 16) vs the CPU on fp32 x: x is rounded to bf16 (|δ| <= 2^-9, rms
 *   2^-9/√3 ≈ 1.1e-3 per product, random signs), so ~1.1e-3 relative L2 is the expected
 *   error itself; 5e-3 / 1e-2 are ~4× that. */
#define TOL_BF16_GEMM_L2 5e-3
#define TOL_BF16_GEMM_MAX 1e-2
/* - bf16 cuBLAS vs the CPU on the same bf16-rounded x: only fp32 accumulation order (tensor
 *   cores do not round like IEEE sequential fp32): 1e-4 / 2e-4, a layout bug gives O(1). */
#define TOL_BF16_SAME_X_L2 1e-4
#define TOL_BF16_SAME_X_MAX 2e-4
/* - rmsnorm, rope: the same double-precision formulas and the same fp32 roundings as the
 *   CPU; only a last-ulp difference of r / cos / sin is possible: 1e-6 / 2e-6. */
#define TOL_NORM_L2 1e-6
#define TOL_NORM_MAX 2e-6
/* - attention: online vs two-pass softmax, dot products summed in another order: 2e-5 / 5e-5;
 *   the tiled kernel's 3xTF32 products carry ~2^-21 relative error each, well inside. */
#define TOL_ATTN_L2 2e-5
#define TOL_ATTN_MAX 5e-5
/* - geglu, softcap: same fp32 expression, device tanhf within 2 ulp of glibc's: 2e-6 / 4e-6. */
#define TOL_TANH_L2 2e-6
#define TOL_TANH_MAX 4e-6
/* - embed: one fp32 operation per element: bit-exact. */

static struct gs_backend cpu, gpu;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
	return gs_test_splitmix(&rng);
}

static float frand(void) /* [-1, 1) */
{
	return (float)((double)(rng_next() >> 40) / 8388608.0 - 1.0);
}

static void die(const char *what)
{
	fprintf(stderr, "FAIL: %s: %s\n", what, gs_last_error());
	exit(1);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		die("host malloc");
	return p;
}

static void *dalloc(size_t bytes)
{
	void *d;
	if (gs_cuda_malloc(&gpu, &d, bytes) != GS_OK)
		die("gs_cuda_malloc");
	return d;
}

static void up(void *d, const void *h, size_t bytes)
{
	if (gs_cuda_upload(&gpu, d, h, bytes) != GS_OK)
		die("gs_cuda_upload");
}

static void *dup_to_dev(const void *h, size_t bytes)
{
	void *d = dalloc(bytes);
	up(d, h, bytes);
	return d;
}

static void down(void *h, const void *d, size_t bytes)
{
	if (gs_cuda_download(&gpu, h, d, bytes) != GS_OK)
		die("gs_cuda_download");
}

static void poison(void *d, size_t bytes)
{
	if (gs_cuda_memset(&gpu, d, 0xff, bytes) != GS_OK)
		die("gs_cuda_memset");
}

static void dfree(void *d)
{
	gs_cuda_free(&gpu, d);
}

static float *frand_array(size_t n, float scale)
{
	float *a = xmalloc(n * sizeof(float));
	for (size_t i = 0; i < n; i++)
		a[i] = frand() * scale;
	return a;
}

static void compare(const char *what, const float *got, const float *ref, size_t n, double tol_l2, double tol_max)
{
	double num = 0, den = 0, md = 0, mr = 0, l2, mx;
	size_t nan = 0;
	int ok;

	for (size_t i = 0; i < n; i++) {
		double d;
		if (isnan(got[i]) || isinf(got[i])) {
			nan++;
			continue;
		}
		d = (double)got[i] - (double)ref[i];
		num += d * d;
		den += (double)ref[i] * ref[i];
		md = fabs(d) > md ? fabs(d) : md;
		mr = fabs(ref[i]) > mr ? fabs(ref[i]) : mr;
	}
	l2 = den > 0 ? sqrt(num / den) : sqrt(num);
	mx = mr > 0 ? md / mr : md;
	ok = nan == 0 && l2 <= tol_l2 && mx <= tol_max;
	printf("%-4s %-64s rel_l2 %.2e (tol %.0e)  max %.2e (tol %.0e)\n", ok ? "ok" : "FAIL", what, l2, tol_l2, mx,
	       tol_max);
	CHECK_MSG(ok, "%s: %zu of %zu non-finite (unwritten?), rel_l2 %.3e, max %.3e", what, nan, n, l2, mx);
}

/* ---- matmul -------------------------------------------------------------------------- */

static void fill_weights(enum gs_dtype dt, void *w, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		float v = frand() * 0.5f;
		if (dt == GS_DTYPE_BF16)
			((uint16_t *)w)[i] = gs_f32_to_bf16(v);
		else if (dt == GS_DTYPE_F16)
			((uint16_t *)w)[i] = gs_f32_to_f16(v);
		else
			((float *)w)[i] = v;
	}
}

/* w_off: the view starts w_off elements into the allocation (misaligned for 16-bit types). */
static void test_matmul_case(enum gs_dtype dt, int m, int n, int k, int w_off)
{
	size_t es = gs_dtype_size(dt), wbytes = ((size_t)n * k + w_off) * es;
	void *hw = xmalloc(wbytes), *dw;
	float *x = frand_array((size_t)m * k, 2.0f), *ref = xmalloc((size_t)m * n * sizeof(float));
	float *got = xmalloc((size_t)m * n * sizeof(float)), *dx, *dy;
	struct gs_tensor wh = { dt, n, k, (char *)hw + (size_t)w_off * es }, wd;
	char what[128];

	fill_weights(dt, hw, (size_t)n * k + w_off);
	cpu.iface->matmul(cpu.ctx, ref, x, &wh, m);
	dw = dup_to_dev(hw, wbytes);
	dx = dup_to_dev(x, (size_t)m * k * sizeof(float));
	dy = dalloc((size_t)m * n * sizeof(float));
	poison(dy, (size_t)m * n * sizeof(float));
	wd = (struct gs_tensor){ dt, n, k, (char *)dw + (size_t)w_off * es };
	gpu.iface->matmul(gpu.ctx, dy, dx, &wd, m);
	down(got, dy, (size_t)m * n * sizeof(float));
	snprintf(what, sizeof(what), "matmul %s m=%d n=%d k=%d%s", gs_dtype_name(dt), m, n, k,
		 w_off ? " (misaligned view)" : "");
	if (m >= 16 && dt == GS_DTYPE_BF16) {
		compare(what, got, ref, (size_t)m * n, TOL_BF16_GEMM_L2, TOL_BF16_GEMM_MAX);
		for (size_t i = 0; i < (size_t)m * k; i++)
			x[i] = gs_round_bf16(x[i]);
		cpu.iface->matmul(cpu.ctx, ref, x, &wh, m);
		snprintf(what, sizeof(what), "matmul %s m=%d n=%d k=%d vs CPU on bf16 x", gs_dtype_name(dt), m, n, k);
		compare(what, got, ref, (size_t)m * n, TOL_BF16_SAME_X_L2, TOL_BF16_SAME_X_MAX);
	} else {
		compare(what, got, ref, (size_t)m * n, TOL_FP32_DOT_L2, TOL_FP32_DOT_MAX);
	}
	dfree(dw);
	dfree(dx);
	dfree(dy);
	free(hw);
	free(x);
	free(ref);
	free(got);
}

/* The decode GEMV sums every output in an order fixed by k alone: row 0 of an m = 15 batch
 * has the same bits as the same row alone (what continuous batching relies on for m < 16). */
static void test_gemv_batch_invariance(void)
{
	const int n = 300, k = 1024, m = 15;
	uint16_t *hw = xmalloc((size_t)n * k * 2);
	float *x = frand_array((size_t)m * k, 2.0f), *y1 = xmalloc(n * sizeof(float));
	float *y15 = xmalloc((size_t)m * n * sizeof(float));
	void *dw, *dx, *dy;
	struct gs_tensor w;

	fill_weights(GS_DTYPE_BF16, hw, (size_t)n * k);
	dw = dup_to_dev(hw, (size_t)n * k * 2);
	dx = dup_to_dev(x, (size_t)m * k * sizeof(float));
	dy = dalloc((size_t)m * n * sizeof(float));
	w = (struct gs_tensor){ GS_DTYPE_BF16, n, k, dw };
	gpu.iface->matmul(gpu.ctx, dy, dx, &w, 1);
	down(y1, dy, n * sizeof(float));
	gpu.iface->matmul(gpu.ctx, dy, dx, &w, m);
	down(y15, dy, (size_t)m * n * sizeof(float));
	CHECK_MSG(memcmp(y1, y15, n * sizeof(float)) == 0, "gemv: row 0 differs between m = 1 and m = 15");
	printf("%-4s gemv batch invariance (row 0 bits equal for m = 1 and m = 15)\n",
	       memcmp(y1, y15, n * sizeof(float)) == 0 ? "ok" : "FAIL");
	dfree(dw);
	dfree(dx);
	dfree(dy);
	free(hw);
	free(x);
	free(y1);
	free(y15);
}

static void test_matmul(void)
{
	static const int ms[] = { 1, 3, 15, 16, 64 };
	static const int nk[][2] = { { 1, 64 }, { 33, 77 }, { 300, 1000 }, { 129, 5376 }, { 64, 8 } };

	for (size_t a = 0; a < sizeof(ms) / sizeof(ms[0]); a++)
		for (size_t b = 0; b < sizeof(nk) / sizeof(nk[0]); b++)
			test_matmul_case(GS_DTYPE_BF16, ms[a], nk[b][0], nk[b][1], 0);
	test_matmul_case(GS_DTYPE_BF16, 1, 40, 64, 1);
	test_matmul_case(GS_DTYPE_BF16, 5, 40, 64, 3);
	test_matmul_case(GS_DTYPE_BF16, 16, 40, 64, 1);
	test_matmul_case(GS_DTYPE_F16, 1, 300, 1000, 0);
	test_matmul_case(GS_DTYPE_F16, 3, 33, 77, 0);
	test_matmul_case(GS_DTYPE_F16, 20, 129, 512, 0);
	test_matmul_case(GS_DTYPE_F32, 1, 300, 1000, 0);
	test_matmul_case(GS_DTYPE_F32, 7, 33, 77, 0);
	test_matmul_case(GS_DTYPE_F32, 17, 129, 512, 0);
	test_gemv_batch_invariance();
}

/* ---- rmsnorm, rope ---------------------------------------------------------------------- */

static void test_rmsnorm_case(int rows, int dim, int in_place)
{
	size_t n = (size_t)rows * dim;
	float *x = frand_array(n, 3.0f), *gain = xmalloc(dim * sizeof(float)), *ref = xmalloc(n * sizeof(float));
	float *got = xmalloc(n * sizeof(float)), *dx, *dy, *dg;
	char what[128];

	for (int i = 0; i < dim; i++)
		gain[i] = 1.0f + 0.5f * frand();
	cpu.iface->rmsnorm(cpu.ctx, ref, x, gain, rows, dim, 1e-6f);
	dx = dup_to_dev(x, n * sizeof(float));
	dg = dup_to_dev(gain, dim * sizeof(float));
	if (in_place) {
		dy = dx;
	} else {
		dy = dalloc(n * sizeof(float));
		poison(dy, n * sizeof(float));
	}
	gpu.iface->rmsnorm(gpu.ctx, dy, dx, dg, rows, dim, 1e-6f);
	down(got, dy, n * sizeof(float));
	snprintf(what, sizeof(what), "rmsnorm rows=%d dim=%d%s", rows, dim, in_place ? " in place" : "");
	compare(what, got, ref, n, TOL_NORM_L2, TOL_NORM_MAX);
	if (!in_place)
		dfree(dy);
	dfree(dx);
	dfree(dg);
	free(x);
	free(gain);
	free(ref);
	free(got);
}

/* y += rmsnorm(x) · gain, against the CPU backend's fused op */
static void test_rmsnorm_add_case(int rows, int dim)
{
	size_t n = (size_t)rows * dim;
	float *x = frand_array(n, 3.0f), *y0 = frand_array(n, 2.0f), *gain = xmalloc(dim * sizeof(float));
	float *ref = xmalloc(n * sizeof(float)), *got = xmalloc(n * sizeof(float)), *dx, *dy, *dg;
	char what[128];

	for (int i = 0; i < dim; i++)
		gain[i] = 1.0f + 0.5f * frand();
	memcpy(ref, y0, n * sizeof(float));
	cpu.iface->rmsnorm_add(cpu.ctx, ref, x, gain, rows, dim, 1e-6f);
	dx = dup_to_dev(x, n * sizeof(float));
	dy = dup_to_dev(y0, n * sizeof(float));
	dg = dup_to_dev(gain, dim * sizeof(float));
	gpu.iface->rmsnorm_add(gpu.ctx, dy, dx, dg, rows, dim, 1e-6f);
	down(got, dy, n * sizeof(float));
	snprintf(what, sizeof(what), "rmsnorm_add rows=%d dim=%d", rows, dim);
	compare(what, got, ref, n, TOL_NORM_L2, TOL_NORM_MAX);
	dfree(dx);
	dfree(dy);
	dfree(dg);
	free(x);
	free(y0);
	free(gain);
	free(ref);
	free(got);
}

static void test_rope_case(int n_tokens, int n_heads, int hd, double base, double pos_scale, int max_pos)
{
	size_t n = (size_t)n_tokens * n_heads * hd;
	float *x = frand_array(n, 2.0f), *got = xmalloc(n * sizeof(float)), *dx;
	int32_t *pos = xmalloc(n_tokens * sizeof(int32_t)), *dpos;
	char what[128];

	for (int t = 0; t < n_tokens; t++)
		pos[t] = (int32_t)(rng_next() % (uint64_t)(max_pos + 1));
	pos[0] = max_pos;
	dx = dup_to_dev(x, n * sizeof(float));
	dpos = dup_to_dev(pos, n_tokens * sizeof(int32_t));
	cpu.iface->rope(cpu.ctx, x, n_tokens, n_heads, hd, pos, base, pos_scale);
	gpu.iface->rope(gpu.ctx, dx, n_tokens, n_heads, hd, dpos, base, pos_scale);
	down(got, dx, n * sizeof(float));
	snprintf(what, sizeof(what), "rope tokens=%d heads=%d D=%d base=%g scale=%g pos<=%d", n_tokens, n_heads, hd, base,
		 pos_scale, max_pos);
	compare(what, got, x, n, TOL_NORM_L2, TOL_NORM_MAX);
	dfree(dx);
	dfree(dpos);
	free(x);
	free(got);
	free(pos);
}

/* ---- attention ------------------------------------------------------------------------------ */

struct seq_spec {
	int n_tokens, pos0, ring;
};

struct attn_case {
	const char *name;
	int n_heads, n_kv, hd, window, block;
	float scale, softcap;
	int n_seqs;
	struct seq_spec s[4];
	int img[4][2];  /* per sequence: rows [lo, hi) of it are one image (bidirectional span); {0, 0}: none */
	uint32_t away[4]; /* per sequence (no ring): bit u set: the GS_KV_CP_UNIT (64) positions from
			   * 64u are another context-parallel group's (table entries -1), cached and
			   * fresh alike */
};

/* The attn_merge records of the part output, GPU against CPU: the same records empty (lse -inf,
 * o exactly 0), then o and the finite lse within the attention tolerance. */
static void compare_parts(const char *what, const float *got, const float *ref, size_t recs, int D)
{
	float *go = xmalloc(recs * D * sizeof(float)), *ro = xmalloc(recs * D * sizeof(float));
	float *gl = xmalloc(recs * sizeof(float)), *rl = xmalloc(recs * sizeof(float));
	size_t n_lse = 0, empty = 0, bad_empty = 0;
	char w[256];

	for (size_t i = 0; i < recs; i++) {
		const float *g = got + i * (D + 1), *r = ref + i * (D + 1);
		memcpy(go + i * D, g, (size_t)D * sizeof(float));
		memcpy(ro + i * D, r, (size_t)D * sizeof(float));
		if (r[D] == -INFINITY || g[D] == -INFINITY) {
			int zero = 1;
			for (int d = 0; d < D; d++)
				zero &= g[d] == 0.0f && r[d] == 0.0f;
			bad_empty += !(r[D] == -INFINITY && g[D] == -INFINITY && zero);
			empty++;
			continue;
		}
		gl[n_lse] = g[D];
		rl[n_lse++] = r[D];
	}
	snprintf(w, sizeof(w), "%s: o", what);
	compare(w, go, ro, recs * D, TOL_ATTN_L2, TOL_ATTN_MAX);
	snprintf(w, sizeof(w), "%s: lse (%zu of %zu records empty)", what, empty, recs);
	compare(w, gl, rl, n_lse, TOL_ATTN_L2, TOL_ATTN_MAX);
	CHECK_MSG(bad_empty == 0, "%s: %zu records empty on one side only or with o != 0", what, bad_empty);
	free(go), free(ro), free(gl), free(rl);
}

/* Blocks of a sequence's table: the ring, or every block up to its last fresh position (the
 * table covers this step's rows too: their blocks may be another group's). */
static int seq_table_blocks(const struct seq_spec *s, int block)
{
	return s->ring ? s->ring : (s->pos0 + s->n_tokens + block - 1) / block;
}

/* bf16: the cache slabs are bf16 on the GPU and the fresh rows fp32 (the kernel rounds them as it
 * reads), against the CPU on the same values rounded to bf16 everywhere. part: the op writes the
 * attn_merge records instead of out, compared record by record. */
static void test_attention_case(const struct attn_case *ac, int bf16, int part)
{
	struct gs_attn_seq hs[4], ds[4];
	int32_t *tables[4] = { 0 }, *dtables[4] = { 0 };
	int T = 0, slab_blocks = 0, used = 0;
	int32_t *perm, *tok_seq, *span = NULL;
	void *dspan = NULL;
	size_t qs, kvs;
	float *q, *kn, *vn, *kc, *vc, *ref, *got;
	void *dq, *dkn, *dvn, *dkc, *dvc, *dout, *dseqs, *dtok;
	struct gs_attn_args a;
	char what[160];

	for (int i = 0; i < ac->n_seqs; i++) {
		const struct seq_spec *s = &ac->s[i];
		T += s->n_tokens;
		slab_blocks += seq_table_blocks(s, ac->block);
	}
	slab_blocks += 3; /* unused blocks: garbage a wrong table lookup would read */
	perm = xmalloc(slab_blocks * sizeof(int32_t));
	for (int b = 0; b < slab_blocks; b++)
		perm[b] = b;
	for (int b = slab_blocks - 1; b > 0; b--) { /* shuffled block ids */
		int j = (int)(rng_next() % (uint64_t)(b + 1)), t = perm[b];
		perm[b] = perm[j];
		perm[j] = t;
	}
	tok_seq = xmalloc(T * sizeof(int32_t));
	T = 0;
	for (int i = 0; i < ac->n_seqs; i++) {
		const struct seq_spec *s = &ac->s[i];
		int nb = seq_table_blocks(s, ac->block);
		CHECK(!ac->away[i] || (!s->ring && GS_KV_CP_UNIT % ac->block == 0));
		tables[i] = xmalloc((nb ? nb : 1) * sizeof(int32_t));
		for (int b = 0; b < nb; b++) { /* another group's blocks: -1, their slab blocks unused */
			int unit = b * ac->block / GS_KV_CP_UNIT;
			tables[i][b] = unit < 32 && (ac->away[i] >> unit & 1u) ? -1 : perm[used];
			used++;
		}
		dtables[i] = nb ? dup_to_dev(tables[i], nb * sizeof(int32_t)) : NULL;
		hs[i] = (struct gs_attn_seq){ T, s->n_tokens, s->pos0, tables[i], s->ring };
		ds[i] = hs[i];
		ds[i].table = dtables[i];
		for (int t = 0; t < s->n_tokens; t++)
			tok_seq[T + t] = i;
		T += s->n_tokens;
	}
	for (int i = 0, t0 = 0; i < ac->n_seqs; t0 += ac->s[i].n_tokens, i++) { /* image spans, in positions */
		if (ac->img[i][0] == ac->img[i][1])
			continue;
		if (!span)
			span = calloc((size_t)T * 2, sizeof(int32_t));
		for (int t = ac->img[i][0]; t < ac->img[i][1]; t++) {
			span[2 * (t0 + t)] = ac->s[i].pos0 + ac->img[i][0];
			span[2 * (t0 + t) + 1] = ac->s[i].pos0 + ac->img[i][1];
		}
	}
	qs = (size_t)ac->n_heads * ac->hd;
	kvs = (size_t)ac->n_kv * ac->hd;
	q = frand_array(T * qs, 3.0f);
	kn = frand_array(T * kvs, 1.0f);
	vn = frand_array(T * kvs, 1.0f);
	kc = frand_array((size_t)slab_blocks * ac->block * kvs, 1.0f);
	vc = frand_array((size_t)slab_blocks * ac->block * kvs, 1.0f);
	size_t n_out = part ? (size_t)T * ac->n_heads * (ac->hd + 1) : T * qs;
	ref = xmalloc(n_out * sizeof(float));
	got = xmalloc(n_out * sizeof(float));
	size_t n_cache = (size_t)slab_blocks * ac->block * kvs;
	float *rkn = xmalloc(T * kvs * sizeof(float)), *rvn = xmalloc(T * kvs * sizeof(float));
	float *rkc = xmalloc(n_cache * sizeof(float)), *rvc = xmalloc(n_cache * sizeof(float));
	uint16_t *hkc = xmalloc(n_cache * sizeof(uint16_t)), *hvc = xmalloc(n_cache * sizeof(uint16_t));
	for (size_t i = 0; i < T * kvs; i++) {
		rkn[i] = bf16 ? gs_round_bf16(kn[i]) : kn[i];
		rvn[i] = bf16 ? gs_round_bf16(vn[i]) : vn[i];
	}
	for (size_t i = 0; i < n_cache; i++) {
		hkc[i] = gs_f32_to_bf16(kc[i]), hvc[i] = gs_f32_to_bf16(vc[i]);
		rkc[i] = bf16 ? gs_bf16_to_f32(hkc[i]) : kc[i];
		rvc[i] = bf16 ? gs_bf16_to_f32(hvc[i]) : vc[i];
	}

	a = (struct gs_attn_args){
		.out = ref, .q = q, .k_new = rkn, .v_new = rvn, .k_cache = rkc, .v_cache = rvc, .block = ac->block,
		.seqs = hs, .n_seqs = ac->n_seqs, .tok_seq = tok_seq, .n_tokens = T, .n_heads = ac->n_heads,
		.n_kv_heads = ac->n_kv, .head_dim = ac->hd, .window = ac->window, .scale = ac->scale,
		.softcap = ac->softcap, .span = span,
	};
	if (part) {
		a.out = NULL;
		a.part = ref;
	}
	cpu.iface->attention(cpu.ctx, &a);

	dq = dup_to_dev(q, T * qs * sizeof(float));
	dkn = dup_to_dev(kn, T * kvs * sizeof(float));
	dvn = dup_to_dev(vn, T * kvs * sizeof(float));
	dkc = bf16 ? dup_to_dev(hkc, n_cache * sizeof(uint16_t)) : dup_to_dev(kc, n_cache * sizeof(float));
	dvc = bf16 ? dup_to_dev(hvc, n_cache * sizeof(uint16_t)) : dup_to_dev(vc, n_cache * sizeof(float));
	dseqs = dup_to_dev(ds, ac->n_seqs * sizeof(ds[0]));
	dtok = dup_to_dev(tok_seq, T * sizeof(int32_t));
	dout = dalloc(n_out * sizeof(float));
	poison(dout, n_out * sizeof(float));
	a.out = part ? NULL : dout;
	a.part = part ? dout : NULL;
	a.q = dq;
	a.k_new = dkn;
	a.v_new = dvn;
	a.k_cache = dkc;
	a.v_cache = dvc;
	a.kv_dtype = bf16 ? GS_DTYPE_BF16 : GS_DTYPE_F32;
	a.seqs = dseqs;
	a.tok_seq = dtok;
	if (span)
		a.span = dspan = dup_to_dev(span, (size_t)T * 2 * sizeof(int32_t));
	gpu.iface->attention(gpu.ctx, &a);
	down(got, dout, n_out * sizeof(float));
	snprintf(what, sizeof(what), "attention %s (%d rows, %s cache%s)", ac->name, T, bf16 ? "bf16" : "fp32",
		 part ? ", part" : "");
	if (part)
		compare_parts(what, got, ref, (size_t)T * ac->n_heads, ac->hd);
	else
		compare(what, got, ref, T * qs, TOL_ATTN_L2, TOL_ATTN_MAX);

	for (int i = 0; i < ac->n_seqs; i++) {
		dfree(dtables[i]);
		free(tables[i]);
	}
	dfree(dq);
	dfree(dkn);
	dfree(dvn);
	dfree(dkc);
	dfree(dvc);
	dfree(dseqs);
	dfree(dtok);
	dfree(dout);
	if (dspan)
		dfree(dspan);
	free(span);
	free(perm);
	free(tok_seq);
	free(q);
	free(kn);
	free(vn);
	free(kc);
	free(vc);
	free(ref);
	free(got);
	free(rkn), free(rvn), free(rkc), free(rvc), free(hkc), free(hvc);
}

static void test_attention(void)
{
	const struct attn_case cases[] = {
		{ "GQA 8:1 D=128 causal, prefill + decode + chunk", 8, 1, 128, INT32_MAX, 16, 0.0883883f, 0, 3,
		  { { 5, 0, 0 }, { 1, 37, 0 }, { 7, 100, 0 } } },
		{ "GQA 2:1 D=256 window 24 (ring 3) over longer sequences", 4, 2, 256, 24, 16, 0.0625f, 0, 3,
		  { { 30, 0, 0 }, { 3, 200, 3 }, { 1, 50, 0 } } },
		{ "MHA D=40 window 10 softcap 50 block 8", 2, 2, 40, 10, 8, 0.158f, 50.0f, 3,
		  { { 1, 20, 0 }, { 12, 0, 0 }, { 4, 9, 3 } } },
		{ "27B-like 32q/16kv D=128 scale 168^-0.5 decode", 32, 16, 128, INT32_MAX, 16, 0.0771517f, 0, 2,
		  { { 1, 1000, 0 }, { 2, 333, 0 } } },
		{ "GQA 8:1 D=256 window 64 (ring 5), chunked prefill", 8, 1, 256, 64, 16, 0.0625f, 0, 2,
		  { { 16, 700, 5 }, { 1, 64, 5 } } },
		{ "GQA 2:1 D=96 window longer than context", 4, 2, 96, 4096, 16, 0.102f, 0, 1, { { 9, 18, 0 } } },
		/* sequences with >= 16 rows take the tiled (tensor-core, 3xTF32) kernel, the others the
		 * warp kernel, in the same call */
		{ "tiled: 27B-like 32q/16kv D=128, 200-row chunk + decode + 20-row chunk", 32, 16, 128, INT32_MAX, 16,
		  0.0771517f, 0, 3, { { 200, 300, 0 }, { 1, 77, 0 }, { 20, 5, 0 } } },
		{ "tiled: D=256 window 40 (ring 4), 100 rows + 16 rows + 15 rows", 8, 2, 256, 40, 16, 0.0625f, 0, 3,
		  { { 100, 80, 4 }, { 16, 0, 0 }, { 15, 33, 4 } } },
		{ "tiled only: MHA D=40 softcap 50 window 10, 70 rows from 0", 2, 2, 40, 10, 8, 0.158f, 50.0f, 1,
		  { { 70, 0, 0 } } },
		{ "tiled only: GQA 2:1 D=96, 33 rows after 18 cached", 4, 2, 96, 4096, 16, 0.102f, 0, 1, { { 33, 18, 0 } } },
		{ "tiled: MQA D=64 window 1024, 129 rows + 2 decodes", 4, 1, 64, 1024, 16, 0.125f, 0, 3,
		  { { 129, 2000, 0 }, { 1, 10, 0 }, { 1, 3000, 0 } } },
		/* bidirectional image spans (a row also sees its image's later keys; on a sliding layer
		 * its image's keys beyond the window too) */
		{ "image spans, warp kernel: causal, two chunks with an image + a decode", 4, 2, 64, INT32_MAX, 16, 0.125f,
		  0, 3, { { 10, 0, 0 }, { 1, 40, 0 }, { 12, 37, 0 } }, { { 3, 7 }, { 0, 0 }, { 0, 12 } } },
		{ "image spans, warp kernel: window 4 < 9-row image (ring 2), softcap", 2, 1, 40, 4, 8, 0.158f, 50.0f, 2,
		  { { 15, 30, 2 }, { 6, 0, 0 } }, { { 5, 14 }, { 1, 5 } } },
		{ "image spans, tiled: 256-token image in a 300-row chunk, window 64 (ring 5)", 8, 2, 128, 64, 16,
		  0.0883883f, 0, 2, { { 300, 40, 5 }, { 1, 90, 5 } }, { { 20, 276 }, { 0, 0 } } },
		{ "image spans, tiled: image in the last rows of a tile, causal, + image of 16 rows", 4, 1, 256, INT32_MAX,
		  16, 0.0625f, 0, 2, { { 70, 18, 0 }, { 20, 0, 0 } }, { { 60, 70 }, { 2, 18 } } },
		/* context parallelism: 64-position units of another group (away bits), in the
		 * history and among this step's rows; rows whose every key is away (o 0, lse -inf) */
		{ "cp, warp kernel: decode over units 1, 3 away + chunks across away units", 8, 2, 128, INT32_MAX, 16,
		  0.0883883f, 0, 3, { { 1, 300, 0 }, { 10, 120, 0 }, { 9, 60, 0 } }, { { 0, 0 } },
		  { 0xau, 0x3u, 0x2u } },
		{ "cp, warp kernel: window 100, softcap, block 8, + a ring sequence", 2, 2, 40, 100, 8, 0.158f, 50.0f, 3,
		  { { 3, 200, 0 }, { 12, 60, 0 }, { 4, 90, 14 } }, { { 0, 0 } }, { 0x6u, 0x1u, 0 } },
		{ "cp, tiled: 200 rows after 100 cached + 40 rows all away + decode", 8, 2, 128, INT32_MAX, 16,
		  0.0883883f, 0, 3, { { 200, 100, 0 }, { 40, 0, 0 }, { 1, 500, 0 } }, { { 0, 0 } },
		  { 0x5u, 0x1u, 0xaau } },
		{ "cp, tiled: D=256 window 150, unaligned tiles over an away unit", 4, 1, 256, 150, 16, 0.0625f, 0, 2,
		  { { 70, 90, 0 }, { 16, 64, 0 } }, { { 0, 0 } }, { 0x2u, 0x1u } },
		{ "cp, tiled: MHA D=40 block 8 softcap, image span over an away unit", 4, 4, 40, INT32_MAX, 8, 0.158f,
		  50.0f, 1, { { 100, 30, 0 } }, { { 20, 60 } }, { 0x2u } },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		for (int bf16 = 0; bf16 < 2; bf16++)
			for (int part = 0; part < 2; part++)
				test_attention_case(&cases[i], bf16, part);
}

/* scatter_rows into fp32 rows (a copy) and into bf16 rows (gs_f32_to_bf16's rounding, bit for bit),
 * rows in shuffled order; rows -1 and -2 are not stored (another context-parallel group's). The
 * rows not named keep their poison, and so do two guard rows just before dst (where a negative
 * row taken as an index would land). */
static void test_scatter_rows(void)
{
	enum { GUARD = 2 };
	const int n = 7, slots = 9 + GUARD;
	const size_t width = 1000;
	int64_t rows[7] = { 7, -1, 0, 3, -2, 8, 4 };
	float *src = frand_array((size_t)n * width, 50.0f);
	float *got = xmalloc((size_t)slots * width * sizeof(float));
	uint16_t *got16 = xmalloc((size_t)slots * width * sizeof(uint16_t));
	void *dsrc = dup_to_dev(src, (size_t)n * width * sizeof(float)), *drows = dup_to_dev(rows, sizeof(rows));
	void *d32 = dalloc((size_t)slots * width * sizeof(float)), *d16 = dalloc((size_t)slots * width * sizeof(uint16_t));
	int bad = 0;

	src[3] = 1.00390625f; /* a tie: rounds to even */
	src[4] = -0.0f;
	up(dsrc, src, (size_t)n * width * sizeof(float));
	poison(d32, (size_t)slots * width * sizeof(float));
	poison(d16, (size_t)slots * width * sizeof(uint16_t));
	gpu.iface->scatter_rows(gpu.ctx, (float *)d32 + GUARD * width, GS_DTYPE_F32, dsrc, drows, n, width);
	gpu.iface->scatter_rows(gpu.ctx, (uint16_t *)d16 + GUARD * width, GS_DTYPE_BF16, dsrc, drows, n, width);
	down(got, d32, (size_t)slots * width * sizeof(float));
	down(got16, d16, (size_t)slots * width * sizeof(uint16_t));
	for (int s = 0; s < slots; s++) { /* slot s: dst row s - GUARD */
		int i = -1;
		for (int r = 0; r < n; r++)
			if (rows[r] >= 0 && rows[r] + GUARD == s)
				i = r;
		for (size_t j = 0; j < width; j++) {
			uint32_t w32, p32 = 0xffffffffu;
			memcpy(&w32, &got[(size_t)s * width + j], 4);
			if (i < 0) {
				bad += w32 != p32 || got16[(size_t)s * width + j] != 0xffffu;
				continue;
			}
			const float v = src[(size_t)i * width + j];
			bad += memcmp(&got[(size_t)s * width + j], &v, 4) != 0 ||
			       got16[(size_t)s * width + j] != gs_f32_to_bf16(v);
		}
	}
	printf("%-4s scatter_rows fp32 and bf16 rows (%d rows of %zu, 2 not stored)\n", bad ? "FAIL" : "ok", n, width);
	CHECK_MSG(bad == 0, "scatter_rows: %d elements wrong", bad);
	dfree(dsrc), dfree(drows), dfree(d32), dfree(d16);
	free(src), free(got), free(got16);
}

/* ---- element-wise, embed ---------------------------------------------------------------- */

static void test_elementwise(size_t n)
{
	float *g = frand_array(n, 5.0f), *u = frand_array(n, 2.0f), *ref = xmalloc(n * sizeof(float));
	float *got = xmalloc(n * sizeof(float)), *dg, *du, *dout;
	char what[128];

	dg = dup_to_dev(g, n * sizeof(float));
	du = dup_to_dev(u, n * sizeof(float));
	dout = dalloc(n * sizeof(float));

	cpu.iface->geglu(cpu.ctx, ref, g, u, n);
	poison(dout, n * sizeof(float));
	gpu.iface->geglu(gpu.ctx, dout, dg, du, n);
	down(got, dout, n * sizeof(float));
	snprintf(what, sizeof(what), "geglu n=%zu", n);
	compare(what, got, ref, n, TOL_TANH_L2, TOL_TANH_MAX);

	for (size_t i = 0; i < n; i++) /* softcap over a range that saturates */
		ref[i] = u[i] * 40.0f;
	up(du, ref, n * sizeof(float));
	cpu.iface->softcap(cpu.ctx, ref, n, 30.0f);
	gpu.iface->softcap(gpu.ctx, du, n, 30.0f);
	down(got, du, n * sizeof(float));
	snprintf(what, sizeof(what), "softcap n=%zu cap=30", n);
	compare(what, got, ref, n, TOL_TANH_L2, TOL_TANH_MAX);

	dfree(dg);
	dfree(du);
	dfree(dout);
	free(g);
	free(u);
	free(ref);
	free(got);
}

/* ---- the vision tower's ops --------------------------------------------------------- */

/* layernorm (same double mean/variance, the same fp32 roundings: TOL_NORM), add_rows and
 * avgpool (the same fp32 additions in the same order: bit-exact), gelu (TOL_TANH), patches
 * (one exact conversion and three roundings: bit-exact), attention_full (cuBLAS fp32 GEMMs
 * against the CPU's fp32 matmuls, sums in another order: TOL_ATTN). */
static void test_vision_ops(int rows, int dim, int side, int k, int n, int heads, int hd, int S, int P)
{
	size_t nx = (size_t)rows * dim;
	float *x = frand_array(nx, 3.0f), *w = frand_array((size_t)dim, 1.0f), *b = frand_array((size_t)dim, 1.0f);
	float *ref = xmalloc(nx * sizeof(float)), *got = xmalloc(nx * sizeof(float));
	float *dx = dup_to_dev(x, nx * sizeof(float)), *dw = dup_to_dev(w, (size_t)dim * sizeof(float));
	float *db = dup_to_dev(b, (size_t)dim * sizeof(float)), *dy = dalloc(nx * sizeof(float));
	char what[128];

	for (size_t i = 0; i < nx; i++) /* an offset row mean, as LayerNorm inputs have */
		x[i] += 5.0f;
	up(dx, x, nx * sizeof(float));
	cpu.iface->layernorm(cpu.ctx, ref, x, w, b, rows, dim, 1e-6f);
	poison(dy, nx * sizeof(float));
	gpu.iface->layernorm(gpu.ctx, dy, dx, dw, db, rows, dim, 1e-6f);
	down(got, dy, nx * sizeof(float));
	snprintf(what, sizeof(what), "layernorm %dx%d", rows, dim);
	compare(what, got, ref, nx, TOL_NORM_L2, TOL_NORM_MAX);

	memcpy(ref, x, nx * sizeof(float));
	cpu.iface->add_rows(cpu.ctx, ref, x, b, rows, dim); /* y = x; y += x + b */
	up(dy, x, nx * sizeof(float));
	gpu.iface->add_rows(gpu.ctx, dy, dx, db, rows, dim);
	down(got, dy, nx * sizeof(float));
	snprintf(what, sizeof(what), "add_rows %dx%d x+b", rows, dim);
	compare(what, got, ref, nx, 0, 0);
	cpu.iface->add_rows(cpu.ctx, ref, NULL, b, rows, dim);
	gpu.iface->add_rows(gpu.ctx, dy, NULL, db, rows, dim);
	down(got, dy, nx * sizeof(float));
	snprintf(what, sizeof(what), "add_rows %dx%d b only", rows, dim);
	compare(what, got, ref, nx, 0, 0);

	cpu.iface->gelu(cpu.ctx, ref, x, nx);
	poison(dy, nx * sizeof(float));
	gpu.iface->gelu(gpu.ctx, dy, dx, nx);
	down(got, dy, nx * sizeof(float));
	snprintf(what, sizeof(what), "gelu n=%zu", nx);
	compare(what, got, ref, nx, TOL_TANH_L2, TOL_TANH_MAX);

	/* avgpool of a side x side grid of dim-wide rows */
	{
		size_t ng = (size_t)side * side * dim, no = (size_t)(side / k) * (side / k) * dim;
		float *gx = frand_array(ng, 2.0f), *gr = xmalloc(no * sizeof(float)), *gg = xmalloc(no * sizeof(float));
		float *dgx = dup_to_dev(gx, ng * sizeof(float)), *dgo = dalloc(no * sizeof(float));
		cpu.iface->avgpool(cpu.ctx, gr, gx, side, k, dim);
		poison(dgo, no * sizeof(float));
		gpu.iface->avgpool(gpu.ctx, dgo, dgx, side, k, dim);
		down(gg, dgo, no * sizeof(float));
		snprintf(what, sizeof(what), "avgpool side %d k %d dim %d", side, k, dim);
		compare(what, gg, gr, no, 0, 0);
		dfree(dgx), dfree(dgo), free(gx), free(gr), free(gg);
	}
	/* patches of an S x S RGB8 image */
	{
		size_t np = (size_t)(S / P) * (S / P) * 3 * P * P, nb = (size_t)S * S * 3;
		uint8_t *px = xmalloc(nb);
		for (size_t i = 0; i < nb; i++)
			px[i] = (uint8_t)(rng_next() >> 56);
		float *pr = xmalloc(np * sizeof(float)), *pg = xmalloc(np * sizeof(float)), *dpo = dalloc(np * sizeof(float));
		uint8_t *dpx = dup_to_dev(px, nb);
		cpu.iface->patches(cpu.ctx, pr, px, S, P);
		poison(dpo, np * sizeof(float));
		gpu.iface->patches(gpu.ctx, dpo, dpx, S, P);
		down(pg, dpo, np * sizeof(float));
		snprintf(what, sizeof(what), "patches S %d P %d", S, P);
		compare(what, pg, pr, np, 0, 0);
		dfree(dpx), dfree(dpo), free(px), free(pr), free(pg);
	}
	/* bidirectional attention over n rows */
	{
		size_t na = (size_t)n * heads * hd;
		float *q = frand_array(na, 2.0f), *kk = frand_array(na, 2.0f), *v = frand_array(na, 1.0f);
		float *ar = xmalloc(na * sizeof(float)), *ag = xmalloc(na * sizeof(float));
		float *dq = dup_to_dev(q, na * sizeof(float)), *dk = dup_to_dev(kk, na * sizeof(float));
		float *dv = dup_to_dev(v, na * sizeof(float)), *dao = dalloc(na * sizeof(float));
		float scale = 1.0f / sqrtf((float)hd);
		cpu.iface->attention_full(cpu.ctx, ar, q, kk, v, n, heads, hd, scale);
		poison(dao, na * sizeof(float));
		gpu.iface->attention_full(gpu.ctx, dao, dq, dk, dv, n, heads, hd, scale);
		down(ag, dao, na * sizeof(float));
		snprintf(what, sizeof(what), "attention_full n %d heads %d head_dim %d", n, heads, hd);
		compare(what, ag, ar, na, TOL_ATTN_L2, TOL_ATTN_MAX);
		dfree(dq), dfree(dk), dfree(dv), dfree(dao);
		free(q), free(kk), free(v), free(ar), free(ag);
	}
	dfree(dx), dfree(dw), dfree(db), dfree(dy);
	free(x), free(w), free(b), free(ref), free(got);
}

/* The context-parallel merge: k parts of n records (some parts empty: lse -inf and NaN outputs
 * that must stay unread, a record with no part at all), CPU op vs CUDA op. */
static void test_attn_merge_case(int k, int n, int D)
{
	size_t np = (size_t)k * n * (D + 1), no = (size_t)n * D;
	float *parts = frand_array(np, 1.0f), *ro = xmalloc(no * sizeof(float)), *go = xmalloc(no * sizeof(float));
	float *rl = xmalloc((size_t)n * sizeof(float)), *gl = xmalloc((size_t)n * sizeof(float));
	char what[128];

	for (int i = 0; i < k; i++)
		for (int r = 0; r < n; r++) {
			float *p = parts + ((size_t)i * n + r) * (D + 1);
			bool empty = r == 0 || (i == 1 && r % 3 == 0);
			p[D] = empty ? -INFINITY : 20.0f * frand();
			if (empty)
				for (int d = 0; d < D; d++)
					p[d] = NAN;
		}
	float *dp = dup_to_dev(parts, np * sizeof(float)), *dgo = dalloc(no * sizeof(float));
	float *dgl = dalloc((size_t)n * sizeof(float));
	cpu.iface->attn_merge(cpu.ctx, ro, rl, parts, k, n, D);
	poison(dgo, no * sizeof(float));
	gpu.iface->attn_merge(gpu.ctx, dgo, dgl, dp, k, n, D);
	down(go, dgo, no * sizeof(float));
	down(gl, dgl, (size_t)n * sizeof(float));
	snprintf(what, sizeof(what), "attn_merge k %d n %d head_dim %d", k, n, D);
	compare(what, go, ro, no, 1e-6, 1e-6);
	CHECK_MSG(gl[0] == -INFINITY && rl[0] == -INFINITY, "%s: a record with no key: lse %g / %g", what, gl[0], rl[0]);
	compare("attn_merge lse (records 1..n)", gl + 1, rl + 1, (size_t)n - 1, 1e-6, 1e-6);
	dfree(dp), dfree(dgo), dfree(dgl), free(parts), free(ro), free(go), free(rl), free(gl);
}

static void test_embed_case(enum gs_dtype dt, int rows, int cols)
{
	static const int32_t ids[] = { 100, 5, 149, 150, 1000, 123, 100, -1 };
	const int n = (int)(sizeof(ids) / sizeof(ids[0]));
	const int64_t row0 = 100;
	const float scale = gs_round_bf16(sqrtf(5376.0f));
	size_t es = gs_dtype_size(dt), out_n = (size_t)n * cols;
	void *hw = xmalloc((size_t)rows * cols * es), *dw, *dids, *dout;
	float *ref = xmalloc(out_n * sizeof(float)), *got = xmalloc(out_n * sizeof(float));
	struct gs_tensor eh = { dt, rows, cols, hw }, ed;
	char what[128];

	fill_weights(dt, hw, (size_t)rows * cols);
	cpu.iface->embed(cpu.ctx, ref, &eh, ids, n, scale, row0);
	dw = dup_to_dev(hw, (size_t)rows * cols * es);
	dids = dup_to_dev(ids, sizeof(ids));
	dout = dalloc(out_n * sizeof(float));
	poison(dout, out_n * sizeof(float));
	ed = (struct gs_tensor){ dt, rows, cols, dw };
	gpu.iface->embed(gpu.ctx, dout, &ed, dids, n, scale, row0);
	down(got, dout, out_n * sizeof(float));
	snprintf(what, sizeof(what), "embed %s rows [100, %d) cols=%d, ids in and out of range (bit-exact)",
		 gs_dtype_name(dt), 100 + rows, cols);
	compare(what, got, ref, out_n, 0, 0);
	dfree(dw);
	dfree(dids);
	dfree(dout);
	free(hw);
	free(ref);
	free(got);
}

/* ---- argmax / top-k ---------------------------------------------------------------------- */

static uint32_t order_key(float f) /* as sample.cu: NaN lowest, -0.0 == +0.0 */
{
	uint32_t u;
	if (isnan(f))
		return 0;
	if (f == 0.0f)
		f = 0.0f;
	memcpy(&u, &f, sizeof(u));
	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static const float *sort_row;

static int by_rank(const void *pa, const void *pb)
{
	int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
	uint32_t ka = order_key(sort_row[a]), kb = order_key(sort_row[b]);
	if (ka != kb)
		return ka > kb ? -1 : 1;
	return a < b ? -1 : a > b;
}

static void test_pick_cols(int cols)
{
	static const int ks[] = { 1, 5, 40, 256 };
	const int rows = 4;
	size_t n = (size_t)rows * cols;
	float *x = xmalloc(n * sizeof(float)), *dx, vals[4 * 256];
	int32_t *order = xmalloc(n * sizeof(int32_t)), ids[4 * 256];
	int bad;

	for (int c = 0; c < cols; c++) {
		x[c] = frand() * 20.0f;                               /* distinct values */
		x[cols + c] = floorf((frand() + 1.0f) * 2.0f) * 0.25f; /* 4 levels: ties everywhere */
		x[2 * cols + c] = c % 3 == 0 ? -INFINITY : frand();   /* -inf, and the max repeated below */
		x[3 * cols + c] = c % 5 == 0 ? -0.0f : (c % 5 == 1 ? 0.0f : -1.0f - frand()); /* ±0 tie for the best */
	}
	if (cols > 10) {
		x[2 * cols + 7] = 5.0f;
		x[2 * cols + cols - 1] = 5.0f;
	}
	for (int r = 0; r < rows; r++) {
		sort_row = x + (size_t)r * cols;
		for (int c = 0; c < cols; c++)
			order[(size_t)r * cols + c] = c;
		qsort(order + (size_t)r * cols, cols, sizeof(int32_t), by_rank);
	}
	dx = dup_to_dev(x, n * sizeof(float));

	memset(ids, 0xff, sizeof(ids));
	memset(vals, 0xff, sizeof(vals));
	CHECK(gs_cuda_argmax_rows(&gpu, dx, rows, cols, ids, vals) == GS_OK);
	bad = 0;
	for (int r = 0; r < rows; r++) {
		int32_t want = order[(size_t)r * cols];
		bad += ids[r] != want || memcmp(&vals[r], &x[(size_t)r * cols + want], sizeof(float)) != 0;
	}
	printf("%-4s argmax rows=%d cols=%d\n", bad ? "FAIL" : "ok", rows, cols);
	CHECK_MSG(bad == 0, "argmax cols=%d: %d rows wrong", cols, bad);

	for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
		int k = ks[ki];
		if (k > cols)
			continue;
		memset(ids, 0xff, sizeof(ids));
		memset(vals, 0xff, sizeof(vals));
		CHECK(gs_cuda_topk_rows(&gpu, dx, rows, cols, k, ids, vals) == GS_OK);
		bad = 0;
		for (int r = 0; r < rows; r++)
			for (int i = 0; i < k; i++) {
				int32_t want = order[(size_t)r * cols + i];
				int wrong = ids[r * k + i] != want ||
					    memcmp(&vals[r * k + i], &x[(size_t)r * cols + want], sizeof(float)) != 0;
				if (wrong && bad++ < 3)
					fprintf(stderr, "  top-%d cols=%d row %d rank %d: got id %d, want %d\n", k, cols, r, i,
						ids[r * k + i], want);
			}
		printf("%-4s top-k k=%d rows=%d cols=%d (ties by column, -inf, ±0)\n", bad ? "FAIL" : "ok", k, rows, cols);
		CHECK_MSG(bad == 0, "top-%d cols=%d: %d entries wrong", k, cols, bad);
	}
	dfree(dx);
	free(x);
	free(order);
}

static void test_pick(void)
{
	static const int colss[] = { 1, 7, 1000, 65552, 262208 };
	int32_t id;
	float v;
	void *d = dalloc(16 * sizeof(float));

	for (size_t i = 0; i < sizeof(colss) / sizeof(colss[0]); i++)
		test_pick_cols(colss[i]);
	CHECK(gs_cuda_topk_rows(&gpu, d, 1, 16, 0, &id, &v) == GS_ERR_INVALID_ARG);
	CHECK(gs_cuda_topk_rows(&gpu, d, 1, 16, 17, &id, &v) == GS_ERR_INVALID_ARG);
	CHECK(gs_cuda_topk_rows(&gpu, d, 1, 1000, GS_CUDA_TOPK_MAX + 1, &id, &v) == GS_ERR_INVALID_ARG);
	CHECK(gs_cuda_argmax_rows(&gpu, d, 1, 0, &id, &v) == GS_ERR_INVALID_ARG);
	CHECK(gs_cuda_argmax_rows(&cpu, d, 1, 16, &id, &v) == GS_ERR_INVALID_ARG);
	CHECK(gs_cuda_argmax_rows(&gpu, d, 0, 16, &id, &v) == GS_OK);
	dfree(d);
}

/* ---- the candidates op (sampling on the device) ------------------------------------------- */

/* Against the CPU backend's op (itself checked bit for bit against the sampler in test_sampler):
 * ids, processed and raw logits must be the same bits; the log-sum-exp within 2e-6 relative.
 * Rows: coarse values (ties across the cut), NaN, +-inf, -0.0 beside +0.0, greedy and tempered
 * rows, penalties above and below 1, frequency/presence penalties, logit biases and masked ids
 * over edit lists with ids outside the slice. */
static void test_candidates_case(int rows, int cols, int k)
{
	const int32_t vocab0 = 777, hmax = 300;
	size_t n = (size_t)rows * cols, no = (size_t)rows * (k + 1);
	float *x = xmalloc(n * sizeof(float));
	struct gs_logit_edit *hist = xmalloc((size_t)rows * hmax * sizeof(*hist));
	struct gs_cand_row *rp = xmalloc((size_t)rows * sizeof(*rp));
	struct gs_cand *want = xmalloc(no * sizeof(*want)), *got = xmalloc(no * sizeof(*got));
	int32_t nh = 0;

	for (int r = 0; r < rows; r++) {
		for (int c = 0; c < cols; c++)
			x[(size_t)r * cols + c] = r % 2 ? roundf(frand() * 16.0f) / 4.0f : frand() * 12.0f;
		if (cols > 8) {
			float *xr = x + (size_t)r * cols;
			xr[1] = NAN, xr[2] = INFINITY, xr[3] = -INFINITY, xr[4] = -0.0f, xr[5] = 0.0f, xr[6] = -0.0f;
		}
		int32_t ne = (r * 97) % hmax < cols + 40 ? (r * 97) % hmax : cols + 40;
		rp[r] = (struct gs_cand_row){ .penalty = r % 3 == 0 ? 1.0f : r % 3 == 1 ? 1.3f : 0.6f,
					      .frequency = r % 2 ? 0.7f : -1.1f, .presence = r % 3 ? 0.35f : 0.0f,
					      .temperature = r % 4 == 0 ? 1.0f : 0.3f + 0.2f * (float)r,
					      .edit0 = nh, .n_edit = ne, .want_lse = r % 5 != 2 };
		/* distinct ids from 20 below the slice on, shifted so that ids 1 (NaN) and 4 (-0.0) come up */
		for (int h = 0; h < ne; h++) {
			uint64_t u = rng_next();
			hist[nh + h] = (struct gs_logit_edit){ .id = vocab0 - 20 + (h + 20 * (r % 2)) % (cols + 40),
							       .count = (int32_t)(u % 4),
							       .bias = u % 3 == 0 ? frand() * 100.0f : 0.0f,
							       .flags = (int32_t)((u >> 8) % 4) & (((u >> 16) % 8) ? 1 : 3) };
		}
		nh += ne;
	}
	struct gs_cand_args a = { .out = want, .logits = x, .row = rp, .edit = hist, .rows = rows, .cols = cols, .k = k,
				  .vocab0 = vocab0 };
	cpu.iface->candidates(cpu.ctx, &a);

	float *dx = dup_to_dev(x, n * sizeof(float));
	void *dh = dup_to_dev(hist, (size_t)(nh ? nh : 1) * sizeof(*hist));
	void *drp = dup_to_dev(rp, (size_t)rows * sizeof(*rp));
	void *dout = dalloc(no * sizeof(*got));
	poison(dout, no * sizeof(*got));
	a = (struct gs_cand_args){ .out = dout, .logits = dx, .row = drp, .edit = dh, .rows = rows, .cols = cols, .k = k,
				   .vocab0 = vocab0 };
	gpu.iface->candidates(gpu.ctx, &a);
	down(got, dout, no * sizeof(*got));

	int bad = 0;
	double worst_lse = 0;
	for (int r = 0; r < rows; r++)
		for (int i = 0; i <= k; i++) {
			const struct gs_cand *w = &want[(size_t)r * (k + 1) + i], *g = &got[(size_t)r * (k + 1) + i];
			int wrong;
			if (i < k) {
				wrong = memcmp(w, g, sizeof(*w)) != 0;
			} else {
				double d = fabs((double)g->raw - w->raw) / (fabs(w->raw) > 1 ? fabs(w->raw) : 1);
				if (w->raw == -INFINITY)
					d = g->raw == -INFINITY ? 0 : INFINITY;
				wrong = g->id != -2 || g->proc != 0.0f || !(d <= 2e-6);
				worst_lse = d > worst_lse || d != d ? d : worst_lse;
			}
			if (wrong && bad++ < 3)
				fprintf(stderr, "  candidates rows=%d cols=%d k=%d: row %d entry %d: got {%d, %.9g, %.9g}, want "
					"{%d, %.9g, %.9g}\n", rows, cols, k, r, i, g->id, g->proc, g->raw, w->id, w->proc, w->raw);
		}
	printf("%-4s candidates rows=%d cols=%d k=%d (log-sum-exp within %.2g)\n", bad ? "FAIL" : "ok", rows, cols, k,
	       worst_lse);
	CHECK_MSG(bad == 0, "candidates rows=%d cols=%d k=%d: %d entries wrong", rows, cols, k, bad);
	dfree(dx), dfree(dh), dfree(drp), dfree(dout);
	free(x), free(hist), free(rp), free(want), free(got);
}

static void test_candidates(void)
{
	CHECK(gpu.iface->candidates != NULL && gpu.iface->cand_max_k == GS_CUDA_TOPK_MAX);
	test_candidates_case(1, 262144, 64);
	test_candidates_case(9, 262208, 256);
	test_candidates_case(6, 1000, 20);
	test_candidates_case(5, 40, 64);  /* a slice shorter than k: padding */
	test_candidates_case(3, 1, 5);
}

int main(void)
{
	int ndev = gs_cuda_device_count();

	if (!gs_cuda_built()) {
		printf("SKIP: built without CUDA\n");
		return SKIP;
	}
	if (ndev == 0) {
		printf("SKIP: no CUDA device\n");
		return SKIP;
	}
	setenv("GS_CUDA_SYNC", "1", 0);
	if (gs_backend_cpu_create(0, &cpu) != GS_OK)
		die("cpu backend");
	if (gs_backend_cuda_create(0, &gpu) != GS_OK)
		die("cuda backend on device 0");
	printf("CUDA devices: %d; testing device %d\n", ndev, gs_backend_cuda_device(&gpu));
	CHECK_STREQ(gpu.iface->name, "cuda");
	CHECK(gs_backend_cuda_stream(&gpu) != NULL);
	CHECK(gs_backend_cuda_stream(&cpu) == NULL);
	CHECK(gs_backend_cuda_create(ndev, &(struct gs_backend){ 0 }) == GS_ERR_INVALID_ARG);

	test_matmul();
	test_rmsnorm_case(1, 5376, 0);
	test_rmsnorm_case(7, 128, 0);
	test_rmsnorm_case(3, 1000, 1);
	test_rmsnorm_case(5, 33, 0);
	test_rmsnorm_case(2, 1, 0);
	test_rmsnorm_add_case(7, 5376);
	test_rmsnorm_add_case(3, 33);
	test_rope_case(1, 8, 128, 10000.0, 1.0, 100);
	test_rope_case(5, 4, 256, 1000000.0, 0.125, 131072);
	test_rope_case(3, 2, 6, 10000.0, 1.0, 50);
	test_rope_case(2, 3, 7, 10000.0, 1.0, 4000);
	test_attention();
	test_scatter_rows();
	test_elementwise(1);
	test_elementwise(1000);
	test_elementwise(21504 * 3 + 5);
	test_attn_merge_case(1, 7, 128);
	test_attn_merge_case(2, 100, 128);
	test_attn_merge_case(4, 33, 256);
	test_attn_merge_case(8, 5, 16);
	test_embed_case(GS_DTYPE_BF16, 50, 33);
	test_embed_case(GS_DTYPE_BF16, 50, 5376);
	test_embed_case(GS_DTYPE_F16, 50, 40);
	test_embed_case(GS_DTYPE_F32, 50, 17);
	test_pick();
	test_candidates();
	test_vision_ops(7, 33, 4, 2, 16, 4, 8, 56, 14);
	test_vision_ops(64, 1152, 64, 4, 4096, 16, 72, 896, 14); /* the 4B tower's shapes */
	test_vision_ops(3, 5, 6, 3, 37, 3, 12, 30, 5);
	CHECK(gs_cuda_synchronize(&gpu) == GS_OK);

	gs_backend_cuda_free(&gpu);
	gs_backend_cpu_free(&cpu);
	TEST_DONE();
}
