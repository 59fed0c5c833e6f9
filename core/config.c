#include "gs_config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gs_util.h"

enum gs_status gs_read_file(const char *path, char **out, size_t *len)
{
	size_t n;

	GS_TRY(gs_read_file_checked(path, path, false, SIZE_MAX - 1, out, &n));
	if (len)
		*len = n;
	return GS_OK;
}

/* Field readers: absent -> default; present with the wrong type -> error. */
struct cfg_ctx {
	const char *name;
	const cJSON *obj;
};

static enum gs_status get_num(const struct cfg_ctx *c, const char *key, double def, bool required,
			      double *out)
{
	const cJSON *it = cJSON_GetObjectItemCaseSensitive(c->obj, key);

	if (!it || cJSON_IsNull(it)) {
		if (required)
			return gs_errorf(GS_ERR_FORMAT, "%s: required field \"%s\" is missing", c->name, key);
		*out = def;
		return GS_OK;
	}
	if (!cJSON_IsNumber(it))
		return gs_errorf(GS_ERR_FORMAT, "%s: field \"%s\" must be a number", c->name, key);
	*out = it->valuedouble;
	if (!isfinite(*out))
		return gs_errorf(GS_ERR_FORMAT, "%s: field \"%s\" is not finite", c->name, key);
	return GS_OK;
}

static enum gs_status get_int(const struct cfg_ctx *c, const char *key, int32_t def, bool required,
			      int32_t lo, int32_t *out)
{
	double v = 0;

	GS_TRY(get_num(c, key, def, required, &v));
	if (v != floor(v) || v < lo || v > INT32_MAX)
		return gs_errorf(GS_ERR_FORMAT, "%s: field \"%s\" must be an integer >= %d, got %g",
				 c->name, key, lo, v);
	*out = (int32_t)v;
	return GS_OK;
}

/* Optional positive softcap: null/absent = none. */
static enum gs_status get_softcap(const struct cfg_ctx *c, const char *key, double *out)
{
	GS_TRY(get_num(c, key, 0.0, false, out));
	if (*out < 0)
		return gs_errorf(GS_ERR_FORMAT, "%s: field \"%s\" must be positive or null", c->name, key);
	return GS_OK;
}

/* rope_scaling: null, or {"rope_type"|"type": "linear"|"default", "factor": F}. */
static enum gs_status parse_rope_scaling(const struct cfg_ctx *c, const cJSON *rs, double *factor)
{
	const cJSON *type, *fac;

	*factor = 1.0;
	if (!rs || cJSON_IsNull(rs))
		return GS_OK;
	if (!cJSON_IsObject(rs))
		return gs_errorf(GS_ERR_FORMAT, "%s: rope_scaling must be an object or null", c->name);
	type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
	if (!type)
		type = cJSON_GetObjectItemCaseSensitive(rs, "type");
	if (type && !cJSON_IsString(type))
		return gs_errorf(GS_ERR_FORMAT, "%s: rope_scaling.rope_type must be a string", c->name);
	if (type && strcmp(type->valuestring, "default") == 0)
		return GS_OK;
	if (!type || strcmp(type->valuestring, "linear") != 0)
		return gs_errorf(GS_ERR_UNSUPPORTED,
				 "%s: rope_scaling type '%s' is not supported (Gemma 3 uses 'linear')", c->name,
				 type ? type->valuestring : "(missing)");
	fac = cJSON_GetObjectItemCaseSensitive(rs, "factor");
	if (!cJSON_IsNumber(fac) || !(fac->valuedouble > 0) || !isfinite(fac->valuedouble))
		return gs_errorf(GS_ERR_FORMAT, "%s: rope_scaling.factor must be a positive number", c->name);
	*factor = fac->valuedouble;
	return GS_OK;
}

/* Newer exports: rope_parameters = {"sliding_attention": {...}, "full_attention": {...}}. */
static enum gs_status parse_rope_parameters(const struct cfg_ctx *c, const cJSON *rp,
					    struct gs_config *cfg)
{
	const cJSON *loc = cJSON_GetObjectItemCaseSensitive(rp, "sliding_attention");
	const cJSON *glo = cJSON_GetObjectItemCaseSensitive(rp, "full_attention");
	const cJSON *t;

