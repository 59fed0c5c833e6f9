#include "gs_dtype.h"
#include "gs_kernels.h"

#include <string.h>

size_t gs_dtype_size(enum gs_dtype t)
{
	static const size_t sizes[] = {
		[GS_DTYPE_F32] = 4, [GS_DTYPE_F16] = 2, [GS_DTYPE_BF16] = 2, [GS_DTYPE_I32] = 4,
	};
	_Static_assert(sizeof(sizes) / sizeof(sizes[0]) == GS_DTYPE_COUNT, "dtype sizes");
	return (unsigned)t < GS_DTYPE_COUNT ? sizes[t] : 0;
}

const char *gs_dtype_name(enum gs_dtype t)
{
	static const char *const names[] = {
		[GS_DTYPE_F32] = "F32", [GS_DTYPE_F16] = "F16", [GS_DTYPE_BF16] = "BF16", [GS_DTYPE_I32] = "I32",
	};
	_Static_assert(sizeof(names) / sizeof(names[0]) == GS_DTYPE_COUNT, "dtype names");
	return (unsigned)t < GS_DTYPE_COUNT ? names[t] : "?";
}

float gs_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;
	uint32_t u;
	float f;

	if (exp == 0) {
		if (man == 0) {
			u = sign;
		} else { /* subnormal: normalise */
			exp = 127 - 15 + 1;
			while (!(man & 0x400u)) {
				man <<= 1;
				exp--;
			}
			man &= 0x3ffu;
			u = sign | (exp << 23) | (man << 13);
		}
	} else if (exp == 31) {
		u = sign | 0x7f800000u | (man << 13);
	} else {
		u = sign | ((exp + 127 - 15) << 23) | (man << 13);
	}
	memcpy(&f, &u, sizeof(f));
	return f;
}

uint16_t gs_f32_to_f16(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	uint32_t sign = (u >> 16) & 0x8000u;
	int32_t exp = (int32_t)((u >> 23) & 0xffu) - 127 + 15;
	uint32_t man = u & 0x7fffffu;

	if (((u >> 23) & 0xffu) == 0xffu)
		return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
	if (exp >= 31)
		return (uint16_t)(sign | 0x7c00u);
	if (exp <= 0) {
		if (exp < -10)
			return (uint16_t)sign;
		man |= 0x800000u;
		uint32_t shift = (uint32_t)(14 - exp);
		uint32_t half = man >> shift;
		uint32_t rem = man & ((1u << shift) - 1);
		uint32_t mid = 1u << (shift - 1);
		if (rem > mid || (rem == mid && (half & 1)))
			half++;
		return (uint16_t)(sign | half);
	}
	uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
	uint32_t rem = man & 0x1fffu;
	if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
		h++;
	return (uint16_t)h;
}

static const char *const gs_numerics_names[GS_NUMERICS_COUNT] = {
	[GS_NUMERICS_FP32] = "fp32",
	[GS_NUMERICS_BF16] = "bf16",
};

const char *gs_numerics_name(enum gs_numerics n)
{
	return (unsigned)n < GS_NUMERICS_COUNT ? gs_numerics_names[n] : "?";
}

enum gs_status gs_numerics_parse(const char *s, const char *what, enum gs_numerics *out)
{
	for (int i = 0; i < GS_NUMERICS_COUNT; i++)
		if (s && strcmp(s, gs_numerics_names[i]) == 0) {
			*out = (enum gs_numerics)i;
			return GS_OK;
		}
	return gs_errorf(GS_ERR_INVALID_ARG, "%s must be fp32 or bf16, got \"%s\"", what, s ? s : "");
}
