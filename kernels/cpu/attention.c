/* The attention op on the CPU (struct gs_attn_args): tiled, with an online softmax over KV tiles
 * (FlashAttention's loop order).
 *
 * Work item: one sequence, one kv head, a block of consecutive query rows; its M = rows * rep
 * query vectors (the rep q heads of the kv head) share every K/V tile load. Q is kept transposed,
 * QT[d][m], so that scores come out as S[j][m] with the query vectors in the SIMD lanes: the
 * running max, the exponentials and the sums are then plain lane-wise vector ops.
 *
 * Batch invariance (a row's bits do not depend on the other rows, the chunking of a prompt or
 * the thread count): KV tiles are fixed on absolute positions (multiples of GS_ATTN_TILE); every
 * score is one fma chain over d; keys outside a row's own range are masked to -inf by a select
 * (exp gives exactly 0, and adding +0 to a sum of non-negative terms changes no bit); a tile
 * that holds none of a row's keys leaves its state untouched (alpha = 1, no p·v); and p·v runs
 * over exactly the row's own keys of the tile, in ascending position order. */
#include <float.h>
#include <stdbool.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gs_cpu.h"
#include "gs_dtype.h"
#include "gs_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define GS_ATTN_X86 1
#endif

#define GS_ATTN_TILE     64  /* keys per tile, aligned to absolute positions */
#define GS_ATTN_LANES    16  /* query vectors per SIMD group (padding unit of M) */
#define GS_ATTN_MAX_M    256 /* query vectors per work item, unless rep alone is larger */
#define GS_ATTN_PV_GROUP 4   /* query vectors sharing one pass over a V tile */

#define GS_ATTN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

/* exp(x) for x <= 0 (Cephes expf's reduction and polynomial, ~1 ulp); 0 below -87 and for NaN
 * (masked lanes may compute -inf - -inf; their result is discarded). Written without branches
 * so that it vectorises; the same operations in every lane. */
static inline float attn_exp(float x)
{
	const float log2e = 1.44269504088896341f, c1 = 0.693359375f, c2 = -2.12194440e-4f;
	float xc = x > -87.0f ? (x < 0.0f ? x : 0.0f) : -87.0f;
	float n = floorf(xc * log2e + 0.5f);
	float r = xc - n * c1 - n * c2;
	float p = 1.9875691500e-4f;
	p = p * r + 1.3981999507e-3f;
	p = p * r + 8.3334519073e-3f;
	p = p * r + 4.1665795894e-2f;
	p = p * r + 1.6666665459e-1f;
	p = p * r + 5.0000001201e-1f;
	p = p * r * r + r + 1.0f;
	union { int32_t i; float f; } u = { .i = ((int32_t)n + 127) * (1 << 23) };
	float y = p * u.f;
	return x >= -87.0f ? y : 0.0f;
}

/* ---- micro-kernels: portable versions (vectorised per ISA by target_clones) ---- */

/* S[j][m] = sum_d K[j][d] * QT[d][m] for j < GS_ATTN_TILE, m < mp (a multiple of 16); blocks of
 * 4 keys x 16 query vectors in local arrays the compiler keeps in registers. */
GS_ATTN_CLONES
static void qk_c(float *S, const float *const *k, const float *QT, int mp, int D)
{
	for (int j0 = 0; j0 < GS_ATTN_TILE; j0 += 4)
		for (int m0 = 0; m0 < mp; m0 += GS_ATTN_LANES) {
			float acc[4][GS_ATTN_LANES] = { { 0 } };
			for (int d = 0; d < D; d++) {
				const float *qt = QT + (size_t)d * mp + m0;
				for (int a = 0; a < 4; a++) {
					float kv = k[j0 + a][d];
					for (int i = 0; i < GS_ATTN_LANES; i++)
						acc[a][i] += kv * qt[i];
				}
			}
			for (int a = 0; a < 4; a++)
				memcpy(S + (size_t)(j0 + a) * mp + m0, acc[a], sizeof(acc[a]));
		}
}

/* acc[g][d] = acc[g][d] * alpha[g] + sum_{j in [ja, jb]} p[j][g] * v[j][d], j ascending, for the
 * G query vectors g starting at acc / p (p's row stride mp). */
