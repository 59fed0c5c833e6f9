/* gs_cpu_matmul_*: instruction-set selection, split over threads, portable C fallback.
 * The vector kernels live in matmul_avx512.c / matmul_avx2.c (own -m flags). */
#include "gs_cpu.h"

#include "gs_status.h"
#include "gs_dtype.h"
#include "matmul_impl.h"

#include <math.h>
#include <stdatomic.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <stdlib.h>
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

/* ---- the CPUID probe ----------------------------------------------------------------------
 * Env GS_CPU_FEATURES_MASK (comma-separated: avx512_bf16, avx512, avx2) makes the probe answer
 * as a CPU without those features would: the tests of the refusals run on any machine. Read
 * here only, once. An unknown name is an error (logged), never ignored quietly. */
enum { GS_FEAT_AVX2 = 1, GS_FEAT_AVX512 = 2, GS_FEAT_AVX512_BF16 = 4 };

static int gs_cpu_feature_mask(void)
{
	static _Atomic int mask = -1;
	int v = atomic_load_explicit(&mask, memory_order_relaxed);
	if (v >= 0)
		return v;
	v = 0;
	const char *env = getenv("GS_CPU_FEATURES_MASK");
	for (const char *p = env; p && *p;) {
		size_t len = strcspn(p, ",");
		if (len == 11 && !strncmp(p, "avx512_bf16", len))
			v |= GS_FEAT_AVX512_BF16;
		else if (len == 6 && !strncmp(p, "avx512", len))
			v |= GS_FEAT_AVX512 | GS_FEAT_AVX512_BF16;
		else if (len == 4 && !strncmp(p, "avx2", len))
			v |= GS_FEAT_AVX2 | GS_FEAT_AVX512 | GS_FEAT_AVX512_BF16;
		else if (len > 0)
			gs_log(GS_LOG_ERROR, "GS_CPU_FEATURES_MASK: unknown feature \"%.*s\" (known: avx512_bf16, avx512, avx2)",
			       (int)len, p);
		p += len + (p[len] == ',');
	}
	atomic_store(&mask, v);
	return v;
}

#if defined(__x86_64__)
/* CPUID leaf 1, ECX bit 29 (clang 14's __builtin_cpu_supports has no "f16c"). */
static int gs_cpu_has_f16c(void)
{
	unsigned a, b, c, d;
	return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}
#endif

int gs_cpu_isa_supported(enum gs_cpu_isa isa)
{
	int masked = gs_cpu_feature_mask();
	switch (isa) {
	case GS_CPU_ISA_SCALAR:
		return 1;
	case GS_CPU_ISA_AVX2:
		if (masked & GS_FEAT_AVX2)
			return 0;
#if defined(__x86_64__)
		return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
		       gs_cpu_has_f16c();
#else
		return 0;
#endif
	case GS_CPU_ISA_AVX512:
		if (masked & GS_FEAT_AVX512)
			return 0;
#if defined(__x86_64__)
		return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
		       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
		       gs_cpu_has_f16c() && __builtin_cpu_supports("fma");
#else
		return 0;
#endif
	case GS_CPU_ISA_COUNT:
		break;
	}
	return 0;
}

static const char *gs_cpu_bf16_probe(void)
{
	if (!gs_cpu_isa_supported(GS_CPU_ISA_AVX512))
		return "AVX512F/BW/VL/DQ";
#if defined(__x86_64__)
	/* CPUID leaf 7 sub-leaf 1, EAX bit 5 (asked directly: not every compiler's
	 * __builtin_cpu_supports knows "avx512bf16") */
	unsigned a, b, c, d;
	if (!(gs_cpu_feature_mask() & GS_FEAT_AVX512_BF16) && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5)))
		return NULL;
#endif
	return "AVX512_BF16";
}

