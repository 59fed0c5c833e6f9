/* The NCCL communicator on real GPUs, bootstrapped over MPI (mpirun -np 1 or 2). Every
 * collective on device buffers, ordered against a separate compute stream only through the
 * communicator's events: inputs are copied on the compute stream, results copied back on it,
 * and the host waits on the compute stream alone. Values as in test_comm (rank r contributes
 * r + 1 + (i mod 7); exact in fp32 and, for n <= 8, in bf16).
 * Exit 77 (ctest SKIP_RETURN_CODE) on every rank when this build has no NCCL, when there is
 * no CUDA device, or when there are fewer devices than ranks: never a silent pass. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_comm.h"

#define SKIP 77

#ifndef GS_HAVE_NCCL

int main(void)
{
	printf("SKIP: gs_comm built without NCCL\n");
	return SKIP;
}

#else

#include <cuda_runtime.h>

#include "gs_test.h"

#define CU(call)                                                                               \
	do {                                                                                   \
		cudaError_t e_ = (call);                                                       \
		if (e_ != cudaSuccess) {                                                       \
			fprintf(stderr, "FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call,     \
			        cudaGetErrorString(e_));                                       \
			exit(1);                                                               \
		}                                                                              \
	} while (0)

static cudaStream_t compute;

static void test_allreduce(const struct gs_comm *c, enum gs_dtype t)
{
	static const size_t sizes[] = { 1, 1000, 1 << 20 };
	int r = gs_comm_rank(c), n = gs_comm_size(c);

	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		size_t cnt = sizes[si], es = gs_dtype_size(t), bad = 0;
		unsigned char *h = malloc(cnt * es);
		void *d;

		for (size_t i = 0; i < cnt; i++) {
			float v = (float)(r + 1) + (float)(i % 7);
			if (t == GS_DTYPE_BF16)
				((uint16_t *)h)[i] = gs_f32_to_bf16(v);
			else
				((float *)h)[i] = v;
		}
		CU(cudaMalloc(&d, cnt * es));
		CU(cudaMemsetAsync(d, 0, cnt * es, compute));
		CU(cudaMemcpyAsync(d, h, cnt * es, cudaMemcpyHostToDevice, compute));
		CHECK(gs_comm_allreduce(c, d, cnt, t) == GS_OK);
		memset(h, 0, cnt * es);
		CU(cudaMemcpyAsync(h, d, cnt * es, cudaMemcpyDeviceToHost, compute));
		CU(cudaStreamSynchronize(compute));
		for (size_t i = 0; i < cnt; i++) {
			float got = t == GS_DTYPE_BF16 ? gs_bf16_to_f32(((uint16_t *)h)[i]) : ((float *)h)[i];
			bad += got != (float)(n * (n + 1) / 2 + n * (int)(i % 7));
		}
		CHECK_MSG(bad == 0, "nccl size %d: %s all-reduce of %zu: %zu wrong", n, gs_dtype_name(t), cnt, bad);
		CU(cudaFree(d));
		free(h);
	}
}

static void test_bytes(const struct gs_comm *c)
{
	int r = gs_comm_rank(c), n = gs_comm_size(c);
	int32_t mine[4] = { r, r * r, 7, -r }, *all = calloc((size_t)n * 4, sizeof(int32_t));
	void *dsend, *drecv;

	CU(cudaMalloc(&dsend, sizeof(mine)));
	CU(cudaMalloc(&drecv, (size_t)n * sizeof(mine)));
	CU(cudaMemcpyAsync(dsend, mine, sizeof(mine), cudaMemcpyHostToDevice, compute));
	CHECK(gs_comm_allgather(c, dsend, drecv, sizeof(mine)) == GS_OK);
	CU(cudaMemcpyAsync(all, drecv, (size_t)n * sizeof(mine), cudaMemcpyDeviceToHost, compute));
	CU(cudaStreamSynchronize(compute));
	for (int k = 0; k < n; k++)
		CHECK(all[4 * k] == k && all[4 * k + 1] == k * k && all[4 * k + 2] == 7 && all[4 * k + 3] == -k);

	for (int root = 0; root < n; root++) {
		CU(cudaMemsetAsync(drecv, 0, (size_t)n * sizeof(mine), compute));
		CHECK(gs_comm_gather(c, dsend, drecv, sizeof(mine), root) == GS_OK);
		memset(all, 0, (size_t)n * sizeof(mine));
		CU(cudaMemcpyAsync(all, drecv, (size_t)n * sizeof(mine), cudaMemcpyDeviceToHost, compute));
		CU(cudaStreamSynchronize(compute));
		if (r == root)
			for (int k = 0; k < n; k++)
				CHECK(all[4 * k] == k && all[4 * k + 1] == k * k && all[4 * k + 3] == -k);

		int32_t b[4] = { r == root ? 1000 + root : 0, 0, 0, 0 };
		CU(cudaMemcpyAsync(dsend, b, sizeof(b), cudaMemcpyHostToDevice, compute));
		CHECK(gs_comm_broadcast(c, dsend, sizeof(b), root) == GS_OK);
		CU(cudaMemcpyAsync(b, dsend, sizeof(b), cudaMemcpyDeviceToHost, compute));
		CU(cudaStreamSynchronize(compute));
		CHECK(b[0] == 1000 + root);
		CU(cudaMemcpyAsync(dsend, mine, sizeof(mine), cudaMemcpyHostToDevice, compute));
	}
	CHECK(gs_comm_broadcast(c, dsend, sizeof(mine), n) == GS_ERR_INVALID_ARG);
	{
		int64_t v[2] = { r * 10, -r };
		CHECK(gs_comm_allreduce_max_i64(c, v, 2) == GS_OK); /* host memory */
		CHECK(v[0] == (n - 1) * 10 && v[1] == 0);
	}
	CHECK(gs_comm_barrier(c) == GS_OK);
	CU(cudaFree(dsend));
	CU(cudaFree(drecv));
	free(all);
}