	if (!cJSON_IsObject(rp))
		return gs_errorf(GS_ERR_FORMAT, "%s: rope_parameters must be an object", c->name);
	if (cJSON_IsObject(loc)) {
		t = cJSON_GetObjectItemCaseSensitive(loc, "rope_theta");
		if (cJSON_IsNumber(t))
			cfg->rope_local_base = t->valuedouble;
	}
	if (cJSON_IsObject(glo)) {
		t = cJSON_GetObjectItemCaseSensitive(glo, "rope_theta");
		if (cJSON_IsNumber(t))
			cfg->rope_theta = t->valuedouble;
		GS_TRY(parse_rope_scaling(c, glo, &cfg->rope_scale_factor));
	}
	return GS_OK;
}

/* A token id as JSON gives it: an integer that fits int32_t (NaN fails every comparison). */
static bool is_id(double v)
{
	return v >= 0 && v <= INT32_MAX && v == floor(v);
}

static enum gs_status parse_eos(const struct cfg_ctx *c, const cJSON *obj, const cJSON *top,
				struct gs_config *cfg)
{
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(obj, "eos_token_id");
	const cJSON *it;

	if (!e && top)
		e = cJSON_GetObjectItemCaseSensitive(top, "eos_token_id");
	cfg->n_eos = 0;
	if (!e || cJSON_IsNull(e)) {
		cfg->eos_ids[cfg->n_eos++] = 1;
	} else if (cJSON_IsNumber(e)) {
		if (!is_id(e->valuedouble))
			return gs_errorf(GS_ERR_FORMAT, "%s: eos_token_id must be an integer id in [0, %d], got %g",
					 c->name, INT32_MAX, e->valuedouble);
		cfg->eos_ids[cfg->n_eos++] = (int32_t)e->valuedouble;
	} else if (cJSON_IsArray(e)) {
		cJSON_ArrayForEach(it, e) {
			if (!cJSON_IsNumber(it) || !is_id(it->valuedouble))
				return gs_errorf(GS_ERR_FORMAT, "%s: eos_token_id entries must be integer ids in [0, %d]",
						 c->name, INT32_MAX);
			if (cfg->n_eos == GS_MAX_EOS)
				return gs_errorf(GS_ERR_FORMAT, "%s: more than %d eos_token_id entries",
						 c->name, GS_MAX_EOS);
			cfg->eos_ids[cfg->n_eos++] = (int32_t)it->valuedouble;
		}
	} else {
		return gs_errorf(GS_ERR_FORMAT, "%s: eos_token_id must be an id or a list of ids", c->name);
	}
	/* Generation also stops on <end_of_turn> (106) in every Gemma 3 -it config; the
	 * engine adds it from the tokenizer, so it is not forced here. */
	return GS_OK;
}

static enum gs_status parse_layers(const struct cfg_ctx *c, struct gs_config *cfg)
{
	const cJSON *lt = cJSON_GetObjectItemCaseSensitive(c->obj, "layer_types");
	int32_t L = cfg->n_layers;

	cfg->is_sliding = calloc((size_t)L, sizeof(*cfg->is_sliding));
	cfg->rope_base = calloc((size_t)L, sizeof(*cfg->rope_base));
	cfg->rope_scale = calloc((size_t)L, sizeof(*cfg->rope_scale));
	cfg->window = calloc((size_t)L, sizeof(*cfg->window));
	if (!cfg->is_sliding || !cfg->rope_base || !cfg->rope_scale || !cfg->window)
		return gs_errorf(GS_ERR_NOMEM, "%s: out of memory for %d layers", c->name, L);

