/* config.json parsing: both layouts, defaults, per-layer expansion, and every rejection. */
#include <stdlib.h>
#include <string.h>

#include "gs_config.h"
#include "gs_test.h"

static enum gs_status parse(const char *json, struct gs_config *c)
{
	return gs_config_parse(json, strlen(json), "config.json", c);
}

/* The error must be rejected with st and a message containing every needle. */
static void expect_error(const char *json, enum gs_status st, const char *needle)
{
	struct gs_config c;
	enum gs_status got = parse(json, &c);
	CHECK_MSG(got == st, "%s: got status %d want %d (%s)", json, got, st, gs_last_error());
	CHECK_MSG(strstr(gs_last_error(), needle) != NULL, "message '%s' lacks '%s'", gs_last_error(), needle);
	CHECK_MSG(strstr(gs_last_error(), "config.json") != NULL, "message '%s' lacks the file name", gs_last_error());
	if (got == GS_OK)
		gs_config_free(&c);
}

static void test_causal_27b_like(void)
{
	struct gs_config c;
	const char *j = "{\"architectures\":[\"Gemma3ForCausalLM\"],\"vocab_size\":262144,\"hidden_size\":5376,"
			"\"intermediate_size\":21504,\"num_hidden_layers\":62,\"num_attention_heads\":32,"
			"\"num_key_value_heads\":16,\"head_dim\":128,\"query_pre_attn_scalar\":168,"
			"\"sliding_window\":1024,\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":8.0},"
			"\"eos_token_id\":[1,106],\"transformers_version\":\"4.50.0\"}";
	CHECK(parse(j, &c) == GS_OK);
	CHECK(!c.conditional);
	CHECK(c.hidden == 5376 && c.n_layers == 62 && c.n_heads == 32 && c.n_kv_heads == 16 && c.head_dim == 128);
	CHECK_NEAR(c.query_pre_attn_scalar, 168, 0);
	CHECK(gs_config_n_global(&c) == 10);
	/* (i+1) % 6 == 0 is global: 5, 11, ..., 59; 60 and 61 are sliding. */
	CHECK(!c.is_sliding[5] && !c.is_sliding[59] && c.is_sliding[60] && c.is_sliding[61] && c.is_sliding[0]);
	CHECK_NEAR(c.rope_base[5], 1e6, 0);
	CHECK_NEAR(c.rope_scale[5], 1.0 / 8.0, 0);
	CHECK_NEAR(c.rope_base[0], 1e4, 0);
	CHECK_NEAR(c.rope_scale[0], 1.0, 0);
	CHECK(c.window[0] == 1024 && c.window[5] == INT32_MAX);
	CHECK(c.n_eos == 2 && gs_config_is_eos(&c, 106) && gs_config_is_eos(&c, 1) && !gs_config_is_eos(&c, 2));
	CHECK_NEAR(c.rms_eps, 1e-6, 0);
	CHECK(c.max_position == 131072);
	gs_config_free(&c);
}

