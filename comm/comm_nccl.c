/* NCCL communicator over device buffers (STYLE.md 12, like llm.c): rank 0 creates the unique
 * id, the bootstrap communicator broadcasts it, every rank joins with ncclCommInitRank on its
 * device. Collectives run on a dedicated stream, ordered against the compute stream with
 * events, so the host never waits in the hot path. */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include "gs_comm.h"

struct nccl_ctx {
	ncclComm_t comm;
	int rank, size, device;
	cudaStream_t stream;          /* collectives */
	cudaStream_t compute;         /* the backend's stream (0 = legacy default) */
	cudaEvent_t compute_done, comm_done;
	void *scratch;                /* device bytes for gather / max_i64 */
	size_t scratch_bytes;
};

#define CUDA_TRY(call)                                                                         \
	do {                                                                                   \
		cudaError_t e_ = (call);                                                       \
		if (e_ != cudaSuccess)                                                         \
			return gs_errorf(GS_ERR_INTERNAL, "%s: %s", #call, cudaGetErrorString(e_)); \
	} while (0)
#define NCCL_TRY(call)                                                                         \
	do {                                                                                   \
		ncclResult_t r_ = (call);                                                      \
		if (r_ != ncclSuccess)                                                         \
			return gs_errorf(GS_ERR_INTERNAL, "%s: %s", #call, ncclGetErrorString(r_)); \
	} while (0)

static int nccl_rank(void *v) { return ((struct nccl_ctx *)v)->rank; }
static int nccl_size(void *v) { return ((struct nccl_ctx *)v)->size; }

/* The comm stream waits for work queued so far on the compute stream. */
static enum gs_status begin(struct nccl_ctx *c)
{
	CUDA_TRY(cudaEventRecord(c->compute_done, c->compute));
	CUDA_TRY(cudaStreamWaitEvent(c->stream, c->compute_done, 0));
	return GS_OK;
}

/* Later compute waits for the collective. */
static enum gs_status end(struct nccl_ctx *c)
{
	CUDA_TRY(cudaEventRecord(c->comm_done, c->stream));
	CUDA_TRY(cudaStreamWaitEvent(c->compute, c->comm_done, 0));
	return GS_OK;
}

static enum gs_status nccl_allreduce(void *v, void *buf, size_t count, enum gs_dtype dtype)
{
	struct nccl_ctx *c = v;
	ncclDataType_t t;

	switch (dtype) {
	case GS_DTYPE_F32: t = ncclFloat32; break;
	case GS_DTYPE_BF16: t = ncclBfloat16; break;
	case GS_DTYPE_F16: t = ncclFloat16; break;
	default: return gs_errorf(GS_ERR_UNSUPPORTED, "NCCL all-reduce of %s", gs_dtype_name(dtype));
	}
	GS_TRY(begin(c));
	NCCL_TRY(ncclAllReduce(buf, buf, count, t, ncclSum, c->comm, c->stream));
	return end(c);
}

static enum gs_status ensure_scratch(struct nccl_ctx *c, size_t bytes)
{
	if (bytes <= c->scratch_bytes)
		return GS_OK;
	if (c->scratch)
		CUDA_TRY(cudaFree(c->scratch));
	c->scratch = NULL;
	c->scratch_bytes = 0;
	CUDA_TRY(cudaMalloc(&c->scratch, bytes));
	c->scratch_bytes = bytes;
	return GS_OK;
}

/* Host memory on every implementation: staged through device scratch, synchronous. */
static enum gs_status nccl_max_i64(void *v, int64_t *buf, size_t count)
{
	struct nccl_ctx *c = v;
	GS_TRY(ensure_scratch(c, count * sizeof(int64_t)));
	CUDA_TRY(cudaMemcpyAsync(c->scratch, buf, count * sizeof(int64_t), cudaMemcpyHostToDevice, c->stream));
	NCCL_TRY(ncclAllReduce(c->scratch, c->scratch, count, ncclInt64, ncclMax, c->comm, c->stream));
	CUDA_TRY(cudaMemcpyAsync(buf, c->scratch, count * sizeof(int64_t), cudaMemcpyDeviceToHost, c->stream));
	CUDA_TRY(cudaStreamSynchronize(c->stream));
	return GS_OK;
}

static enum gs_status nccl_allgather(void *v, const void *send, void *recv, size_t bytes)
{
	struct nccl_ctx *c = v;
	GS_TRY(begin(c));
	NCCL_TRY(ncclAllGather(send, recv, bytes, ncclUint8, c->comm, c->stream));
	return end(c);
}

static enum gs_status nccl_broadcast(void *v, void *buf, size_t bytes, int root)
{
	struct nccl_ctx *c = v;
	GS_TRY(begin(c));
	NCCL_TRY(ncclBroadcast(buf, buf, bytes, ncclUint8, root, c->comm, c->stream));
	return end(c);
}

static enum gs_status nccl_gather(void *v, const void *send, void *recv, size_t bytes, int root)
{
	struct nccl_ctx *c = v;
	GS_TRY(begin(c));
	NCCL_TRY(ncclGroupStart());
	if (c->rank == root)
		for (int r = 0; r < c->size; r++)
			NCCL_TRY(ncclRecv((char *)recv + (size_t)r * bytes, bytes, ncclUint8, r, c->comm, c->stream));
	NCCL_TRY(ncclSend(send, bytes, ncclUint8, root, c->comm, c->stream));
	NCCL_TRY(ncclGroupEnd());
	return end(c);
}

static enum gs_status nccl_barrier(void *v)
{
	struct nccl_ctx *c = v;
	GS_TRY(ensure_scratch(c, sizeof(float)));
	NCCL_TRY(ncclAllReduce(c->scratch, c->scratch, 1, ncclFloat32, ncclSum, c->comm, c->stream));
	CUDA_TRY(cudaStreamSynchronize(c->stream));
	return GS_OK;
}

static void nccl_abort(void *v, int code)
{
	ncclCommAbort(((struct nccl_ctx *)v)->comm);
	exit(code);
}

static void nccl_free(void *v)
{
	struct nccl_ctx *c = v;
	ncclCommDestroy(c->comm);
	cudaFree(c->scratch);
	cudaEventDestroy(c->compute_done);
	cudaEventDestroy(c->comm_done);
	cudaStreamDestroy(c->stream);
	free(c);
}

static const struct gs_comm_i gs_comm_nccl_i = {
	.name = "nccl",
	.rank = nccl_rank,
	.size = nccl_size,
	.allreduce_sum = nccl_allreduce,
	.allreduce_max_i64 = nccl_max_i64,
	.allgather = nccl_allgather,
	.broadcast = nccl_broadcast,
	.gather = nccl_gather,
	.barrier = nccl_barrier,
	.abort = nccl_abort,
	.free = nccl_free,
};

enum gs_status gs_comm_nccl_create(const struct gs_comm *boot, int device, struct gs_comm *out)
{
	struct nccl_ctx *c;
	ncclUniqueId id;
	int count = 0;
	cudaError_t e = cudaGetDeviceCount(&count);
	enum gs_status st;

	/* Without a driver this returns cudaErrorInsufficientDriver and leaves count alone. */
	if (e != cudaSuccess || count == 0)
		return gs_errorf(GS_ERR_UNSUPPORTED, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "count 0");
	if (device < 0 || device >= count)
		return gs_errorf(GS_ERR_INVALID_ARG, "CUDA device %d of %d", device, count);
	c = calloc(1, sizeof(*c));
	if (!c)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	c->rank = gs_comm_rank(boot);
	c->size = gs_comm_size(boot);
	c->device = device;
	memset(&id, 0, sizeof(id));
	if (c->rank == 0 && ncclGetUniqueId(&id) != ncclSuccess) {
		free(c);
		return gs_errorf(GS_ERR_INTERNAL, "ncclGetUniqueId failed");
	}
	st = boot->iface->broadcast(boot->ctx, &id, sizeof(id), 0);
	if (st != GS_OK)
		goto out_free_ctx;
	if (cudaSetDevice(device) != cudaSuccess ||
	    cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess ||
	    cudaEventCreateWithFlags(&c->compute_done, cudaEventDisableTiming) != cudaSuccess ||
	    cudaEventCreateWithFlags(&c->comm_done, cudaEventDisableTiming) != cudaSuccess) {
		st = gs_errorf(GS_ERR_INTERNAL, "CUDA set-up on device %d failed", device);
		goto out_free_ctx;
	}
	if (ncclCommInitRank(&c->comm, c->size, id, c->rank) != ncclSuccess) {
		st = gs_errorf(GS_ERR_INTERNAL, "ncclCommInitRank(rank %d of %d) failed", c->rank, c->size);
		goto out_free_ctx;
	}
	out->iface = &gs_comm_nccl_i;
	out->ctx = c;
	return GS_OK;

out_free_ctx:
	free(c);
	return st;
}

enum gs_status gs_comm_nccl_set_compute_stream(struct gs_comm *comm, void *cuda_stream)
{
	if (comm->iface != &gs_comm_nccl_i)
		return gs_errorf(GS_ERR_INVALID_ARG, "not an NCCL communicator");
	((struct nccl_ctx *)comm->ctx)->compute = (cudaStream_t)cuda_stream;
	return GS_OK;
}

int gs_comm_have_nccl(void)
{
	return 1;
}
