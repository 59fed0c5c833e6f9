/* The coordinator fixture of the fuzz targets that need one (fuzz_util.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_util.h"
#include "gs_coord.h"
#include "gs_status.h"

#ifndef GS_FUZZ_TOKENIZER
#define GS_FUZZ_TOKENIZER ""
#endif

static const char config_json[] =
	"{\"architectures\": [\"Gemma3ForCausalLM\"], \"model_type\": \"gemma3_text\", \"hidden_size\": 16, "
	"\"intermediate_size\": 32, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
	"\"num_key_value_heads\": 1, \"head_dim\": 8, \"vocab_size\": 262208, \"max_position_embeddings\": 128, "
	"\"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"rope_local_base_freq\": 10000.0, "
	"\"query_pre_attn_scalar\": 8, \"sliding_window\": 4, \"sliding_window_pattern\": 2, "
	"\"hidden_activation\": \"gelu_pytorch_tanh\", \"bos_token_id\": 2, \"eos_token_id\": [1, 106], "
	"\"pad_token_id\": 0, \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\"}";

struct gs_coord *gs_fuzz_coord(void)
{
	static struct gs_coord *c;
	const char *tok = getenv("GS_FUZZ_TOKENIZER");
	char dir[600], path[700];

	if (c)
		return c;
	if (!tok || !tok[0])
		tok = GS_FUZZ_TOKENIZER;
	snprintf(dir, sizeof(dir), "%s/model", gs_fuzz_scratch());
	mkdir(dir, 0700);
	gs_fuzz_write("model/config.json", (const uint8_t *)config_json, strlen(config_json));
	snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
	char *abs = realpath(tok, NULL); /* the link must not depend on the working directory */
	if (!abs || symlink(abs, path) != 0) {
		fprintf(stderr, "fuzz: tokenizer.json %s: ", tok);
		perror(abs ? "symlink" : "realpath");
		abort();
	}
	free(abs);
	struct gs_coord_config cfg = {
		.model_dir = dir, .served_name = "tiny", .engine_listen = "127.0.0.1:0",
		.limits = { .max_body_bytes = 1 << 20, .max_prompt_tokens = 8192, .max_tokens_limit = 8192,
			    .default_max_tokens = 256, .max_concurrent = 64, .heartbeat_timeout_s = 5,
			    .default_timeout_s = 60, .http_idle_timeout_s = 5, .max_http_connections = 64,
			    .max_http_header_bytes = 16384, .max_grpc_streams = 64 },
	};
	if (gs_coord_create(&cfg, &c) != GS_OK) {
		fprintf(stderr, "fuzz: the coordinator does not start (tokenizer %s): %s\n", tok, gs_last_error());
		abort();
	}
	return c;
}