const char *gs_cpu_bf16_missing(void)
{
	/* once: CPUID traps to the hypervisor in a VM, and every bf16 matmul asks */
	static const char *const ok = "";
	static _Atomic(const char *) answer = NULL;
	const char *v = atomic_load_explicit(&answer, memory_order_acquire);
	if (!v) {
		v = gs_cpu_bf16_probe();
		v = v ? v : ok;
		atomic_store_explicit(&answer, v, memory_order_release);
	}
	return v == ok ? NULL : v;
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

/* ---- the bf16 mode ------------------------------------------------------------------------- */

/* x rounded to bf16, in the calling thread's buffer: grown on demand (amortised, never per token
 * once the largest batch has been seen), read by the pool's workers during the call. */
static _Thread_local uint16_t *gs_xb;
static _Thread_local size_t gs_xb_cap;

/* x rounded into gs_xb_at's layout (matmul_impl.h), rows split over the threads. */
struct gs_round_task {
	uint16_t *dst;
	const float *src;
	int m, k;
};

static void gs_round_task_run(void *ctx, int tid, int n_threads)
{
	const struct gs_round_task *t = ctx;
	int lo = (int)((long long)t->m * tid / n_threads), hi = (int)((long long)t->m * (tid + 1) / n_threads);
	const int kb = gs_mm_bf_kb(t->k);
	for (int k0 = 0; k0 < t->k; k0 += kb) {
		int kc = t->k - k0 < kb ? t->k - k0 : kb;
		for (int i = lo; i < hi; i++)
			gs_round_bf16_avx512((uint16_t *)gs_xb_at(t->dst, t->m, k0, kc, i), t->src + (size_t)i * t->k + k0,
					     (size_t)kc);
	}
}

/* Threads take column ranges from a shared counter rather than a fixed half each, so a thread
 * slowed by another process on its core (this machine is shared) leaves more of the work to
 * the others; outputs do not depend on who computes them. Ranges shrink as the work runs out
 * (a quarter of the rest per thread, in multiples of GS_MM_BF_GRAB columns, at most 8 of them),
 * and each thread takes its next range before computing the current one, so the kernel can
 * prefetch the next range's weights while the current one ends. */
#define GS_MM_BF_GRAB (3 * GS_MM_COL_ALIGN) /* 96: also a whole number of 6-row GEMM tiles */

struct gs_mm_bf_task {
	struct gs_mm_args args[GS_MM_BF_MAXW]; /* the weights, their columns one after another */
	int off[GS_MM_BF_MAXW + 1];            /* where each one's columns start; off[count] = total */
	int count;
	atomic_int next;                       /* first column (of the total) not yet taken */
};

/* The first column of a newly taken range (its end in *j1), or -1 when all are taken. */
static int gs_mm_bf_take(struct gs_mm_bf_task *t, int n_threads, int *j1)
{
	const int n = t->off[t->count];
	int j0 = atomic_load_explicit(&t->next, memory_order_relaxed), g;
	do {
		if (j0 >= n)
			return -1;
		g = (n - j0) / (4 * n_threads) / GS_MM_BF_GRAB * GS_MM_BF_GRAB;
		g = g < GS_MM_BF_GRAB ? GS_MM_BF_GRAB : g > 8 * GS_MM_BF_GRAB ? 8 * GS_MM_BF_GRAB : g;
		g = g < n - j0 ? g : n - j0;
	} while (!atomic_compare_exchange_weak_explicit(&t->next, &j0, j0 + g, memory_order_relaxed,
							memory_order_relaxed));
	*j1 = j0 + g;
	return j0;
}

/* Columns [j0, j1) of the total, cut at the weights' boundaries; jn (the next range's first
 * column of the total, or -1) is passed on as the prefetch hint to the piece of the same weight. */
static void gs_mm_bf_pieces(const struct gs_mm_bf_task *t, int j0, int j1, int jn)
{
	for (int i = 0; i < t->count && j0 < j1; i++) {
		int lo = t->off[i], hi = t->off[i + 1];
		if (j0 >= hi)
			continue;
		int e = j1 < hi ? j1 : hi;
		gs_mm_bf_range_avx512bf16(&t->args[i], j0 - lo, e - lo, e == j1 && jn >= lo && jn < hi ? jn - lo : -1);
		j0 = e;
	}
}

static void gs_mm_bf_task_run(void *ctx, int tid, int n_threads)
{
	struct gs_mm_bf_task *t = ctx;
	int j1 = 0, jn1 = 0, j0 = gs_mm_bf_take(t, n_threads, &j1);
	(void)tid;
	while (j0 >= 0) {
		int jn = gs_mm_bf_take(t, n_threads, &jn1);
		gs_mm_bf_pieces(t, j0, j1, jn);
		j0 = jn, j1 = jn1;
	}
}

void gs_cpu_matmul_bf16dp_n(struct gs_threadpool *tp, int count, float *const *ys, const float *x,
			    const uint16_t *const *ws, const int *ns, int m, int k)
{
	GS_ASSERT(m >= 0 && k >= 0 && count >= 1 && count <= GS_MM_BF_MAXW);
	GS_ASSERT(gs_cpu_bf16_missing() == NULL);
	struct gs_mm_bf_task t = { .count = count };
	for (int i = 0; i < count; i++) {
		GS_ASSERT(ns[i] >= 0);
		t.args[i] = (struct gs_mm_args){ .y = ys[i], .x = x, .w = ws[i], .m = m, .n = ns[i], .k = k,
						 .wt = GS_MM_W_BF16 };
		t.off[i + 1] = t.off[i] + ns[i];
	}
	const int n = t.off[count];
	if (m == 0 || n == 0)
		return;
	size_t nx = (size_t)m * (size_t)k;
	if (nx > gs_xb_cap) {
		/* 64-byte aligned: a 64-byte vector load then never straddles two cache lines */
		size_t bytes = (nx * sizeof(uint16_t) + 63) / 64 * 64;
		uint16_t *p = aligned_alloc(64, bytes);
		GS_ASSERT(p != NULL); /* activations of one step; the arena holding x was larger */
		free(gs_xb);
		gs_xb = p;
		gs_xb_cap = bytes / sizeof(uint16_t);
	}
	struct gs_round_task rt = { gs_xb, x, m, k };
	if (nx < ((size_t)1 << 16) || m == 1)
		gs_round_task_run(&rt, 0, 1);
	else
		gs_threadpool_run(tp, gs_round_task_run, &rt);
	for (int i = 0; i < count; i++)
		t.args[i].xb = gs_xb;
	atomic_init(&t.next, 0);
	if ((long long)m * n * k < GS_MM_MIN_PARALLEL_MACS || n <= GS_MM_COL_ALIGN)
		gs_mm_bf_task_run(&t, 0, 1);
	else
		gs_threadpool_run(tp, gs_mm_bf_task_run, &t);
}

void gs_cpu_matmul_bf16dp(struct gs_threadpool *tp, float *y, const float *x, const uint16_t *w,
			  int m, int n, int k)
{
	GS_ASSERT(n >= 0);
	gs_cpu_matmul_bf16dp_n(tp, 1, &y, x, &w, &n, m, k);
}
