/* gemmashard make-test-model: write a random-weight Gemma 3 checkpoint (config.json,
 * safetensors, tokenizer.json) with any shape, for tests and benchmarks that need a real
 * file on disk but no released weights.
 *
 * Weights are bf16 from a counter-based RNG (splitmix64 of seed, tensor name and element
 * index), so the bytes depend only on the flags, never on chunking or write order. Scales keep
 * activations O(1) through many layers: linear weights N(0, 1/in_features), norm weights
 * (the raw w of 1 + w) N(0, 0.1^2), embeddings N(0, 0.03^2). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "gs_cmds.h"
#include "gs_dtype.h"
#include "gs_safetensors.h"
#include "gs_status.h"

#define GS_MTM_MAX_PATTERN       256
#define GS_MTM_TENSORS_PER_LAYER 13

struct gs_mtm_opts {
	const char *out;
	const char *tokenizer;
	const char *preset;
	uint64_t    seed;
	long        layers, hidden, heads, kv_heads, head_dim, intermediate, window, vocab, shards, max_pos;
	double      qpas;
	double      rope_scaling;  /* <= 0: null */
	bool        conditional;   /* Gemma3ForConditionalGeneration layout */
	bool        names_new;     /* model.language_model.* instead of language_model.model.* */
	const char *layer_types;   /* NULL: sliding_window_pattern 6 */
	/* the SigLIP tower (tiny-vision preset or any --vision-* flag; conditional layout) */
	bool        vision;
	long        v_hidden, v_layers, v_heads, v_intermediate, v_image, v_patch, v_mm;
};

/* Per-tensor generator state; one per tensor, alive until the writer is done. */
struct gs_mtm_gen {
	uint64_t key;
	double   std;
	double   mean;   /* LayerNorm weights: 1 + N(0, std²) */
};

static void gs_mtm_usage(FILE *f)
{
	fprintf(f,
		"usage: gemmashard make-test-model --out DIR --tokenizer PATH [options]\n"
		"\n"
		"Writes DIR/config.json, DIR/model.safetensors (or shards + index) with random bf16\n"
		"weights, and DIR/tokenizer.json (a copy of PATH).\n"
		"\n"
		"  --preset tiny|small|1b|tiny-vision   base shape (default tiny); flags below override it\n"
		"                           tiny:  6 layers, hidden 64, 4/2 heads, head_dim 16, ffn 128,\n"
		"                                  window 8, qpas 16\n"
		"                           small: 8 layers, hidden 256, 4/1 heads, head_dim 64, ffn 512,\n"
		"                                  window 32, qpas 64, rope-scaling 8\n"
		"                           1b:    26 layers, hidden 1152, 4/1 heads, head_dim 256, ffn 6912,\n"
		"                                  window 512, qpas 256 (the Gemma 3 1B shape)\n"
		"                           tiny-vision: tiny with vocab 262208 (the image token ids) and a\n"
		"                                  SigLIP tower (Gemma3ForConditionalGeneration): hidden 32,\n"
		"                                  2 layers, 4 heads, ffn 64, image 56, patch 14, 4 mm tokens\n"
		"  --seed N                 RNG seed (default 0)\n"
		"  --layers N --hidden N --heads N --kv-heads N --head-dim N --intermediate N\n"
		"  --window N               sliding_window\n"
		"  --qpas X                 query_pre_attn_scalar\n"
		"  --rope-scaling F         linear factor for global layers; 0 or 'none' for null\n"
		"  --vocab N                rows of embed_tokens (default 262144)\n"
		"  --max-pos N              max_position_embeddings\n"
		"  --layout causal|conditional\n"
		"                           Gemma3ForCausalLM (model.*) or Gemma3ForConditionalGeneration\n"
		"                           (language_model.model.*, config under text_config)\n"
		"  --names orig|new         conditional only: 'new' names tensors model.language_model.*,\n"
		"                           model.vision_tower.*, model.multi_modal_projector.* (also\n"
		"                           spelled --name-scheme original|new)\n"
		"  --vision-hidden N --vision-layers N --vision-heads N --vision-intermediate N\n"
		"  --vision-image-size N --vision-patch N --vision-mm-tokens N\n"
		"                           the vision tower's shape (implies the tiny-vision tower and the\n"
		"                           conditional layout); mm tokens: a square whose side divides\n"
		"                           image-size / patch\n"
		"  --shards N               write N shards + model.safetensors.index.json (default 1)\n"
		"  --layer-types PATTERN    write layer_types instead of sliding_window_pattern; PATTERN is\n"
		"                           a string of s (sliding) and f (full) repeated over the layers,\n"
		"                           e.g. sssssf\n"
		"  --help                   this text\n");
}