int main(int argc, char **argv)
{
	struct gs_comm w, nc, sub;
	int r, n, count = 0;
	int64_t lacking;
	cudaError_t e;

	if (gs_comm_mpi_init(&argc, &argv, &w) != GS_OK) {
		fprintf(stderr, "MPI init: %s\n", gs_last_error());
		return 1;
	}
	r = gs_comm_rank(&w);
	n = gs_comm_size(&w);
	e = cudaGetDeviceCount(&count); /* leaves count alone without a driver */
	lacking = e != cudaSuccess || count < n;
	CHECK(gs_comm_allreduce_max_i64(&w, &lacking, 1) == GS_OK);
	if (lacking) {
		if (r == 0)
			printf("SKIP: %d rank(s) need as many CUDA devices; this node has %d (%s)\n", n,
			       e == cudaSuccess ? count : 0, e == cudaSuccess ? "ok" : cudaGetErrorString(e));
		gs_comm_free(&w);
		gs_comm_mpi_finalize();
		return SKIP;
	}

	if (gs_comm_nccl_create(&w, r % count, &nc) != GS_OK) {
		fprintf(stderr, "FAIL rank %d: gs_comm_nccl_create: %s\n", r, gs_last_error());
		gs_comm_abort(&w, 1);
	}
	CHECK(strcmp(gs_comm_name(&nc), "nccl") == 0);
	CHECK(gs_comm_rank(&nc) == r && gs_comm_size(&nc) == n);
	CU(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
	CHECK(gs_comm_nccl_set_compute_stream(&nc, compute) == GS_OK);
	CHECK(gs_comm_nccl_set_compute_stream(&w, compute) == GS_ERR_INVALID_ARG);

	test_allreduce(&nc, GS_DTYPE_F32);
	test_allreduce(&nc, GS_DTYPE_BF16);
	test_bytes(&nc);
	CHECK(gs_comm_allreduce(&nc, NULL, 1, GS_DTYPE_I32) == GS_ERR_UNSUPPORTED);

	/* Parity groups through ncclCommSplit (they inherit the compute stream). */
	if (gs_comm_split(&nc, r % 2, r, &sub) == GS_OK) {
		CHECK(gs_comm_size(&sub) == (r % 2 == 0 ? (n + 1) / 2 : n / 2));
		CHECK(gs_comm_rank(&sub) == r / 2);
		test_allreduce(&sub, GS_DTYPE_F32);
		gs_comm_free(&sub);
	} else {
		CHECK_MSG(0, "ncclCommSplit: %s", gs_last_error());
	}

	/* Legacy default stream as the compute stream. */
	CHECK(gs_comm_nccl_set_compute_stream(&nc, NULL) == GS_OK);
	{
		float *d, h = (float)(r + 1);
		CU(cudaMalloc((void **)&d, sizeof(float)));
		CU(cudaMemcpy(d, &h, sizeof(float), cudaMemcpyHostToDevice));
		CHECK(gs_comm_allreduce_f32(&nc, d, 1) == GS_OK);
		CU(cudaMemcpy(&h, d, sizeof(float), cudaMemcpyDeviceToHost));
		CHECK(h == (float)(n * (n + 1) / 2));
		CU(cudaFree(d));
	}

	gs_comm_free(&nc);
	CU(cudaStreamDestroy(compute));
	gs_comm_free(&w);
	gs_comm_mpi_finalize();
	fprintf(stderr, "rank %d of %d (nccl): ", r, n);
	TEST_DONE();
}

#endif
