/* CUDA backend: the gs_backend_i ops of gs_kernels.h on one GPU, plus device memory helpers and
 * on-device argmax / top-k for sampling. Plain C, no CUDA header: callers never see CUDA types
 * (the stream is handed out as void *, a cudaStream_t).
 *
 * Same semantics as the CPU backend (kernels/cpu/backend_cpu.c), op for op, except that every
 * pointer an op reads or writes is DEVICE memory of the backend's device: activations (fp32),
 * gs_tensor.data (bf16/f16/f32 weights), rope's pos[], embed's ids[], and in gs_attn_args the
 * q/k/v/out/cache pointers, tok_seq[], seqs[] AND each seqs[i].table (the struct itself is
 * read on the host). Ops are queued on the backend's stream and return without waiting.
 *
 * Numerics (fp32 activations, fp32 accumulation everywhere):
 *   matmul m < 16   fp32 x · weights converted exactly to fp32, fp32 FMA accumulation
 *                   (a GEMV that streams each weight row once): differs from the CPU only
 *                   in summation order (~1e-6 relative);
 *   matmul m >= 16  bf16 weights: x rounded to bf16 (RNE), cuBLAS GEMM with fp32 accumulation
 *                   (tensor cores), fp32 output: ~1e-3 relative L2 from the CPU path (the
 *                   activation rounding, 2^-9 per element). f32 weights: cuBLAS fp32 GEMM
 *                   (no TF32). f16 weights: the GEMV path, 16 rows at a time.
 *                   NOT batch-invariant across the m = 16 boundary: a row's result depends on
 *                   whether its batch has fewer than 16 rows.
 *   rmsnorm         sum of squares in double (as the CPU), one block per row;
 *   rope            angle, cos and sin in double (as the CPU), then fp32;
 *   attention       online softmax in fp32; decode rows: one warp per (token, head), fp32
 *                   FMA; sequences with >= 16 rows in the batch: tiled (FlashAttention-2
 *                   style) on tensor cores in 3xTF32, ~fp32 accuracy (attention.cu);
 *   geglu, softcap  tanhf (accurate, no fast-math); embed: exact.
 *   KV cache        fp32 by default; env GS_CUDA_KV=bf16 keeps it in bf16 (half the memory and
 *                   the decode reads, ARCHITECTURE.md §5's 80 KiB/token at 27B): this step's fresh
 *                   K/V are then read rounded to bf16 too, so results stay independent of
 *                   chunking. On the tiny test model it moves logits by up to ~9e-3 relative
 *                   L2 (test_device_path measures the same on the CPU kernels).
 *
 * Errors: ops return void (the vtable's contract); a CUDA/cuBLAS failure inside an op is a
 * broken invariant: logged with file, line and the CUDA error string, then abort (GS_ASSERT).
 * Env GS_CUDA_SYNC=1 synchronises after every op so an asynchronous fault is reported by
 * the op that caused it (debugging; slow). Functions below that return enum gs_status report
 * failures instead (GS_ERR_INTERNAL with the CUDA error string, GS_ERR_NOMEM, ...).
 *
 * Threads: the backend's device must be current on the calling thread (cudaSetDevice); create
 * makes it current on the creating thread. One backend per device per process is the intended
 * use (one rank per GPU). */
#ifndef GS_CUDA_H
#define GS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "gs_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GS_CUDA_TOPK_MAX 256 /* largest k of gs_cuda_topk_rows and of the candidates op */

/* 1 if this build has the CUDA backend (not whether a GPU is present). */
int gs_cuda_built(void);
/* Number of usable CUDA devices; 0 without a driver, without a device or without CUDA in this
 * build. Never aborts, never prints. */
int gs_cuda_device_count(void);

/* Backend on CUDA device `device`: makes it current, creates a non-blocking stream, a cuBLAS
 * handle bound to it and a cuBLAS workspace. GS_ERR_UNSUPPORTED when built without CUDA or
 * when no device is present; GS_ERR_INVALID_ARG for a device index out of range;
 * GS_ERR_INTERNAL (with the CUDA / cuBLAS reason) for other failures. */
enum gs_status gs_backend_cuda_create(int device, struct gs_backend *out);
/* Waits for queued work, frees everything create made; be->ctx = NULL. NULL ctx: no-op. */
void gs_backend_cuda_free(struct gs_backend *be);
/* The backend's cudaStream_t: hand it to gs_comm_nccl_set_compute_stream so all-reduces are
 * ordered against the ops. NULL if be is not a CUDA backend. */
void *gs_backend_cuda_stream(const struct gs_backend *be);
/* Device index of a CUDA backend, -1 otherwise. */
int gs_backend_cuda_device(const struct gs_backend *be);

/* Device memory on be's device (start-up paths; never per token). Every function below checks
 * that be is a CUDA backend (GS_ERR_INVALID_ARG otherwise). */
enum gs_status gs_cuda_malloc(const struct gs_backend *be, void **dev, size_t bytes); /* bytes 0: *dev = NULL */
void gs_cuda_free(const struct gs_backend *be, void *dev);                            /* NULL: no-op */
/* Copies ordered on the backend's stream after every op queued before them; both return when
 * the copy has completed (host buffer reusable / filled). Any host memory (pageable is fine). */
enum gs_status gs_cuda_upload(const struct gs_backend *be, void *dev_dst, const void *host_src, size_t bytes);
enum gs_status gs_cuda_download(const struct gs_backend *be, void *host_dst, const void *dev_src, size_t bytes);
/* Queued on the stream (returns at once): bytes of dev_dst set to (unsigned char)byte. */
enum gs_status gs_cuda_memset(const struct gs_backend *be, void *dev_dst, int byte, size_t bytes);
/* Waits for everything queued on the stream; reports any asynchronous CUDA error. */
enum gs_status gs_cuda_synchronize(const struct gs_backend *be);

/* Sampling without moving logits to the host (logits: device [rows, cols] fp32, row-major).
 * Order: by value, larger first, ties broken by the smaller column index; NaN ranks below
 * every number, and -0.0 equals +0.0 (float comparison, as the sampler's). Both wait for the result (host arrays filled).
 *   argmax: ids_host[r], vals_host[r] = the first best column of row r and its value.
 *   top-k:  ids_host[r*k + i], vals_host[r*k + i] for i < k, best first; 1 <= k <=
 *           GS_CUDA_TOPK_MAX and k <= cols (GS_ERR_INVALID_ARG otherwise: clamp k first).
 * rows 0: no-op. cols >= 1 (argmax, top-k), else GS_ERR_INVALID_ARG. vals_host may be NULL. */
enum gs_status gs_cuda_argmax_rows(const struct gs_backend *be, const float *logits, int rows, int cols,
				   int32_t *ids_host, float *vals_host);
enum gs_status gs_cuda_topk_rows(const struct gs_backend *be, const float *logits, int rows, int cols, int k,
				 int32_t *ids_host, float *vals_host);

#ifdef __cplusplus
}
#endif

#endif
