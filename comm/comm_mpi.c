/* MPI communicator over host buffers. Errors return (MPI_ERRORS_RETURN on our own duplicate
 * of the world communicator) as gs_status with MPI's own message, so the caller decides
 * whether the job can go on. */
#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gs_comm.h"

struct mpi_ctx {
	MPI_Comm comm;   /* owned: a dup or a split, freed with the communicator */
	int      rank, size;
};

static enum gs_status mpi_fail(int rc, const char *what)
{
	char msg[MPI_MAX_ERROR_STRING];
	int len = 0;

	if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
		len = snprintf(msg, sizeof(msg), "error code %d", rc);
	return gs_errorf(GS_ERR_INTERNAL, "MPI_%s failed: %.*s", what, len, msg);
}

#define MPI_TRY(call, what)                             \
	do {                                            \
		int mpi_rc_ = (call);                   \
		if (mpi_rc_ != MPI_SUCCESS)             \
			return mpi_fail(mpi_rc_, what); \
	} while (0)

/* A collective that waits on the other ranks: the watchdog sees how long (gs_comm.h). */
#define MPI_COLL(call, what)                            \
	do {                                            \
		gs_comm_watch_enter("MPI_" what, false); \
		int mpi_rc_ = (call);                   \
		gs_comm_watch_leave();                  \
		if (mpi_rc_ != MPI_SUCCESS)             \
			return mpi_fail(mpi_rc_, what); \
	} while (0)

/* MPI counts are int: larger transfers go in pieces of at most 1 GiB. */
#define GS_MPI_CHUNK ((size_t)1 << 30)

static int mpi_rank(void *vctx) { return ((struct mpi_ctx *)vctx)->rank; }
static int mpi_size(void *vctx) { return ((struct mpi_ctx *)vctx)->size; }

static enum gs_status mpi_allreduce(void *vctx, void *buf, size_t count, enum gs_dtype dtype)
{
	struct mpi_ctx *c = vctx;
	const size_t step = GS_MPI_CHUNK / sizeof(float);
	float *p = buf;

	if (dtype != GS_DTYPE_F32)
		return gs_errorf(GS_ERR_UNSUPPORTED, "MPI all-reduce of %s host buffers (host activations are f32)",
		                 gs_dtype_name(dtype));
	for (size_t off = 0; off < count; off += step) {
		size_t n = count - off < step ? count - off : step;
		MPI_COLL(MPI_Allreduce(MPI_IN_PLACE, p + off, (int)n, MPI_FLOAT, MPI_SUM, c->comm), "Allreduce");
	}
	return GS_OK;
}

static enum gs_status mpi_max_i64(void *vctx, int64_t *buf, size_t count)
{
	struct mpi_ctx *c = vctx;

	if (count > INT_MAX)
		return gs_errorf(GS_ERR_RANGE, "max all-reduce of %zu int64 values", count);
	MPI_COLL(MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_INT64_T, MPI_MAX, c->comm), "Allreduce(max)");
	return GS_OK;
}

static enum gs_status mpi_allgather(void *vctx, const void *send, void *recv, size_t bytes)
{
	struct mpi_ctx *c = vctx;

	if (bytes > GS_MPI_CHUNK)
		return gs_errorf(GS_ERR_RANGE, "all-gather of %zu bytes per rank (limit %zu)", bytes, GS_MPI_CHUNK);
	if (send == (const char *)recv + (size_t)c->rank * bytes) /* in place */
		send = MPI_IN_PLACE;
	MPI_COLL(MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, c->comm), "Allgather");
	return GS_OK;
}

static enum gs_status mpi_broadcast(void *vctx, void *buf, size_t bytes, int root)
{
	struct mpi_ctx *c = vctx;
	size_t off = 0;

	/* At least one call, so a bad root is reported even for 0 bytes. */
	do {
		size_t n = bytes - off < GS_MPI_CHUNK ? bytes - off : GS_MPI_CHUNK;
		MPI_COLL(MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, c->comm), "Bcast");
		off += n;
	} while (off < bytes);
	return GS_OK;
}

static int64_t mono_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* MPI_Bcast spins a core for as long as the root keeps us waiting; a follower waits for the
 * leader's next plan for as long as no request comes. MPI_Ibcast, then MPI_Test: spin for
 * the first 50 µs (back-to-back steps stay fast), then sleep between tests, 50 µs growing
 * to 1 ms. */
static enum gs_status mpi_broadcast_idle(void *vctx, void *buf, size_t bytes, int root)
{
	struct mpi_ctx *c = vctx;
	MPI_Request req;
	int64_t spin_until, sleep_ns = 50000;
	int done = 0;