static void test_conditional_defaults(void)
{
	/* The 4B text_config omits heads, head_dim, qpas, max_pos: Gemma3TextConfig defaults apply. */
	struct gs_config c;
	const char *j = "{\"architectures\":[\"Gemma3ForConditionalGeneration\"],\"model_type\":\"gemma3\","
			"\"eos_token_id\":[1,106],\"text_config\":{\"hidden_size\":2560,\"intermediate_size\":10240,"
			"\"model_type\":\"gemma3_text\",\"num_hidden_layers\":34,\"rope_scaling\":{\"factor\":8.0,"
			"\"rope_type\":\"linear\"},\"sliding_window\":1024},\"vision_config\":{\"hidden_size\":1152,"
			"\"image_size\":896,\"intermediate_size\":4304,\"model_type\":\"siglip_vision_model\","
			"\"num_attention_heads\":16,\"num_hidden_layers\":27,\"patch_size\":14,\"vision_use_head\":false}}";
	CHECK(parse(j, &c) == GS_OK);
	CHECK(c.conditional);
	CHECK(c.n_heads == 8 && c.n_kv_heads == 4 && c.head_dim == 256);
	CHECK_NEAR(c.query_pre_attn_scalar, 256, 0);
	CHECK(c.vocab_size == 262208 && c.max_position == 131072);
	CHECK(gs_config_n_global(&c) == 5);
	CHECK(c.n_eos == 2);
	/* MedGemma 4B's vision_config: the SigLIP defaults fill layer_norm_eps, Gemma3Config the ids */
	CHECK(c.vision.present);
	CHECK(c.vision.hidden == 1152 && c.vision.intermediate == 4304 && c.vision.n_layers == 27);
	CHECK(c.vision.n_heads == 16 && c.vision.image_size == 896 && c.vision.patch_size == 14);
	CHECK_NEAR(c.vision.ln_eps, 1e-6, 0);
	CHECK(c.vision.mm_tokens_per_image == 256 && c.vision.boi_id == 255999 && c.vision.eoi_id == 256000);
	CHECK(c.vision.image_token_id == 262144);
	gs_config_free(&c);
}

#define VIS_HEAD "{\"architectures\":[\"Gemma3ForConditionalGeneration\"],\"text_config\":{\"hidden_size\":64," \
		 "\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":2,\"num_key_value_heads\":1," \
		 "\"head_dim\":16}"

