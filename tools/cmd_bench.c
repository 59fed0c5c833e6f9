/* gemmashard bench: this machine's read bandwidth and FMA peak, then decode and prefill of a
 * model measured in the same run and reported as fractions of those two ceilings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gs_args.h"
#include "gs_cmds.h"
#include "gs_cpu.h"
#include "gs_forward.h"
#include "gs_seq.h"
#include "gs_tokenizer.h"
#include "gs_util.h"

/* Bytes of weights one decode step streams: every matrix once, the LM head once; the
 * embedding lookup touches a single row (the LM head is the same tensor when tied). */
static double decode_bytes_per_token(const struct gs_model *m)
{
	double b = 0;
	for (int l = 0; l < m->cfg.n_layers; l++) {
		const struct gs_layer_weights *w = &m->layers[l];
		const struct gs_tensor *t[] = { &w->q, &w->k, &w->v, &w->o, &w->gate, &w->up, &w->down };
		for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
			b += (double)t[i]->rows * t[i]->cols * gs_dtype_size(t[i]->dtype);
	}
	return b + (double)m->lm_head.rows * m->lm_head.cols * gs_dtype_size(m->lm_head.dtype);
}

/* FLOPs of a prefill of n tokens from position 0 (logits for the last token only). */
static double prefill_flops(const struct gs_model *m, int n)
{
	const struct gs_config *c = &m->cfg;
	double H = c->hidden, F = c->intermediate, D = c->head_dim, f = 0;
	double per_tok = 2 * (c->n_heads * D * H * 2 + c->n_kv_heads * D * H * 2 + 3 * F * H);
	for (int l = 0; l < c->n_layers; l++) {
		double keys = 0;
		for (int t = 0; t < n; t++)
			keys += (t + 1 < c->window[l]) ? t + 1 : c->window[l];
		f += per_tok * n + 4.0 * c->n_heads * D * keys; /* q·k and p·v */
	}
	return f + 2.0 * m->lm_head.rows * H;
}