	if (lt && !cJSON_IsNull(lt)) {
		if (!cJSON_IsArray(lt))
			return gs_errorf(GS_ERR_FORMAT, "%s: layer_types must be a list", c->name);
		if (cJSON_GetArraySize(lt) != L)
			return gs_errorf(GS_ERR_FORMAT,
					 "%s: layer_types has %d entries but num_hidden_layers is %d",
					 c->name, cJSON_GetArraySize(lt), L);
		for (int32_t l = 0; l < L; l++) {
			const cJSON *it = cJSON_GetArrayItem(lt, l);
			if (!cJSON_IsString(it))
				return gs_errorf(GS_ERR_FORMAT, "%s: layer_types[%d] must be a string", c->name, l);
			if (strcmp(it->valuestring, "sliding_attention") == 0)
				cfg->is_sliding[l] = true;
			else if (strcmp(it->valuestring, "full_attention") == 0)
				cfg->is_sliding[l] = false;
			else
				return gs_errorf(GS_ERR_UNSUPPORTED, "%s: layer_types[%d] '%s' is unknown",
						 c->name, l, it->valuestring);
		}
	} else {
		/* HF rule: layer i is global iff (i + 1) % pattern == 0. */
		for (int32_t l = 0; l < L; l++)
			cfg->is_sliding[l] = ((l + 1) % cfg->sliding_pattern) != 0;
	}
	for (int32_t l = 0; l < L; l++) {
		bool s = cfg->is_sliding[l];
		cfg->rope_base[l] = s ? cfg->rope_local_base : cfg->rope_theta;
		cfg->rope_scale[l] = s ? 1.0 : 1.0 / cfg->rope_scale_factor;
		cfg->window[l] = s ? cfg->sliding_window : INT32_MAX;
	}
	return GS_OK;
}

static enum gs_status parse_text(const struct cfg_ctx *c, const cJSON *top, struct gs_config *cfg)
{
	const cJSON *o = c->obj;
	const cJSON *act;
	int32_t i;

	GS_TRY(get_int(c, "vocab_size", 262208, false, 1, &cfg->vocab_size));
	GS_TRY(get_int(c, "hidden_size", 0, true, 1, &cfg->hidden));
	GS_TRY(get_int(c, "intermediate_size", 0, true, 1, &cfg->intermediate));
	GS_TRY(get_int(c, "num_hidden_layers", 0, true, 1, &cfg->n_layers));
	/* per-layer arrays are allocated from it before any tensor is seen */
	if (cfg->n_layers > GS_MAX_LAYERS)
		return gs_errorf(GS_ERR_FORMAT, "%s: field \"num_hidden_layers\" must be at most %d, got %d", c->name,
				 GS_MAX_LAYERS, cfg->n_layers);
	GS_TRY(get_int(c, "num_attention_heads", 8, false, 1, &cfg->n_heads));
	GS_TRY(get_int(c, "num_key_value_heads", 4, false, 1, &cfg->n_kv_heads));
	GS_TRY(get_int(c, "head_dim", 256, false, 1, &cfg->head_dim));
	GS_TRY(get_num(c, "query_pre_attn_scalar", 256, false, &cfg->query_pre_attn_scalar));
	GS_TRY(get_int(c, "sliding_window", 4096, false, 1, &cfg->sliding_window));
	GS_TRY(get_int(c, "sliding_window_pattern", 6, false, 1, &i));
	if (!cJSON_GetObjectItemCaseSensitive(o, "sliding_window_pattern"))
		GS_TRY(get_int(c, "_sliding_window_pattern", 6, false, 1, &i));
	cfg->sliding_pattern = i;
	GS_TRY(get_num(c, "rope_theta", 1e6, false, &cfg->rope_theta));
	GS_TRY(get_num(c, "rope_local_base_freq", 1e4, false, &cfg->rope_local_base));
	GS_TRY(parse_rope_scaling(c, cJSON_GetObjectItemCaseSensitive(o, "rope_scaling"),
				  &cfg->rope_scale_factor));
	if (cJSON_GetObjectItemCaseSensitive(o, "rope_parameters"))
		GS_TRY(parse_rope_parameters(c, cJSON_GetObjectItemCaseSensitive(o, "rope_parameters"), cfg));
	GS_TRY(get_int(c, "max_position_embeddings", 131072, false, 1, &cfg->max_position));
	GS_TRY(get_num(c, "rms_norm_eps", 1e-6, false, &cfg->rms_eps));
	GS_TRY(get_softcap(c, "final_logit_softcapping", &cfg->final_softcap));
	GS_TRY(get_softcap(c, "attn_logit_softcapping", &cfg->attn_softcap));
	GS_TRY(get_int(c, "bos_token_id", 2, false, 0, &cfg->bos_id));
	GS_TRY(get_int(c, "pad_token_id", 0, false, 0, &cfg->pad_id));
	GS_TRY(parse_eos(c, o, top, cfg));