static void test_vision(void)
{
	struct gs_config c;

	/* a tiny tower, explicit ids (image_token_id spelling of newer exports) */
	CHECK(parse(VIS_HEAD ",\"vision_config\":{\"hidden_size\":32,\"intermediate_size\":48,\"num_hidden_layers\":2,"
		    "\"num_attention_heads\":4,\"image_size\":56,\"patch_size\":14,\"layer_norm_eps\":1e-5},"
		    "\"mm_tokens_per_image\":4,\"boi_token_index\":7,\"eoi_token_index\":8,\"image_token_id\":9}", &c) == GS_OK);
	CHECK(c.vision.present && c.vision.hidden == 32 && c.vision.intermediate == 48 && c.vision.n_layers == 2);
	CHECK(c.vision.n_heads == 4 && c.vision.image_size == 56 && c.vision.patch_size == 14);
	CHECK_NEAR(c.vision.ln_eps, 1e-5, 0);
	CHECK(c.vision.mm_tokens_per_image == 4 && c.vision.boi_id == 7 && c.vision.eoi_id == 8);
	CHECK(c.vision.image_token_id == 9);
	gs_config_free(&c);
	/* image_token_index wins when both are given */
	CHECK(parse(VIS_HEAD ",\"vision_config\":{\"hidden_size\":32,\"num_attention_heads\":4,\"image_size\":56,"
		    "\"patch_size\":14},\"mm_tokens_per_image\":16,\"image_token_index\":11,\"image_token_id\":12}", &c) == GS_OK);
	CHECK(c.vision.image_token_id == 11 && c.vision.mm_tokens_per_image == 16);
	gs_config_free(&c);
	/* text-only: no vision_config at all, or a causal model */
	CHECK(parse(VIS_HEAD "}", &c) == GS_OK);
	CHECK(c.conditional && !c.vision.present);
	gs_config_free(&c);
	CHECK(parse("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
		    "\"num_hidden_layers\":2}", &c) == GS_OK);
	CHECK(!c.vision.present);
	gs_config_free(&c);

	/* refusals */
	expect_error(VIS_HEAD ",\"vision_config\":{\"hidden_size\":30,\"num_attention_heads\":4,\"image_size\":56,"
		     "\"patch_size\":14},\"mm_tokens_per_image\":4}", GS_ERR_FORMAT, "not divisible by num_attention_heads");
	expect_error(VIS_HEAD ",\"vision_config\":{\"hidden_size\":32,\"num_attention_heads\":4,\"image_size\":50,"
		     "\"patch_size\":14},\"mm_tokens_per_image\":4}", GS_ERR_FORMAT, "image_size 50 is not divisible");
	expect_error(VIS_HEAD ",\"vision_config\":{\"hidden_size\":32,\"num_attention_heads\":4,\"image_size\":56,"
		     "\"patch_size\":14},\"mm_tokens_per_image\":9}", GS_ERR_FORMAT, "does not divide the 4 x 4 patch grid");
	expect_error(VIS_HEAD ",\"vision_config\":{\"hidden_size\":32,\"num_attention_heads\":4,\"image_size\":56,"
		     "\"patch_size\":14},\"mm_tokens_per_image\":5}", GS_ERR_FORMAT, "not a square");
	expect_error(VIS_HEAD ",\"vision_config\":{\"hidden_size\":32,\"num_attention_heads\":4,\"image_size\":56,"
		     "\"patch_size\":14,\"vision_use_head\":true},\"mm_tokens_per_image\":4}", GS_ERR_UNSUPPORTED,
		     "vision_use_head");
	expect_error(VIS_HEAD ",\"vision_config\":{\"hidden_size\":0,\"num_attention_heads\":4}}", GS_ERR_FORMAT,
		     "vision_config: field \"hidden_size\"");
	expect_error(VIS_HEAD ",\"vision_config\":{\"hidden_size\":32,\"num_attention_heads\":4,\"image_size\":56,"
		     "\"patch_size\":-14}}", GS_ERR_FORMAT, "patch_size");
	expect_error(VIS_HEAD ",\"vision_config\":{\"hidden_size\":32,\"num_attention_heads\":4,\"image_size\":56,"
		     "\"patch_size\":14},\"mm_tokens_per_image\":0}", GS_ERR_FORMAT, "mm_tokens_per_image");
	expect_error(VIS_HEAD ",\"vision_config\":{\"hidden_size\":32,\"num_attention_heads\":4,\"image_size\":56,"
		     "\"patch_size\":14,\"num_channels\":1},\"mm_tokens_per_image\":4}", GS_ERR_UNSUPPORTED, "num_channels");
	expect_error(VIS_HEAD ",\"vision_config\":{\"hidden_size\":32,\"num_attention_heads\":4,\"image_size\":56,"
		     "\"patch_size\":14,\"hidden_act\":\"relu\"},\"mm_tokens_per_image\":4}", GS_ERR_UNSUPPORTED, "hidden_act");
	expect_error(VIS_HEAD ",\"vision_config\":[1]}", GS_ERR_FORMAT, "vision_config must be an object");
	/* the real ids need a vocabulary that holds them (text_config vocab_size 1000 here) */
	expect_error("{\"architectures\":[\"Gemma3ForConditionalGeneration\"],\"text_config\":{\"hidden_size\":64,"
		     "\"intermediate_size\":128,\"num_hidden_layers\":2,\"vocab_size\":1000},\"vision_config\":{"
		     "\"hidden_size\":32,\"num_attention_heads\":4,\"image_size\":56,\"patch_size\":14},"
		     "\"mm_tokens_per_image\":4}", GS_ERR_FORMAT, "must be below vocab_size 1000");
	expect_error(VIS_HEAD ",\"vision_config\":{\"hidden_size\":32,\"num_attention_heads\":4,\"image_size\":56,"
		     "\"patch_size\":14,\"layer_norm_eps\":0},\"mm_tokens_per_image\":4}", GS_ERR_FORMAT, "layer_norm_eps");
}

