/* Built without CUDA (GS_CUDA=OFF, or no nvcc found): the CUDA backend reports that it is
 * unavailable and there are no devices; nothing here touches a GPU. */
#include "gs_cuda.h"

#define NO_CUDA "built without CUDA (configure with -DGS_CUDA=ON and a CUDA toolkit with nvcc)"

int gs_cuda_built(void)
{
	return 0;
}

int gs_cuda_device_count(void)
{
	return 0;
}

enum gs_status gs_backend_cuda_create(int device, struct gs_backend *out)
{
	return gs_errorf(GS_ERR_UNSUPPORTED, "CUDA backend: " NO_CUDA);
}

void gs_backend_cuda_free(struct gs_backend *be)
{
}

void *gs_backend_cuda_stream(const struct gs_backend *be)
{
	return NULL;
}

int gs_backend_cuda_device(const struct gs_backend *be)
{
	return -1;
}

enum gs_status gs_cuda_malloc(const struct gs_backend *be, void **dev, size_t bytes)
{
	*dev = NULL;
	return gs_errorf(GS_ERR_UNSUPPORTED, "gs_cuda_malloc: " NO_CUDA);
}

void gs_cuda_free(const struct gs_backend *be, void *dev)
{
}

enum gs_status gs_cuda_upload(const struct gs_backend *be, void *dev_dst, const void *host_src, size_t bytes)
{
	return gs_errorf(GS_ERR_UNSUPPORTED, "gs_cuda_upload: " NO_CUDA);
}

enum gs_status gs_cuda_download(const struct gs_backend *be, void *host_dst, const void *dev_src, size_t bytes)
{
	return gs_errorf(GS_ERR_UNSUPPORTED, "gs_cuda_download: " NO_CUDA);
}

enum gs_status gs_cuda_memset(const struct gs_backend *be, void *dev_dst, int byte, size_t bytes)
{
	return gs_errorf(GS_ERR_UNSUPPORTED, "gs_cuda_memset: " NO_CUDA);
}

enum gs_status gs_cuda_synchronize(const struct gs_backend *be)
{
	return gs_errorf(GS_ERR_UNSUPPORTED, "gs_cuda_synchronize: " NO_CUDA);
}

enum gs_status gs_cuda_argmax_rows(const struct gs_backend *be, const float *logits, int rows, int cols,
				   int32_t *ids_host, float *vals_host)
{
	return gs_errorf(GS_ERR_UNSUPPORTED, "gs_cuda_argmax_rows: " NO_CUDA);
}

enum gs_status gs_cuda_topk_rows(const struct gs_backend *be, const float *logits, int rows, int cols, int k,
				 int32_t *ids_host, float *vals_host)
{
	return gs_errorf(GS_ERR_UNSUPPORTED, "gs_cuda_topk_rows: " NO_CUDA);
}
