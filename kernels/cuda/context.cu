/* CUDA backend context: device, stream, cuBLAS handle and workspace, scratch buffers, device
 * memory helpers and the error paths every op file uses. */
#include "cuda_common.cuh"

#define GS_CU_BLAS_WORKSPACE (32u << 20) /* cuBLAS guidance for Hopper: 32 MiB */

void gs_cu_fatal(const char *file, int line, const char *what, const char *why)
{
	gs_log(GS_LOG_ERROR, "CUDA backend: %s failed at %s:%d: %s", what, file, line, why);
	gs_assert_fail(file, line, "CUDA call failed (see the error above)");
}

const char *gs_cu_blas_str(cublasStatus_t s)
{
	switch (s) {
	case CUBLAS_STATUS_SUCCESS:          return "CUBLAS_STATUS_SUCCESS";
	case CUBLAS_STATUS_NOT_INITIALIZED:  return "CUBLAS_STATUS_NOT_INITIALIZED";
	case CUBLAS_STATUS_ALLOC_FAILED:     return "CUBLAS_STATUS_ALLOC_FAILED";
	case CUBLAS_STATUS_INVALID_VALUE:    return "CUBLAS_STATUS_INVALID_VALUE";
	case CUBLAS_STATUS_ARCH_MISMATCH:    return "CUBLAS_STATUS_ARCH_MISMATCH";
	case CUBLAS_STATUS_MAPPING_ERROR:    return "CUBLAS_STATUS_MAPPING_ERROR";
	case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
	case CUBLAS_STATUS_INTERNAL_ERROR:   return "CUBLAS_STATUS_INTERNAL_ERROR";
	case CUBLAS_STATUS_NOT_SUPPORTED:    return "CUBLAS_STATUS_NOT_SUPPORTED";
	case CUBLAS_STATUS_LICENSE_ERROR:    return "CUBLAS_STATUS_LICENSE_ERROR";
	default:                             return "unknown cuBLAS status";
	}
}

void gs_cu_launched(struct gs_cuda_ctx *c, const char *op, const char *file, int line)
{
	cudaError_t e = cudaGetLastError();

	if (e != cudaSuccess)
		gs_cu_fatal(file, line, op, cudaGetErrorString(e));
	if (c->sync_each_op) {
		e = cudaStreamSynchronize(c->stream);
		if (e != cudaSuccess)
			gs_cu_fatal(file, line, op, cudaGetErrorString(e));
	}
}

enum gs_status gs_cu_scratch(struct gs_cuda_ctx *c, void **buf, size_t *cap, size_t bytes)
{
	size_t want;
	cudaError_t e;

	if (bytes <= *cap)
		return GS_OK;
	want = bytes > 2 * *cap ? bytes : 2 * *cap;
	GS_CU_TRY(cudaStreamSynchronize(c->stream));
	if (*buf)
		GS_CU_TRY(cudaFree(*buf));
	*buf = NULL;
	*cap = 0;
	e = cudaMalloc(buf, want);
	if (e != cudaSuccess) {
		(void)cudaGetLastError();
		*buf = NULL;
		return gs_errorf(GS_ERR_NOMEM, "CUDA backend: cannot allocate %zu bytes of scratch on device %d: %s", want,
				 c->device, cudaGetErrorString(e));
	}
	*cap = want;
	return GS_OK;
}

int gs_cu_device_count(void)
{
	int n = 0;

	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		(void)cudaGetLastError(); /* no driver / no device: not sticky, clear it */
		return 0;
	}
	return n > 0 ? n : 0;
}

