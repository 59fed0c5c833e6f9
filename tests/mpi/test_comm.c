/* Every collective of the MPI communicator (run under mpirun with 1..4 ranks), of its split
 * sub-communicators and of the self communicator, against values each rank computes on its
 * own: rank r contributes r + 1 + (i mod 7) to element i, so the sum over n ranks is
 * n(n+1)/2 + n·(i mod 7), exact in fp32. Also: errors come back as gs_status with MPI's
 * message, and the NCCL communicator refuses cleanly on a machine without a GPU (with a GPU
 * it must work on a 1-rank bootstrap; test_comm_nccl checks the device collectives). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_comm.h"
#include "gs_test.h"

static void test_allreduce(const struct gs_comm *c)
{
	static const size_t sizes[] = { 1, 1000, 1 << 20 };
	int r = gs_comm_rank(c), n = gs_comm_size(c);

	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		size_t cnt = sizes[si], bad = 0;
		float *b = malloc(cnt * sizeof(float));

		for (size_t i = 0; i < cnt; i++)
			b[i] = (float)(r + 1) + (float)(i % 7);
		CHECK(gs_comm_allreduce_f32(c, b, cnt) == GS_OK);
		for (size_t i = 0; i < cnt; i++)
			bad += b[i] != (float)(n * (n + 1) / 2 + n * (int)(i % 7));
		CHECK_MSG(bad == 0, "%s size %d: all-reduce of %zu floats: %zu wrong", gs_comm_name(c), n, cnt, bad);
		free(b);
	}
}

static void test_collectives(const struct gs_comm *c)
{
	int r = gs_comm_rank(c), n = gs_comm_size(c);

	CHECK(r >= 0 && r < n);
	test_allreduce(c);
	{
		int64_t v[3] = { r * 10, -r, (int64_t)1 << 40 | r };
		CHECK(gs_comm_allreduce_max_i64(c, v, 3) == GS_OK);
		CHECK(v[0] == (n - 1) * 10 && v[1] == 0 && v[2] == ((int64_t)1 << 40 | (n - 1)));
	}
	{
		int32_t mine[3] = { r, r * r, 7 }, *all = calloc((size_t)n * 3, sizeof(int32_t));
		CHECK(gs_comm_allgather(c, mine, all, sizeof(mine)) == GS_OK);
		for (int k = 0; k < n; k++)
			CHECK(all[3 * k] == k && all[3 * k + 1] == k * k && all[3 * k + 2] == 7);
		for (int root = 0; root < n; root++) { /* every root */
			memset(all, 0xff, (size_t)n * 3 * sizeof(int32_t));
			CHECK(gs_comm_gather(c, mine, all, sizeof(mine), root) == GS_OK);
			if (r == root)
				for (int k = 0; k < n; k++)
					CHECK(all[3 * k] == k && all[3 * k + 1] == k * k && all[3 * k + 2] == 7);
		}
		free(all);
	}
	for (int root = 0; root < n; root++) {
		char msg[32] = { 0 }, want[32] = { 0 };
		snprintf(want, sizeof(want), "hello from %d", root);
		if (r == root)
			memcpy(msg, want, sizeof(msg));
		CHECK(gs_comm_broadcast(c, msg, sizeof(msg), root) == GS_OK);
		CHECK_STREQ(msg, want);
	}
	{
		/* 3 MiB of bytes: several protocol fragments on both PMLs */
		size_t bytes = 3u << 20, bad = 0;
		unsigned char *big = malloc(bytes);
		for (size_t i = 0; i < bytes; i++)
			big[i] = r == 0 ? (unsigned char)(i * 131 + 7) : 0;
		CHECK(gs_comm_broadcast(c, big, bytes, 0) == GS_OK);
		for (size_t i = 0; i < bytes; i++)
			bad += big[i] != (unsigned char)(i * 131 + 7);
		CHECK_MSG(bad == 0, "broadcast of %zu bytes: %zu wrong", bytes, bad);
		free(big);
	}
	CHECK(gs_comm_barrier(c) == GS_OK);
}

