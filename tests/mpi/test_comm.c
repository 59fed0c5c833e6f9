/* Every collective of the MPI communicator (run under mpirun with 1..4 ranks) and the self
 * communicator, against values each rank can compute independently. The NCCL communicator
 * must refuse cleanly without a GPU; with one it must sum correctly (exit 77 = skipped when
 * the only thing left to test would need a GPU is not the case: MPI checks always run). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_comm.h"
#include "gs_test.h"

static void test_collectives(const struct gs_comm *c)
{
	int r = gs_comm_rank(c), n = gs_comm_size(c);
	static const size_t sizes[] = { 1, 1000, 1 << 20 };

	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		size_t cnt = sizes[si];
		float *b = malloc(cnt * sizeof(float));
		int bad = 0;
		for (size_t i = 0; i < cnt; i++)
			b[i] = (float)(r + 1) + (float)(i % 7);
		CHECK(gs_comm_allreduce_f32(c, b, cnt) == GS_OK);
		/* sum over r of (r + 1 + i%7) = n(n+1)/2 + n·(i%7): exact in fp32 at these sizes */
		for (size_t i = 0; i < cnt; i++)
			bad += b[i] != (float)(n * (n + 1) / 2 + n * (int)(i % 7));
		CHECK_MSG(bad == 0, "allreduce of %zu floats: %d wrong", cnt, bad);
		free(b);
	}
	{
		int64_t v[2] = { r * 10, -r };
		CHECK(c->iface->allreduce_max_i64(c->ctx, v, 2) == GS_OK);
		CHECK(v[0] == (n - 1) * 10 && v[1] == 0);
	}
	{
		int32_t mine[3] = { r, r * r, 7 }, *all = calloc((size_t)n * 3, sizeof(int32_t));
		CHECK(c->iface->allgather(c->ctx, mine, all, sizeof(mine)) == GS_OK);
		for (int k = 0; k < n; k++)
			CHECK(all[3 * k] == k && all[3 * k + 1] == k * k && all[3 * k + 2] == 7);
		memset(all, 0, (size_t)n * 3 * sizeof(int32_t));
		CHECK(c->iface->gather(c->ctx, mine, all, sizeof(mine), n - 1) == GS_OK);
		if (r == n - 1)
			for (int k = 0; k < n; k++)
				CHECK(all[3 * k] == k && all[3 * k + 1] == k * k);
		free(all);
	}
	{
		char msg[32] = { 0 };
		if (r == 0)
			snprintf(msg, sizeof(msg), "hello from root");
		CHECK(c->iface->broadcast(c->ctx, msg, sizeof(msg), 0) == GS_OK);
		CHECK_STREQ(msg, "hello from root");
	}
	CHECK(c->iface->barrier(c->ctx) == GS_OK);
}

int main(int argc, char **argv)
{
	struct gs_comm w, self, sub, nccl;
	enum gs_status st;
	int r, n;

	CHECK(gs_comm_self_create(&self) == GS_OK);
	CHECK(gs_comm_rank(&self) == 0 && gs_comm_size(&self) == 1);
	test_collectives(&self);

	if (gs_comm_mpi_init(&argc, &argv, &w) != GS_OK) {
		fprintf(stderr, "MPI init: %s\n", gs_last_error());
		return 1;
	}
	r = gs_comm_rank(&w);
	n = gs_comm_size(&w);
	test_collectives(&w);

	/* Two sub-groups by parity, ordered by rank. */
	CHECK(w.iface->split(w.ctx, r % 2, r, &sub) == GS_OK);
	CHECK(gs_comm_size(&sub) == (n + 1 - r % 2) / 2);
	CHECK(gs_comm_rank(&sub) == r / 2);
	test_collectives(&sub);
	gs_comm_free(&sub);

	st = gs_comm_nccl_create(&w, 0, &nccl);
	if (st == GS_OK) {
		/* A GPU is present: the device path must sum like the host path. Exercised by the
		 * GPU test suite with device buffers; here only creation and a barrier. */
		CHECK(nccl.iface->barrier(nccl.ctx) == GS_OK);
		gs_comm_free(&nccl);
	} else {
		CHECK(st == GS_ERR_UNSUPPORTED);
		if (r == 0)
			fprintf(stderr, "nccl: unavailable here (%s)\n", gs_last_error());
	}
	gs_comm_free(&w);
	gs_comm_mpi_finalize();
	fprintf(stderr, "rank %d: ", r);
	TEST_DONE();
}
