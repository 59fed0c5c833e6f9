/* gemmashard run: local, in-process generation that streams the answer to stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gs_args.h"
#include "gs_batch.h"
#include "gs_chat.h"
#include "gs_cmds.h"
#include "gs_forward.h"
#include "gs_seq.h"
#include "gs_sampler.h"
#include "gs_tokenizer.h"
#include "gs_util.h"

/* --batch: the serving engine in this process (T = 1). */
static int run_batch_local(const char *model_dir, const char *in, const char *out, int threads, int ctx,
			   int kv_mem, enum gs_numerics numerics)
{
	struct gs_engine_config ec = { .max_batch_tokens = 256, .max_seqs = 64, .max_context = ctx,
				       .kv_bytes = (size_t)kv_mem << 20, .candidates = 64 };
	struct gs_model *m = NULL;
	struct gs_tokenizer *tok = NULL;
	struct gs_backend be = { 0 };
	struct gs_engine *e = NULL;
	char path[1024];
	int rc = 1;

	snprintf(path, sizeof(path), "%s/tokenizer.json", model_dir);
	if (gs_model_load(model_dir, true, &m) == GS_OK && ec.max_context <= 0)
		ec.max_context = m->cfg.max_position;
	if (!m || gs_tokenizer_load(path, &tok) != GS_OK ||
	    gs_cmd_cpu_backend(threads, numerics, &be) != GS_OK || gs_engine_create(m, be, NULL, &ec, &e) != GS_OK ||
	    gs_batch_run(e, m, tok, in, out, (struct gs_batch_split){ .k = 0, .n = 1 }) != GS_OK)
		rc = gs_cmd_fail("run --batch");
	else
		rc = 0;
	gs_engine_free(e);
	if (be.ctx)
		gs_backend_cpu_free(&be);
	gs_tokenizer_free(tok);
	gs_model_free(m);
	return rc;
}

