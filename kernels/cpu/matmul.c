/* gs_cpu_matmul_*: instruction-set selection, split over threads, portable C fallback.
 * The vector kernels live in matmul_avx512.c / matmul_avx2.c (own -m flags). */
#include "gs_cpu.h"

#include "gs_status.h"
#include "gs_dtype.h"
#include "matmul_impl.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

/* ---- instruction set --------------------------------------------------------------------- */

static const char *const gs_isa_names[GS_CPU_ISA_COUNT] = {
	[GS_CPU_ISA_SCALAR] = "scalar",
	[GS_CPU_ISA_AVX2] = "avx2",
	[GS_CPU_ISA_AVX512] = "avx512",
};

typedef void (*gs_mm_range_fn)(const struct gs_mm_args *a, int j0, int j1);

static const gs_mm_range_fn gs_mm_range_by_isa[GS_CPU_ISA_COUNT] = {
	[GS_CPU_ISA_SCALAR] = gs_mm_range_scalar,
	[GS_CPU_ISA_AVX2] = gs_mm_range_avx2,
	[GS_CPU_ISA_AVX512] = gs_mm_range_avx512,
};

static _Atomic int gs_isa_sel = -1; /* enum gs_cpu_isa once chosen */

int gs_cpu_isa_supported(enum gs_cpu_isa isa)
{
	switch (isa) {
	case GS_CPU_ISA_SCALAR:
		return 1;
	case GS_CPU_ISA_AVX2:
#if defined(__x86_64__)
		return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
		       __builtin_cpu_supports("f16c");
#else
		return 0;
#endif
	case GS_CPU_ISA_AVX512:
#if defined(__x86_64__)
		return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
		       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
		       __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
#else
		return 0;
#endif
	case GS_CPU_ISA_COUNT:
		break;
	}
	return 0;
}

static enum gs_cpu_isa gs_isa_best(void)
{
	for (int i = GS_CPU_ISA_COUNT - 1; i > 0; i--)
		if (gs_cpu_isa_supported((enum gs_cpu_isa)i))
			return (enum gs_cpu_isa)i;
	return GS_CPU_ISA_SCALAR;
}

static int gs_isa_from_name(const char *name)
{
	for (int i = 0; i < GS_CPU_ISA_COUNT; i++)
		if (strcmp(name, gs_isa_names[i]) == 0)
			return i;
	return -1;
}

int gs_cpu_force_isa(const char *name)
{
	if (!name) {
		atomic_store(&gs_isa_sel, (int)gs_isa_best());
		return 0;
	}
	int isa = gs_isa_from_name(name);
	if (isa < 0 || !gs_cpu_isa_supported((enum gs_cpu_isa)isa))
		return -1;
	atomic_store(&gs_isa_sel, isa);
	return 0;
}

enum gs_cpu_isa gs_cpu_isa(void)
{
	int isa = atomic_load_explicit(&gs_isa_sel, memory_order_relaxed);
	if (isa >= 0)
		return (enum gs_cpu_isa)isa;
	const char *env = getenv("GS_CPU_ISA");
	if (env && *env && gs_cpu_force_isa(env) == 0)
		return (enum gs_cpu_isa)atomic_load(&gs_isa_sel);
	if (env && *env)
		gs_log(GS_LOG_WARN, "GS_CPU_ISA=%s is unknown or not supported by this CPU; using %s",
		       env, gs_isa_names[gs_isa_best()]);
	gs_cpu_force_isa(NULL);
	return (enum gs_cpu_isa)atomic_load(&gs_isa_sel);
}

const char *gs_cpu_isa_str(enum gs_cpu_isa isa)
{
	return (unsigned)isa < GS_CPU_ISA_COUNT ? gs_isa_names[isa] : "?";
}

const char *gs_cpu_isa_name(void)
{
	return gs_cpu_isa_str(gs_cpu_isa());
}

/* ---- portable fallback --------------------------------------------------------------------- */

static inline float gs_w_at(const void *w, size_t idx, enum gs_mm_wtype wt)
{
	switch (wt) {
	case GS_MM_W_BF16: return gs_bf16_to_f32(((const uint16_t *)w)[idx]);
	case GS_MM_W_F16: return gs_f16_to_f32(((const uint16_t *)w)[idx]);
	default: return ((const float *)w)[idx];
	}
}

