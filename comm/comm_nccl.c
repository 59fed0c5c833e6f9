/* NCCL communicator over device buffers (STYLE.md 12, like llm.c): rank 0 creates the unique
 * id, the bootstrap communicator broadcasts it, every rank joins with ncclCommInitRank on its
 * device. Collectives run on a dedicated non-blocking stream, ordered against the compute
 * stream with two events, so the host never waits in the hot path:
 *
 *   compute: ..matmul..  record(compute_done)                      wait(comm_done) ..norm..
 *   comm:                          wait(compute_done) ncclAllReduce record(comm_done)
 */
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include "gs_comm.h"

struct nccl_ctx {
	ncclComm_t   comm;
	int          rank, size, device;
	cudaStream_t stream;          /* collectives (non-blocking, owned) */
	cudaStream_t compute;         /* the backend's stream (NULL = legacy default), not owned */
	cudaEvent_t  compute_done;    /* recorded on compute before a collective */
	cudaEvent_t  comm_done;       /* recorded on stream after it */
	void        *scratch;         /* device bytes for max_i64 / barrier */
	size_t       scratch_bytes;
};

#define CUDA_TRY(call)                                                                          \
	do {                                                                                    \
		cudaError_t e_ = (call);                                                        \
		if (e_ != cudaSuccess)                                                          \
			return gs_errorf(GS_ERR_INTERNAL, "%s: %s", #call, cudaGetErrorString(e_)); \
	} while (0)

static enum gs_status nccl_fail(ncclResult_t r, const char *what)
{
	const char *last = ncclGetLastError(NULL);
	return gs_errorf(GS_ERR_INTERNAL, "%s failed: %s%s%s", what, ncclGetErrorString(r),
	                 last && *last ? ": " : "", last ? last : "");
}

#define NCCL_TRY(call)                                   \
	do {                                             \
		ncclResult_t r_ = (call);                \
		if (r_ != ncclSuccess)                   \
			return nccl_fail(r_, #call);     \
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

/* Work queued later on the compute stream waits for the collective. */
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
	case GS_DTYPE_F32:  t = ncclFloat32; break;
	case GS_DTYPE_BF16: t = ncclBfloat16; break;
	case GS_DTYPE_F16:  t = ncclFloat16; break;
	default: return gs_errorf(GS_ERR_UNSUPPORTED, "NCCL all-reduce of %s", gs_dtype_name(dtype));
	}
	GS_TRY(begin(c));
	NCCL_TRY(ncclAllReduce(buf, buf, count, t, ncclSum, c->comm, c->stream));
	return end(c);
}

/* Start-up and control paths only (never per token once sized). */
static enum gs_status ensure_scratch(struct nccl_ctx *c, size_t bytes)
{
	if (bytes <= c->scratch_bytes)
		return GS_OK;
	CUDA_TRY(cudaStreamSynchronize(c->stream));
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
	size_t bytes = count * sizeof(int64_t);

	GS_TRY(ensure_scratch(c, bytes));
	CUDA_TRY(cudaMemcpyAsync(c->scratch, buf, bytes, cudaMemcpyHostToDevice, c->stream));
	NCCL_TRY(ncclAllReduce(c->scratch, c->scratch, count, ncclInt64, ncclMax, c->comm, c->stream));
	CUDA_TRY(cudaMemcpyAsync(buf, c->scratch, bytes, cudaMemcpyDeviceToHost, c->stream));
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

	if (root < 0 || root >= c->size)
		return gs_errorf(GS_ERR_INVALID_ARG, "broadcast root %d of %d ranks", root, c->size);
	GS_TRY(begin(c));
	NCCL_TRY(ncclBroadcast(buf, buf, bytes, ncclUint8, root, c->comm, c->stream));
	return end(c);
}

/* Point-to-point group: root receives one slice from every rank (itself included). */
static enum gs_status nccl_gather(void *v, const void *send, void *recv, size_t bytes, int root)
{
	struct nccl_ctx *c = v;
	ncclResult_t r = ncclSuccess, r_end;

	if (root < 0 || root >= c->size)
		return gs_errorf(GS_ERR_INVALID_ARG, "gather root %d of %d ranks", root, c->size);
	GS_TRY(begin(c));
	NCCL_TRY(ncclGroupStart());
	if (c->rank == root)
		for (int p = 0; p < c->size && r == ncclSuccess; p++)
			r = ncclRecv((char *)recv + (size_t)p * bytes, bytes, ncclUint8, p, c->comm, c->stream);
	if (r == ncclSuccess)
		r = ncclSend(send, bytes, ncclUint8, root, c->comm, c->stream);
	r_end = ncclGroupEnd(); /* always close the group */
	if (r != ncclSuccess)
		return nccl_fail(r, "ncclSend/ncclRecv (gather)");
	if (r_end != ncclSuccess)
		return nccl_fail(r_end, "ncclGroupEnd (gather)");
	return end(c);
}

static enum gs_status nccl_barrier(void *v)
{
	struct nccl_ctx *c = v;

	GS_TRY(ensure_scratch(c, sizeof(int64_t)));
	NCCL_TRY(ncclAllReduce(c->scratch, c->scratch, 1, ncclFloat32, ncclSum, c->comm, c->stream));
	CUDA_TRY(cudaStreamSynchronize(c->stream));
	return GS_OK;
}

static void nccl_abort(void *v, int code)
{
	/* Tear down in-flight NCCL work so peers error out instead of hanging; under mpirun a
	 * rank that exits non-zero before MPI_Finalize takes the whole job down. */
	ncclCommAbort(((struct nccl_ctx *)v)->comm);
	exit(code);
}

/* Release whatever a (possibly partial) set-up created. */
static void ctx_destroy(struct nccl_ctx *c)
{
	if (!c)
		return;
	if (c->stream)
		cudaStreamSynchronize(c->stream);
	if (c->comm) {
		ncclCommFinalize(c->comm);
		ncclCommDestroy(c->comm);
	}
	if (c->scratch)
		cudaFree(c->scratch);
	if (c->compute_done)
		cudaEventDestroy(c->compute_done);
	if (c->comm_done)
		cudaEventDestroy(c->comm_done);
	if (c->stream)
		cudaStreamDestroy(c->stream);
	free(c);
}

static void nccl_free(void *v)
{
	ctx_destroy(v);
}

/* Stream and events on `device`, which becomes current. */
static enum gs_status ctx_cuda_setup(struct nccl_ctx *c)
{
	CUDA_TRY(cudaSetDevice(c->device));
	CUDA_TRY(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
	CUDA_TRY(cudaEventCreateWithFlags(&c->compute_done, cudaEventDisableTiming));
	CUDA_TRY(cudaEventCreateWithFlags(&c->comm_done, cudaEventDisableTiming));
	return GS_OK;
}

static enum gs_status nccl_split(void *v, int color, int key, struct gs_comm *out);

static const struct gs_comm_i gs_comm_nccl_i = {
	.name              = "nccl",
	.rank              = nccl_rank,
	.size              = nccl_size,
	.allreduce_sum     = nccl_allreduce,
	.allreduce_max_i64 = nccl_max_i64,
	.allgather         = nccl_allgather,
	.broadcast         = nccl_broadcast,
	.gather            = nccl_gather,
	.barrier           = nccl_barrier,
	.split             = nccl_split,
	.abort             = nccl_abort,
	.free              = nccl_free,
};

static enum gs_status nccl_split(void *v, int color, int key, struct gs_comm *out)
{
	struct nccl_ctx *c = v, *s;
	enum gs_status st;
	ncclResult_t r;

	if (color < 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "split color %d (must be >= 0)", color);
	s = calloc(1, sizeof(*s));
	if (!s)
		return gs_errorf(GS_ERR_NOMEM, "out of memory for an NCCL communicator");
	s->device = c->device;
	s->compute = c->compute;
	/* Collective first (a rank that bailed out before it would hang the others). */
	r = ncclCommSplit(c->comm, color, key, &s->comm, NULL);
	if (r != ncclSuccess) {
		st = nccl_fail(r, "ncclCommSplit");
		goto out_free_ctx;
	}
	if ((r = ncclCommCount(s->comm, &s->size)) != ncclSuccess ||
	    (r = ncclCommUserRank(s->comm, &s->rank)) != ncclSuccess) {
		st = nccl_fail(r, "ncclCommCount/UserRank");
		goto out_free_ctx;
	}
	st = ctx_cuda_setup(s);
	if (st != GS_OK)
		goto out_free_ctx;
	out->iface = &gs_comm_nccl_i;
	out->ctx = s;
	return GS_OK;

out_free_ctx:
	ctx_destroy(s);
	return st;
}

/* This rank's half of the set-up: device present, in range, stream and events. */
static enum gs_status local_setup(int device, struct nccl_ctx *c)
{
	int count = 0;
	cudaError_t e = cudaGetDeviceCount(&count);

	/* Without a driver this returns cudaErrorInsufficientDriver (35) and leaves count. */
	if (e != cudaSuccess)
		return gs_errorf(GS_ERR_UNSUPPORTED, "no CUDA device (%s)", cudaGetErrorString(e));
	if (count <= 0)
		return gs_errorf(GS_ERR_UNSUPPORTED, "no CUDA device (count 0)");
	if (device < 0 || device >= count)
		return gs_errorf(GS_ERR_INVALID_ARG, "CUDA device %d: this node has %d", device, count);
	c->device = device;
	return ctx_cuda_setup(c);
}

enum gs_status gs_comm_nccl_create(const struct gs_comm *boot, int device, struct gs_comm *out)
{
	struct {
		ncclUniqueId id;
		int32_t      ok;
	} msg;
	struct nccl_ctx *c = calloc(1, sizeof(*c));
	enum gs_status local, st;
	int64_t worst;
	ncclResult_t r;

	if (!c)
		local = gs_errorf(GS_ERR_NOMEM, "out of memory for an NCCL communicator");
	else
		local = local_setup(device, c);

	/* Every rank learns whether every rank can go on, before NCCL waits for all of them. */
	worst = local;
	st = gs_comm_allreduce_max_i64(boot, &worst, 1);
	if (st != GS_OK)
		goto out_free_ctx;
	if (local != GS_OK) {
		st = local;
		goto out_free_ctx;
	}
	if (worst != GS_OK) {
		st = gs_errorf((enum gs_status)worst, "NCCL set-up failed on another rank (%s)",
		               gs_status_str((enum gs_status)worst));
		goto out_free_ctx;
	}
	c->rank = gs_comm_rank(boot);
	c->size = gs_comm_size(boot);

	memset(&msg, 0, sizeof(msg));
	if (c->rank == 0) {
		r = ncclGetUniqueId(&msg.id);
		msg.ok = r == ncclSuccess;
		if (!msg.ok)
			nccl_fail(r, "ncclGetUniqueId");
	}
	st = gs_comm_broadcast(boot, &msg, sizeof(msg), 0);
	if (st != GS_OK)
		goto out_free_ctx;
	if (!msg.ok) {
		st = c->rank == 0 ? GS_ERR_INTERNAL : gs_errorf(GS_ERR_INTERNAL, "ncclGetUniqueId failed on rank 0");
		goto out_free_ctx;
	}
	r = ncclCommInitRank(&c->comm, c->size, msg.id, c->rank);
	if (r != ncclSuccess) {
		c->comm = NULL;
		st = nccl_fail(r, "ncclCommInitRank");
		gs_error_prefix(st, "rank %d of %d on CUDA device %d", c->rank, c->size, device);
		goto out_free_ctx;
	}
	out->iface = &gs_comm_nccl_i;
	out->ctx = c;
	return GS_OK;

out_free_ctx:
	ctx_destroy(c);
	return st;
}

enum gs_status gs_comm_nccl_set_compute_stream(struct gs_comm *comm, void *cuda_stream)
{
	if (!comm || comm->iface != &gs_comm_nccl_i || !comm->ctx)
		return gs_errorf(GS_ERR_INVALID_ARG, "not an NCCL communicator");
	((struct nccl_ctx *)comm->ctx)->compute = (cudaStream_t)cuda_stream;
	return GS_OK;
}

int gs_comm_have_nccl(void)
{
	return 1;
}
