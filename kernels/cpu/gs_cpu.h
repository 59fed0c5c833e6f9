/* CPU hot kernels: thread pool, matmul with bf16/f16/f32 weights, system measurements.
 *
 * Matmul convention (PyTorch nn.Linear): y[m×n] = x[m×k] · Wᵀ, W row-major [n×k] as stored in
 * the checkpoint (mmap'd, never converted in place). Activations and accumulation are fp32;
 * a bf16 weight becomes fp32 exactly (16-bit shift), so the only rounding is fp32 summation.
 *
 * The instruction set is picked once at first use (AVX-512 F/BW/VL, else AVX2+FMA+F16C, else
 * portable C) and can be forced with env GS_CPU_ISA=avx512|avx2|scalar or gs_cpu_force_isa(). */
#ifndef GS_CPU_H
#define GS_CPU_H

#include <stddef.h>
#include <stdint.h>

/* ---- thread pool ---------------------------------------------------------------------- */

struct gs_threadpool; /* opaque */

/* fn runs once on every thread of the pool: tid in [0, n_threads), the caller is tid 0. */
typedef void (*gs_task_fn)(void *ctx, int tid, int n_threads);

/* n_threads <= 0: env GS_THREADS if set, else the number of online CPUs.
 * Returns NULL (reason in gs_last_error()) if a thread cannot be started. */
struct gs_threadpool *gs_threadpool_create(int n_threads);
void                  gs_threadpool_free(struct gs_threadpool *tp);
int                   gs_threadpool_size(const struct gs_threadpool *tp); /* NULL pool: 1 */

/* Run fn on all threads and return when every one has finished. Not reentrant: one caller
 * at a time, and fn must not call gs_threadpool_run on the same pool. No allocation; workers
 * spin briefly (env GS_SPIN_US, default 100 µs) before sleeping on a futex, so back-to-back
 * calls cost a few microseconds. tp == NULL runs fn(ctx, 0, 1) on the caller. */
void gs_threadpool_run(struct gs_threadpool *tp, gs_task_fn fn, void *ctx);

/* ---- instruction set selection -------------------------------------------------------- */

enum gs_cpu_isa {
	GS_CPU_ISA_SCALAR, /* portable C */
	GS_CPU_ISA_AVX2,   /* AVX2 + FMA + F16C */
	GS_CPU_ISA_AVX512, /* AVX-512 F/BW/VL/DQ (fp32 mode: never vdpbf16ps, it rounds activations) */
	GS_CPU_ISA_COUNT
};

enum gs_cpu_isa gs_cpu_isa(void);                        /* path in use */
const char     *gs_cpu_isa_name(void);                   /* "avx512", "avx2", "scalar" */
const char     *gs_cpu_isa_str(enum gs_cpu_isa isa);
int             gs_cpu_isa_supported(enum gs_cpu_isa isa); /* 1 if this CPU can run it */
/* Force a path by name ("avx512", "avx2", "scalar"), NULL = best supported again.
 * Returns 0, or -1 (path unchanged) for an unknown name or one this CPU cannot run.
 * Not thread-safe against concurrent matmuls: call between them (tests, start-up). */
int gs_cpu_force_isa(const char *name);

/* ---- matmul ----------------------------------------------------------------------------- */

/* y[m×n] = x[m×k] · Wᵀ, W [n×k] row-major; y is fully overwritten (never read).
 * Batch-invariant: every output is summed in one order fixed by k alone (matmul_impl.h), so
 * y[i][j] has the same bits whatever m, the row's place in the batch, the thread count or the
 * ISA path; the serving engine relies on this for identical outputs alone and batched.
 * Work is split over the pool by output columns n (contiguous, 16-aligned ranges per thread).
 * m ≤ 4 streams each weight row once (decode, memory-bound); larger m converts tiles of W to
 * fp32 once per thread and reuses them over all rows of x (prefill, compute-bound).
 * Any m, n, k ≥ 0; y must not alias x or w. tp may be NULL (single thread). */
void gs_cpu_matmul_bf16(struct gs_threadpool *tp, float *y, const float *x, const uint16_t *w,
			int m, int n, int k);
void gs_cpu_matmul_f16(struct gs_threadpool *tp, float *y, const float *x, const uint16_t *w,
		       int m, int n, int k);
void gs_cpu_matmul_f32(struct gs_threadpool *tp, float *y, const float *x, const float *w,
		       int m, int n, int k);

/* ---- the bf16 mode (AVX512_BF16) ---------------------------------------------------------- */

/* NULL when this CPU can run the bf16 mode; else the name of the missing feature
 * ("AVX512_BF16", or "AVX512F/BW/VL/DQ"), for the refusal. Env GS_CPU_FEATURES_MASK (a
 * comma list of avx512_bf16, avx512, avx2) hides features from this probe and from
 * gs_cpu_isa_supported, so refusals and skips can be tested on any CPU. */
