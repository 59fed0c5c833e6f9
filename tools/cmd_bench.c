/* gemmashard bench: this machine's read bandwidth, fp32 FMA peak and bf16 dot-product peak, then
 * decode and prefill of a model measured in the same run and reported as fractions of those
 * ceilings, in the numerics chosen (--numerics). */
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

/* The matmuls of one decode step of `batch` sequences (every layer's projections and the LM
 * head, x of `batch` rows): the compute side of batched decode, without attention (small at
 * short contexts). Best of 3; seconds per step. x, y: scratch of the largest shapes. */
static double decode_step_matmuls(const struct gs_model *m, struct gs_backend be, int batch, float *x, float *y)
{
	double best = 1e30;
	for (int rep = 0; rep < 3; rep++) {
		double t0 = gs_now_s();
		for (int l = 0; l < m->cfg.n_layers; l++) {
			/* grouped as the forward pass calls them: q/k/v and gate/up share their input */
			const struct gs_layer_weights *w = &m->layers[l];
			size_t qn = (size_t)batch * w->q.rows, kn = (size_t)batch * w->k.rows;
			float *const qkv[] = { y, y + qn, y + qn + kn }, *const gu[] = { y, y + (size_t)batch * w->gate.rows };
			const struct gs_tensor *const wqkv[] = { &w->q, &w->k, &w->v }, *const wgu[] = { &w->gate, &w->up };
			gs_matmul_n(be.iface, be.ctx, 3, qkv, x, wqkv, batch);
			be.iface->matmul(be.ctx, y, x, &w->o, batch);
			gs_matmul_n(be.iface, be.ctx, 2, gu, x, wgu, batch);
			be.iface->matmul(be.ctx, y, x, &w->down, batch);
		}
		be.iface->matmul(be.ctx, y, x, &m->lm_head, batch);
		if (gs_now_s() - t0 < best)
			best = gs_now_s() - t0;
	}
	return best;
}

/* --attention: prefill attention of a `rows`-row chunk against `history` cached positions (fp32
 * cache, block 256, causal) through the backend's attention op, per head shape; GFLOP/s counts
 * 4 * rows * history * head_dim * q_heads, reported against the fp32 FMA peak of this run.
 * Median of 3 timed calls after one warm-up. */
static enum gs_status bench_attention(struct gs_backend be, double peak, int rows, int history)
{
	static const int shapes[][3] = { { 128, 8, 4 }, { 128, 32, 16 }, { 256, 8, 4 } }; /* D, q, kv heads */
	enum gs_status st = GS_OK;

	for (size_t c = 0; c < sizeof(shapes) / sizeof(shapes[0]) && st == GS_OK; c++) {
		int D = shapes[c][0], H = shapes[c][1], KV = shapes[c][2], block = 256;
		int n_blocks = (history + rows + block - 1) / block;
		size_t kvw = (size_t)KV * D, qw = (size_t)H * D;
		float *kc = malloc((size_t)n_blocks * block * kvw * sizeof(float));
		float *vc = malloc((size_t)n_blocks * block * kvw * sizeof(float));
		float *q = malloc((size_t)rows * qw * sizeof(float)), *out = malloc((size_t)rows * qw * sizeof(float));
		float *kn = malloc((size_t)rows * kvw * sizeof(float)), *vn = malloc((size_t)rows * kvw * sizeof(float));
		int32_t *table = malloc((size_t)n_blocks * sizeof(int32_t)), *tok_seq = calloc((size_t)rows, sizeof(int32_t));
		double ts[3];
		uint64_t rng = 42;

		if (!kc || !vc || !q || !out || !kn || !vn || !table || !tok_seq) {
			st = gs_errorf(GS_ERR_NOMEM, "bench --attention: out of memory");
			goto next;
		}
		for (size_t i = 0; i < (size_t)n_blocks * block * kvw; i++) {
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			kc[i] = (float)((rng >> 40) & 0xffff) / 65536.0f - 0.5f;
			vc[i] = (float)((rng >> 20) & 0xffff) / 65536.0f - 0.5f;
		}
		for (size_t i = 0; i < (size_t)rows * qw; i++)
			q[i] = kc[(i * 7) % ((size_t)n_blocks * block * kvw)];
		for (size_t i = 0; i < (size_t)rows * kvw; i++) {
			kn[i] = kc[i];
			vn[i] = vc[i];
		}
		for (int b = 0; b < n_blocks; b++)
			table[b] = n_blocks - 1 - b;
		struct gs_attn_seq seq = { .tok0 = 0, .n_tokens = rows, .pos0 = history, .table = table, .ring = 0 };
		struct gs_attn_args a = {
			.out = out, .q = q, .k_new = kn, .v_new = vn, .k_cache = kc, .v_cache = vc,
			.kv_dtype = GS_DTYPE_F32, .block = block, .seqs = &seq, .n_seqs = 1, .tok_seq = tok_seq,
			.n_tokens = rows, .n_heads = H, .n_kv_heads = KV, .head_dim = D, .window = INT32_MAX,
			.scale = 0.0625f, .softcap = 0.0f, .span = NULL,
		};
		double flops = 4.0 * rows * (double)history * D * H;
		be.iface->attention(be.ctx, &a); /* warm-up */
		for (int r = 0; r < 3; r++) {
			double t0 = gs_now_s();
			be.iface->attention(be.ctx, &a);
			ts[r] = gs_now_s() - t0;
		}
		for (int i = 0; i < 3; i++) /* sort the three */
			for (int j = i + 1; j < 3; j++)
				if (ts[j] < ts[i]) {
					double t = ts[i];
					ts[i] = ts[j];
					ts[j] = t;
				}
		printf("attention %d rows x %d history, head_dim %3d, %2d q / %2d kv heads: %8.2f GFLOP/s "
		       "(median of 3, %.3f s; min %.3f max %.3f), %.3f of fp32 FMA peak\n",
		       rows, history, D, H, KV, flops / ts[1] / 1e9, ts[1], ts[0], ts[2], flops / ts[1] / peak);
next:
		free(kc);
		free(vc);
		free(q);
		free(out);
		free(kn);
		free(vn);
		free(table);
		free(tok_seq);
	}
	return st;
}