static int gs_mtm_preset(struct gs_mtm_opts *o, const char *name)
{
	o->vocab = 262144;
	o->rope_scaling = 0;
	/* the tower of tiny-vision, also the base of --vision-* flags on another preset */
	o->v_hidden = 32, o->v_layers = 2, o->v_heads = 4, o->v_intermediate = 64;
	o->v_image = 56, o->v_patch = 14, o->v_mm = 4;
	if (strcmp(name, "tiny") == 0) {
		o->layers = 6, o->hidden = 64, o->heads = 4, o->kv_heads = 2, o->head_dim = 16;
		o->intermediate = 128, o->window = 8, o->qpas = 16, o->max_pos = 4096;
	} else if (strcmp(name, "small") == 0) {
		o->layers = 8, o->hidden = 256, o->heads = 4, o->kv_heads = 1, o->head_dim = 64;
		o->intermediate = 512, o->window = 32, o->qpas = 64, o->max_pos = 32768;
		o->rope_scaling = 8;
	} else if (strcmp(name, "tiny-vision") == 0) {
		o->layers = 6, o->hidden = 64, o->heads = 4, o->kv_heads = 2, o->head_dim = 16;
		o->intermediate = 128, o->window = 8, o->qpas = 16, o->max_pos = 4096;
		o->vocab = 262208, o->conditional = true, o->vision = true;
	} else if (strcmp(name, "1b") == 0) {
		o->layers = 26, o->hidden = 1152, o->heads = 4, o->kv_heads = 1, o->head_dim = 256;
		o->intermediate = 6912, o->window = 512, o->qpas = 256, o->max_pos = 32768;
	} else {
		return 0;
	}
	o->preset = name;
	return 1;
}

static int gs_mtm_long(const char *flag, const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi) {
		fprintf(stderr, "make-test-model: %s expects an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, s);
		return 0;
	}
	*out = v;
	return 1;
}

static int gs_mtm_double(const char *flag, const char *s, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < 0) {
		fprintf(stderr, "make-test-model: %s expects a non-negative number, got '%s'\n", flag, s);
		return 0;
	}
	*out = v;
	return 1;
}

/* Two passes: the preset first, so individual flags override it whatever their order. */
static int gs_mtm_parse(int argc, char **argv, struct gs_mtm_opts *o, bool *help)
{
	const char *preset = "tiny";
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			*help = true;
			return 1;
		}
		if (strcmp(argv[i], "--preset") == 0 && i + 1 < argc)
			preset = argv[i + 1];
	}
	if (!gs_mtm_preset(o, preset)) {
		fprintf(stderr, "make-test-model: unknown preset '%s' (tiny, small, 1b, tiny-vision)\n", preset);
		return 0;
	}
	for (int i = 1; i < argc; i++) {
		const char *f = argv[i];
		if (strncmp(f, "--", 2) != 0) {
			fprintf(stderr, "make-test-model: unexpected argument '%s' (see --help)\n", f);
			return 0;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "make-test-model: %s needs a value (see --help)\n", f);
			return 0;
		}
		const char *v = argv[++i];
		long seed;
		int ok = 1;
		if (strcmp(f, "--out") == 0)
			o->out = v;
		else if (strcmp(f, "--tokenizer") == 0)
			o->tokenizer = v;
		else if (strcmp(f, "--preset") == 0)
			continue;
		else if (strcmp(f, "--seed") == 0)
			ok = gs_mtm_long(f, v, 0, LONG_MAX, &seed), o->seed = (uint64_t)seed;
		else if (strcmp(f, "--layers") == 0)
			ok = gs_mtm_long(f, v, 1, 4096, &o->layers);
		else if (strcmp(f, "--hidden") == 0)
			ok = gs_mtm_long(f, v, 1, 1 << 20, &o->hidden);
		else if (strcmp(f, "--heads") == 0)
			ok = gs_mtm_long(f, v, 1, 4096, &o->heads);
		else if (strcmp(f, "--kv-heads") == 0)
			ok = gs_mtm_long(f, v, 1, 4096, &o->kv_heads);
		else if (strcmp(f, "--head-dim") == 0)
			ok = gs_mtm_long(f, v, 2, 1 << 16, &o->head_dim);
		else if (strcmp(f, "--intermediate") == 0)
			ok = gs_mtm_long(f, v, 1, 1 << 24, &o->intermediate);
		else if (strcmp(f, "--window") == 0)
			ok = gs_mtm_long(f, v, 1, 1L << 30, &o->window);
		else if (strcmp(f, "--vocab") == 0)
			ok = gs_mtm_long(f, v, 1, 1L << 30, &o->vocab);
		else if (strcmp(f, "--shards") == 0)
			ok = gs_mtm_long(f, v, 1, 99999, &o->shards);
		else if (strcmp(f, "--max-pos") == 0)
			ok = gs_mtm_long(f, v, 1, 1L << 30, &o->max_pos);
		else if (strcmp(f, "--qpas") == 0)
			ok = gs_mtm_double(f, v, &o->qpas);
		else if (strcmp(f, "--rope-scaling") == 0)
			ok = strcmp(v, "none") == 0 || strcmp(v, "null") == 0 ? (o->rope_scaling = 0, 1)
									       : gs_mtm_double(f, v, &o->rope_scaling);
		else if (strcmp(f, "--layout") == 0) {
			if (strcmp(v, "causal") == 0)
				o->conditional = false;
			else if (strcmp(v, "conditional") == 0)
				o->conditional = true;
			else {
				fprintf(stderr, "make-test-model: --layout expects causal or conditional, got '%s'\n", v);
				return 0;
			}
		} else if (strcmp(f, "--names") == 0 || strcmp(f, "--name-scheme") == 0) {
			if (strcmp(v, "orig") == 0 || strcmp(v, "original") == 0)
				o->names_new = false;
			else if (strcmp(v, "new") == 0)
				o->names_new = true;
			else {
				fprintf(stderr, "make-test-model: --names expects orig or new, got '%s'\n", v);
				return 0;
			}
		} else if (strcmp(f, "--layer-types") == 0)
			o->layer_types = v;
		else if (strncmp(f, "--vision-", 9) == 0) {
			static const char *const vf[] = { "hidden", "layers", "heads", "intermediate", "image-size", "patch",
							  "mm-tokens" };
			long *dst[] = { &o->v_hidden, &o->v_layers, &o->v_heads, &o->v_intermediate, &o->v_image, &o->v_patch,
					&o->v_mm };
			size_t k = 0;
			while (k < 7 && strcmp(f + 9, vf[k]) != 0)
				k++;
			if (k == 7) {
				fprintf(stderr, "make-test-model: unknown option '%s' (see --help)\n", f);
				return 0;
			}
			ok = gs_mtm_long(f, v, 1, 1 << 16, dst[k]);
			o->vision = o->conditional = true;
		} else {
			fprintf(stderr, "make-test-model: unknown option '%s' (see --help)\n", f);
			return 0;
		}
		if (!ok)
			return 0;
	}
	return 1;
}