GS_ATTN_CLONES
static void pv_c(float *acc, const float *p, int mp, const float *alpha, int G, const float *const *v, int ja, int jb,
		 int D)
{
	for (int g = 0; g < G; g++) {
		float *ac = acc + (size_t)g * D;
		for (int d = 0; d < D; d++)
			ac[d] *= alpha[g];
		for (int j = ja; j <= jb; j++) {
			float pj = p[(size_t)j * mp + g];
			const float *vj = v[j];
			for (int d = 0; d < D; d++)
				ac[d] += pj * vj[d];
		}
	}
}

#ifdef GS_ATTN_X86
#define GS_ATTN_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma")))

/* qk_c with AVX-512: 4 keys x 64 query vectors in 16 registers; each score is the fma chain
 * over d from 0 (the same in every block shape). */
GS_ATTN_AVX512
static inline __attribute__((always_inline)) void qk_block512(float *S, const float *const *k, const float *QT, int mp,
								int D, int j0, int m0, const int NV)
{
	__m512 acc[4][4];

	for (int a = 0; a < 4; a++)
		for (int b = 0; b < NV; b++)
			acc[a][b] = _mm512_setzero_ps();
	const float *k0 = k[j0], *k1 = k[j0 + 1], *k2 = k[j0 + 2], *k3 = k[j0 + 3];
	for (int d = 0; d < D; d++) {
		const float *qt = QT + (size_t)d * mp + m0;
		__m512 q[4];
		for (int b = 0; b < NV; b++)
			q[b] = _mm512_loadu_ps(qt + 16 * b);
		__m512 x0 = _mm512_set1_ps(k0[d]), x1 = _mm512_set1_ps(k1[d]), x2 = _mm512_set1_ps(k2[d]),
		       x3 = _mm512_set1_ps(k3[d]);
		for (int b = 0; b < NV; b++) {
			acc[0][b] = _mm512_fmadd_ps(x0, q[b], acc[0][b]);
			acc[1][b] = _mm512_fmadd_ps(x1, q[b], acc[1][b]);
			acc[2][b] = _mm512_fmadd_ps(x2, q[b], acc[2][b]);
			acc[3][b] = _mm512_fmadd_ps(x3, q[b], acc[3][b]);
		}
	}
	for (int a = 0; a < 4; a++)
		for (int b = 0; b < NV; b++)
			_mm512_storeu_ps(S + (size_t)(j0 + a) * mp + m0 + 16 * b, acc[a][b]);
}

GS_ATTN_AVX512
static void qk_avx512(float *S, const float *const *k, const float *QT, int mp, int D)
{
	for (int j0 = 0; j0 < GS_ATTN_TILE; j0 += 4) {
		int m0 = 0;
		for (; m0 + 64 <= mp; m0 += 64)
			qk_block512(S, k, QT, mp, D, j0, m0, 4);
		for (; m0 < mp; m0 += 16)
			qk_block512(S, k, QT, mp, D, j0, m0, 1);
	}
}

/* pv_c with AVX-512: G query vectors x 64 columns of d in registers, the V tile streamed once
 * per 64 columns. Per (g, d) lane: acc * alpha, then one fma per key in ascending order. */
GS_ATTN_AVX512
static inline __attribute__((always_inline)) void pv_block512(float *acc, const float *p, int mp, const float *alpha,
								const float *const *v, int ja, int jb, int D, const int G)
{
	for (int d0 = 0; d0 < D; d0 += 64) {
		__mmask16 mk[4];
		__m512 a[GS_ATTN_PV_GROUP][4];
		for (int b = 0; b < 4; b++) {
			int left = D - d0 - 16 * b;
			mk[b] = left >= 16 ? (__mmask16)0xffff : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
		}
		for (int g = 0; g < G; g++) {
			__m512 al = _mm512_set1_ps(alpha[g]);
			for (int b = 0; b < 4; b++)
				a[g][b] = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[b], acc + (size_t)g * D + d0 + 16 * b), al);
		}
		for (int j = ja; j <= jb; j++) {
			const float *vj = v[j] + d0;
			__m512 x[4];
			for (int b = 0; b < 4; b++)
				x[b] = _mm512_maskz_loadu_ps(mk[b], vj + 16 * b);
			for (int g = 0; g < G; g++) {
				__m512 pb = _mm512_set1_ps(p[(size_t)j * mp + g]);
				for (int b = 0; b < 4; b++)
					a[g][b] = _mm512_fmadd_ps(pb, x[b], a[g][b]);
			}
		}
		for (int g = 0; g < G; g++)
			for (int b = 0; b < 4; b++)
				_mm512_mask_storeu_ps(acc + (size_t)g * D + d0 + 16 * b, mk[b], a[g][b]);
	}
}

