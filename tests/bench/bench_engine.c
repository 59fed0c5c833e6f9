/* Serving-engine throughput on a synthetic shape (default 1b):
 *   mpirun -np T build/tests/bench/bench_engine [shape] [decode_steps] [cpu|cuda] [prompt_tokens] [fp32|bf16]
 * (cuda: T = 1, weights drawn on the GPU; prompt_tokens default 16, e.g. 1024 for a 1K context;
 * the last argument: the CPU matmul numerics, default fp32)
 * For batch B in 1, 8, 16, 32, 64: B requests with 16-token prompts decode `decode_steps` tokens
 * each; generated tokens/s over the decode phase (timed once every prompt is prefilled), and
 * the scheduler's share of step time
 * (planning + plan broadcast + candidate merge/draw). Then a mix: 8 decoding requests while
 * 4 prompts of 1024 tokens are chunk-prefilled. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gs_cpu.h"
#include "gs_cuda.h"
#include "gs_engine.h"
#include "gs_model.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	struct gs_comm w;
	struct gs_model *m;
	struct gs_backend be;
	const char *shape = argc > 1 ? argv[1] : "1b";
	int steps = argc > 2 ? atoi(argv[2]) : 16, T, rank;
	bool cuda = argc > 3 && strcmp(argv[3], "cuda") == 0;
	int P = argc > 4 ? atoi(argv[4]) : 16;
	enum gs_numerics nm = GS_NUMERICS_FP32;
	static const int batches[] = { 1, 8, 16, 32, 64 };
	static struct gs_token_event ev[512];
	double base_tps = 0;

	if (gs_comm_mpi_init(&argc, &argv, &w) != GS_OK)
		return 1;
	T = gs_comm_size(&w), rank = gs_comm_rank(&w);
	if (P < 1 || steps < 1 || (cuda && T != 1) ||
	    (argc > 5 && (cuda || gs_numerics_parse(argv[5], "numerics (5th argument)", &nm) != GS_OK))) {
		fprintf(stderr, "usage: bench_engine [shape] [decode_steps >= 1] [cpu|cuda (T = 1)] [prompt_tokens >= 1] "
			"[fp32|bf16 (cpu)]\n");
		return 2;
	}
	if ((cuda ? gs_backend_cuda_create(0, &be)
		  : gs_backend_cpu_create((int)(sysconf(_SC_NPROCESSORS_ONLN) / T > 0 ? sysconf(_SC_NPROCESSORS_ONLN) / T : 1),
					  &be)) != GS_OK ||
	    (!cuda && gs_backend_cpu_set_numerics(&be, nm) != GS_OK) ||
	    gs_model_synthetic_on(shape, 1, rank, T, &be, &m) != GS_OK || gs_model_to_backend(m, be) != GS_OK) {
		fprintf(stderr, "%s\n", gs_last_error());
		return 1;
	}
	/* This rank's matmul FLOPs per decoded token (its slices: heads, MLP columns, vocabulary
	 * range) and the FMA peak of its threads: a batch of B cannot step faster than B times
	 * that over the peak, which bounds the batch-B / batch-1 throughput ratio on a CPU. */
	double tok_flops = gs_model_layer_flops(m) + 2.0 * (double)m->lm_head.rows * (double)m->lm_head.cols;
	double peak = cuda ? 0 : gs_cpu_measure_fma_peak(gs_backend_cpu_pool(&be));
	double bpeak = cuda ? 0 : gs_cpu_measure_bf16_peak(gs_backend_cpu_pool(&be));
	if (!cuda)
		printf("numerics %s; fp32 FMA peak %.1f GFLOP/s, bf16 dot-product peak %.1f GFLOP/s (this rank's threads)\n",
		       gs_numerics_name(nm), peak / 1e9, bpeak / 1e9);
	for (size_t bi = 0; bi <= sizeof(batches) / sizeof(batches[0]); bi++) {
		bool mix = bi == sizeof(batches) / sizeof(batches[0]);
		int B = mix ? 8 : batches[bi];
		struct gs_engine_config c = { .max_batch_tokens = mix ? 512 : 256, .max_seqs = 64,
					      .max_context = P + steps + 2 > 1200 ? P + steps + 2 : 1200, .candidates = 64 };
		struct gs_engine *e;
		struct gs_engine_stats s0, s1;
		double t0 = 0;
		uint64_t gen = 0;

		if (gs_engine_create(m, be, T > 1 ? &w : NULL, &c, &e) != GS_OK) {
			fprintf(stderr, "%s\n", gs_last_error());
			return 1;
		}
		if (rank != 0) {
			gs_engine_follow(e);
			gs_engine_free(e);
			continue;
		}
		for (int i = 0; i < B; i++) {
			int32_t *prompt = malloc(sizeof(int32_t) * (size_t)P);
			struct gs_req_params p = { .max_tokens = steps + 1, .ignore_eos = true };
			p.sp = gs_sampling_params_default();
			p.sp.temperature = 0;
			GS_ASSERT(prompt);
			for (int t = 0; t < P; t++)
				prompt[t] = 2 + (i * 131 + t * 7) % 200000;
			gs_engine_submit(e, (uint64_t)i + 1, prompt, P, &p);
			free(prompt);
		}
		/* Prefill every prompt (B x 16 tokens take several steps under the budget), then time
		 * the decode steps: the batch figures are decode-only. */
		{
			int32_t n_ev;
			struct gs_engine_stats sp;
			do {
				gs_engine_step(e, ev, 512, &n_ev);
				gs_engine_get_stats(e, &sp);
			} while (sp.tokens_prefill < (uint64_t)B * (uint64_t)P);
			if (mix) {
				static int32_t lp[1024];
				struct gs_req_params p = { .max_tokens = 1, .ignore_eos = true };
				p.sp = gs_sampling_params_default();
				for (int i = 0; i < 1024; i++)
					lp[i] = 2 + (i * 31) % 200000;
				for (int i = 0; i < 4; i++)
					gs_engine_submit(e, 100 + (uint64_t)i, lp, 1024, &p);
			}
		}
		gs_engine_get_stats(e, &s0);
		t0 = now_s();
		while (!gs_engine_idle(e)) {
			int32_t n_ev;
			gs_engine_step(e, ev, 512, &n_ev);
			for (int32_t i = 0; i < n_ev; i++)
				gen += ev[i].token >= 0 && ev[i].id <= (uint64_t)B;
		}
		gs_engine_get_stats(e, &s1);
		{
			double dt = now_s() - t0, tps = (double)gen / dt;
			double sched = (s1.plan_s_total - s0.plan_s_total) + (s1.sample_s_total - s0.sample_s_total);
			double stept = s1.step_s_total - s0.step_s_total;
			if (bi == 0)
				base_tps = tps;
			if (mix)
				printf("mix: 8 decoding + 4 x 1024-token prompts (budget 512): %.2f generated tok/s, %.0f prompt "
				       "tok/s, %llu steps\n", tps, (double)(s1.tokens_prefill - s0.tokens_prefill) / dt,
				       (unsigned long long)(s1.steps - s0.steps));
			else
			{
				double step_ms = stept / (double)(s1.steps - s0.steps) * 1e3;
				printf("TP=%d %s batch %2d, context %d: %8.2f generated tok/s (x%.2f vs batch 1), step %.2f ms, "
				       "scheduler+plan+sampling %.2f%% of step time; ", T, be.iface->name, B, P + steps, tps,
				       tps / base_tps, step_ms, 100.0 * sched / stept);
				if (cuda) /* weights read once per step: compare with bench_cuda's copy bandwidth */
					printf("weights streamed at %.0f GB/s\n", m->weight_bytes / (step_ms * 1e-3) / 1e9);
				else if (bpeak > 0)
					printf("FMA floor of the step %.1f ms (step at %.2f x the fp32 peak, %.2f of the bf16 "
					       "peak)\n", B * tok_flops / peak * 1e3, B * tok_flops / peak * 1e3 / step_ms,
					       B * tok_flops / bpeak * 1e3 / step_ms);
				else
					printf("FMA floor of the step %.1f ms (step at %.2f of it)\n", B * tok_flops / peak * 1e3,
					       B * tok_flops / peak * 1e3 / step_ms);
			}
			fflush(stdout);
		}
		gs_engine_shutdown(e);
		gs_engine_free(e);
	}
	gs_model_free(m); /* before its backend: a GPU holds its weights */
	if (cuda)
		gs_backend_cuda_free(&be);
	else
		gs_backend_cpu_free(&be);
	gs_comm_free(&w);
	gs_comm_mpi_finalize();
	return 0;
}