	if (bytes > GS_MPI_CHUNK)
		return gs_errorf(GS_ERR_RANGE, "idle broadcast of %zu bytes (limit %zu)", bytes, GS_MPI_CHUNK);
	MPI_TRY(MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, c->comm, &req), "Ibcast");
	spin_until = mono_ns() + 50000;
	gs_comm_watch_enter("MPI_Ibcast (the leader's next step plan)", c->rank != root);
	for (;;) {
		int rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
		if (rc != MPI_SUCCESS || done)
			gs_comm_watch_leave();
		if (rc != MPI_SUCCESS)
			return mpi_fail(rc, "Test(Ibcast)");
		if (done)
			return GS_OK;
		if (mono_ns() < spin_until)
			continue;
		nanosleep(&(struct timespec){ .tv_nsec = sleep_ns }, NULL); /* EINTR: test again */
		sleep_ns = sleep_ns * 3 / 2 < 1000000 ? sleep_ns * 3 / 2 : 1000000;
	}
}

static enum gs_status mpi_gather(void *vctx, const void *send, void *recv, size_t bytes, int root)
{
	struct mpi_ctx *c = vctx;

	if (bytes > GS_MPI_CHUNK)
		return gs_errorf(GS_ERR_RANGE, "gather of %zu bytes per rank (limit %zu)", bytes, GS_MPI_CHUNK);
	MPI_COLL(MPI_Gather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, root, c->comm), "Gather");
	return GS_OK;
}

static enum gs_status mpi_barrier(void *vctx)
{
	MPI_COLL(MPI_Barrier(((struct mpi_ctx *)vctx)->comm), "Barrier");
	return GS_OK;
}

static enum gs_status wrap(MPI_Comm comm, struct gs_comm *out);

static enum gs_status mpi_split(void *vctx, int color, int key, struct gs_comm *out)
{
	struct mpi_ctx *c = vctx;
	MPI_Comm sub;

	if (color < 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "split color %d (must be >= 0)", color);
	MPI_TRY(MPI_Comm_split(c->comm, color, key, &sub), "Comm_split");
	return wrap(sub, out);
}

static void mpi_abort(void *vctx, int code)
{
	MPI_Abort(((struct mpi_ctx *)vctx)->comm, code);
}

static void mpi_free(void *vctx)
{
	struct mpi_ctx *c = vctx;
	int fin = 0;

	MPI_Finalized(&fin);
	if (!fin)
		MPI_Comm_free(&c->comm);
	free(c);
}

static const struct gs_comm_i gs_comm_mpi_i = {
	.name              = "mpi",
	.rank              = mpi_rank,
	.size              = mpi_size,
	.allreduce_sum     = mpi_allreduce,
	.allreduce_max_i64 = mpi_max_i64,
	.allgather         = mpi_allgather,
	.broadcast         = mpi_broadcast,
	.broadcast_idle    = mpi_broadcast_idle,
	.gather            = mpi_gather,
	.barrier           = mpi_barrier,
	.split             = mpi_split,
	.abort             = mpi_abort,
	.free              = mpi_free,
};

/* Takes ownership of comm (freed here on failure). */
static enum gs_status wrap(MPI_Comm comm, struct gs_comm *out)
{
	struct mpi_ctx *c = calloc(1, sizeof(*c));
	int rc;

	if (!c) {
		MPI_Comm_free(&comm);
		return gs_errorf(GS_ERR_NOMEM, "out of memory for an MPI communicator");
	}
	c->comm = comm;
	rc = MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
	if (rc == MPI_SUCCESS)
		rc = MPI_Comm_rank(comm, &c->rank);
	if (rc == MPI_SUCCESS)
		rc = MPI_Comm_size(comm, &c->size);
	if (rc != MPI_SUCCESS) {
		mpi_free(c);
		return mpi_fail(rc, "Comm_set_errhandler/rank/size");
	}
	out->iface = &gs_comm_mpi_i;
	out->ctx = c;
	return GS_OK;
}

enum gs_status gs_comm_mpi_init(int *argc, char ***argv, struct gs_comm *out)
{
	int inited = 0, fin = 0, provided = MPI_THREAD_SINGLE;
	MPI_Comm dup;

	MPI_Finalized(&fin);
	if (fin)
		return gs_errorf(GS_ERR_INVALID_ARG, "MPI is already finalized");
	MPI_Initialized(&inited);
	if (!inited) {
		MPI_TRY(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "Init_thread");
		if (provided < MPI_THREAD_FUNNELED)
			gs_log(GS_LOG_WARN, "MPI provides thread level %d < FUNNELED; call MPI from the main thread only",
			       provided);
	}
	/* Errors of Comm_dup itself would take the default (fatal) handler of the world. */
	MPI_TRY(MPI_Comm_dup(MPI_COMM_WORLD, &dup), "Comm_dup");
	return wrap(dup, out);
}

void gs_comm_mpi_finalize(void)
{
	int inited = 0, fin = 0;

	MPI_Initialized(&inited);
	MPI_Finalized(&fin);
	if (inited && !fin)
		MPI_Finalize();
}

int gs_comm_have_mpi(void)
{
	return 1;
}