/* The fixed lane tree of the canonical order (matmul_impl.h). */
static inline float gs_mm_tree16(const float a[GS_MM_LANES])
{
	float v8[8], v4[4];
	for (int l = 0; l < 8; l++)
		v8[l] = a[l] + a[l + 8];
	for (int l = 0; l < 4; l++)
		v4[l] = v8[l] + v8[l + 4];
	return (v4[0] + v4[2]) + (v4[1] + v4[3]);
}

/* The reference implementation of the canonical order, spelled out: fmaf (one rounding, as the
 * vector FMAs) and no expression the compiler could contract or reassociate differently. */
void gs_mm_range_scalar(const struct gs_mm_args *a, int j0, int j1)
{
	const int m = a->m, n = a->n, k = a->k;
	/* one block of a weight row, converted once for all m rows, zero-padded to 16 */
	float wrow[GS_MM_KB];

	for (int j = j0; j < j1; j++) {
		for (int i = 0; i < m; i++)
			a->y[(size_t)i * n + j] = 0.0f; /* k = 0: the empty sum */
		for (int k0 = 0; k0 < k; k0 += GS_MM_KB) {
			int kc = k - k0 < GS_MM_KB ? k - k0 : GS_MM_KB;
			int kp = (kc + GS_MM_LANES - 1) / GS_MM_LANES * GS_MM_LANES;
			for (int t = 0; t < kp; t++)
				wrow[t] = t < kc ? gs_w_at(a->w, (size_t)j * k + k0 + t, a->wt) : 0.0f;
			for (int i = 0; i < m; i++) {
				const float *xr = a->x + (size_t)i * k + k0;
				float acc[GS_MM_LANES] = { 0 };
				for (int t = 0; t < kp; t += GS_MM_LANES)
					for (int l = 0; l < GS_MM_LANES; l++) {
						float xv = t + l < kc ? xr[t + l] : 0.0f;
						acc[l] = fmaf(xv, wrow[t + l], acc[l]);
					}
				float s = gs_mm_tree16(acc);
				float *yp = a->y + (size_t)i * n + j;
				*yp = k0 == 0 ? s : *yp + s;
			}
		}
	}
}

/* ---- split over threads ------------------------------------------------------------------ */

/* Below this many multiply-adds a pool dispatch costs more than it saves. */
#define GS_MM_MIN_PARALLEL_MACS (1 << 16)

struct gs_mm_task {
	struct gs_mm_args args;
	gs_mm_range_fn range;
};

static void gs_mm_task_run(void *ctx, int tid, int n_threads)
{
	const struct gs_mm_task *t = ctx;
	int n = t->args.n;
	/* contiguous, GS_MM_COL_ALIGN-aligned column ranges, as even as the alignment allows */
	int units = (n + GS_MM_COL_ALIGN - 1) / GS_MM_COL_ALIGN;
	int u0 = (int)((long long)units * tid / n_threads);
	int u1 = (int)((long long)units * (tid + 1) / n_threads);
	int j0 = u0 * GS_MM_COL_ALIGN;
	int j1 = u1 * GS_MM_COL_ALIGN < n ? u1 * GS_MM_COL_ALIGN : n;
	if (j0 < j1)
		t->range(&t->args, j0, j1);
}

static void gs_mm(struct gs_threadpool *tp, float *y, const float *x, const void *w, int m, int n,
		  int k, enum gs_mm_wtype wt)
{
	GS_ASSERT(m >= 0 && n >= 0 && k >= 0);
	if (m == 0 || n == 0)
		return;
	struct gs_mm_task t = {
		.args = { .y = y, .x = x, .w = w, .m = m, .n = n, .k = k, .wt = wt },
		.range = gs_mm_range_by_isa[gs_cpu_isa()],
	};
	if ((long long)m * n * k < GS_MM_MIN_PARALLEL_MACS || n <= GS_MM_COL_ALIGN)
		gs_mm_task_run(&t, 0, 1);
	else
		gs_threadpool_run(tp, gs_mm_task_run, &t);
}

void gs_cpu_matmul_bf16(struct gs_threadpool *tp, float *y, const float *x, const uint16_t *w,
			int m, int n, int k)
{
	gs_mm(tp, y, x, w, m, n, k, GS_MM_W_BF16);
}

void gs_cpu_matmul_f16(struct gs_threadpool *tp, float *y, const float *x, const uint16_t *w,
		       int m, int n, int k)
{
	gs_mm(tp, y, x, w, m, n, k, GS_MM_W_F16);
}

void gs_cpu_matmul_f32(struct gs_threadpool *tp, float *y, const float *x, const float *w,
		       int m, int n, int k)
{
	gs_mm(tp, y, x, w, m, n, k, GS_MM_W_F32);
}
