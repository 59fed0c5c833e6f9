/* Size-1 communicator: a single process needs no MPI. */
#include <stdlib.h>
#include <string.h>

#include "gs_comm.h"

static int self_rank(void *ctx) { return 0; }
static int self_size(void *ctx) { return 1; }
static enum gs_status self_allreduce(void *ctx, void *buf, size_t n, enum gs_dtype t) { return GS_OK; }
static enum gs_status self_max_i64(void *ctx, int64_t *buf, size_t n) { return GS_OK; }
static enum gs_status self_barrier(void *ctx) { return GS_OK; }
static enum gs_status self_broadcast(void *ctx, void *buf, size_t bytes, int root)
{
	return root == 0 ? GS_OK : gs_errorf(GS_ERR_INVALID_ARG, "broadcast root %d on a size-1 communicator", root);
}

static enum gs_status self_gather_all(void *ctx, const void *send, void *recv, size_t bytes)
{
	if (send != recv)
		memmove(recv, send, bytes);
	return GS_OK;
}

static enum gs_status self_gather(void *ctx, const void *send, void *recv, size_t bytes, int root)
{
	if (root != 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "gather root %d on a size-1 communicator", root);
	return self_gather_all(ctx, send, recv, bytes);
}

static enum gs_status self_split(void *ctx, int color, int key, struct gs_comm *out)
{
	return gs_comm_self_create(out);
}

static void self_abort(void *ctx, int code)
{
	exit(code);
}

static void self_free(void *ctx) {}

static const struct gs_comm_i gs_comm_self_i = {
	.name = "self",
	.rank = self_rank,
	.size = self_size,
	.allreduce_sum = self_allreduce,
	.allreduce_max_i64 = self_max_i64,
	.allgather = self_gather_all,
	.broadcast = self_broadcast,
	.gather = self_gather,
	.barrier = self_barrier,
	.split = self_split,
	.abort = self_abort,
	.free = self_free,
};

static char gs_comm_self_ctx; /* stateless: any non-NULL pointer */

enum gs_status gs_comm_self_create(struct gs_comm *out)
{
	out->iface = &gs_comm_self_i;
	out->ctx = &gs_comm_self_ctx;
	return GS_OK;
}
