/* Communicators: one vtable, three implementations (STYLE.md 2, 12).
 *
 *   self  size 1, no MPI needed: every collective is a copy or nothing;
 *   mpi   host buffers over MPI (Open MPI: ob1 or UCX underneath);
 *   nccl  device buffers on a dedicated CUDA stream; the unique id is created on rank 0
 *         and broadcast over the (MPI) communicator it is bootstrapped from.
 *
 * Failure contract: every collective returns GS_OK or a status with the reason recorded
 * (gs_errorf: MPI_Error_string / ncclGetErrorString text). A collective that fails on one
 * rank may leave the others waiting: the caller either agrees on the error with a later
 * collective or ends the job with gs_comm_abort. Collectives are collective: every rank
 * of the communicator calls them in the same order with the same sizes.
 *
 * Completion: self and mpi return when the host buffers are ready. nccl returns once the
 * work is queued: the result is ordered before anything queued later on the compute stream
 * (gs_comm_nccl_set_compute_stream), with no host wait; allreduce_max_i64 and barrier are
 * the exceptions (host-synchronous on every implementation).
 *
 * Sub-communicators (TP group, later the context-parallel dimension: world = T × C) come
 * from gs_comm_split. No MPI, CUDA or NCCL type appears here. */
#ifndef GS_COMM_H
#define GS_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_dtype.h"
#include "gs_status.h"

struct gs_comm;

struct gs_comm_i {
	const char *name;                                   /* "self", "mpi", "nccl" */
	int (*rank)(void *ctx);
	int (*size)(void *ctx);
	/* In-place sum over ranks of count elements: F32 everywhere; BF16, F16 on nccl only
	 * (mpi: GS_ERR_UNSUPPORTED, host activations are fp32). */
	enum gs_status (*allreduce_sum)(void *ctx, void *buf, size_t count, enum gs_dtype dtype);
	/* Element-wise max of int64 values in HOST memory on every implementation (agreeing on
	 * errors, sizes); returns when buf holds the result. */
	enum gs_status (*allreduce_max_i64)(void *ctx, int64_t *buf, size_t count);
	/* recv[size × bytes] = concat over ranks of send[bytes], rank order. send may be
	 * recv + rank × bytes (in place: this rank's part is already there). */
	enum gs_status (*allgather)(void *ctx, const void *send, void *recv, size_t bytes);
	/* buf[bytes] of root to every rank. */
	enum gs_status (*broadcast)(void *ctx, void *buf, size_t bytes, int root);
	/* The same, for a broadcast that non-root ranks may wait on for a long time (a follower
	 * waiting for the leader's next plan): they wait without keeping a core busy, at the
	 * cost of up to ~1 ms latency once the wait has gone on. Every rank of the call must use
	 * this entry (MPI does not match blocking with non-blocking collectives); small buffers
	 * only (<= 1 GiB). Optional (NULL: broadcast). */
	enum gs_status (*broadcast_idle)(void *ctx, void *buf, size_t bytes, int root);
	/* recv[size × bytes] (only significant on root) = concat over ranks of send[bytes]. */
	enum gs_status (*gather)(void *ctx, const void *send, void *recv, size_t bytes, int root);
	/* Returns when every rank has entered it (nccl: and the comm stream has drained). */
	enum gs_status (*barrier)(void *ctx);
	/* Ranks with the same color form a new communicator of the same kind, ordered by key
	 * (then by old rank). Optional (NULL: GS_ERR_UNSUPPORTED from gs_comm_split). */
	enum gs_status (*split)(void *ctx, int color, int key, struct gs_comm *out);
	/* End the whole job now with exit code (a rank that cannot go on and cannot tell the
	 * others in a collective). Does not return. Optional (NULL: exit(code)). */
	void (*abort)(void *ctx, int code);
	void (*free)(void *ctx);
};

struct gs_comm {
	const struct gs_comm_i *iface;
	void *ctx;
};

/* Collective watchdog (ARCHITECTURE.md §7). A peer that dies or drops off the network can
 * leave this rank waiting inside a collective forever (the TCP transport has no timeout of its
 * own). The MPI communicator records each host-side wait (enter/leave; one process-wide record:
 * a process runs one engine) and a thread of the program reads it (gs_comm_watch_current) and
 * ends the process when a wait runs too long (worker/gs_watchdog.h). `idle` marks a follower's
 * wait for the leader's next plan (broadcast_idle), which lasts as long as the leader has no
 * work. NCCL collectives are asynchronous and not recorded. */
void gs_comm_watch_enter(const char *what, bool idle);
void gs_comm_watch_leave(void);
/* True while inside a recorded wait: *what names the collective, *idle as entered, *waited_s
 * since it began. Safe from any thread. */
bool gs_comm_watch_current(const char **what, bool *idle, double *waited_s);

