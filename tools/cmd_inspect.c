/* gemmashard inspect: config summary, tensor table, weight + KV memory per rank. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_args.h"
#include "gs_kvcache.h"
#include "gs_cmds.h"
#include "gs_model.h"
#include "gs_safetensors.h"
#include "gs_vision.h"

static const char *tp_invalid_reason(const struct gs_config *c, int tp)
{
	if (c->n_heads % tp)
		return "does not divide the query heads";
	if (c->intermediate % tp)
		return "does not divide intermediate_size";
	if (tp > c->n_kv_heads ? tp % c->n_kv_heads : c->n_kv_heads % tp)
		return "KV heads neither divide nor are divided by T";
	return NULL;
}

/* Weight bytes one rank holds: split weights / T (vocabulary rounded up), mirrored norms whole;
 * n_vocab rows of es bytes per value (the text model: a vision tower is not counted). */
static double weight_bytes_per_rank(const struct gs_config *c, int32_t n_vocab, double es, int tp)
{
	double H = c->hidden, F = c->intermediate, D = c->head_dim;
	double q = (double)c->n_heads / tp * D, kv = (tp > c->n_kv_heads ? 1 : c->n_kv_heads / tp) * D;
	double per_layer = (2 * q * H + 2 * kv * H + 3 * F / tp * H) * es + (4 * H + 2 * D) * es;
	double vocab_rows = (double)((n_vocab + tp - 1) / tp);
	return c->n_layers * per_layer + vocab_rows * H * es + H * es;
}

/* KV bytes of one sequence of ctx tokens on one rank, as the paged cache allocates them:
 * global layers keep every position, sliding layers a ring of blocks covering the window. */
static double kv_bytes_per_rank(const struct gs_config *c, int tp, long ctx, size_t elem)
{
	int32_t kvh = c->n_kv_heads >= tp ? c->n_kv_heads / tp : 1;
	return (double)gs_kv_seq_bytes(c, kvh, (int32_t)ctx, elem);
}

/* KV bytes of one sequence of ctx positions on one rank of a T x C grid, by the formula of
 * context-parallel.md: global layers keep every position, split by position over the C groups;
 * sliding layers keep `window` positions, not split by C. (The paged cache rounds both up to
 * blocks of GS_KV_BLOCK and keeps a ring of whole blocks: a little more, see the KV formula line.) */
static double kv_bytes_grid(const struct gs_config *c, int tp, int cp, long ctx, double es)
{
	double kvh = c->n_kv_heads >= tp ? c->n_kv_heads / tp : 1, row = kvh * c->head_dim * 2 * es; /* K and V */
	double n_global = gs_config_n_global(c), window = c->sliding_window < ctx ? c->sliding_window : ctx;
	return n_global * ((double)(ctx + cp - 1) / cp) * row + (c->n_layers - n_global) * window * row;
}

/* Weights and KV per rank on a T x C grid (tp, cp <= 0: T in 1, 2, 4, 8 and C in 1, 2, 4), bf16. */
static void print_grid(const char *name, const struct gs_config *c, int32_t n_vocab, double es, int tp, int cp)
{
	static const int tps[] = { 1, 2, 4, 8 }, cps[] = { 1, 2, 4 };
	static const long ctxs[] = { 8192, 32768, 131072 };
	/* GiB, or MiB for a small (test) model whose figures would all print as 0.000 GiB */
	const bool small = weight_bytes_per_rank(c, n_vocab, es, 1) < 1024.0 * 1024.0 * 1024.0;
	const double gib = small ? 1024.0 * 1024.0 : 1024.0 * 1024.0 * 1024.0;

	printf("\n%s: memory per rank on a T x C grid (%s; weights %s, KV of one sequence in bf16)\n", name,
	       small ? "MiB" : "GiB", es == 2 ? "bf16" : "as stored");
	printf("%-4s %-4s %10s %10s %10s %10s\n", "T", "C", "weights", "KV 8K", "KV 32K", "KV 128K");
	for (size_t i = 0; i < sizeof(tps) / sizeof(tps[0]); i++) {
		int t = tp > 0 ? tp : tps[i];
		const char *why = tp_invalid_reason(c, t);
		if (tp > 0 && i)
			break;
		if (why) {
			printf("%-4d n/a: T=%d %s\n", t, t, why);
			continue;
		}
		for (size_t j = 0; j < sizeof(cps) / sizeof(cps[0]) && !(cp > 0 && j); j++) {
			int k = cp > 0 ? cp : cps[j];
			printf("%-4d %-4d %10.3f", t, k, weight_bytes_per_rank(c, n_vocab, es, t) / gib);
			for (size_t x = 0; x < sizeof(ctxs) / sizeof(ctxs[0]); x++) {
				long ctx = ctxs[x] < c->max_position ? ctxs[x] : c->max_position;
				printf(" %10.3f", kv_bytes_grid(c, t, k, ctx, 2) / gib);
			}
			printf("\n");
		}
	}
	printf("(KV = %d global layers x ctx/C + %d sliding layers x window %d, x KV heads/T x head_dim %d x 2 (K, V) "
	       "x 2 bytes; context capped at max_position_embeddings = %d; C is arithmetic only: the size of a planned "
	       "context-parallel grid, which is not built yet)\n", gs_config_n_global(c),
	       c->n_layers - gs_config_n_global(c), c->sliding_window, c->head_dim, c->max_position);
}