	cfg->tie_embeddings = true;
	{
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "tie_word_embeddings");
		if (!t && top)
			t = cJSON_GetObjectItemCaseSensitive(top, "tie_word_embeddings");
		if (t && !cJSON_IsBool(t))
			return gs_errorf(GS_ERR_FORMAT, "%s: tie_word_embeddings must be true or false", c->name);
		if (t)
			cfg->tie_embeddings = cJSON_IsTrue(t);
	}

	act = cJSON_GetObjectItemCaseSensitive(o, "hidden_activation");
	if (!act)
		act = cJSON_GetObjectItemCaseSensitive(o, "hidden_act");
	if (act && !cJSON_IsNull(act)) {
		if (!cJSON_IsString(act))
			return gs_errorf(GS_ERR_FORMAT, "%s: hidden_activation must be a string", c->name);
		if (strcmp(act->valuestring, "gelu_pytorch_tanh") != 0 && strcmp(act->valuestring, "gelu_tanh") != 0)
			return gs_errorf(GS_ERR_UNSUPPORTED,
					 "%s: hidden_activation '%s' is not supported (Gemma 3 uses gelu_pytorch_tanh)",
					 c->name, act->valuestring);
	}

	/* Contradictions a checkpoint cannot have. */
	if (cfg->n_heads % cfg->n_kv_heads != 0)
		return gs_errorf(GS_ERR_FORMAT,
				 "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
				 c->name, cfg->n_heads, cfg->n_kv_heads);
	if (cfg->head_dim % 2 != 0)
		return gs_errorf(GS_ERR_FORMAT, "%s: head_dim %d must be even for rotary embeddings",
				 c->name, cfg->head_dim);
	if (!(cfg->query_pre_attn_scalar > 0))
		return gs_errorf(GS_ERR_FORMAT, "%s: query_pre_attn_scalar must be positive", c->name);
	if (!(cfg->rms_eps > 0) || cfg->rms_eps > 1)
		return gs_errorf(GS_ERR_FORMAT, "%s: rms_norm_eps %g out of range", c->name, cfg->rms_eps);
	if (!(cfg->rope_theta > 1) || !(cfg->rope_local_base > 1))
		return gs_errorf(GS_ERR_FORMAT, "%s: rope bases must be > 1", c->name);
	for (int32_t e = 0; e < cfg->n_eos; e++)
		if (cfg->eos_ids[e] >= cfg->vocab_size)
			return gs_errorf(GS_ERR_FORMAT, "%s: eos_token_id %d >= vocab_size %d", c->name,
					 cfg->eos_ids[e], cfg->vocab_size);
	if (cfg->bos_id >= cfg->vocab_size)
		return gs_errorf(GS_ERR_FORMAT, "%s: bos_token_id %d >= vocab_size %d", c->name,
				 cfg->bos_id, cfg->vocab_size);
	return parse_layers(c, cfg);
}

/* vision_config (SiglipVisionConfig: absent keys take its defaults) and the top-level image
 * token ids of Gemma3Config (reference/gemma3.md §1.3). */
static enum gs_status parse_vision(const char *name, const cJSON *root, const cJSON *vc, struct gs_config *cfg)
{
	char vname[300];
	struct cfg_ctx c = { .name = vname, .obj = vc };
	struct cfg_ctx top = { .name = name, .obj = root };
	struct gs_vision_config *v = &cfg->vision;
	const cJSON *it;
	int32_t ch, grid, side;