static int gs_mtm_validate(const struct gs_mtm_opts *o)
{
	if (!o->out || !o->out[0]) {
		fprintf(stderr, "make-test-model: --out DIR is required (see --help)\n");
		return 0;
	}
	if (!o->tokenizer || !o->tokenizer[0]) {
		fprintf(stderr, "make-test-model: --tokenizer PATH is required (see --help)\n");
		return 0;
	}
	if (o->heads % o->kv_heads != 0) {
		fprintf(stderr, "make-test-model: --heads %ld is not a multiple of --kv-heads %ld\n", o->heads,
			o->kv_heads);
		return 0;
	}
	if (o->head_dim % 2 != 0) {
		fprintf(stderr, "make-test-model: --head-dim %ld must be even (RoPE rotates pairs)\n", o->head_dim);
		return 0;
	}
	if (!(o->qpas > 0)) {
		fprintf(stderr, "make-test-model: --qpas must be positive\n");
		return 0;
	}
	if (o->rope_scaling > 0 && o->rope_scaling < 1) {
		fprintf(stderr, "make-test-model: --rope-scaling %g must be >= 1 (or 0/none for no scaling)\n",
			o->rope_scaling);
		return 0;
	}
	if (o->layer_types) {
		size_t n = strlen(o->layer_types);
		if (n == 0 || n > GS_MTM_MAX_PATTERN || strspn(o->layer_types, "sfSF") != n) {
			fprintf(stderr, "make-test-model: --layer-types '%s' must be 1..%d letters s (sliding) or "
				"f (full), e.g. sssssf\n", o->layer_types, GS_MTM_MAX_PATTERN);
			return 0;
		}
	}
	if (o->vision) {
		long g = o->v_image / o->v_patch, side = 1;
		while (side * side < o->v_mm)
			side++;
		if (o->v_hidden % o->v_heads || o->v_image % o->v_patch || side * side != o->v_mm || g % side) {
			fprintf(stderr, "make-test-model: vision shape: --vision-hidden %ld must be a multiple of "
				"--vision-heads %ld, --vision-image-size %ld of --vision-patch %ld, and --vision-mm-tokens "
				"%ld a square whose side divides %ld\n", o->v_hidden, o->v_heads, o->v_image, o->v_patch,
				o->v_mm, g);
			return 0;
		}
		if (!o->conditional) {
			fprintf(stderr, "make-test-model: a vision tower needs --layout conditional\n");
			return 0;
		}
		if (o->vocab <= 262144) {
			fprintf(stderr, "make-test-model: a vision tower needs --vocab above 262144 (the image token "
				"ids 255999, 256000, 262144 must have rows), got %ld\n", o->vocab);
			return 0;
		}
	}
	if (o->shards > o->layers * GS_MTM_TENSORS_PER_LAYER + 2) {
		fprintf(stderr, "make-test-model: --shards %ld exceeds the %ld tensors of the model\n", o->shards,
			o->layers * GS_MTM_TENSORS_PER_LAYER + 2);
		return 0;
	}
	return 1;
}