int gs_cmd_bench(int argc, char **argv)
{
	const char *model_dir = NULL, *synthetic = NULL, *tok_path = NULL, *numerics_s = GS_NUMERICS_DEFAULT;
	enum gs_numerics numerics;
	int threads = 0, n_decode = 32, n_prompt = 512, bw_mb = 1024, rc = 1, attention = 0, attn_history = -1;
	struct gs_arg args[] = {
		{ "model", GS_ARG_STR, &model_dir, "checkpoint directory" },
		{ "synthetic", GS_ARG_STR, &synthetic, "random weights of a shape: tiny, 1b, 4b, 27b" },
		{ "threads", GS_ARG_INT, &threads, "CPU threads (default: all)" },
		{ "decode-tokens", GS_ARG_INT, &n_decode, "decode steps to time (default 32)" },
		{ "prompt-tokens", GS_ARG_INT, &n_prompt, "prefill length (default 512)" },
		{ "tokenizer", GS_ARG_STR, &tok_path, "also benchmark this tokenizer.json (default: the model's)" },
		{ "bw-mb", GS_ARG_INT, &bw_mb, "buffer for the bandwidth test in MiB (default 1024)" },
		{ "numerics", GS_ARG_STR, &numerics_s, GS_NUMERICS_HELP },
		{ "attention", GS_ARG_FLAG, &attention, "only time the attention op (a prefill chunk against a cache)" },
		{ "attn-history", GS_ARG_INT, &attn_history, "--attention: cached positions (default 32768)" },
	};
	struct gs_model *m = NULL;
	struct gs_backend be = { 0 };
	struct gs_forward *f = NULL;
	struct gs_seq *s = NULL;
	int32_t *ids = NULL;
	float *logits = NULL;
	char path[1024];
	double bw, peak, bpeak, t0, t_decode = 1e30, t_prefill = 1e30, bytes_tok, flops;
	float *bx = NULL, *by = NULL;
	int r;

	r = gs_args_parse("usage: gemmashard bench (--model DIR | --synthetic 1b) [--threads N]", args,
			  sizeof(args) / sizeof(args[0]), argc, argv);
	if (r)
		return r == 1 ? 0 : 2;
	if (!attention && attn_history != -1) {
		fprintf(stderr, "gemmashard bench: --attn-history needs --attention\n");
		return 2;
	}
	if (attention) {
		if (attn_history == -1)
			attn_history = 32768;
		if (model_dir || synthetic || n_prompt < 1 || attn_history < 0) {
			fprintf(stderr, "gemmashard bench --attention: no --model/--synthetic; --prompt-tokens >= 1, "
					"--attn-history >= 0\n");
			return 2;
		}
		if (gs_cmd_cpu_backend(threads, GS_NUMERICS_FP32, &be) != GS_OK)
			goto out_fail;
		peak = gs_cpu_measure_fma_peak(gs_backend_cpu_pool(&be));
		printf("machine: %d threads, ISA %s; fp32 FMA peak %.2f GFLOP/s\n", be.iface->n_threads(be.ctx),
		       gs_cpu_isa_name(), peak / 1e9);
		if (bench_attention(be, peak, n_prompt, attn_history) != GS_OK)
			goto out_fail;
		rc = 0;
		goto out_free;
	}
	if (!model_dir == !synthetic) {
		fprintf(stderr, "gemmashard bench: exactly one of --model/--synthetic is required\n");
		return 2;
	}
	if (gs_cmd_numerics("bench", numerics_s, &numerics))
		return 2;
	if (n_decode < 1 || n_prompt < 1 || bw_mb < 16) {
		fprintf(stderr, "gemmashard bench: --decode-tokens/--prompt-tokens >= 1, --bw-mb >= 16\n");
		return 2;
	}
	if (gs_cmd_cpu_backend(threads, numerics, &be) != GS_OK)
		goto out_fail;

	printf("machine: %d threads, ISA %s, numerics %s\n", be.iface->n_threads(be.ctx), gs_cpu_isa_name(),
	       gs_numerics_name(numerics));
	bw = gs_cpu_measure_read_bw(gs_backend_cpu_pool(&be), (size_t)bw_mb << 20, 5);
	peak = gs_cpu_measure_fma_peak(gs_backend_cpu_pool(&be));
	bpeak = gs_cpu_measure_bf16_peak(gs_backend_cpu_pool(&be));
	printf("memory read bandwidth      %8.2f GB/s   (STREAM-like sum over %d MiB, best of 5)\n", bw / 1e9, bw_mb);
	printf("fp32 FMA peak              %8.2f GFLOP/s\n", peak / 1e9);
	if (bpeak > 0)
		printf("bf16 dot-product peak      %8.2f GFLOP/s (vdpbf16ps; %.2f x the fp32 FMA peak)\n", bpeak / 1e9,
		       bpeak / peak);
	else
		printf("bf16 dot-product peak           n/a  (this CPU lacks %s)\n", gs_cpu_bf16_missing());

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
		double bpeak2 = gs_cpu_measure_bf16_peak(gs_backend_cpu_pool(&be));
		printf("memory read bandwidth, after %6.2f GB/s; fp32 FMA peak, after %.2f GFLOP/s; bf16 peak, after "
		       "%.2f GFLOP/s (max of both used)\n", bw2 / 1e9, peak2 / 1e9, bpeak2 / 1e9);
		if (bw2 > bw)
			bw = bw2;
		if (peak2 > peak)
			peak = peak2;
		if (bpeak2 > bpeak)
			bpeak = bpeak2;
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
	if (bpeak > 0)
		printf("prefill / bf16 peak        %8.3f\n", flops / t_prefill / bpeak);

	/* Batched decode, compute side: the matmuls of one step of B sequences. */
	{
		static const int batches[] = { 16, 64 };
		int64_t max_cols = m->lm_head.cols, max_rows = m->lm_head.rows;
		for (int l = 0; l < m->cfg.n_layers; l++) {
			const struct gs_layer_weights *w = &m->layers[l];
			const struct gs_tensor *t[] = { &w->q, &w->k, &w->v, &w->o, &w->gate, &w->up, &w->down };
			for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
				max_cols = t[i]->cols > max_cols ? t[i]->cols : max_cols;
				max_rows = t[i]->rows > max_rows ? t[i]->rows : max_rows;
			}
			/* q/k/v and gate/up write their outputs one after another */
			int64_t qkv = w->q.rows + w->k.rows + w->v.rows, gu = w->gate.rows + w->up.rows;
			max_rows = qkv > max_rows ? qkv : max_rows;
			max_rows = gu > max_rows ? gu : max_rows;
		}
		bx = malloc(sizeof(float) * 64 * (size_t)max_cols);
		by = malloc(sizeof(float) * 64 * (size_t)max_rows);
		if (!bx || !by) {
			gs_errorf(GS_ERR_NOMEM, "out of memory");
			goto out_fail;
		}
		for (size_t i = 0; i < 64 * (size_t)max_cols; i++)
			bx[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
		for (size_t bi = 0; bi < sizeof(batches) / sizeof(batches[0]); bi++) {
			int B = batches[bi];
			double dt = decode_step_matmuls(m, be, B, bx, by), fl = 0;
			for (int l = 0; l < m->cfg.n_layers; l++) {
				const struct gs_layer_weights *w = &m->layers[l];
				const struct gs_tensor *t[] = { &w->q, &w->k, &w->v, &w->o, &w->gate, &w->up, &w->down };
				for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
					fl += 2.0 * B * (double)t[i]->rows * (double)t[i]->cols;
			}
			fl += 2.0 * B * (double)m->lm_head.rows * (double)m->lm_head.cols;
			printf("decode step matmuls, batch %2d %7.2f tok/s  (%.2f GFLOP/s; %.3f of fp32 peak", B, B / dt,
			       fl / dt / 1e9, fl / dt / peak);
			if (bpeak > 0)
				printf(", %.3f of bf16 peak", fl / dt / bpeak);
			printf(")\n");
		}
	}

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
	free(bx);
	free(by);
	free(logits);
	free(ids);
	gs_seq_free(s);
	gs_forward_free(f);
	gs_model_free(m);
	gs_backend_cpu_free(&be);
	return rc;
}
