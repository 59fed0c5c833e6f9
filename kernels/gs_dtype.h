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

static inline float gs_round_bf16(float f)
{
	return gs_bf16_to_f32(gs_f32_to_bf16(f));
}

/* IEEE half -> f32 (subnormals, inf, nan handled). */
float gs_f16_to_f32(uint16_t h);
uint16_t gs_f32_to_f16(float f);

#endif