static uint64_t gs_mtm_splitmix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t gs_mtm_name_key(uint64_t seed, const char *name)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 0x100000001b3ull;
	return gs_mtm_splitmix(seed ^ gs_mtm_splitmix(h));
}

/* Box-Muller on the two 32-bit halves of one hash per element pair (2j, 2j+1): cos gives the
 * even element, sin the odd one, so element i depends on (key, i) only, whatever the chunking.
 * Float math is plenty for bf16 output and keeps the 1b preset well under a minute. */
static void gs_mtm_normal_pair(uint64_t key, uint64_t j, float std, float z[2])
{
	uint64_t h = gs_mtm_splitmix(key + j * 0xd1b54a32d192ed03ull);
	float u1 = ((float)(uint32_t)(h >> 40) + 0.5f) * (1.0f / 16777216.0f); /* (0, 1) */
	float u2 = (float)(uint32_t)(h & 0xffffffu) * (1.0f / 16777216.0f);    /* [0, 1) */
	float r = sqrtf(-2.0f * logf(u1)) * std;
	float sn, cs;
	sincosf(6.2831853f * u2, &sn, &cs);
	z[0] = r * cs;
	z[1] = r * sn;
}

static void gs_mtm_gen_normal(void *ctx, const char *name, size_t first, size_t count, void *dst)
{
	const struct gs_mtm_gen *g = ctx;
	uint16_t *out = dst;
	float z[2];
	size_t i = 0;
	(void)name;
	if (first % 2 == 1 && count > 0) {
		gs_mtm_normal_pair(g->key, first / 2, (float)g->std, z);
		out[i++] = gs_f32_to_bf16((float)g->mean + z[1]);
	}
	for (; i + 1 < count; i += 2) {
		gs_mtm_normal_pair(g->key, (first + i) / 2, (float)g->std, z);
		out[i] = gs_f32_to_bf16((float)g->mean + z[0]);
		out[i + 1] = gs_f32_to_bf16((float)g->mean + z[1]);
	}
	if (i < count) {
		gs_mtm_normal_pair(g->key, (first + i) / 2, (float)g->std, z);
		out[i] = gs_f32_to_bf16((float)g->mean + z[0]);
	}
}

struct gs_mtm_model {
	struct gs_st_writer *w;
	struct gs_mtm_gen   *gens;   /* one per tensor */
	size_t               ngens;
	size_t               capgens;
	uint64_t             params;
	const char          *prefix; /* "model.", "language_model.model." or "model.language_model." */
	uint64_t             seed;
};

/* A bf16 tensor prefix + suffix of up to 4 dims (dims[ndim..] ignored), N(mean, std²). */
static enum gs_status gs_mtm_add_nd(struct gs_mtm_model *m, const char *prefix, const char *suffix, int ndim,
				    const int64_t *shape, double mean, double std)
{
	char name[256];
	uint64_t n = 1;
	snprintf(name, sizeof(name), "%s%s", prefix, suffix);
	GS_ASSERT(m->ngens < m->capgens);
	struct gs_mtm_gen *g = &m->gens[m->ngens++];
	g->key = gs_mtm_name_key(m->seed, name);
	g->std = std;
	g->mean = mean;
	for (int i = 0; i < ndim; i++)
		n *= (uint64_t)shape[i];
	m->params += n;
	return gs_st_writer_add_gen(m->w, name, GS_DTYPE_BF16, ndim, shape, gs_mtm_gen_normal, g);
}

static enum gs_status gs_mtm_add(struct gs_mtm_model *m, const char *suffix, int ndim, int64_t d0, int64_t d1,
				 double std)
{
	int64_t shape[2] = { d0, d1 };
	return gs_mtm_add_nd(m, m->prefix, suffix, ndim, shape, 0.0, std);
}

#define GS_MTM_VISION_PER_LAYER 16

/* The SigLIP tower and the projector (reference/gemma3.md §3.2), names in m->prefix's scheme.
 * LayerNorm weights N(1, 0.1²), biases N(0, 0.1²) (so a missed bias shows), positions
 * N(0, 0.3²), the soft-embedding norm's raw w N(0, 0.1²) like the text norms. */