GS_ATTN_AVX512
static void pv_avx512(float *acc, const float *p, int mp, const float *alpha, int G, const float *const *v, int ja,
		      int jb, int D)
{
	switch (G) {
	case 1: pv_block512(acc, p, mp, alpha, v, ja, jb, D, 1); break;
	case 2: pv_block512(acc, p, mp, alpha, v, ja, jb, D, 2); break;
	case 3: pv_block512(acc, p, mp, alpha, v, ja, jb, D, 3); break;
	default: pv_block512(acc, p, mp, alpha, v, ja, jb, D, 4); break;
	}
}
#endif

#ifdef GS_ATTN_X86
#define GS_ATTN_AVX2 __attribute__((target("avx2,fma")))

/* qk_avx512's scheme with AVX2: 4 keys x 16 query vectors in 8 registers. */
GS_ATTN_AVX2
static void qk_avx2(float *S, const float *const *k, const float *QT, int mp, int D)
{
	for (int j0 = 0; j0 < GS_ATTN_TILE; j0 += 4) {
		const float *k0 = k[j0], *k1 = k[j0 + 1], *k2 = k[j0 + 2], *k3 = k[j0 + 3];
		for (int m0 = 0; m0 < mp; m0 += 16) {
			__m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
			       a31 = a00;
			for (int d = 0; d < D; d++) {
				const float *qt = QT + (size_t)d * mp + m0;
				__m256 q0 = _mm256_loadu_ps(qt), q1 = _mm256_loadu_ps(qt + 8);
				__m256 x = _mm256_broadcast_ss(k0 + d);
				a00 = _mm256_fmadd_ps(x, q0, a00);
				a01 = _mm256_fmadd_ps(x, q1, a01);
				x = _mm256_broadcast_ss(k1 + d);
				a10 = _mm256_fmadd_ps(x, q0, a10);
				a11 = _mm256_fmadd_ps(x, q1, a11);
				x = _mm256_broadcast_ss(k2 + d);
				a20 = _mm256_fmadd_ps(x, q0, a20);
				a21 = _mm256_fmadd_ps(x, q1, a21);
				x = _mm256_broadcast_ss(k3 + d);
				a30 = _mm256_fmadd_ps(x, q0, a30);
				a31 = _mm256_fmadd_ps(x, q1, a31);
			}
			float *s = S + (size_t)j0 * mp + m0;
			_mm256_storeu_ps(s, a00);
			_mm256_storeu_ps(s + 8, a01);
			_mm256_storeu_ps(s + mp, a10);
			_mm256_storeu_ps(s + mp + 8, a11);
			_mm256_storeu_ps(s + 2 * (size_t)mp, a20);
			_mm256_storeu_ps(s + 2 * (size_t)mp + 8, a21);
			_mm256_storeu_ps(s + 3 * (size_t)mp, a30);
			_mm256_storeu_ps(s + 3 * (size_t)mp + 8, a31);
		}
	}
}

/* pv_avx512's scheme with AVX2: G query vectors x 16 columns of d in registers. */
GS_ATTN_AVX2
static inline __attribute__((always_inline)) void pv_block256(float *acc, const float *p, int mp, const float *alpha,
								const float *const *v, int ja, int jb, int D, const int G)
{
	for (int d0 = 0; d0 < D; d0 += 16) {
		__m256i mk[2];
		__m256 a[GS_ATTN_PV_GROUP][2];
		for (int b = 0; b < 2; b++) {
			int left = D - d0 - 8 * b;
			mk[b] = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
		}
		for (int g = 0; g < G; g++) {
			__m256 al = _mm256_set1_ps(alpha[g]);
			for (int b = 0; b < 2; b++)
				a[g][b] = _mm256_mul_ps(_mm256_maskload_ps(acc + (size_t)g * D + d0 + 8 * b, mk[b]), al);
		}
		for (int j = ja; j <= jb; j++) {
			const float *vj = v[j] + d0;
			__m256 x0 = _mm256_maskload_ps(vj, mk[0]), x1 = _mm256_maskload_ps(vj + 8, mk[1]);
			for (int g = 0; g < G; g++) {
				__m256 pb = _mm256_broadcast_ss(p + (size_t)j * mp + g);
				a[g][0] = _mm256_fmadd_ps(pb, x0, a[g][0]);
				a[g][1] = _mm256_fmadd_ps(pb, x1, a[g][1]);
			}
		}
		for (int g = 0; g < G; g++)
			for (int b = 0; b < 2; b++)
				_mm256_maskstore_ps(acc + (size_t)g * D + d0 + 8 * b, mk[b], a[g][b]);
	}
}