const char *gs_cpu_bf16_missing(void);
/* y[m×n] = bf16(x)[m×k] · Wᵀ for bf16 W, with vdpbf16ps: x rounded to bf16 (round to nearest
 * even, as torch), fp32 accumulation in the one order of matmul_impl.h ("the bf16 mode's
 * canonical order"), so y[i][j] has the same bits whatever m, the row's place, the thread count
 * or the path. Only when gs_cpu_bf16_missing() is NULL (asserted). Grows a per-calling-thread
 * buffer for bf16(x) on demand (amortised). */
void gs_cpu_matmul_bf16dp(struct gs_threadpool *tp, float *y, const float *x, const uint16_t *w,
			  int m, int n, int k);
/* The same for count (<= GS_MM_BF_MAXW) weights of equal k that share x (q/k/v, gate/up):
 * ys[i][m × ns[i]] = x · ws[i]ᵀ, x rounded once and every weight's columns taken from one
 * counter in one dispatch. Each output has the bits gs_cpu_matmul_bf16dp gives it. */
#define GS_MM_BF_MAXW 4
void gs_cpu_matmul_bf16dp_n(struct gs_threadpool *tp, int count, float *const *ys, const float *x,
			    const uint16_t *const *ws, const int *ns, int m, int k);

/* ---- sampling (pick.c) ------------------------------------------------------------------ */

struct gs_cand_args;
/* The candidates op of gs_kernels.h on host memory, one row after another; *scratch (cols
 * floats) is grown with realloc as needed and owned by the caller. */
void gs_cpu_candidates(float **scratch, size_t *scratch_cap, const struct gs_cand_args *a);

/* ---- attention (attention.c) ------------------------------------------------------------ */
struct gs_attn_args;
#define GS_CPU_ATTN_MAX_HEAD_DIM 512
/* The attention op of gs_kernels.h over the key positions [kv_lo, kv_hi) only (0, INT32_MAX: the
 * op itself): tiled over absolute 64-position KV tiles with an online softmax, the rep q heads
 * of a kv head and a block of query rows sharing each K/V tile. Batch-invariant: a row's output
 * has the same bits whatever the other rows, the split into fresh and cached rows and the thread
 * count. ml: NULL, or [n_tokens][n_heads][2] receiving each (row, head)'s max score and sum of
 * exp(score - max) over the keys used, for merging partial ranges (out is normalised by that
 * sum); a (row, head) with no key in the range gets out 0, max -inf, sum 0. scratch[tid] /
 * scratch_cap[tid] (floats), one per pool thread, are grown with realloc and owned by the caller.
 * Asserts an fp32 or bf16 cache, 1 <= head_dim <= GS_CPU_ATTN_MAX_HEAD_DIM, n_heads % n_kv_heads == 0,
 * 0 <= kv_lo <= kv_hi. */
void gs_cpu_attention(struct gs_threadpool *tp, float **scratch, size_t *scratch_cap, const struct gs_attn_args *a,
		      int32_t kv_lo, int32_t kv_hi, float *ml);

/* ---- the context-parallel merge (attn_merge.c): the attn_merge op of gs_kernels.h ---- */
void gs_cpu_attn_merge(struct gs_threadpool *tp, float *out, float *lse, const float *parts, int k, int n,
		       int head_dim);
/* One record of it: parts of n records each (stride head_dim + 1); exposed for tests. */
void gs_attn_merge_one(float *out, float *lse, const float *parts, int k, size_t n, int head_dim);

/* ---- the vision tower's ops (vision_ops.c): the backend ops of the same names in gs_kernels.h ---- */

void gs_cpu_layernorm(struct gs_threadpool *tp, float *y, const float *x, const float *w, const float *b, int rows,
		      int dim, float eps);
void gs_cpu_add_rows(struct gs_threadpool *tp, float *y, const float *x, const float *b, int rows, int cols);
void gs_cpu_avgpool(float *y, const float *x, int side, int k, int dim);
void gs_cpu_patches(float *y, const uint8_t *px, int image_size, int patch);
/* Per head: Q·Kᵀ and P·V through gs_cpu_matmul_f32 over blocks of queries, the head's q, k and
 * vᵀ packed first; *scratch (floats) is grown with realloc as needed and owned by the caller. */
void gs_cpu_attention_full(struct gs_threadpool *tp, float **scratch, size_t *scratch_cap, float *out, const float *q,
			   const float *k, const float *v, int n, int n_heads, int head_dim, float scale);

/* ---- system measurements (benchmarks, start-up diagnostics; they allocate) -------------- */

/* STREAM-like read (sum) of a `bytes` buffer split over all pool threads; the buffer should be
 * far larger than the last-level cache. Returns bytes/s, the best of `reps` passes, or 0 if the
 * buffer cannot be allocated. */
double gs_cpu_measure_read_bw(struct gs_threadpool *tp, size_t bytes, int reps);
/* fp32 FMA flops/s on all pool threads (independent accumulator chains in registers, widest
 * ISA selected by gs_cpu_isa()), best of a few reps. */
double gs_cpu_measure_fma_peak(struct gs_threadpool *tp);
/* bf16 dot-product flops/s (vdpbf16ps, 2 flops per multiply-add) on all pool threads, best of a
 * few reps; 0 when gs_cpu_bf16_missing() is not NULL. */
double gs_cpu_measure_bf16_peak(struct gs_threadpool *tp);

#endif