int gs_cmd_run(int argc, char **argv)
{
	const char *model_dir = NULL, *prompt = NULL, *chat = NULL, *system = NULL, *batch = NULL, *batch_out = NULL;
	const char *numerics_s = GS_NUMERICS_DEFAULT;
	enum gs_numerics numerics;
	int max_tokens = 128, top_k = 64, threads = 0, ctx = 0, kv_mem = 0, rc = 1;
	double temperature = 1.0, top_p = 0.95, min_p = 0.0, rep = 1.0;
	uint64_t seed = 0;
	bool quiet = false;
	struct gs_arg args[] = {
		{ "model", GS_ARG_STR, &model_dir, "checkpoint directory (config.json, safetensors, tokenizer.json)" },
		{ "prompt", GS_ARG_STR, &prompt, "raw prompt text (<bos> is prepended)" },
		{ "chat", GS_ARG_STR, &chat, "user message, rendered with the Gemma chat template" },
		{ "system", GS_ARG_STR, &system, "system text for --chat (folded into the first user turn)" },
		{ "max-tokens", GS_ARG_INT, &max_tokens, "tokens to generate at most (default 128)" },
		{ "temperature", GS_ARG_FLOAT, &temperature, "0 = greedy (default 1.0, Gemma 3's recommendation)" },
		{ "top-k", GS_ARG_INT, &top_k, "keep the k most likely tokens, 0 = off (default 64)" },
		{ "top-p", GS_ARG_FLOAT, &top_p, "nucleus sampling mass, 1 = off (default 0.95)" },
		{ "min-p", GS_ARG_FLOAT, &min_p, "drop tokens below min_p x the top probability (default 0)" },
		{ "repetition-penalty", GS_ARG_FLOAT, &rep, "HF repetition penalty, 1 = off" },
		{ "seed", GS_ARG_U64, &seed, "sampling seed (default: from the clock, printed on stderr)" },
		{ "ctx", GS_ARG_INT, &ctx, "context length to reserve (default: prompt + max-tokens; --batch: the "
					    "longest request, default max_position_embeddings)" },
		{ "kv-mem", GS_ARG_INT, &kv_mem, "--batch: KV block pool in MiB (default: 64 sequences of "
						  "min(--ctx, 4096) positions)" },
		{ "threads", GS_ARG_INT, &threads, "CPU threads (default: all)" },
		{ "quiet", GS_ARG_FLAG, &quiet, "no statistics on stderr" },
		{ "batch", GS_ARG_STR, &batch, "JSONL requests to run through the serving engine (with --out)" },
		{ "out", GS_ARG_STR, &batch_out, "JSONL results for --batch (resumable: done ids are skipped)" },
		{ "numerics", GS_ARG_STR, &numerics_s, GS_NUMERICS_HELP },
	};
	struct gs_arg *seed_arg = &args[10];
	struct gs_model *m = NULL;
	struct gs_tokenizer *tok = NULL;
	struct gs_backend be = { 0 };
	struct gs_forward *f = NULL;
	struct gs_seq *s = NULL;
	struct gs_sampler *smp = NULL;
	struct gs_sampling_params sp;
	struct gs_detok dt;
	char path[1024], why[256], *text = NULL, *out = NULL;
	int32_t *ids = NULL, end_of_turn;
	size_t n_prompt = 0, out_cap;
	float *logits = NULL;
	int generated = 0;
	double t0, t1, t2;
	int r;

	r = gs_args_parse("usage: gemmashard run --model DIR (--prompt TEXT | --chat TEXT [--system TEXT]) "
			  "[--max-tokens N] [--temperature X --top-k N --top-p X --min-p X --seed N]",
			  args, sizeof(args) / sizeof(args[0]), argc, argv);
	if (r)
		return r == 1 ? 0 : 2;
	if (gs_cmd_numerics("run", numerics_s, &numerics))
		return 2;
	if (kv_mem < 0 || (kv_mem > 0 && !batch) || kv_mem > (1 << 30)) {
		fprintf(stderr, "gemmashard run: --kv-mem wants MiB in 1..2^30 and sizes the engine of --batch\n");
		return 2;
	}
	if (model_dir && batch && batch_out && !prompt && !chat)
		return run_batch_local(model_dir, batch, batch_out, threads, ctx, kv_mem, numerics);
	if (batch || batch_out) {
		fprintf(stderr, "gemmashard run: --batch needs --out and excludes --prompt/--chat\n");
		return 2;
	}
	if (!model_dir || (!prompt == !chat)) {
		fprintf(stderr, "gemmashard run: --model and exactly one of --prompt/--chat are required\n");
		return 2;
	}
	if (system && !chat) {
		fprintf(stderr, "gemmashard run: --system needs --chat\n");
		return 2;
	}
	if (max_tokens < 1) {
		fprintf(stderr, "gemmashard run: --max-tokens must be >= 1\n");
		return 2;
	}
	if (!seed_arg->seen)
		seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
	sp = (struct gs_sampling_params){ .temperature = (float)temperature, .top_k = top_k, .top_p = (float)top_p,
					  .min_p = (float)min_p, .repetition_penalty = (float)rep, .seed = seed };
	if (gs_sampling_params_validate(&sp, why, sizeof(why)) != GS_OK) {
		fprintf(stderr, "gemmashard run: %s\n", why);
		return 2;
	}

	if (gs_model_load(model_dir, true, &m) != GS_OK)
		goto out_fail;
	snprintf(path, sizeof(path), "%s/tokenizer.json", model_dir);
	if (gs_tokenizer_load(path, &tok) != GS_OK)
		goto out_fail;

	/* Prompt -> ids. A rendered chat already starts with the text "<bos>". */
	if (chat) {
		struct gs_chat_msg msgs[2];
		size_t nm = 0;
		if (system)
			msgs[nm++] = (struct gs_chat_msg){ "system", system };
		msgs[nm++] = (struct gs_chat_msg){ "user", chat };
		if (gs_chat_render(msgs, nm, true, &text) != GS_OK)
			goto out_fail;
		if (gs_tokenizer_encode(tok, text, strlen(text), false, &ids, &n_prompt) != GS_OK)
			goto out_fail;
	} else if (gs_tokenizer_encode(tok, prompt, strlen(prompt), true, &ids, &n_prompt) != GS_OK) {
		goto out_fail;
	}
	if ((int64_t)n_prompt + max_tokens > m->cfg.max_position) {
		if ((int64_t)n_prompt >= m->cfg.max_position) {
			gs_errorf(GS_ERR_RANGE, "prompt of %zu tokens exceeds max_position_embeddings (%d)", n_prompt,
				  m->cfg.max_position);
			goto out_fail;
		}
		max_tokens = m->cfg.max_position - (int)n_prompt;
	}
	if (ctx <= 0)
		ctx = (int)n_prompt + max_tokens;
	if (ctx < (int)n_prompt + 1 || ctx > m->cfg.max_position) {
		gs_errorf(GS_ERR_RANGE, "--ctx %d must hold the %zu prompt tokens and be <= %d", ctx, n_prompt,
			  m->cfg.max_position);
		goto out_fail;
	}

	if (gs_cmd_cpu_backend(threads, numerics, &be) != GS_OK)
		goto out_fail;
	if (gs_forward_create(m, be, 256, &f) != GS_OK || gs_seq_create(f, ctx, &s) != GS_OK ||
	    gs_sampler_create(&sp, m->n_vocab, &smp) != GS_OK)
		goto out_fail;
	logits = malloc((size_t)m->n_vocab * sizeof(float));
	ids = realloc(ids, (size_t)ctx * sizeof(*ids));
	out_cap = gs_detok_max_out(tok) + 1;
	out = malloc(out_cap);
	if (!logits || !ids || !out) {
		gs_errorf(GS_ERR_NOMEM, "out of memory");
		goto out_fail;
	}
	end_of_turn = gs_tokenizer_find(tok, "<end_of_turn>");
	gs_detok_init(&dt, tok);
	if (!quiet)
		fprintf(stderr, "[%zu prompt tokens, seed %llu, %d threads, numerics %s]\n", n_prompt,
			(unsigned long long)seed, be.iface->n_threads(be.ctx), gs_numerics_name(numerics));

	t0 = gs_now_s();
	if (gs_forward_run(f, s, ids, (int32_t)n_prompt, logits, false) != GS_OK)
		goto out_fail;
	t1 = gs_now_s();
	while (generated < max_tokens) {
		int32_t next = gs_sampler_sample(smp, logits, m->n_vocab, ids, n_prompt + generated, NULL);
		size_t k;
		if (gs_config_is_eos(&m->cfg, next) || next == end_of_turn)
			break;
		ids[n_prompt + generated++] = next;
		k = gs_detok_push(&dt, next, out, out_cap);
		fwrite(out, 1, k, stdout);
		fflush(stdout);
		/* The last token is printed, never fed: it needs no KV slot. */
		if (generated == max_tokens || (int)n_prompt + generated >= ctx)
			break;
		if (gs_forward_run(f, s, &next, 1, logits, false) != GS_OK)
			goto out_fail;
	}
	fwrite(out, 1, gs_detok_flush(&dt, out, out_cap), stdout);
	printf("\n");
	fflush(stdout);
	t2 = gs_now_s();
	if (!quiet)
		fprintf(stderr, "[prefill %zu tokens %.1f tok/s; decode %d tokens %.1f tok/s]\n", n_prompt,
			(double)n_prompt / (t1 - t0), generated, generated > 1 ? (double)(generated) / (t2 - t1) : 0.0);
	rc = 0;
	goto out_free;

out_fail:
	rc = gs_cmd_fail("run");
out_free:
	free(out);
	free(logits);
	free(ids);
	free(text);
	gs_sampler_free(smp);
	gs_seq_free(s);
	gs_forward_free(f);
	gs_backend_cpu_free(&be);
	gs_tokenizer_free(tok);
	gs_model_free(m);
	return rc;
}