GS_ATTN_AVX2
static void pv_avx2(float *acc, const float *p, int mp, const float *alpha, int G, const float *const *v, int ja,
		    int jb, int D)
{
	switch (G) {
	case 1: pv_block256(acc, p, mp, alpha, v, ja, jb, D, 1); break;
	case 2: pv_block256(acc, p, mp, alpha, v, ja, jb, D, 2); break;
	case 3: pv_block256(acc, p, mp, alpha, v, ja, jb, D, 3); break;
	default: pv_block256(acc, p, mp, alpha, v, ja, jb, D, 4); break;
	}
}

/* attn_exp, lane-wise with AVX-512 (the same reduction and polynomial, fused). */
GS_ATTN_AVX512
static inline __m512 attn_exp512(__m512 x)
{
	const __m512 lo = _mm512_set1_ps(-87.0f);
	__m512 xc = _mm512_max_ps(x, lo);
	__m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
					_MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
	__m512 p = _mm512_set1_ps(1.9875691500e-4f);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
	p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	p = _mm512_scalef_ps(p, n);
	return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ), p);
}

/* softmax_tile (below) without softcap, with AVX-512. */
GS_ATTN_AVX512
static void softmax_tile512(float *S, int mp, const int32_t *lo, const int32_t *hi, int32_t t0, float scale, float *mx,
			    float *l, float *alpha)
{
	const __m512 ninf = _mm512_set1_ps(-INFINITY), vscale = _mm512_set1_ps(scale);

	for (int m0 = 0; m0 < mp; m0 += GS_ATTN_LANES) {
		__m512i vlo = _mm512_loadu_si512(lo + m0), vhi = _mm512_loadu_si512(hi + m0);
		__m512 mt = ninf, sum = _mm512_setzero_ps();
		for (int j = 0; j < GS_ATTN_TILE; j++) {
			float *s = S + (size_t)j * mp + m0;
			__m512i pos = _mm512_set1_epi32(t0 + j);
			__mmask16 in = _mm512_cmp_epi32_mask(pos, vlo, _MM_CMPINT_NLT) &
				       _mm512_cmp_epi32_mask(pos, vhi, _MM_CMPINT_LE);
			__m512 v = _mm512_mask_mov_ps(ninf, in, _mm512_mul_ps(_mm512_loadu_ps(s), vscale));
			_mm512_storeu_ps(s, v);
			mt = _mm512_max_ps(mt, v);
		}
		__m512 mo = _mm512_loadu_ps(mx + m0);
		__m512 mn = _mm512_max_ps(mt, mo);
		__mmask16 none = _mm512_cmp_ps_mask(mn, ninf, _CMP_EQ_OQ); /* no key yet: alpha 1 */
		__m512 al = _mm512_mask_mov_ps(attn_exp512(_mm512_sub_ps(mo, mn)), none, _mm512_set1_ps(1.0f));
		for (int j = 0; j < GS_ATTN_TILE; j++) {
			float *s = S + (size_t)j * mp + m0;
			__m512 v = _mm512_loadu_ps(s);
			__mmask16 live = _mm512_cmp_ps_mask(v, ninf, _CMP_NEQ_UQ);
			__m512 p = _mm512_maskz_mov_ps(live, attn_exp512(_mm512_sub_ps(v, mn)));
			_mm512_storeu_ps(s, p);
			sum = _mm512_add_ps(sum, p);
		}
		_mm512_storeu_ps(alpha + m0, al);
		_mm512_storeu_ps(l + m0, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(l + m0), al), sum));
		_mm512_storeu_ps(mx + m0, mn);
	}
}
#endif

/* One tile's softmax step for the query vectors [0, mp): S[j][m] (raw q·k) becomes
 * p = exp(s - max_new) on the keys m may see, exactly 0 elsewhere; mx, l, alpha per m. */
