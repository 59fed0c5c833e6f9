/* libFuzzer target: an OpenAI request body as the HTTP server turns it into a request
 * (gs_http_parse_body: UTF-8, JSON, the fields), then the coordinator's checks, chat template
 * and tokenizer (gs_coord_submit, no engine connected: a request that passes every check is
 * refused only with UNAVAILABLE). The first byte picks the route: 'c' POST
 * /v1/chat/completions, anything else POST /v1/completions; the body is the rest. */
#include <stdint.h>
#include <string.h>

#include "fuzz_util.h"
#include "gs_coord.h"
#include "http_internal.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	gs_fuzz_coord();
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct gs_coord *c = gs_fuzz_coord();
	struct gs_http_gen g;
	struct gs_creq *r = NULL;
	char why[600];
	cJSON *root;

	if (size < 1)
		return 0;
	memset(&g, 0, sizeof(g));
	g.chat = data[0] == 'c';
	if (gs_http_parse_body(&g, (const char *)data + 1, size - 1, &root)) {
		/* a list of prompts is submitted prompt by prompt, as the server does */
		for (int i = 0; i < (g.n_prompts > 1 ? g.n_prompts : 1); i++) {
			if (g.n_prompts > 1)
				gs_http_use_prompt(&g, i);
			enum gs_cerr e = gs_coord_submit(c, GS_API_HTTP, &g.spec, NULL, NULL, &r, why, sizeof(why));
			gs_fuzz_require(e != GS_CERR_NONE && !r, "a request was submitted with no engine connected");
			gs_fuzz_require(why[0] != '\0', "gs_coord_submit refused without a message");
			if (e != GS_CERR_UNAVAILABLE) /* refused: the server answers this prompt's error */
				break;
		}
	} else {
		gs_fuzz_require(g.err != GS_CERR_NONE && g.why[0] != '\0', "a body refused without a message");
		gs_fuzz_require(g.err == GS_CERR_INVALID || g.err == GS_CERR_INTERNAL, "a body refused with an odd class");
	}
	gs_http_gen_free(&g);
	cJSON_Delete(root);
	return 0;
}
