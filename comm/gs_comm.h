/* Communicators: one vtable, three implementations (STYLE.md 2, 12).
 *
 *   self  size 1, no MPI needed: every collective is a copy or nothing;
 *   mpi   host buffers over MPI (Open MPI: ob1 or UCX underneath);
 *   nccl  device buffers on a dedicated CUDA stream; the unique id is created on rank 0
 *         and broadcast over the MPI communicator it is built from.
 *
 * All collectives are blocking from the caller's point of view and return GS_OK or a
 * status with the reason recorded (gs_errorf). Sub-communicators (TP group, later the
 * context-parallel dimension: world = T × C) come from gs_comm_split. */
#ifndef GS_COMM_H
#define GS_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "gs_dtype.h"
#include "gs_status.h"

struct gs_comm;

struct gs_comm_i {
	const char *name;
	int (*rank)(void *ctx);
	int (*size)(void *ctx);
	/* In-place sum over ranks; dtype F32 (and BF16 on nccl). */
	enum gs_status (*allreduce_sum)(void *ctx, void *buf, size_t count, enum gs_dtype dtype);
	/* Element-wise max of int64 values, host memory on every implementation (error agreement). */
	enum gs_status (*allreduce_max_i64)(void *ctx, int64_t *buf, size_t count);
	/* recv = concat over ranks of send (bytes each), rank order. */
	enum gs_status (*allgather)(void *ctx, const void *send, void *recv, size_t bytes);
	enum gs_status (*broadcast)(void *ctx, void *buf, size_t bytes, int root);
	/* recv (only significant on root) = concat over ranks of send (bytes each). */
	enum gs_status (*gather)(void *ctx, const void *send, void *recv, size_t bytes, int root);
	enum gs_status (*barrier)(void *ctx);
	/* Ranks with the same color form a new communicator, ordered by key. Optional (NULL). */
	enum gs_status (*split)(void *ctx, int color, int key, struct gs_comm *out);
	/* End the whole job now with exit code (a rank that cannot go on and cannot tell the
	 * others in a collective). Optional (NULL: exit). */
	void (*abort)(void *ctx, int code);
	void (*free)(void *ctx);
};

struct gs_comm {
	const struct gs_comm_i *iface;
	void *ctx;
};

/* Size-1 communicator (single process). */
enum gs_status gs_comm_self_create(struct gs_comm *out);

/* MPI world communicator; calls MPI_Init_thread if MPI is not initialised yet. Only
 * comm/ and worker/main.c see MPI headers. */
enum gs_status gs_comm_mpi_init(int *argc, char ***argv, struct gs_comm *out);
/* MPI_Finalize after every communicator is freed. */
void gs_comm_mpi_finalize(void);
/* Whether this build has MPI / NCCL at all. */
int gs_comm_have_mpi(void);
int gs_comm_have_nccl(void);

/* NCCL communicator over the ranks of an MPI (or any) bootstrap communicator: rank 0 makes
 * the unique id, broadcast, ncclCommInitRank on device `device`, a dedicated stream. Buffers
 * passed to its collectives are device pointers. GS_ERR_UNSUPPORTED when built without
 * NCCL or when no GPU is present. */
enum gs_status gs_comm_nccl_create(const struct gs_comm *bootstrap, int device, struct gs_comm *out);
/* Hand the backend's CUDA stream (cudaStream_t) so collectives order against it with events. */
enum gs_status gs_comm_nccl_set_compute_stream(struct gs_comm *comm, void *cuda_stream);

static inline int gs_comm_rank(const struct gs_comm *c) { return c->iface->rank(c->ctx); }
static inline int gs_comm_size(const struct gs_comm *c) { return c->iface->size(c->ctx); }
static inline enum gs_status gs_comm_allreduce_f32(const struct gs_comm *c, float *buf, size_t n)
{
	return c->iface->allreduce_sum(c->ctx, buf, n, GS_DTYPE_F32);
}
void gs_comm_free(struct gs_comm *c);

#endif