GS_ATTN_CLONES
static void softmax_tile(float *S, int mp, const int32_t *lo, const int32_t *hi, int32_t t0, float scale, float softcap,
			 float *mx, float *l, float *alpha)
{
	for (int m0 = 0; m0 < mp; m0 += GS_ATTN_LANES) {
		float mt[GS_ATTN_LANES], sum[GS_ATTN_LANES], mn[GS_ATTN_LANES];
		for (int i = 0; i < GS_ATTN_LANES; i++) {
			mt[i] = -INFINITY;
			sum[i] = 0.0f;
		}
		for (int j = 0; j < GS_ATTN_TILE; j++) {
			float *s = S + (size_t)j * mp + m0;
			int32_t pos = t0 + j;
			for (int i = 0; i < GS_ATTN_LANES; i++) {
				float v = s[i] * scale;
				bool in = pos >= lo[m0 + i] && pos <= hi[m0 + i];
				v = in ? v : -INFINITY;
				s[i] = v;
				mt[i] = v > mt[i] ? v : mt[i];
			}
		}
		if (softcap > 0) { /* rare (Gemma 2): tanhf per score, before the max */
			for (int i = 0; i < GS_ATTN_LANES; i++)
				mt[i] = -INFINITY;
			for (int j = 0; j < GS_ATTN_TILE; j++) {
				float *s = S + (size_t)j * mp + m0;
				for (int i = 0; i < GS_ATTN_LANES; i++) {
					if (s[i] != -INFINITY)
						s[i] = softcap * tanhf(s[i] / softcap);
					mt[i] = s[i] > mt[i] ? s[i] : mt[i];
				}
			}
		}
		for (int i = 0; i < GS_ATTN_LANES; i++) {
			float mo = mx[m0 + i];
			mn[i] = mt[i] > mo ? mt[i] : mo;
			/* no key yet: keep alpha 1 (never exp(-inf - -inf)) */
			alpha[m0 + i] = mn[i] == -INFINITY ? 1.0f : attn_exp(mo - mn[i]);
		}
		for (int j = 0; j < GS_ATTN_TILE; j++) {
			float *s = S + (size_t)j * mp + m0;
			for (int i = 0; i < GS_ATTN_LANES; i++) {
				float e = attn_exp(s[i] - mn[i]);
				float p = s[i] == -INFINITY ? 0.0f : e;
				s[i] = p;
				sum[i] += p;
			}
		}
		for (int i = 0; i < GS_ATTN_LANES; i++) {
			l[m0 + i] = l[m0 + i] * alpha[m0 + i] + sum[i];
			mx[m0 + i] = mn[i];
		}
	}
}

/* ---- work items --------------------------------------------------------------------------- */

struct attn_job {
	const struct gs_attn_args *a;
	float **scratch;
	size_t *scratch_cap;
	int32_t kv_lo, kv_hi;
	float *ml;
	int rows_per_item;
	enum gs_cpu_isa isa;
};

/* Keys row t sees, [*lo, *hi] (inclusive; empty when *lo > *hi), clipped to [kv_lo, kv_hi). */
static void attn_row_range(const struct gs_attn_args *a, const struct gs_attn_seq *sq, int row, int32_t kv_lo,
			   int32_t kv_hi, int32_t *lo, int32_t *hi)
{
	int32_t pos = sq->pos0 + (row - sq->tok0);
	int32_t first = (a->window != INT32_MAX && pos - a->window + 1 > 0) ? pos - a->window + 1 : 0;
	int32_t last = pos;

	if (a->span && a->span[2 * row] < a->span[2 * row + 1]) { /* its image, both ways */
		if (a->span[2 * row] < first)
			first = a->span[2 * row];
		if (a->span[2 * row + 1] - 1 > last)
			last = a->span[2 * row + 1] - 1;
		GS_ASSERT(a->span[2 * row] <= pos && last < sq->pos0 + sq->n_tokens);
	}
	*lo = first > kv_lo ? first : kv_lo;
	*hi = last < kv_hi - 1 ? last : kv_hi - 1;
}

/* Row of position j (< pos0) in the layer's slab: its block through the table, a ring's modulo. */
static inline size_t attn_cache_row(const struct gs_attn_args *a, const struct gs_attn_seq *sq, int32_t j)
{
	int32_t b = j / a->block;

	if (sq->ring)
		b %= sq->ring;
	return (size_t)sq->table[b] * a->block + (size_t)(j % a->block);
}

/* Pointers to the tile's K and V rows of kv head g for positions [ja, jb] (tile-relative; the
 * rest point at zeros), copied into kb / vb: bf16 caches widened, fresh rows rounded as stored. */