static enum gs_status gs_mtm_add_vision(struct gs_mtm_model *m, const struct gs_mtm_opts *o)
{
	const bool nw = strcmp(m->prefix, "model.language_model.") == 0;
	const char *tw = nw ? "model.vision_tower.vision_model." : "vision_tower.vision_model.";
	const char *pj = nw ? "model.multi_modal_projector." : "multi_modal_projector.";
	const int64_t Hv = o->v_hidden, F = o->v_intermediate, P = o->v_patch, g = o->v_image / o->v_patch;
	const double b = 0.1;
	char s[160];

	GS_TRY(gs_mtm_add_nd(m, tw, "embeddings.patch_embedding.weight", 4, (int64_t[]){ Hv, 3, P, P }, 0,
			     1.0 / sqrt(3.0 * (double)(P * P))));
	GS_TRY(gs_mtm_add_nd(m, tw, "embeddings.patch_embedding.bias", 1, (int64_t[]){ Hv }, 0, b));
	GS_TRY(gs_mtm_add_nd(m, tw, "embeddings.position_embedding.weight", 2, (int64_t[]){ g * g, Hv }, 0, 0.3));
	for (long l = 0; l < o->v_layers; l++) {
#define GS_MTM_VLAYER(suffix, nd, a, bb, mean, std)                                               \
	do {                                                                                      \
		snprintf(s, sizeof(s), "encoder.layers.%ld.%s", l, suffix);                       \
		GS_TRY(gs_mtm_add_nd(m, tw, s, nd, (int64_t[]){ a, bb }, mean, std));              \
	} while (0)
		GS_MTM_VLAYER("layer_norm1.weight", 1, Hv, 0, 1.0, b);
		GS_MTM_VLAYER("layer_norm1.bias", 1, Hv, 0, 0.0, b);
		GS_MTM_VLAYER("self_attn.q_proj.weight", 2, Hv, Hv, 0.0, 1.0 / sqrt((double)Hv));
		GS_MTM_VLAYER("self_attn.q_proj.bias", 1, Hv, 0, 0.0, b);
		GS_MTM_VLAYER("self_attn.k_proj.weight", 2, Hv, Hv, 0.0, 1.0 / sqrt((double)Hv));
		GS_MTM_VLAYER("self_attn.k_proj.bias", 1, Hv, 0, 0.0, b);
		GS_MTM_VLAYER("self_attn.v_proj.weight", 2, Hv, Hv, 0.0, 1.0 / sqrt((double)Hv));
		GS_MTM_VLAYER("self_attn.v_proj.bias", 1, Hv, 0, 0.0, b);
		GS_MTM_VLAYER("self_attn.out_proj.weight", 2, Hv, Hv, 0.0, 1.0 / sqrt((double)Hv));
		GS_MTM_VLAYER("self_attn.out_proj.bias", 1, Hv, 0, 0.0, b);
		GS_MTM_VLAYER("layer_norm2.weight", 1, Hv, 0, 1.0, b);
		GS_MTM_VLAYER("layer_norm2.bias", 1, Hv, 0, 0.0, b);
		GS_MTM_VLAYER("mlp.fc1.weight", 2, F, Hv, 0.0, 1.0 / sqrt((double)Hv));
		GS_MTM_VLAYER("mlp.fc1.bias", 1, F, 0, 0.0, b);
		GS_MTM_VLAYER("mlp.fc2.weight", 2, Hv, F, 0.0, 1.0 / sqrt((double)F));
		GS_MTM_VLAYER("mlp.fc2.bias", 1, Hv, 0, 0.0, b);
#undef GS_MTM_VLAYER
	}
	GS_TRY(gs_mtm_add_nd(m, tw, "post_layernorm.weight", 1, (int64_t[]){ Hv }, 1.0, b));
	GS_TRY(gs_mtm_add_nd(m, tw, "post_layernorm.bias", 1, (int64_t[]){ Hv }, 0.0, b));
	GS_TRY(gs_mtm_add_nd(m, pj, "mm_soft_emb_norm.weight", 1, (int64_t[]){ Hv }, 0.0, b));
	/* [in = Hv, out = H]: used as x @ W */
	return gs_mtm_add_nd(m, pj, "mm_input_projection_weight", 2, (int64_t[]){ Hv, o->hidden }, 0.0,
			     1.0 / sqrt((double)Hv));
}

static enum gs_status gs_mtm_add_tensors(struct gs_mtm_model *m, const struct gs_mtm_opts *o)
{
	const int64_t H = o->hidden, F = o->intermediate, D = o->head_dim;
	const int64_t Q = o->heads * D, KV = o->kv_heads * D;
	const double norm_std = 0.1;
	char s[128];

