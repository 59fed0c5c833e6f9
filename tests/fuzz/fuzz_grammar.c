/* libFuzzer target: the structured-output compilers (gs_grammar_compile). An input starting
 * with '{' is a response_format object (json_schema, json_object, choice, regex); any other
 * input is a regular expression, compiled as {"type":"regex","regex": input}. A compiled
 * grammar is run over the input's own bytes; for a regex every state reached must still lead to
 * a whole match (live or accepting), since the engine relies on that to never dead-end. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "gs_grammar.h"
#include "gs_status.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char why[512];
	struct gs_grammar *g = NULL;
	char *rf = NULL;
	bool is_regex = size == 0 || data[0] != '{';

	gs_clear_error();
	if (is_regex) {
		char *pat = malloc(size + 1);
		if (!pat)
			return 0;
		memcpy(pat, data, size);
		pat[size] = '\0';
		cJSON *o = cJSON_CreateObject();
		if (o && cJSON_AddStringToObject(o, "type", "regex") && cJSON_AddStringToObject(o, "regex", pat))
			rf = cJSON_PrintUnformatted(o);
		cJSON_Delete(o);
		free(pat);
		if (!rf)
			return 0;
	}
	const char *text = rf ? rf : (const char *)data;
	size_t n = rf ? strlen(rf) : size;
	enum gs_status st = gs_grammar_compile(text, n, why, sizeof why, &g);
	if (st == GS_OK && g) {
		struct gs_gstate s;
		gs_gstate_init(g, &s);
		for (size_t i = 0; i < size; i++) {
			if (is_regex)
				gs_fuzz_require(gs_gstate_live(g, &s) || gs_gstate_accepting(g, &s),
						"a regex state that can reach no match");
			struct gs_gstate c = s;
			if (!gs_gstate_step(g, &c, data[i]))
				break;
			s = c;
		}
		gs_grammar_free(g);
	} else if (st == GS_ERR_INVALID_ARG) {
		gs_fuzz_require(why[0] != '\0', "a response_format refused without a message");
	}
	cJSON_free(rf);
	return 0;
}