static void attn_load_tile(const struct gs_attn_args *a, const struct gs_attn_seq *sq, int g, int32_t t0, int ja,
			   int jb, const float *zero, float *kb, float *vb, const float **kp, const float **vp)
{
	int D = a->head_dim;
	size_t kv_stride = (size_t)a->n_kv_heads * D, kvh = (size_t)g * D;

	for (int j = 0; j < GS_ATTN_TILE; j++) {
		int32_t pos = t0 + j;
		if (j < ja || j > jb) {
			kp[j] = vp[j] = zero;
			continue;
		}
		bool fresh = pos >= sq->pos0;
		size_t r = fresh ? (size_t)(sq->tok0 + pos - sq->pos0) : attn_cache_row(a, sq, pos);
		float *kd = kb + (size_t)j * D, *vd = vb + (size_t)j * D;
		if (a->kv_dtype == GS_DTYPE_F32) { /* copied: cache rows a power of two apart thrash L1 sets */
			const float *kc = fresh ? a->k_new : a->k_cache, *vc = fresh ? a->v_new : a->v_cache;
			memcpy(kd, kc + r * kv_stride + kvh, (size_t)D * sizeof(float));
			memcpy(vd, vc + r * kv_stride + kvh, (size_t)D * sizeof(float));
		} else if (fresh) {
			const float *ks = a->k_new + r * kv_stride + kvh, *vs = a->v_new + r * kv_stride + kvh;
			for (int d = 0; d < D; d++) {
				kd[d] = gs_round_bf16(ks[d]);
				vd[d] = gs_round_bf16(vs[d]);
			}
		} else {
			const uint16_t *ks = (const uint16_t *)a->k_cache + r * kv_stride + kvh;
			const uint16_t *vs = (const uint16_t *)a->v_cache + r * kv_stride + kvh;
			for (int d = 0; d < D; d++) {
				kd[d] = gs_bf16_to_f32(ks[d]);
				vd[d] = gs_bf16_to_f32(vs[d]);
			}
		}
		kp[j] = kd;
		vp[j] = vd;
	}
}

/* Asks for the K and V rows of kv head g at positions [t0 + ja, t0 + jb] ahead of their tile:
 * the copy in attn_load_tile otherwise waits on memory for every row. */
static void attn_prefetch_tile(const struct gs_attn_args *a, const struct gs_attn_seq *sq, int g, int32_t t0, int ja,
			       int jb)
{
	size_t kv_stride = (size_t)a->n_kv_heads * a->head_dim, kvh = (size_t)g * a->head_dim;
	size_t esz = a->kv_dtype == GS_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t);
	size_t bytes = (size_t)a->head_dim * esz;

	for (int j = ja; j <= jb; j++) {
		int32_t pos = t0 + j;
		if (pos >= sq->pos0) /* fresh rows: this step's, likely cached already */
			break;
		size_t off = (attn_cache_row(a, sq, pos) * kv_stride + kvh) * esz;
		for (size_t b = 0; b < bytes; b += 64) {
			__builtin_prefetch((const char *)a->k_cache + off + b);
			__builtin_prefetch((const char *)a->v_cache + off + b);
		}
	}
}

/* Is the tile at t0 held by another context-parallel group (gs_attn_seq.table; never without a
 * table, every key then fresh)? Units of GS_KV_CP_UNIT positions are whole tiles, so the tile's
 * first block decides. */
_Static_assert(GS_KV_CP_UNIT % GS_ATTN_TILE == 0, "a context-parallel unit is whole attention tiles");
static inline bool attn_tile_elsewhere(const struct gs_attn_args *a, const struct gs_attn_seq *sq, int32_t t0)
{
	return !sq->ring && sq->table && sq->table[t0 / a->block] < 0;
}

static size_t attn_align16(size_t n)
{
	return (n + 15) & ~(size_t)15;
}