	snprintf(vname, sizeof(vname), "%s: vision_config", name);
	if (!cJSON_IsObject(vc))
		return gs_errorf(GS_ERR_FORMAT, "%s must be an object", vname);
	GS_TRY(get_int(&c, "hidden_size", 768, false, 1, &v->hidden));
	GS_TRY(get_int(&c, "intermediate_size", 3072, false, 1, &v->intermediate));
	GS_TRY(get_int(&c, "num_hidden_layers", 12, false, 1, &v->n_layers));
	if (v->n_layers > GS_MAX_LAYERS)
		return gs_errorf(GS_ERR_FORMAT, "%s: field \"num_hidden_layers\" must be at most %d, got %d", vname,
				 GS_MAX_LAYERS, v->n_layers);
	GS_TRY(get_int(&c, "num_attention_heads", 12, false, 1, &v->n_heads));
	GS_TRY(get_int(&c, "image_size", 224, false, 1, &v->image_size));
	GS_TRY(get_int(&c, "patch_size", 16, false, 1, &v->patch_size));
	GS_TRY(get_int(&c, "num_channels", 3, false, 1, &ch));
	GS_TRY(get_num(&c, "layer_norm_eps", 1e-6, false, &v->ln_eps));
	if (ch != 3)
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s: num_channels %d is not supported (RGB images: 3)", vname, ch);
	it = cJSON_GetObjectItemCaseSensitive(vc, "vision_use_head");
	if (it && !cJSON_IsNull(it) && !cJSON_IsBool(it))
		return gs_errorf(GS_ERR_FORMAT, "%s: vision_use_head must be true or false", vname);
	if (cJSON_IsTrue(it))
		return gs_errorf(GS_ERR_UNSUPPORTED,
				 "%s: vision_use_head true (an attention-pooling head) is not supported: Gemma 3 "
				 "uses the patch outputs (vision_use_head false)", vname);
	it = cJSON_GetObjectItemCaseSensitive(vc, "hidden_act");
	if (it && !cJSON_IsNull(it) &&
	    (!cJSON_IsString(it) || (strcmp(it->valuestring, "gelu_pytorch_tanh") != 0 &&
				     strcmp(it->valuestring, "gelu_tanh") != 0)))
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s: hidden_act must be \"gelu_pytorch_tanh\"", vname);

	GS_TRY(get_int(&top, "mm_tokens_per_image", 256, false, 1, &v->mm_tokens_per_image));
	GS_TRY(get_int(&top, "boi_token_index", 255999, false, 0, &v->boi_id));
	GS_TRY(get_int(&top, "eoi_token_index", 256000, false, 0, &v->eoi_id));
	if (cJSON_GetObjectItemCaseSensitive(root, "image_token_index"))
		GS_TRY(get_int(&top, "image_token_index", 262144, false, 0, &v->image_token_id));
	else
		GS_TRY(get_int(&top, "image_token_id", 262144, false, 0, &v->image_token_id));

	/* Shapes the tower and the pooling need. */
	if (v->hidden % v->n_heads)
		return gs_errorf(GS_ERR_FORMAT, "%s: hidden_size %d is not divisible by num_attention_heads %d", vname,
				 v->hidden, v->n_heads);
	if (v->image_size % v->patch_size)
		return gs_errorf(GS_ERR_FORMAT, "%s: image_size %d is not divisible by patch_size %d", vname,
				 v->image_size, v->patch_size);
	if (!(v->ln_eps > 0) || v->ln_eps > 1)
		return gs_errorf(GS_ERR_FORMAT, "%s: layer_norm_eps %g out of range", vname, v->ln_eps);
	grid = v->image_size / v->patch_size;
	for (side = 1; (int64_t)side * side < v->mm_tokens_per_image; side++)
		;
	if ((int64_t)side * side != v->mm_tokens_per_image)
		return gs_errorf(GS_ERR_FORMAT, "%s: mm_tokens_per_image %d is not a square number", name,
				 v->mm_tokens_per_image);
	if (grid % side)
		return gs_errorf(GS_ERR_FORMAT,
				 "%s: mm_tokens_per_image %d (%d per side) does not divide the %d x %d patch grid "
				 "(image_size %d / patch_size %d)", name, v->mm_tokens_per_image, side, grid, grid,
				 v->image_size, v->patch_size);
	if (v->boi_id >= cfg->vocab_size || v->eoi_id >= cfg->vocab_size || v->image_token_id >= cfg->vocab_size)
		return gs_errorf(GS_ERR_FORMAT,
				 "%s: image token ids (boi %d, eoi %d, image %d) must be below vocab_size %d", name,
				 v->boi_id, v->eoi_id, v->image_token_id, cfg->vocab_size);
	v->present = true;
	return GS_OK;
}

enum gs_status gs_config_parse(const char *json, size_t len, const char *name, struct gs_config *cfg)
{
	cJSON *root;
	const cJSON *arch, *tc, *mt;
	struct cfg_ctx c = { .name = name };
	enum gs_status st;

