/* Float math of our own, shared by the CPU kernels and the sampler: the same function gives the
 * same bits on every machine (libm's expf/tanhf differ between versions), and it is branch-free
 * so loops over it vectorise. */
#ifndef GS_FMATH_H
#define GS_FMATH_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* Lanes and block length of our fixed-order sums (the sampler's and gs_logsumexp's). */
#define GS_SUM_LANES 8
#define GS_SUM_BLOCK 256

/* A logit as the sampler sees it: NaN from a broken model must not poison comparisons
 * (-> -inf), and +inf would make logit - max NaN (-> FLT_MAX). */
static inline float gs_sanitize(float v)
{
	if (v != v)
		return -INFINITY;
	return v > FLT_MAX ? FLT_MAX : v;
}

/* log(sum(exp(x[i]))) over n raw logits (logprobs), values sanitised as above: the max, then
 * gs_expf in GS_SUM_LANES float lanes per block of GS_SUM_BLOCK, block sums in double, all in
 * a fixed order, so every machine gets the same bits (kernels/cpu/pick.c, built without FMA
 * contraction). n == 0 or all -inf gives -inf. */
float gs_logsumexp(const float *x, size_t n);

/* Cephes-style e^x = 2^n * e^r, |r| <= ln2/2, relative error about 2 ulp, for x <= 0 only;
 * below -87 the result is 0. No upper clamp, so callers must keep x <= 0. */
static inline float gs_expf(float x)
{
	const float lo = -87.0f;
	float xc = x < lo ? lo : x;
	int32_t n = (int32_t)(xc * 1.44269504088896341f - 0.5f); /* round to nearest, x <= 0 */
	float r = xc - (float)n * 0.693359375f;
	r = r - (float)n * -2.12194440e-4f;
	float q = 1.9875691500e-4f;
	q = q * r + 1.3981999507e-3f;
	q = q * r + 8.3334519073e-3f;
	q = q * r + 4.1665795894e-2f;
	q = q * r + 1.6666665459e-1f;
	q = q * r + 5.0000001201e-1f;
	float y = q * (r * r) + r + 1.0f;
	union { uint32_t u; float f; } scale = { .u = (uint32_t)(n + 127) << 23 };
	y = y * scale.f;
	return x < lo ? 0.0f : y;
}

/* GELU, tanh approximation (Gemma's gelu_pytorch_tanh): 0.5·u·(1 + tanh(z)), z = √(2/π)(u +
 * 0.044715u³), computed as u·σ(2z) with σ(t) = 1/(1 + e^-t) for t ≥ 0 and e^t/(1 + e^t) below,
 * so gs_expf only sees t ≤ 0. Within a few ulp of the tanh form. */
static inline float gs_gelu_tanh(float u)
{
	const float k2 = 1.5957691216057308f; /* 2·sqrt(2/pi) */
	float t = k2 * (u + 0.044715f * u * u * u);
	float at = t < 0 ? t : -t; /* -|t| */
	float e = gs_expf(at);
	float sig = (t >= 0 ? 1.0f : e) / (1.0f + e);
	return u * sig;
}

#endif
