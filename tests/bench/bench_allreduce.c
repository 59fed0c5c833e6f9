/* All-reduce table in the style of nccl-tests: for each size, time per call (average over
 * iterations after warm-up, max over ranks), algbw = size / time, busbw = algbw·2(n−1)/n.
 *   mpirun -np 2 build/tests/bench/bench_allreduce [min_bytes max_bytes] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "gs_comm.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	struct gs_comm w;
	size_t lo = 16 << 10, hi = 16 << 20;
	int rank, n;
	float *buf;

	if (gs_comm_mpi_init(&argc, &argv, &w) != GS_OK) {
		fprintf(stderr, "bench_allreduce: %s\n", gs_last_error());
		return 1;
	}
	if (argc == 3)
		lo = strtoull(argv[1], NULL, 10), hi = strtoull(argv[2], NULL, 10);
	rank = gs_comm_rank(&w);
	n = gs_comm_size(&w);
	buf = malloc(hi);
	if (!buf)
		w.iface->abort(w.ctx, 1);
	for (size_t i = 0; i < hi / 4; i++)
		buf[i] = 1.0f;
	if (rank == 0)
		printf("# all-reduce (sum, float32) over %d ranks, %s\n#%12s %12s %10s %10s %10s\n", n, w.iface->name,
		       "size(B)", "count", "time(us)", "algbw", "busbw(GB/s)");
	for (size_t bytes = lo; bytes <= hi; bytes *= 4) {
		size_t count = bytes / 4;
		int iters = bytes <= (1 << 20) ? 200 : 20, warm = 5;
		double t0 = 0, dt;
		for (int i = 0; i < warm + iters; i++) {
			if (i == warm) {
				w.iface->barrier(w.ctx);
				t0 = now_s();
			}
			if (gs_comm_allreduce_f32(&w, buf, count) != GS_OK) {
				fprintf(stderr, "bench_allreduce: %s\n", gs_last_error());
				w.iface->abort(w.ctx, 1);
			}
		}
		dt = (now_s() - t0) / iters;
		{
			int64_t us = (int64_t)(dt * 1e9); /* ns, max over ranks */
			w.iface->allreduce_max_i64(w.ctx, &us, 1);
			dt = (double)us / 1e9;
		}
		if (rank == 0) {
			double alg = (double)bytes / dt / 1e9;
			printf(" %12zu %12zu %10.1f %10.2f %10.2f\n", bytes, count, dt * 1e6, alg, alg * 2.0 * (n - 1) / n);
		}
	}
	free(buf);
	gs_comm_free(&w);
	gs_comm_mpi_finalize();
	return 0;
}