	memset(cfg, 0, sizeof(*cfg));
	root = cJSON_ParseWithLength(json, len);
	if (!root)
		return gs_errorf(GS_ERR_FORMAT, "%s: not valid JSON (near byte %ld)", name,
				 cJSON_GetErrorPtr() ? (long)(cJSON_GetErrorPtr() - json) : -1L);
	if (!cJSON_IsObject(root)) {
		st = gs_errorf(GS_ERR_FORMAT, "%s: top level must be a JSON object", name);
		goto out_free_json;
	}

	arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
	mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
	if (cJSON_IsArray(arch) && cJSON_GetArraySize(arch) > 0 && cJSON_IsString(cJSON_GetArrayItem(arch, 0))) {
		snprintf(cfg->architecture, sizeof(cfg->architecture), "%s",
			 cJSON_GetArrayItem(arch, 0)->valuestring);
	} else if (arch) {
		st = gs_errorf(GS_ERR_FORMAT, "%s: \"architectures\" must be a non-empty list of strings", name);
		goto out_free_json;
	} else if (cJSON_IsString(mt) && strcmp(mt->valuestring, "gemma3") == 0) {
		snprintf(cfg->architecture, sizeof(cfg->architecture), "Gemma3ForConditionalGeneration");
	} else if (cJSON_IsString(mt) && strcmp(mt->valuestring, "gemma3_text") == 0) {
		snprintf(cfg->architecture, sizeof(cfg->architecture), "Gemma3ForCausalLM");
	} else {
		st = gs_errorf(GS_ERR_FORMAT, "%s: neither \"architectures\" nor a gemma3 \"model_type\" is given",
			       name);
		goto out_free_json;
	}

	if (strcmp(cfg->architecture, "Gemma3ForCausalLM") == 0) {
		c.obj = root;
	} else if (strcmp(cfg->architecture, "Gemma3ForConditionalGeneration") == 0) {
		cfg->conditional = true;
		tc = cJSON_GetObjectItemCaseSensitive(root, "text_config");
		if (!cJSON_IsObject(tc)) {
			st = gs_errorf(GS_ERR_FORMAT, "%s: Gemma3ForConditionalGeneration without a text_config object",
				       name);
			goto out_free_json;
		}
		c.obj = tc;
	} else {
		st = gs_errorf(GS_ERR_UNSUPPORTED,
			       "%s: architecture '%s' is not supported (expected Gemma3ForCausalLM or "
			       "Gemma3ForConditionalGeneration)", name, cfg->architecture);
		goto out_free_json;
	}
	st = parse_text(&c, cfg->conditional ? root : NULL, cfg);
	/* a conditional checkpoint without vision_config is text-only (no tower tensors) */
	if (st == GS_OK && cfg->conditional && cJSON_GetObjectItemCaseSensitive(root, "vision_config") &&
	    !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "vision_config")))
		st = parse_vision(name, root, cJSON_GetObjectItemCaseSensitive(root, "vision_config"), cfg);
	if (st != GS_OK)
		gs_config_free(cfg);
out_free_json:
	cJSON_Delete(root);
	return st;
}

enum gs_status gs_config_load(const char *path, struct gs_config *cfg)
{
	char *buf;
	size_t len;
	enum gs_status st;

	GS_TRY(gs_read_file(path, &buf, &len));
	st = gs_config_parse(buf, len, path, cfg);
	free(buf);
	return st;
}

void gs_config_free(struct gs_config *cfg)
{
	free(cfg->is_sliding);
	free(cfg->rope_base);
	free(cfg->rope_scale);
	free(cfg->window);
	cfg->is_sliding = NULL;
	cfg->rope_base = NULL;
	cfg->rope_scale = NULL;
	cfg->window = NULL;
}

int32_t gs_config_n_global(const struct gs_config *cfg)
{
	int32_t n = 0;
	for (int32_t l = 0; l < cfg->n_layers; l++)
		n += !cfg->is_sliding[l];
	return n;
}

bool gs_config_is_eos(const struct gs_config *cfg, int32_t id)
{
	for (int32_t e = 0; e < cfg->n_eos; e++)
		if (cfg->eos_ids[e] == id)
			return true;
	return false;
}