/* Rows [r0, r0 + nr) of sequence sq (batch rows), kv head g. */
static void attn_item(const struct attn_job *job, int tid, const struct gs_attn_seq *sq, int r0, int nr, int g)
{
	const struct gs_attn_args *a = job->a;
	int D = a->head_dim, rep = a->n_heads / a->n_kv_heads;
	int M = nr * rep, mp = (int)attn_align16((size_t)M);
	size_t q_stride = (size_t)a->n_heads * D;
	size_t n_qt = attn_align16((size_t)D * mp), n_s = attn_align16((size_t)GS_ATTN_TILE * mp),
	       n_acc = attn_align16((size_t)mp * D), n_tile = attn_align16((size_t)GS_ATTN_TILE * D);
	size_t need = n_qt + n_s + n_acc + 2 * n_tile + attn_align16((size_t)D) + 5 * (size_t)mp;

	if (need > job->scratch_cap[tid]) {
		float *ns = realloc(job->scratch[tid], need * sizeof(float));
		GS_ASSERT(ns != NULL);
		job->scratch[tid] = ns;
		job->scratch_cap[tid] = need;
	}
	float *QT = job->scratch[tid], *S = QT + n_qt, *acc = S + n_s, *kb = acc + n_acc, *vb = kb + n_tile;
	float *zero = vb + n_tile, *mx = zero + attn_align16((size_t)D), *l = mx + mp, *alpha = l + mp;
	int32_t *lo = (int32_t *)(alpha + mp), *hi = lo + mp;
	const float *kp[GS_ATTN_TILE], *vp[GS_ATTN_TILE];
	int32_t u_lo = INT32_MAX, u_hi = INT32_MIN;

	memset(zero, 0, (size_t)D * sizeof(float));
	memset(acc, 0, (size_t)M * D * sizeof(float));
	for (int m = 0; m < mp; m++) {
		mx[m] = -INFINITY;
		l[m] = 0.0f;
		lo[m] = 1;
		hi[m] = 0;
	}
	for (int i = 0; i < nr; i++) {
		int32_t rlo, rhi;
		attn_row_range(a, sq, r0 + i, job->kv_lo, job->kv_hi, &rlo, &rhi);
		for (int hh = 0; hh < rep; hh++) {
			int m = i * rep + hh;
			const float *q = a->q + (size_t)(r0 + i) * q_stride + (size_t)(g * rep + hh) * D;
			lo[m] = rlo;
			hi[m] = rhi;
			for (int d = 0; d < D; d++)
				QT[(size_t)d * mp + m] = q[d];
		}
		if (rlo <= rhi) {
			u_lo = rlo < u_lo ? rlo : u_lo;
			u_hi = rhi > u_hi ? rhi : u_hi;
		}
	}
	for (int m = M; m < mp; m++)
		for (int d = 0; d < D; d++)
			QT[(size_t)d * mp + m] = 0.0f;

	/* Every position of [u_lo, u_hi] is some row's key (each row's range holds its own
	 * position, and the rows' positions are consecutive), so every row loaded is live data. */
	for (int32_t t0 = u_lo <= u_hi ? u_lo - u_lo % GS_ATTN_TILE : 0; u_lo <= u_hi && t0 <= u_hi; t0 += GS_ATTN_TILE) {
		int ja = u_lo > t0 ? u_lo - t0 : 0, jb = u_hi - t0 < GS_ATTN_TILE - 1 ? u_hi - t0 : GS_ATTN_TILE - 1;
		if (attn_tile_elsewhere(a, sq, t0)) /* another group's keys: as if absent */
			continue;
		attn_load_tile(a, sq, g, t0, ja, jb, zero, kb, vb, kp, vp);
		if (t0 + GS_ATTN_TILE <= u_hi && !attn_tile_elsewhere(a, sq, t0 + GS_ATTN_TILE))
			attn_prefetch_tile(a, sq, g, t0 + GS_ATTN_TILE, 0,
					   u_hi - t0 - GS_ATTN_TILE < GS_ATTN_TILE - 1 ? u_hi - t0 - GS_ATTN_TILE
										     : GS_ATTN_TILE - 1);
#ifdef GS_ATTN_X86
		if (job->isa == GS_CPU_ISA_AVX512)
			qk_avx512(S, kp, QT, mp, D);
		else if (job->isa == GS_CPU_ISA_AVX2)
			qk_avx2(S, kp, QT, mp, D);
		else
#endif
			qk_c(S, kp, QT, mp, D);
#ifdef GS_ATTN_X86
		if (job->isa == GS_CPU_ISA_AVX512 && a->softcap <= 0)
			softmax_tile512(S, mp, lo, hi, t0, a->scale, mx, l, alpha);
		else
#endif
			softmax_tile(S, mp, lo, hi, t0, a->scale, a->softcap, mx, l, alpha);
		/* p·v over each query vector's own keys of the tile; neighbours with the same keys
		 * share the pass over V */
		for (int m = 0; m < M;) {
			int ka = lo[m] > t0 ? lo[m] - t0 : 0;
			int kz = hi[m] - t0 < GS_ATTN_TILE - 1 ? hi[m] - t0 : GS_ATTN_TILE - 1;
			int G = 1;
			while (m + G < M && G < GS_ATTN_PV_GROUP) {
				int kb2 = lo[m + G] > t0 ? lo[m + G] - t0 : 0;
				int kz2 = hi[m + G] - t0 < GS_ATTN_TILE - 1 ? hi[m + G] - t0 : GS_ATTN_TILE - 1;
				if (kb2 != ka || kz2 != kz)
					break;
				G++;
			}
			if (ka <= kz) {
#ifdef GS_ATTN_X86
				if (job->isa == GS_CPU_ISA_AVX512)
					pv_avx512(acc + (size_t)m * D, S + m, mp, alpha + m, G, vp, ka, kz, D);
				else if (job->isa == GS_CPU_ISA_AVX2)
					pv_avx2(acc + (size_t)m * D, S + m, mp, alpha + m, G, vp, ka, kz, D);
				else
#endif
					pv_c(acc + (size_t)m * D, S + m, mp, alpha + m, G, vp, ka, kz, D);
			}
			m += G;
		}
	}

	for (int i = 0; i < nr; i++)
		for (int hh = 0; hh < rep; hh++) {
			int m = i * rep + hh, h = g * rep + hh, row = r0 + i;
			float *out = a->part ? a->part + ((size_t)row * a->n_heads + h) * (size_t)(D + 1)
					     : a->out + (size_t)row * q_stride + (size_t)h * D;
			const float *ac = acc + (size_t)m * D;
			for (int d = 0; d < D; d++)
				out[d] = l[m] > 0 ? ac[d] / l[m] : 0.0f;
			if (a->part) /* the merge record: o, then lse */
				out[D] = l[m] > 0 ? mx[m] + logf(l[m]) : -INFINITY;
			if (job->ml) {
				job->ml[2 * ((size_t)row * a->n_heads + h)] = mx[m];
				job->ml[2 * ((size_t)row * a->n_heads + h) + 1] = l[m];
			}
		}
}

