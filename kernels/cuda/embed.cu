/* embed: out[t] = emb[ids[t] - row0] · scale, or zeros when ids[t] is outside this rank's
 * vocabulary range [row0, row0 + emb->rows) (the owner writes, then all-reduce). One block per
 * token; weights convert to fp32 exactly, one rounding for the scale (as the CPU). */
#include "cuda_common.cuh"

template <class L>
__global__ void embed_kernel(float *__restrict__ out, const void *__restrict__ emb, int64_t rows, int64_t cols,
			     const int32_t *__restrict__ ids, float scale, int64_t row0)
{
	float *o = out + (size_t)blockIdx.x * (size_t)cols;
	const int64_t row = (int64_t)ids[blockIdx.x] - row0;

	if (row < 0 || row >= rows) {
		for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
			o[i] = 0.0f;
		return;
	}
	for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
		o[i] = __fmul_rn(L::one(emb, (size_t)row * (size_t)cols + (size_t)i), scale);
}

void gs_cu_embed(struct gs_cuda_ctx *c, float *out, const struct gs_tensor *emb, const int32_t *ids, int n,
		 float scale, int64_t row0)
{
	const unsigned threads = 256;

	switch (emb->dtype) {
	case GS_DTYPE_BF16:
		embed_kernel<gs_cu_bf16><<<(unsigned)n, threads, 0, c->stream>>>(out, emb->data, emb->rows, emb->cols, ids,
									       scale, row0);
		break;
	case GS_DTYPE_F16:
		embed_kernel<gs_cu_f16><<<(unsigned)n, threads, 0, c->stream>>>(out, emb->data, emb->rows, emb->cols, ids,
									      scale, row0);
		break;
	case GS_DTYPE_F32:
		embed_kernel<gs_cu_f32><<<(unsigned)n, threads, 0, c->stream>>>(out, emb->data, emb->rows, emb->cols, ids,
									      scale, row0);
		break;
	default:
		GS_ASSERT(!"embed: unsupported dtype");
	}
	GS_CU_LAUNCHED(c, "embed");
}