enum gs_status gs_cu_ctx_create(int device, struct gs_cuda_ctx **out)
{
	struct gs_cuda_ctx *c;
	struct cudaDeviceProp prop;
	cublasStatus_t bs;
	enum gs_status st;
	const char *env;
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);

	*out = NULL;
	if (e != cudaSuccess || n <= 0) {
		(void)cudaGetLastError();
		return gs_errorf(GS_ERR_UNSUPPORTED, "CUDA backend: no CUDA device (%s)",
				 e != cudaSuccess ? cudaGetErrorString(e) : "device count 0");
	}
	if (device < 0 || device >= n)
		return gs_errorf(GS_ERR_INVALID_ARG, "CUDA backend: device %d out of range (this node has %d)", device, n);
	c = (struct gs_cuda_ctx *)calloc(1, sizeof(*c));
	if (!c)
		return gs_errorf(GS_ERR_NOMEM, "CUDA backend: out of memory");
	c->device = device;
	st = GS_ERR_INTERNAL;
	e = cudaSetDevice(device);
	if (e != cudaSuccess)
		goto out_cuda_error;
	e = cudaGetDeviceProperties(&prop, device);
	if (e != cudaSuccess)
		goto out_cuda_error;
	if (prop.major < 8) {
		st = gs_errorf(GS_ERR_UNSUPPORTED,
			       "CUDA backend: device %d (%s) has compute capability %d.%d; bf16 kernels need 8.0 or newer",
			       device, prop.name, prop.major, prop.minor);
		goto out_free_ctx;
	}
	c->sm_count = prop.multiProcessorCount;
	e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
	if (e != cudaSuccess)
		goto out_cuda_error;
	bs = cublasCreate(&c->blas);
	if (bs != CUBLAS_STATUS_SUCCESS) {
		c->blas = NULL;
		st = gs_errorf(GS_ERR_INTERNAL, "CUDA backend: cublasCreate: %s", gs_cu_blas_str(bs));
		goto out_free_ctx;
	}
	e = cudaMalloc(&c->blas_ws, GS_CU_BLAS_WORKSPACE);
	if (e != cudaSuccess)
		goto out_cuda_error;
	c->blas_ws_bytes = GS_CU_BLAS_WORKSPACE;
	/* cublasSetStream resets the workspace to cuBLAS's own pool: stream first, then workspace. */
	bs = cublasSetStream(c->blas, c->stream);
	if (bs == CUBLAS_STATUS_SUCCESS)
		bs = cublasSetWorkspace(c->blas, c->blas_ws, c->blas_ws_bytes);
	if (bs != CUBLAS_STATUS_SUCCESS) {
		st = gs_errorf(GS_ERR_INTERNAL, "CUDA backend: cuBLAS stream/workspace: %s", gs_cu_blas_str(bs));
		goto out_free_ctx;
	}
	env = getenv("GS_CUDA_SYNC");
	c->sync_each_op = env && *env && strcmp(env, "0") != 0;
	env = getenv("GS_CUDA_ATTN");
	c->attn_simple = env && strcmp(env, "simple") == 0;
	env = getenv("GS_CUDA_KV");
	c->kv_bf16 = env && strcmp(env, "bf16") == 0;
	c->smem_optin = prop.sharedMemPerBlockOptin;
	gs_log(GS_LOG_DEBUG, "CUDA backend: device %d %s (sm_%d%d, %d SMs, %.1f GiB)%s", device, prop.name, prop.major,
	       prop.minor, prop.multiProcessorCount, (double)prop.totalGlobalMem / (1u << 30),
	       c->sync_each_op ? ", synchronising after every op (GS_CUDA_SYNC)" : "");
	*out = c;
	return GS_OK;

out_cuda_error:
	(void)cudaGetLastError();
	st = gs_errorf(GS_ERR_INTERNAL, "CUDA backend on device %d: %s", device, cudaGetErrorString(e));
out_free_ctx:
	gs_cu_ctx_free(c);
	return st;
}

void gs_cu_ctx_free(struct gs_cuda_ctx *c)
{
	cudaError_t e;

	if (!c)
		return;
	if (c->stream) {
		e = cudaStreamSynchronize(c->stream);
		if (e != cudaSuccess)
			gs_log(GS_LOG_WARN, "CUDA backend free: pending work failed: %s", cudaGetErrorString(e));
	}
	if (c->blas)
		cublasDestroy(c->blas);
	cudaFree(c->blas_ws);
	cudaFree(c->act_bf16);
	cudaFree(c->pick);
	cudaFree(c->cand);
	cudaFree(c->vis_scores);
	if (c->stream)
		cudaStreamDestroy(c->stream);
	(void)cudaGetLastError();
	free(c);
}

void *gs_cu_stream(struct gs_cuda_ctx *c)
{
	return (void *)c->stream;
}

int gs_cu_device(struct gs_cuda_ctx *c)
{
	return c->device;
}

int gs_cu_kv_bf16(struct gs_cuda_ctx *c)
{
	return c->kv_bf16;
}

enum gs_status gs_cu_malloc(struct gs_cuda_ctx *c, void **dev, size_t bytes)
{
	cudaError_t e;

	*dev = NULL;
	if (bytes == 0)
		return GS_OK;
	e = cudaMalloc(dev, bytes);
	if (e != cudaSuccess) {
		(void)cudaGetLastError();
		*dev = NULL;
		return gs_errorf(e == cudaErrorMemoryAllocation ? GS_ERR_NOMEM : GS_ERR_INTERNAL,
				 "CUDA backend: cannot allocate %zu bytes on device %d: %s", bytes, c->device,
				 cudaGetErrorString(e));
	}
	return GS_OK;
}

void gs_cu_free(struct gs_cuda_ctx *c, void *dev)
{
	cudaError_t e;

	if (!dev)
		return;
	e = cudaFree(dev);
	if (e != cudaSuccess)
		gs_log(GS_LOG_WARN, "CUDA backend: cudaFree: %s", cudaGetErrorString(e));
}

enum gs_status gs_cu_upload(struct gs_cuda_ctx *c, void *dst, const void *src, size_t bytes)
{
	if (bytes == 0)
		return GS_OK;
	GS_CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
	GS_CU_TRY(cudaStreamSynchronize(c->stream));
	return GS_OK;
}

enum gs_status gs_cu_download(struct gs_cuda_ctx *c, void *dst, const void *src, size_t bytes)
{
	if (bytes == 0)
		return GS_OK;
	GS_CU_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
	GS_CU_TRY(cudaStreamSynchronize(c->stream));
	return GS_OK;
}

enum gs_status gs_cu_memset(struct gs_cuda_ctx *c, void *dst, int byte, size_t bytes)
{
	if (bytes == 0)
		return GS_OK;
	GS_CU_TRY(cudaMemsetAsync(dst, byte & 0xff, bytes, c->stream));
	return GS_OK;
}

enum gs_status gs_cu_synchronize(struct gs_cuda_ctx *c)
{
	GS_CU_TRY(cudaStreamSynchronize(c->stream));
	return GS_OK;
}