/* The text shapes of the two checkpoints we serve (docs/ARCHITECTURE.md), as their config.json
 * says them ([CFG-27B] and [CFG-4B] in /work/shared/reference/gemma3.md): config is data, so
 * these are parsed as any checkpoint's would be. */
static const struct {
	const char *name, *json;
} known_shapes[] = {
	{ "Gemma 3 / MedGemma 27B (text)",
	  "{\"architectures\":[\"Gemma3ForCausalLM\"],\"model_type\":\"gemma3_text\",\"hidden_size\":5376,"
	  "\"intermediate_size\":21504,\"num_hidden_layers\":62,\"num_attention_heads\":32,\"num_key_value_heads\":16,"
	  "\"head_dim\":128,\"query_pre_attn_scalar\":168,\"sliding_window\":1024,\"sliding_window_pattern\":6,"
	  "\"max_position_embeddings\":131072,\"vocab_size\":262208,\"rope_theta\":1000000.0,"
	  "\"rope_local_base_freq\":10000.0,\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":8.0}}" },
	{ "Gemma 3 / MedGemma 4B (text part)",
	  "{\"architectures\":[\"Gemma3ForCausalLM\"],\"model_type\":\"gemma3_text\",\"hidden_size\":2560,"
	  "\"intermediate_size\":10240,\"num_hidden_layers\":34,\"num_attention_heads\":8,\"num_key_value_heads\":4,"
	  "\"head_dim\":256,\"query_pre_attn_scalar\":256,\"sliding_window\":1024,\"sliding_window_pattern\":6,"
	  "\"max_position_embeddings\":131072,\"vocab_size\":262208,\"rope_theta\":1000000.0,"
	  "\"rope_local_base_freq\":10000.0,\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":8.0}}" },
};

static int inspect_known_shapes(int tp, int cp)
{
	for (size_t i = 0; i < sizeof(known_shapes) / sizeof(known_shapes[0]); i++) {
		struct gs_config c;
		if (gs_config_parse(known_shapes[i].json, strlen(known_shapes[i].json), known_shapes[i].name, &c) != GS_OK)
			return gs_cmd_fail("inspect");
		print_grid(known_shapes[i].name, &c, c.vocab_size, 2, tp, cp);
		gs_config_free(&c);
	}
	return 0;
}

