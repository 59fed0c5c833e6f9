/* Element types shared by kernels, comm and the safetensors loader. */
#ifndef GS_DTYPE_H
#define GS_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum gs_dtype {
	GS_DTYPE_F32,
	GS_DTYPE_F16,
	GS_DTYPE_BF16,
	GS_DTYPE_I32,
	GS_DTYPE_COUNT
};

size_t gs_dtype_size(enum gs_dtype t);
const char *gs_dtype_name(enum gs_dtype t);

/* bf16 <-> f32. Rounding is round-to-nearest-even, NaN stays NaN. */
static inline float gs_bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

static inline uint16_t gs_f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* Element i of a synthetic weight: bf16(u · a), u uniform in [-1, 1) from splitmix64 of
 * seed + (i + 1)·γ (a counter-based stream: any element can be drawn on its own, so every
 * backend, and every thread of one, fills the same bits). */
static inline uint16_t gs_synth_bf16(uint64_t seed, uint64_t i, float a)
{
	uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	float u = (float)((double)(z >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
	return gs_f32_to_bf16(u * a);
}

static inline float gs_round_bf16(float f)
{
	return gs_bf16_to_f32(gs_f32_to_bf16(f));
}

/* IEEE half -> f32 (subnormals, inf, nan handled). */
float gs_f16_to_f32(uint16_t h);
uint16_t gs_f32_to_f16(float f);

#endif