int gs_cmd_bench(int argc, char **argv)
{
	const char *model_dir = NULL, *synthetic = NULL, *tok_path = NULL;
	int threads = 0, n_decode = 32, n_prompt = 512, bw_mb = 1024, rc = 1;
	struct gs_arg args[] = {
		{ "model", GS_ARG_STR, &model_dir, "checkpoint directory" },
		{ "synthetic", GS_ARG_STR, &synthetic, "random weights of a shape: tiny, 1b, 4b, 27b" },
		{ "threads", GS_ARG_INT, &threads, "CPU threads (default: all)" },
		{ "decode-tokens", GS_ARG_INT, &n_decode, "decode steps to time (default 32)" },
		{ "prompt-tokens", GS_ARG_INT, &n_prompt, "prefill length (default 512)" },
		{ "tokenizer", GS_ARG_STR, &tok_path, "also benchmark this tokenizer.json (default: the model's)" },
		{ "bw-mb", GS_ARG_INT, &bw_mb, "buffer for the bandwidth test in MiB (default 1024)" },
	};
	struct gs_model *m = NULL;
	struct gs_backend be = { 0 };
	struct gs_forward *f = NULL;
	struct gs_seq *s = NULL;
	int32_t *ids = NULL;
	float *logits = NULL;
	char path[1024];
	double bw, peak, t0, t_decode = 1e30, t_prefill = 1e30, bytes_tok, flops;
	int r;

	r = gs_args_parse("usage: gemmashard bench (--model DIR | --synthetic 1b) [--threads N]", args,
			  sizeof(args) / sizeof(args[0]), argc, argv);
	if (r)
		return r == 1 ? 0 : 2;
	if (!model_dir == !synthetic) {
		fprintf(stderr, "gemmashard bench: exactly one of --model/--synthetic is required\n");
		return 2;
	}
	if (n_decode < 1 || n_prompt < 1 || bw_mb < 16) {
		fprintf(stderr, "gemmashard bench: --decode-tokens/--prompt-tokens >= 1, --bw-mb >= 16\n");
		return 2;
	}
	if (gs_backend_cpu_create(threads, &be) != GS_OK)
		goto out_fail;

	printf("machine: %d threads, ISA %s\n", be.iface->n_threads(be.ctx), gs_cpu_isa_name());
	bw = gs_cpu_measure_read_bw(gs_backend_cpu_pool(&be), (size_t)bw_mb << 20, 5);
	peak = gs_cpu_measure_fma_peak(gs_backend_cpu_pool(&be));
	printf("memory read bandwidth      %8.2f GB/s   (STREAM-like sum over %d MiB, best of 5)\n", bw / 1e9, bw_mb);
	printf("fp32 FMA peak              %8.2f GFLOP/s\n", peak / 1e9);

	if (synthetic ? gs_model_synthetic(synthetic, 1234, &m) : gs_model_load(model_dir, true, &m))
		goto out_fail;
	if (n_prompt + n_decode + 1 > m->cfg.max_position) {
		gs_errorf(GS_ERR_RANGE, "prompt + decode tokens exceed max_position_embeddings");
		goto out_fail;
	}
	if (gs_forward_create(m, be, n_prompt < 512 ? n_prompt : 512, &f) != GS_OK ||
	    gs_seq_create(f, n_prompt + n_decode + 1, &s) != GS_OK)
		goto out_fail;
	ids = malloc(sizeof(*ids) * (size_t)n_prompt);
	logits = malloc(sizeof(float) * (size_t)m->n_vocab);
	if (!ids || !logits) {
		gs_errorf(GS_ERR_NOMEM, "out of memory");
		goto out_fail;
	}
	for (int i = 0; i < n_prompt; i++)
		ids[i] = 2 + (int32_t)((i * 2654435761u) % (uint32_t)(m->n_vocab - 2));

	/* Prefill: best of 2 runs (the first also warms the page cache / TLB). */
	for (int rep = 0; rep < 2; rep++) {
		gs_seq_reset(s);
		t0 = gs_now_s();
		if (gs_forward_run(f, s, ids, n_prompt, logits, false) != GS_OK)
			goto out_fail;
		if (gs_now_s() - t0 < t_prefill)
			t_prefill = gs_now_s() - t0;
	}
	/* Decode: n_decode single-token steps after a 16-token prefix, best of 2. */
	for (int rep = 0; rep < 2; rep++) {
		gs_seq_reset(s);
		if (gs_forward_run(f, s, ids, 16, logits, false) != GS_OK)
			goto out_fail;
		t0 = gs_now_s();
		for (int i = 0; i < n_decode; i++)
			if (gs_forward_run(f, s, &ids[16 + (i % (n_prompt - 16 > 0 ? n_prompt - 16 : 1))], 1, logits, false) != GS_OK)
				goto out_fail;
		if ((gs_now_s() - t0) / n_decode < t_decode)
			t_decode = (gs_now_s() - t0) / n_decode;
	}
	/* This machine is shared: measure the ceilings again after the model runs and keep the
	 * higher readings, so the fractions below are conservative. */
	{
		double bw2 = gs_cpu_measure_read_bw(gs_backend_cpu_pool(&be), (size_t)bw_mb << 20, 5);
		double peak2 = gs_cpu_measure_fma_peak(gs_backend_cpu_pool(&be));
		printf("memory read bandwidth, after %6.2f GB/s; fp32 FMA peak, after %.2f GFLOP/s (max of both used)\n",
		       bw2 / 1e9, peak2 / 1e9);
		if (bw2 > bw)
			bw = bw2;
		if (peak2 > peak)
			peak = peak2;
	}
	bytes_tok = decode_bytes_per_token(m);
	flops = prefill_flops(m, n_prompt);
	printf("model                      %s (%.2f GB weights, %d layers, vocab %d)\n", m->path,
	       m->weight_bytes / 1e9, m->cfg.n_layers, m->n_vocab);
	printf("decode, batch 1            %8.2f tok/s  (%.1f ms/token, %.2f GB weights/token -> %.2f GB/s)\n",
	       1.0 / t_decode, t_decode * 1e3, bytes_tok / 1e9, bytes_tok / t_decode / 1e9);
	printf("decode / bandwidth roofline %7.3f  (best decode over the higher of two bandwidth readings)\n",
	       bytes_tok / t_decode / bw);
	/* The bandwidth this VM gets moves by 2x within a minute: also pair each decode burst with a
	 * bandwidth reading taken just before it, and report the median of the per-pair ratios. */
	{
		enum { ROUNDS = 5 };
		double ratio[ROUNDS];
		printf("decode / bandwidth, paired  ");
		for (int k = 0; k < ROUNDS; k++) {
			double b = gs_cpu_measure_read_bw(gs_backend_cpu_pool(&be), (size_t)bw_mb << 20, 2), dt;
			gs_seq_reset(s);
			if (gs_forward_run(f, s, ids, 16, logits, false) != GS_OK)
				goto out_fail;
			t0 = gs_now_s();
			for (int i = 0; i < 8; i++)
				if (gs_forward_run(f, s, &ids[16 + i % (n_prompt > 17 ? n_prompt - 17 : 1)], 1, logits, false) != GS_OK)
					goto out_fail;
			dt = (gs_now_s() - t0) / 8;
			ratio[k] = bytes_tok / dt / b;
			printf(" %.3f (%.0f/%.0f GB/s)", ratio[k], bytes_tok / dt / 1e9, b / 1e9);
		}
		for (int i = 1; i < ROUNDS; i++) /* insertion sort for the median */
			for (int j = i; j > 0 && ratio[j] < ratio[j - 1]; j--) {
				double x = ratio[j];
				ratio[j] = ratio[j - 1], ratio[j - 1] = x;
			}
		printf("\ndecode / bandwidth, median of %d pairs %6.3f\n", ROUNDS, ratio[ROUNDS / 2]);
	}
	printf("prefill, %4d tokens        %8.2f tok/s  (%.2f GFLOP/s)\n", n_prompt, n_prompt / t_prefill,
	       flops / t_prefill / 1e9);
	printf("prefill / fp32 FMA peak    %8.3f\n", flops / t_prefill / peak);

	if (!tok_path && model_dir) {
		snprintf(path, sizeof(path), "%s/tokenizer.json", model_dir);
		tok_path = path;
	}
	if (tok_path && gs_tokenizer_bench(tok_path, stdout) != GS_OK)
		goto out_fail;
	rc = 0;
	goto out_free;

out_fail:
	rc = gs_cmd_fail("bench");
out_free:
	free(logits);
	free(ids);
	gs_seq_free(s);
	gs_forward_free(f);
	gs_model_free(m);
	gs_backend_cpu_free(&be);
	return rc;
}