/* Items: for each sequence, kv head, block of rows_per_item rows; thread tid takes every
 * nth item (any split gives the same bits). */
static void attn_task(void *p, int tid, int nth)
{
	const struct attn_job *job = p;
	const struct gs_attn_args *a = job->a;
	int item = 0;

	for (int s = 0; s < a->n_seqs; s++) {
		const struct gs_attn_seq *sq = &a->seqs[s];
		for (int g = 0; g < a->n_kv_heads; g++)
			for (int r = 0; r < sq->n_tokens; r += job->rows_per_item, item++) {
				if (item % nth != tid)
					continue;
				int nr = sq->n_tokens - r < job->rows_per_item ? sq->n_tokens - r : job->rows_per_item;
				attn_item(job, tid, sq, sq->tok0 + r, nr, g);
			}
	}
}

void gs_cpu_attention(struct gs_threadpool *tp, float **scratch, size_t *scratch_cap, const struct gs_attn_args *a,
		      int32_t kv_lo, int32_t kv_hi, float *ml)
{
	GS_ASSERT((a->kv_dtype == GS_DTYPE_F32 || a->kv_dtype == GS_DTYPE_BF16) && a->head_dim >= 1 &&
		  a->head_dim <= GS_CPU_ATTN_MAX_HEAD_DIM && a->n_kv_heads >= 1 && a->n_heads % a->n_kv_heads == 0 &&
		  kv_lo >= 0 && kv_lo <= kv_hi);
	int rep = a->n_heads / a->n_kv_heads, nth = gs_threadpool_size(tp);
	/* rows per item: up to GS_ATTN_MAX_M query vectors (K/V reuse), at least a SIMD group's
	 * worth, and about 4 items per thread when the batch allows (the bits do not depend on it) */
	int r_min = rep >= GS_ATTN_LANES ? 1 : GS_ATTN_LANES / rep, r_max = rep >= GS_ATTN_MAX_M ? 1 : GS_ATTN_MAX_M / rep;
	int64_t want = ((int64_t)a->n_tokens * a->n_kv_heads + 4 * nth - 1) / (4 * nth);
	struct attn_job job = {
		.a = a, .scratch = scratch, .scratch_cap = scratch_cap, .kv_lo = kv_lo, .kv_hi = kv_hi, .ml = ml,
		.rows_per_item = want > r_max ? r_max : want < r_min ? r_min : (int)want,
		.isa = gs_cpu_isa(),
	};

	gs_threadpool_run(tp, attn_task, &job);
}