	GS_TRY(gs_mtm_add(m, "embed_tokens.weight", 2, o->vocab, H, 0.03));
	GS_TRY(gs_mtm_add(m, "norm.weight", 1, H, 0, norm_std));
	for (long l = 0; l < o->layers; l++) {
#define GS_MTM_LAYER(suffix, nd, a, b, std)                                     \
	do {                                                                    \
		snprintf(s, sizeof(s), "layers.%ld.%s", l, suffix);             \
		GS_TRY(gs_mtm_add(m, s, nd, a, b, std));                        \
	} while (0)
		GS_MTM_LAYER("input_layernorm.weight", 1, H, 0, norm_std);
		GS_MTM_LAYER("self_attn.q_proj.weight", 2, Q, H, 1.0 / sqrt((double)H));
		GS_MTM_LAYER("self_attn.k_proj.weight", 2, KV, H, 1.0 / sqrt((double)H));
		GS_MTM_LAYER("self_attn.v_proj.weight", 2, KV, H, 1.0 / sqrt((double)H));
		GS_MTM_LAYER("self_attn.o_proj.weight", 2, H, Q, 1.0 / sqrt((double)Q));
		GS_MTM_LAYER("self_attn.q_norm.weight", 1, D, 0, norm_std);
		GS_MTM_LAYER("self_attn.k_norm.weight", 1, D, 0, norm_std);
		GS_MTM_LAYER("post_attention_layernorm.weight", 1, H, 0, norm_std);
		GS_MTM_LAYER("pre_feedforward_layernorm.weight", 1, H, 0, norm_std);
		GS_MTM_LAYER("mlp.gate_proj.weight", 2, F, H, 1.0 / sqrt((double)H));
		GS_MTM_LAYER("mlp.up_proj.weight", 2, F, H, 1.0 / sqrt((double)H));
		GS_MTM_LAYER("mlp.down_proj.weight", 2, H, F, 1.0 / sqrt((double)F));
		GS_MTM_LAYER("post_feedforward_layernorm.weight", 1, H, 0, norm_std);
#undef GS_MTM_LAYER
	}
	return GS_OK;
}

/* The text fields shared by both layouts (flat for causal, text_config for conditional). */
static cJSON *gs_mtm_text_config(const struct gs_mtm_opts *o)
{
	cJSON *c = cJSON_CreateObject();
	if (!c)
		return NULL;
	cJSON_AddStringToObject(c, "model_type", "gemma3_text");
	cJSON_AddNumberToObject(c, "vocab_size", (double)o->vocab);
	cJSON_AddNumberToObject(c, "hidden_size", (double)o->hidden);
	cJSON_AddNumberToObject(c, "intermediate_size", (double)o->intermediate);
	cJSON_AddNumberToObject(c, "num_hidden_layers", (double)o->layers);
	cJSON_AddNumberToObject(c, "num_attention_heads", (double)o->heads);
	cJSON_AddNumberToObject(c, "num_key_value_heads", (double)o->kv_heads);
	cJSON_AddNumberToObject(c, "head_dim", (double)o->head_dim);
	cJSON_AddNumberToObject(c, "query_pre_attn_scalar", o->qpas);
	cJSON_AddNumberToObject(c, "sliding_window", (double)o->window);
	if (o->layer_types) {
		cJSON *lt = cJSON_AddArrayToObject(c, "layer_types");
		size_t plen = strlen(o->layer_types);
		for (long l = 0; lt && l < o->layers; l++) {
			char ch = o->layer_types[(size_t)l % plen];
			cJSON_AddItemToArray(lt, cJSON_CreateString(ch == 'f' || ch == 'F' ? "full_attention"
										  : "sliding_attention"));
		}
	} else {
		cJSON_AddNumberToObject(c, "sliding_window_pattern", 6);
	}
	cJSON_AddNumberToObject(c, "rope_theta", 1000000.0);
	cJSON_AddNumberToObject(c, "rope_local_base_freq", 10000.0);
	if (o->rope_scaling > 0) {
		cJSON *rs = cJSON_AddObjectToObject(c, "rope_scaling");
		if (rs) {
			cJSON_AddStringToObject(rs, "rope_type", "linear");
			cJSON_AddNumberToObject(rs, "factor", o->rope_scaling);
		}
	} else {
		cJSON_AddNullToObject(c, "rope_scaling");
	}
	cJSON_AddNumberToObject(c, "max_position_embeddings", (double)o->max_pos);
	cJSON_AddNumberToObject(c, "rms_norm_eps", 1e-6);
	cJSON_AddStringToObject(c, "hidden_activation", "gelu_pytorch_tanh");
	cJSON_AddNullToObject(c, "final_logit_softcapping");
	cJSON_AddNullToObject(c, "attn_logit_softcapping");
	cJSON_AddFalseToObject(c, "attention_bias");
	cJSON_AddNumberToObject(c, "bos_token_id", 2);
	cJSON *eos = cJSON_AddArrayToObject(c, "eos_token_id");
	if (eos) {
		cJSON_AddItemToArray(eos, cJSON_CreateNumber(1));
		cJSON_AddItemToArray(eos, cJSON_CreateNumber(106));
	}
	cJSON_AddNumberToObject(c, "pad_token_id", 0);
	cJSON_AddTrueToObject(c, "tie_word_embeddings");
	cJSON_AddStringToObject(c, "torch_dtype", "bfloat16");
	return c;
}

