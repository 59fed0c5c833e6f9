/* All-reduce table in the style of nccl-tests (all_reduce_perf, out-of-place columns left
 * out): for each size, time per call = mean over iterations after warm-up, max over ranks;
 * algbw = size / time; busbw = algbw × 2(n−1)/n, the bytes each rank moves in a ring
 * all-reduce per unit time, comparable across rank counts. #wrong counts elements of a
 * separate check call (rank r contributes r + 1) that differ from n(n+1)/2.
 *   mpirun -np 2 build/tests/bench/bench_allreduce [min_bytes max_bytes [iters]] */
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

static void fail(const struct gs_comm *w, const char *what)
{
	fprintf(stderr, "bench_allreduce: %s: %s\n", what, gs_last_error());
	gs_comm_abort(w, 1);
}

int main(int argc, char **argv)
{
	struct gs_comm w;
	size_t lo = 16 << 10, hi = 16 << 20;
	int rank, n, iters_arg = 0;
	float *buf;

	if (gs_comm_mpi_init(&argc, &argv, &w) != GS_OK) {
		fprintf(stderr, "bench_allreduce: %s\n", gs_last_error());
		return 1;
	}
	if (argc >= 3) {
		lo = strtoull(argv[1], NULL, 10);
		hi = strtoull(argv[2], NULL, 10);
	}
	if (argc >= 4)
		iters_arg = atoi(argv[3]);
	if (lo < 4 || hi < lo) {
		fprintf(stderr, "usage: bench_allreduce [min_bytes>=4 max_bytes [iters]]\n");
		gs_comm_abort(&w, 2);
	}
	rank = gs_comm_rank(&w);
	n = gs_comm_size(&w);
	buf = malloc(hi);
	if (!buf)
		fail(&w, "malloc");
	if (rank == 0) {
		printf("# gemmashard all-reduce benchmark: %d ranks, communicator \"%s\", in place\n", n, gs_comm_name(&w));
		printf("# time: mean over iterations after 5 warm-up calls, max over ranks\n");
		printf("#%11s %12s %6s %6s %10s %10s %10s %7s\n", "size(B)", "count", "type", "redop", "time(us)",
		       "algbw", "busbw", "#wrong");
		printf("#%11s %12s %6s %6s %10s %10s %10s %7s\n", "", "(elements)", "", "", "", "(GB/s)", "(GB/s)", "");
	}
	for (size_t bytes = lo; bytes <= hi; bytes *= 4) {
		size_t count = bytes / sizeof(float);
		int iters = iters_arg > 0 ? iters_arg : bytes <= (1 << 20) ? 200 : 20, warm = 5;
		int64_t wrong = 0, ns;
		double t0 = 0, dt;

		/* Check call: exact small integers. */
		for (size_t i = 0; i < count; i++)
			buf[i] = (float)(rank + 1);
		if (gs_comm_allreduce_f32(&w, buf, count) != GS_OK)
			fail(&w, "all-reduce");
		for (size_t i = 0; i < count; i++)
			wrong += buf[i] != (float)(n * (n + 1) / 2);
		/* Timed calls on zeros (repeated sums of anything else overflow to inf). */
		for (size_t i = 0; i < count; i++)
			buf[i] = 0.0f;
		for (int i = 0; i < warm + iters; i++) {
			if (i == warm) {
				if (gs_comm_barrier(&w) != GS_OK)
					fail(&w, "barrier");
				t0 = now_s();
			}
			if (gs_comm_allreduce_f32(&w, buf, count) != GS_OK)
				fail(&w, "all-reduce");
		}
		dt = (now_s() - t0) / iters;
		{
			int64_t v[2] = { (int64_t)(dt * 1e9), wrong }; /* ns, max over ranks */
			if (gs_comm_allreduce_max_i64(&w, v, 2) != GS_OK)
				fail(&w, "max all-reduce");
			ns = v[0];
			wrong = v[1];
		}
		dt = (double)ns / 1e9;
		if (rank == 0) {
			double alg = (double)bytes / dt / 1e9;
			printf(" %11zu %12zu %6s %6s %10.1f %10.2f %10.2f %7lld\n", bytes, count, "float", "sum", dt * 1e6,
			       alg, alg * 2.0 * (n - 1) / n, (long long)wrong);
			fflush(stdout);
		}
	}
	free(buf);
	gs_comm_free(&w);
	gs_comm_mpi_finalize();
	return 0;
}