static void test_layer_types_and_rope_parameters(void)
{
	struct gs_config c;
	const char *j = "{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
			"\"num_hidden_layers\":3,\"num_attention_heads\":2,\"num_key_value_heads\":1,\"head_dim\":16,"
			"\"layer_types\":[\"full_attention\",\"sliding_attention\",\"full_attention\"],"
			"\"sliding_window\":8,\"rope_parameters\":{\"sliding_attention\":{\"rope_type\":\"default\","
			"\"rope_theta\":5000},\"full_attention\":{\"rope_type\":\"linear\",\"factor\":4,"
			"\"rope_theta\":200000}}}";
	CHECK(parse(j, &c) == GS_OK);
	CHECK(!c.is_sliding[0] && c.is_sliding[1] && !c.is_sliding[2]);
	CHECK_NEAR(c.rope_base[1], 5000, 0);
	CHECK_NEAR(c.rope_base[0], 200000, 0);
	CHECK_NEAR(c.rope_scale[0], 0.25, 0);
	CHECK_NEAR(c.rope_scale[1], 1.0, 0);
	CHECK(c.window[1] == 8);
	gs_config_free(&c);
}

static void test_rejections(void)
{
	expect_error("{\"architectures\":[\"Gemma3ForCausalLM\"],\"intermediate_size\":128,"
		     "\"num_hidden_layers\":2}", GS_ERR_FORMAT, "hidden_size");
	expect_error("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":\"64\","
		     "\"intermediate_size\":128,\"num_hidden_layers\":2}", GS_ERR_FORMAT, "hidden_size");
	expect_error("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64}", GS_ERR_UNSUPPORTED,
		     "LlamaForCausalLM");
	/* found by tests/fuzz/fuzz_config: an id outside int32_t was converted anyway (undefined),
	 * and a huge layer count allocated gigabytes of per-layer arrays */
	expect_error("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
		     "\"num_hidden_layers\":2,\"eos_token_id\":[1,1021474836486]}", GS_ERR_FORMAT, "eos_token_id");
	expect_error("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
		     "\"num_hidden_layers\":2,\"eos_token_id\":1.5}", GS_ERR_FORMAT, "eos_token_id");
	expect_error("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
		     "\"num_hidden_layers\":333333316}", GS_ERR_FORMAT, "num_hidden_layers");
	expect_error("{\"hidden_size\":64,", GS_ERR_FORMAT, "not valid JSON");
	expect_error("[1,2]", GS_ERR_FORMAT, "object");
	expect_error("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
		     "\"num_hidden_layers\":2,\"num_attention_heads\":3,\"num_key_value_heads\":2}", GS_ERR_FORMAT,
		     "not a multiple");
	expect_error("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
		     "\"num_hidden_layers\":2,\"layer_types\":[\"full_attention\"]}", GS_ERR_FORMAT, "layer_types");
	expect_error("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
		     "\"num_hidden_layers\":2,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":2}}",
		     GS_ERR_UNSUPPORTED, "yarn");
	expect_error("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
		     "\"num_hidden_layers\":2,\"hidden_activation\":\"silu\"}", GS_ERR_UNSUPPORTED, "silu");
	expect_error("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
		     "\"num_hidden_layers\":-2}", GS_ERR_FORMAT, "num_hidden_layers");
	expect_error("{\"architectures\":[\"Gemma3ForConditionalGeneration\"],\"hidden_size\":64}", GS_ERR_FORMAT,
		     "text_config");
	expect_error("{\"architectures\":[\"Gemma3ForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
		     "\"num_hidden_layers\":2,\"head_dim\":15,\"num_attention_heads\":1,\"num_key_value_heads\":1}",
		     GS_ERR_FORMAT, "head_dim");
}

int main(int argc, char **argv)
{
	struct gs_config c;
	char path[1024];

	test_causal_27b_like();
	test_conditional_defaults();
	test_layer_types_and_rope_parameters();
	test_rejections();
	test_vision();
	/* A file that does not exist names the path. */
	snprintf(path, sizeof(path), "%s/does-not-exist/config.json", argc > 2 ? argv[2] : "/nonexistent");
	CHECK(gs_config_load(path, &c) == GS_ERR_IO);
	CHECK(strstr(gs_last_error(), "does-not-exist/config.json") != NULL);
	TEST_DONE();
}