static enum gs_status gs_mtm_write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return gs_errorf(GS_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
	size_t n = strlen(text);
	size_t wn = fwrite(text, 1, n, f);
	int bad = fputc('\n', f) == EOF || wn != n;
	if (fclose(f) != 0 || bad)
		return gs_errorf(GS_ERR_IO, "%s: write failed: %s", path, strerror(errno));
	return GS_OK;
}

static enum gs_status gs_mtm_write_config(const struct gs_mtm_opts *o, const char *path)
{
	enum gs_status rc = GS_OK;
	cJSON *text = gs_mtm_text_config(o);
	cJSON *root = text;
	const char *arch = "Gemma3ForCausalLM";

	if (!text)
		return gs_errorf(GS_ERR_NOMEM, "config.json: out of memory");
	if (o->conditional) {
		/* Multimodal wrapper as Google released it: text fields under text_config; the token
		 * ids are repeated at the top level where the HF generation code reads them. */
		arch = "Gemma3ForConditionalGeneration";
		root = cJSON_CreateObject();
		if (!root) {
			cJSON_Delete(text);
			return gs_errorf(GS_ERR_NOMEM, "config.json: out of memory");
		}
		cJSON_AddStringToObject(root, "model_type", "gemma3");
		cJSON_AddItemToObject(root, "text_config", text);
		cJSON_AddNumberToObject(root, "bos_token_id", 2);
		cJSON *eos = cJSON_AddArrayToObject(root, "eos_token_id");
		if (eos) {
			cJSON_AddItemToArray(eos, cJSON_CreateNumber(1));
			cJSON_AddItemToArray(eos, cJSON_CreateNumber(106));
		}
		cJSON_AddNumberToObject(root, "pad_token_id", 0);
		cJSON_AddTrueToObject(root, "tie_word_embeddings");
		cJSON_AddStringToObject(root, "torch_dtype", "bfloat16");
		if (o->vision) {
			/* as google/medgemma-4b-it writes them (reference/gemma3.md §1.3) */
			cJSON *vc = cJSON_AddObjectToObject(root, "vision_config");
			if (vc) {
				cJSON_AddStringToObject(vc, "model_type", "siglip_vision_model");
				cJSON_AddNumberToObject(vc, "hidden_size", (double)o->v_hidden);
				cJSON_AddNumberToObject(vc, "intermediate_size", (double)o->v_intermediate);
				cJSON_AddNumberToObject(vc, "num_hidden_layers", (double)o->v_layers);
				cJSON_AddNumberToObject(vc, "num_attention_heads", (double)o->v_heads);
				cJSON_AddNumberToObject(vc, "image_size", (double)o->v_image);
				cJSON_AddNumberToObject(vc, "patch_size", (double)o->v_patch);
				cJSON_AddNumberToObject(vc, "layer_norm_eps", 1e-6);
				cJSON_AddStringToObject(vc, "hidden_act", "gelu_pytorch_tanh");
				cJSON_AddFalseToObject(vc, "vision_use_head");
			}
			cJSON_AddNumberToObject(root, "mm_tokens_per_image", (double)o->v_mm);
			cJSON_AddNumberToObject(root, "boi_token_index", 255999);
			cJSON_AddNumberToObject(root, "eoi_token_index", 256000);
			cJSON_AddNumberToObject(root, "image_token_index", 262144);
		}
	}
	cJSON *archs = cJSON_CreateArray();
	if (archs) {
		cJSON_AddItemToArray(archs, cJSON_CreateString(arch));
		cJSON_AddItemToObject(root, "architectures", archs);
	}
	char *s = cJSON_Print(root);
	if (!s)
		rc = gs_errorf(GS_ERR_NOMEM, "config.json: out of memory");
	else
		rc = gs_mtm_write_text(path, s);
	free(s);
	cJSON_Delete(root);
	return rc;
}

static enum gs_status gs_mtm_copy_file(const char *src, const char *dst)
{
	enum gs_status rc = GS_OK;
	char buf[1 << 16];
	FILE *in = fopen(src, "rb");
	if (!in)
		return gs_errorf(GS_ERR_NOT_FOUND, "%s: cannot open tokenizer: %s", src, strerror(errno));
	FILE *out = fopen(dst, "wb");
	if (!out) {
		rc = gs_errorf(GS_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
		goto out_close_in;
	}
	size_t n;
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0) {
		if (fwrite(buf, 1, n, out) != n) {
			rc = gs_errorf(GS_ERR_IO, "%s: write failed: %s", dst, strerror(errno));
			break;
		}
	}
	if (rc == GS_OK && ferror(in))
		rc = gs_errorf(GS_ERR_IO, "%s: read failed", src);
	if (fclose(out) != 0 && rc == GS_OK)
		rc = gs_errorf(GS_ERR_IO, "%s: write failed: %s", dst, strerror(errno));
out_close_in:
	fclose(in);
	return rc;
}

