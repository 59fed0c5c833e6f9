/* Internal to kernels/cpu: the fixed lane tree of matmul_impl.h's canonical orders in AVX-512,
 * shared by matmul_avx512.c (fp32 mode) and matmul_bf16dp.c (bf16 mode). Include after
 * <immintrin.h>, from files compiled with -mavx512f. */
#ifndef GS_CPU_MATMUL_TREE_AVX512_H
#define GS_CPU_MATMUL_TREE_AVX512_H

/* The fixed tree of matmul_impl.h applied to 16 vectors at once: returns, in lane 4q + r, the
 * tree sum of a[q + 4r]. Each output's lanes are only ever added to lanes of the same vector,
 * in the order v[l] + v[l+8], v[l] + v[l+4], v[l] + v[l+2], v[0] + v[1]. */
static inline __attribute__((always_inline)) __m512 gs_tree16x16(const __m512 a[16])
{
	__m512 b[8], c[4], d[2];
	for (int p = 0; p < 8; p++) /* b[p]: lanes 0-7 fold8(a[2p]), lanes 8-15 fold8(a[2p+1]) */
		b[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0x44),
				     _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0xee));
	for (int p = 0; p < 4; p++) /* c[p], 128-bit lane r: fold4(a[4p + r]) */
		c[p] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * p], b[2 * p + 1], 0x88),
				     _mm512_shuffle_f32x4(b[2 * p], b[2 * p + 1], 0xdd));
	for (int p = 0; p < 2; p++) /* d[p], lane q: fold2(a[8p + q]) x2, fold2(a[8p + 4 + q]) x2 */
		d[p] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * p], c[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
				     _mm512_shuffle_ps(c[2 * p], c[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
	return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
			     _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* The fixed tree of matmul_impl.h on one vector (same operand order): lane 0 of
 * v = a + a[8..], v + v[4..], v + v[2..], v + v[1..]. */
static inline __attribute__((always_inline)) float gs_tree1(__m512 a)
{
	__m512 v = _mm512_add_ps(a, _mm512_shuffle_f32x4(a, a, 0x4E));
	v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));
	v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
	v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));
	return _mm512_cvtss_f32(v);
}

#endif