int gs_cmd_inspect(int argc, char **argv)
{
	const char *model_dir = NULL;
	bool no_tensors = false;
	int tp = 0, cp = 0;
	struct gs_arg args[] = {
		{ "model", GS_ARG_STR, &model_dir, "checkpoint directory (default: print the grid for the 27B and 4B "
						   "shapes only)" },
		{ "no-tensors", GS_ARG_FLAG, &no_tensors, "omit the tensor table" },
		{ "tp", GS_ARG_INT, &tp, "T: tensor-parallel ranks of the grid (default: 1, 2, 4, 8)" },
		{ "cp", GS_ARG_INT, &cp, "C: size of the planned context-parallel grid, arithmetic only (not built yet; "
					 "default: 1, 2, 4)" },
	};
	static const int tps[] = { 1, 2, 4, 8 };
	static const long ctxs[] = { 8192, 131072 };
	struct gs_model *m = NULL;
	const struct gs_config *c;
	int r;

	r = gs_args_parse("usage: gemmashard inspect [--model DIR] [--tp T] [--cp C]", args,
			  sizeof(args) / sizeof(args[0]), argc, argv);
	if (r)
		return r == 1 ? 0 : 2;
	if (tp < 0 || tp > 4096 || cp < 0 || cp > 4096) {
		fprintf(stderr, "gemmashard inspect: --tp and --cp want 1..4096\n");
		return 2;
	}
	if (!model_dir)
		return inspect_known_shapes(tp, cp);
	if (gs_model_load(model_dir, false, &m) != GS_OK)
		return gs_cmd_fail("inspect");
	c = &m->cfg;

	printf("model            %s\n", model_dir);
	printf("architecture     %s%s\n", c->architecture, c->conditional ? " (text_config)" : "");
	printf("layers           %d (%d global, %d sliding, window %d)\n", c->n_layers, gs_config_n_global(c),
	       c->n_layers - gs_config_n_global(c), c->sliding_window);
	printf("layer types      ");
	for (int l = 0; l < c->n_layers; l++)
		putchar(c->is_sliding[l] ? 's' : 'G');
	printf("\n");
	printf("hidden           %d, intermediate %d\n", c->hidden, c->intermediate);
	printf("heads            %d query, %d kv, head_dim %d, query_pre_attn_scalar %g\n", c->n_heads,
	       c->n_kv_heads, c->head_dim, c->query_pre_attn_scalar);
	printf("vocab            %d rows in embed_tokens (config vocab_size %d), tied %s\n", m->n_vocab,
	       c->vocab_size, m->lm_head.data == m->embed.data ? "yes" : "no");
	printf("rope             global base %g scale 1/%g; local base %g\n", c->rope_theta,
	       c->rope_scale_factor, c->rope_local_base);
	printf("max positions    %d, rms eps %g, embed scale %g\n", c->max_position, c->rms_eps, m->embed_scale);
	printf("weights          %.3f GB (%s), %d file(s), header checksum %016llx\n", (double)m->weight_bytes / 1e9,
	       gs_dtype_name(m->embed.dtype), gs_st_shard_count(m->st),
	       (unsigned long long)gs_st_header_checksum(m->st));

	if (c->vision.present) {
		const struct gs_vision_config *v = &c->vision;
		int g = v->image_size / v->patch_size, side = 1;
		while (side * side < v->mm_tokens_per_image)
			side++;
		printf("vision           SigLIP hidden %d, %d layers, %d heads x %d, ffn %d, ln eps %g; image %d / patch %d "
		       "= %d x %d patches\n", v->hidden, v->n_layers, v->n_heads, v->hidden / v->n_heads, v->intermediate,
		       v->ln_eps, v->image_size, v->patch_size, g, g);
		printf("image tokens     %d per image (avg pool %d x %d), ids boi %d eoi %d image %d; %.1f GFLOP per image; "
		       "tower + projector %.3f GB (in the weights above); TP splits heads and ffn: T must divide %d and %d\n",
		       v->mm_tokens_per_image, g / side, g / side, v->boi_id, v->eoi_id, v->image_token_id,
		       gs_vision_flops(m) / 1e9, m->vision ? (double)m->vision->weight_bytes / 1e9 : 0.0, v->n_heads,
		       v->intermediate);
	}

	if (!no_tensors) {
		printf("\n%-64s %-5s %-18s %12s\n", "tensor", "dtype", "shape", "bytes");
		for (size_t i = 0; i < gs_st_count(m->st); i++) {
			const struct gs_st_tensor *t = gs_st_at(m->st, i);
			char shape[64] = "[";
			for (int d = 0; d < t->ndim; d++)
				snprintf(shape + strlen(shape), sizeof(shape) - strlen(shape), "%s%lld", d ? ", " : "",
					 (long long)t->shape[d]);
			strncat(shape, "]", sizeof(shape) - strlen(shape) - 1);
			printf("%-64s %-5s %-18s %12zu\n", t->name, gs_dtype_name(t->dtype), shape, t->nbytes);
		}
	}

	printf("\nmemory per rank (weights as stored; KV of one sequence, bf16 on GPU / fp32 on CPU)\n");
	printf("%-4s %12s %16s %16s %16s %16s\n", "TP", "weights GB", "KV 8K bf16 GB", "KV 8K fp32 GB",
	       "KV 128K bf16 GB", "KV 128K fp32 GB");
	for (size_t i = 0; i < sizeof(tps) / sizeof(tps[0]); i++) {
		const char *why = tp_invalid_reason(c, tps[i]);
		if (why) {
			printf("%-4d n/a: T=%d %s\n", tps[i], tps[i], why);
			continue;
		}
		printf("%-4d %12.3f", tps[i], weight_bytes_per_rank(c, m->n_vocab, gs_dtype_size(m->embed.dtype), tps[i]) / 1e9);
		for (size_t j = 0; j < sizeof(ctxs) / sizeof(ctxs[0]); j++) {
			long ctx = ctxs[j] < c->max_position ? ctxs[j] : c->max_position;
			printf(" %16.3f %16.3f", kv_bytes_per_rank(c, tps[i], ctx, 2) / 1e9,
			       kv_bytes_per_rank(c, tps[i], ctx, 4) / 1e9);
		}
		printf("\n");
	}
	printf("(context capped at max_position_embeddings = %d)\n", c->max_position);
	{
		/* The two terms of the KV formula, TP = 1, bf16: per token over the global layers,
		 * and the fixed ring every long sequence keeps on the sliding layers. */
		double per_tok = (double)gs_model_kv_bytes_per_token(c, 1, 2) * gs_config_n_global(c);
		double fixed = kv_bytes_per_rank(c, 1, 1L << 30 > c->max_position ? c->max_position : 1L << 30, 2) -
			       per_tok * (double)(((c->max_position + GS_KV_BLOCK - 1) / GS_KV_BLOCK) * GS_KV_BLOCK);
		printf("KV formula (TP=1, bf16): %.1f KiB per token over %d global layers + %.1f MiB fixed per long "
		       "sequence (%d sliding layers x ring of %d blocks of %d); divide by T for T <= %d KV heads\n",
		       per_tok / 1024, gs_config_n_global(c), fixed / (1024 * 1024), c->n_layers - gs_config_n_global(c),
		       (c->sliding_window - 1 + GS_KV_BLOCK - 1) / GS_KV_BLOCK + 1, GS_KV_BLOCK, c->n_kv_heads);
	}
	print_grid(model_dir, c, m->n_vocab, gs_dtype_size(m->embed.dtype), tp, cp);
	gs_model_free(m);
	return 0;
}