/* mkdir -p */
static enum gs_status gs_mtm_mkdirs(const char *dir)
{
	char p[4096];
	size_t n = strlen(dir);
	if (n >= sizeof(p))
		return gs_errorf(GS_ERR_INVALID_ARG, "%s: path too long", dir);
	memcpy(p, dir, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (p[i] != '/' && p[i] != '\0')
			continue;
		char c = p[i];
		p[i] = '\0';
		if (mkdir(p, 0755) != 0 && errno != EEXIST)
			return gs_errorf(GS_ERR_IO, "%s: cannot create directory: %s", p, strerror(errno));
		p[i] = c;
	}
	struct stat sb;
	if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
		return gs_errorf(GS_ERR_IO, "%s: not a directory", dir);
	return GS_OK;
}

static enum gs_status gs_mtm_run(const struct gs_mtm_opts *o)
{
	struct gs_mtm_model m = { 0 };
	enum gs_status rc;
	char path[4200];

	if (strlen(o->out) > 4000)
		return gs_errorf(GS_ERR_INVALID_ARG, "%s: path too long", o->out);
	/* Fail on a missing tokenizer before spending minutes on weights. */
	struct stat sb;
	if (stat(o->tokenizer, &sb) != 0 || !S_ISREG(sb.st_mode))
		return gs_errorf(GS_ERR_NOT_FOUND, "%s: tokenizer file not found", o->tokenizer);
	GS_TRY(gs_mtm_mkdirs(o->out));

	m.seed = o->seed;
	m.prefix = !o->conditional ? "model." : o->names_new ? "model.language_model." : "language_model.model.";
	m.capgens = (size_t)o->layers * GS_MTM_TENSORS_PER_LAYER + 2 +
		    (o->vision ? (size_t)o->v_layers * GS_MTM_VISION_PER_LAYER + 7 : 0);
	m.gens = calloc(m.capgens, sizeof(*m.gens));
	if (!m.gens)
		return gs_errorf(GS_ERR_NOMEM, "make-test-model: out of memory");
	rc = gs_st_writer_new(&m.w);
	if (rc != GS_OK)
		goto out_free_gens;
	rc = gs_mtm_add_tensors(&m, o);
	if (rc == GS_OK && o->vision)
		rc = gs_mtm_add_vision(&m, o);
	if (rc != GS_OK)
		goto out_free_writer;

	snprintf(path, sizeof(path), "%s/config.json", o->out);
	rc = gs_mtm_write_config(o, path);
	if (rc != GS_OK)
		goto out_free_writer;
	snprintf(path, sizeof(path), "%s/tokenizer.json", o->out);
	rc = gs_mtm_copy_file(o->tokenizer, path);
	if (rc != GS_OK)
		goto out_free_writer;

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = gs_st_writer_write(m.w, o->out, (int)o->shards);
	if (rc != GS_OK)
		goto out_free_writer;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
	uint64_t bytes = gs_st_writer_total_bytes(m.w);
	printf("make-test-model: %s: preset %s, %ld layers, hidden %ld, %.2fM params, %.1f MB bf16 in %ld "
	       "file%s, %s layout (%.1f s)\n",
	       o->out, o->preset, o->layers, o->hidden, (double)m.params / 1e6, (double)bytes / 1e6, o->shards,
	       o->shards > 1 ? "s" : "", o->vision ? "conditional with vision" : o->conditional ? "conditional" : "causal",
	       secs);
out_free_writer:
	gs_st_writer_free(m.w);
out_free_gens:
	free(m.gens);
	return rc;
}

int gs_cmd_make_test_model(int argc, char **argv)
{
	struct gs_mtm_opts o = { .shards = 1 };
	bool help = false;

	if (!gs_mtm_parse(argc, argv, &o, &help))
		return 2;
	if (help) {
		gs_mtm_usage(stdout);
		return 0;
	}
	if (!gs_mtm_validate(&o))
		return 2;
	if (o.vocab < 262144)
		fprintf(stderr, "make-test-model: note: --vocab %ld is below 262144; token ids of the Gemma 3 "
			"tokenizer at or above it have no embedding row\n", o.vocab);
	enum gs_status rc = gs_mtm_run(&o);
	if (rc != GS_OK) {
		fprintf(stderr, "make-test-model: %s\n", gs_last_error());
		return 1;
	}
	return 0;
}