/* Size-1 communicator (single process). Never fails. */
enum gs_status gs_comm_self_create(struct gs_comm *out);

/* MPI world communicator (a duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN); calls
 * MPI_Init_thread(MPI_THREAD_FUNNELED) if MPI is not initialised yet. Only comm/ sees MPI
 * headers (tests/layout/check_layout.py). */
enum gs_status gs_comm_mpi_init(int *argc, char ***argv, struct gs_comm *out);
/* MPI_Finalize, after every MPI-based communicator is freed; no-op when not initialised. */
void gs_comm_mpi_finalize(void);
/* Whether this build has MPI / NCCL at all (not whether a GPU is present). */
int gs_comm_have_mpi(void);
int gs_comm_have_nccl(void);

/* NCCL communicator over the ranks of a bootstrap communicator (MPI, or self for one rank):
 * collective over bootstrap. Each rank checks its device, all ranks agree (so one rank
 * without a GPU makes every rank fail instead of hanging), rank 0 makes the unique id, the
 * bootstrap broadcasts it, ncclCommInitRank on `device`, a dedicated non-blocking stream and
 * two events. Buffers of its collectives (except allreduce_max_i64) are device pointers on
 * `device`; the caller keeps `device` current (cudaSetDevice) on the calling thread.
 * GS_ERR_UNSUPPORTED when built without NCCL or when no CUDA device is present on some rank;
 * GS_ERR_INVALID_ARG for a device index out of range; GS_ERR_INTERNAL for CUDA/NCCL
 * failures. The bootstrap communicator may be freed afterwards. */
enum gs_status gs_comm_nccl_create(const struct gs_comm *bootstrap, int device, struct gs_comm *out);
/* Hand the backend's CUDA stream (a cudaStream_t; NULL = legacy default stream): every
 * collective first waits (event) for work queued on it so far, and work queued on it later
 * waits for the collective. GS_ERR_INVALID_ARG if comm is not an NCCL communicator. */
enum gs_status gs_comm_nccl_set_compute_stream(struct gs_comm *comm, void *cuda_stream);

/* Calls through the vtable (no extra checks: the implementation checks its arguments). */
static inline const char *gs_comm_name(const struct gs_comm *c) { return c->iface->name; }
static inline int gs_comm_rank(const struct gs_comm *c) { return c->iface->rank(c->ctx); }
static inline int gs_comm_size(const struct gs_comm *c) { return c->iface->size(c->ctx); }
static inline enum gs_status gs_comm_allreduce(const struct gs_comm *c, void *buf, size_t count,
                                               enum gs_dtype dtype)
{
	return c->iface->allreduce_sum(c->ctx, buf, count, dtype);
}
static inline enum gs_status gs_comm_allreduce_f32(const struct gs_comm *c, float *buf, size_t n)
{
	return c->iface->allreduce_sum(c->ctx, buf, n, GS_DTYPE_F32);
}
static inline enum gs_status gs_comm_allreduce_max_i64(const struct gs_comm *c, int64_t *buf, size_t n)
{
	return c->iface->allreduce_max_i64(c->ctx, buf, n);
}
static inline enum gs_status gs_comm_allgather(const struct gs_comm *c, const void *send, void *recv,
                                               size_t bytes)
{
	return c->iface->allgather(c->ctx, send, recv, bytes);
}
static inline enum gs_status gs_comm_broadcast(const struct gs_comm *c, void *buf, size_t bytes, int root)
{
	return c->iface->broadcast(c->ctx, buf, bytes, root);
}
/* Broadcast that waits idle on non-root ranks (the optional broadcast_idle entry, else broadcast). */
static inline enum gs_status gs_comm_broadcast_idle(const struct gs_comm *c, void *buf, size_t bytes, int root)
{
	if (c->iface->broadcast_idle)
		return c->iface->broadcast_idle(c->ctx, buf, bytes, root);
	return c->iface->broadcast(c->ctx, buf, bytes, root);
}
static inline enum gs_status gs_comm_gather(const struct gs_comm *c, const void *send, void *recv,
                                            size_t bytes, int root)
{
	return c->iface->gather(c->ctx, send, recv, bytes, root);
}
static inline enum gs_status gs_comm_barrier(const struct gs_comm *c) { return c->iface->barrier(c->ctx); }

/* New communicator of the ranks with the same color (collective over c). */
enum gs_status gs_comm_split(const struct gs_comm *c, int color, int key, struct gs_comm *out);
/* End the whole job (MPI_Abort on mpi); does not return. */
void gs_comm_abort(const struct gs_comm *c, int code) __attribute__((noreturn));
/* Release c (NULL or already freed: no-op); c->ctx becomes NULL. */
void gs_comm_free(struct gs_comm *c);

#endif