/* Bad arguments come back as statuses with a reason, not as a dead job. */
static void test_errors(const struct gs_comm *w)
{
	int n = gs_comm_size(w);
	float f = 1.0f;
	uint16_t h = 0;
	char b[4] = { 0 };

	CHECK(gs_comm_allreduce(w, &h, 1, GS_DTYPE_BF16) == GS_ERR_UNSUPPORTED);
	CHECK(strstr(gs_last_error(), "bf16") != NULL || strstr(gs_last_error(), "BF16") != NULL);
	/* Root out of range: MPI's parameter check fails on every rank, locally. */
	CHECK(gs_comm_broadcast(w, b, sizeof(b), n) == GS_ERR_INTERNAL);
	CHECK_MSG(strstr(gs_last_error(), "MPI_Bcast failed: ") != NULL, "message: %s", gs_last_error());
	/* The communicator is still usable. */
	CHECK(gs_comm_allreduce_f32(w, &f, 1) == GS_OK && f == (float)n);
	{
		struct gs_comm s;
		CHECK(gs_comm_split(w, -5, 0, &s) == GS_ERR_INVALID_ARG);
	}
}

static void test_nccl_refusal(const struct gs_comm *w)
{
	struct gs_comm self, nc = { 0 };
	enum gs_status st;
	int r = gs_comm_rank(w);

	gs_comm_self_create(&self);
	st = gs_comm_nccl_create(&self, 0, &nc);
	if (st == GS_OK) {
		/* A GPU and NCCL: a 1-rank communicator on device 0 works (one per process). */
		CHECK(gs_comm_size(&nc) == 1 && gs_comm_rank(&nc) == 0);
		CHECK(gs_comm_barrier(&nc) == GS_OK);
		gs_comm_free(&nc);
		if (r == 0)
			fprintf(stderr, "nccl: present; device collectives are checked by test_comm_nccl\n");
		return;
	}
	CHECK(st == GS_ERR_UNSUPPORTED);
	CHECK(strstr(gs_last_error(), gs_comm_have_nccl() ? "no CUDA device" : "built without NCCL") != NULL);
	if (r == 0)
		fprintf(stderr, "nccl: unavailable here (%s)\n", gs_last_error());
	/* Over the MPI bootstrap every rank agrees on the refusal; nobody hangs. */
	st = gs_comm_nccl_create(w, r, &nc);
	CHECK(st == GS_ERR_UNSUPPORTED);
	CHECK(nc.ctx == NULL);
	CHECK(gs_comm_barrier(w) == GS_OK);
	CHECK(gs_comm_nccl_set_compute_stream(&self, NULL) != GS_OK);
}

int main(int argc, char **argv)
{
	struct gs_comm w, self, sub, self_sub;
	int r, n;

	CHECK(gs_comm_have_mpi() == 1);
	CHECK(gs_comm_self_create(&self) == GS_OK);
	CHECK(gs_comm_rank(&self) == 0 && gs_comm_size(&self) == 1);
	CHECK(strcmp(gs_comm_name(&self), "self") == 0);
	test_collectives(&self);
	CHECK(gs_comm_split(&self, 3, 0, &self_sub) == GS_OK && gs_comm_size(&self_sub) == 1);
	gs_comm_free(&self_sub);

	if (gs_comm_mpi_init(&argc, &argv, &w) != GS_OK) {
		fprintf(stderr, "MPI init: %s\n", gs_last_error());
		return 1;
	}
	r = gs_comm_rank(&w);
	n = gs_comm_size(&w);
	CHECK(strcmp(gs_comm_name(&w), "mpi") == 0);
	test_collectives(&w);
	test_errors(&w);

	/* Two groups by parity, ordered by descending rank: sizes ceil(n/2) and floor(n/2). */
	CHECK(gs_comm_split(&w, r % 2, -r, &sub) == GS_OK);
	{
		int gsize = r % 2 == 0 ? (n + 1) / 2 : n / 2;
		CHECK_MSG(gs_comm_size(&sub) == gsize, "rank %d: group size %d, want %d", r, gs_comm_size(&sub), gsize);
		CHECK_MSG(gs_comm_rank(&sub) == gsize - 1 - r / 2, "rank %d: group rank %d", r, gs_comm_rank(&sub));
		/* Sub-all-reduce of the world ranks: each group sums only its own parity. */
		float v = (float)r;
		float want = 0;
		for (int k = r % 2; k < n; k += 2)
			want += (float)k;
		CHECK(gs_comm_allreduce_f32(&sub, &v, 1) == GS_OK && v == want);
	}
	test_collectives(&sub);
	gs_comm_free(&sub);
	CHECK(sub.ctx == NULL);
	gs_comm_free(&sub); /* twice: no-op */

	test_nccl_refusal(&w);

	gs_comm_free(&w);
	gs_comm_mpi_finalize();
	gs_comm_mpi_finalize(); /* twice: no-op */
	fprintf(stderr, "rank %d of %d: ", r, n);
	TEST_DONE();
}
