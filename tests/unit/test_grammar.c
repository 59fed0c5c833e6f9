/* Structured output grammar (core/grammar.c, core/grammar_mask.c): hand-written accept and
 * reject strings, refusals by keyword, the trie mask against per-token walks, and random
 * token walks over the real vocabulary whose documents are checked by a JSON Schema
 * validator written here (cJSON parses; the validator is independent of the automaton).
 * argv[1]: tokenizer.json (the mask and walk parts say Skipped without it). */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gs_grammar.h"
#include "gs_test.h"
#include "grammar_cases.h"

static struct gs_grammar *schema(const char *s)
{
	char rf[8192], why[512];
	snprintf(rf, sizeof rf, "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"t\",\"strict\":true,\"schema\":%s}}", s);
	struct gs_grammar *g = NULL;
	enum gs_status st = gs_grammar_compile(rf, strlen(rf), why, sizeof why, &g);
	CHECK_MSG(st == GS_OK && g, "%s: %s", s, why);
	return g;
}

static void acc(const struct gs_grammar *g, const char *t, bool want)
{
	CHECK_MSG(gs_grammar_accepts(g, t, strlen(t)) == want, "%s should be %s", t, want ? "accepted" : "rejected");
}

static void refused(const char *s, const char *needle)
{
	char rf[4096], why[512];
	snprintf(rf, sizeof rf, "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"t\",\"schema\":%s}}", s);
	struct gs_grammar *g = NULL;
	enum gs_status st = gs_grammar_compile(rf, strlen(rf), why, sizeof why, &g);
	CHECK_MSG(st == GS_ERR_INVALID_ARG && !g && strstr(why, needle), "%s: got '%s', want '%s'", s, why, needle);
	gs_grammar_free(g);
}

static void test_accept_reject(void)
{
	struct gs_grammar *g;

	/* json_object: any object, compact */
	const char *jo = "{\"type\":\"json_object\"}";
	char why[512];
	CHECK(gs_grammar_compile(jo, strlen(jo), why, sizeof why, &g) == GS_OK && g);
	acc(g, "{}", true);
	acc(g, "{\"a\":[1,-2.5e+3,true,null,{\"b\":\"\\u00e9\\n\"}]}", true);
	acc(g, "[]", false);
	acc(g, "{", false);
	acc(g, "{\"a\":01}", false);
	acc(g, "{\"a\":1.}", false);
	acc(g, "{\"a\":tru}", false);
	acc(g, "{\"a\" :1}", false); /* compact only */
	acc(g, "{\"a\":\"\x01\"}", false);
	acc(g, "{\"a\":\"\\ud800\"}", false); /* no surrogate escapes */
	acc(g, "{\"a\":\"\xC3\xA9\"}", true);
	acc(g, "{\"a\":\"\xC3\"}", false);
	acc(g, "{\"a\":\"\xED\xA0\x80\"}", false); /* UTF-8 surrogate */
	acc(g, "{\"a\":\"\\x\"}", false);
	acc(g, "{}x", false);
	gs_grammar_free(g);

	g = schema(SCHEMAS[0]);
	acc(g, "{\"name\":\"Ann\",\"age\":41}", true);
	acc(g, "{\"age\":41,\"name\":\"Ann\"}", false);           /* schema order */
	acc(g, "{\"name\":\"Ann\"}", false);                      /* required */
	acc(g, "{\"name\":\"Ann\",\"age\":121}", false);          /* maximum */
	acc(g, "{\"name\":\"Ann\",\"age\":-1}", false);           /* minimum */
	acc(g, "{\"name\":\"Ann\",\"age\":120}", true);
	acc(g, "{\"name\":\"Ann\",\"age\":0}", true);
	acc(g, "{\"name\":\"Ann\",\"age\":00}", false);
	acc(g, "{\"name\":\"abcdefghijklm\",\"age\":1}", false);  /* maxLength 12 */
	acc(g, "{\"name\":\"abcdefghijkl\",\"age\":1}", true);
	acc(g, "{\"name\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\",\"age\":1}", true); /* escapes count 1 each */
	acc(g, "{\"name\":\"x\",\"age\":1,\"z\":1}", false);      /* no extra properties */
	gs_grammar_free(g);

	g = schema(SCHEMAS[16]); /* three optional */
	acc(g, "{}", true);
	acc(g, "{\"opt2\":true}", true);
	acc(g, "{\"opt1\":5,\"opt3\":null}", true);
	acc(g, "{\"opt3\":null,\"opt1\":5}", false);
	acc(g, "{\"opt1\":5,}", false);
	gs_grammar_free(g);

	g = schema(SCHEMAS[14]); /* enum with a prefix pair 1 / 12 at the root */
	acc(g, "1", true);
	acc(g, "12", true);
	acc(g, "2", true);
	acc(g, "13", false);
	acc(g, "\"x\"", true);
	acc(g, "null", true);
	acc(g, "true", true);
	acc(g, "false", false);
	gs_grammar_free(g);

	g = schema(SCHEMAS[13]); /* integer 100..250 at the root */
	acc(g, "100", true);
	acc(g, "250", true);
	acc(g, "251", false);
	acc(g, "99", false);
	acc(g, "1000", false);
	CHECK(gs_grammar_prefix_ok(g, "2", 1));
	CHECK(!gs_grammar_prefix_ok(g, "3", 1)); /* 3, 3x, 3xx: all beyond 250 */
	gs_grammar_free(g);

	g = schema(SCHEMAS[6]); /* array 1..3 of integers */
	acc(g, "{\"a\":[1]}", true);
	acc(g, "{\"a\":[]}", false);
	acc(g, "{\"a\":[1,2,3]}", true);
	acc(g, "{\"a\":[1,2,3,4]}", false);
	acc(g, "{\"a\":[1.5]}", false);
	gs_grammar_free(g);

	g = schema(SCHEMAS[9]); /* anyOf */
	acc(g, "{\"u\":\"abc\"}", true);
	acc(g, "{\"u\":\"abcd\"}", false);
	acc(g, "{\"u\":null}", true);
	acc(g, "{\"u\":9}", true);
	acc(g, "{\"u\":10}", false);
	acc(g, "{\"u\":true}", false);
	gs_grammar_free(g);

	g = schema(SCHEMAS[17]); /* exclusive bounds */
	acc(g, "{\"n\":0}", false);
	acc(g, "{\"n\":1}", true);
	acc(g, "{\"n\":2}", true);
	acc(g, "{\"n\":3}", false);
	gs_grammar_free(g);

	g = schema(SCHEMAS[29]); /* keys that need escapes */
	acc(g, "{\"k\\\"q\":true,\"\xC3\xA9t\xC3\xA9\":false}", true);
	gs_grammar_free(g);

	g = schema(SCHEMAS[12]); /* string 2..6 at the root */
	acc(g, "\"ab\"", true);
	acc(g, "\"a\"", false);
	acc(g, "\"\xE2\x82\xAC\xE2\x82\xAC\"", true); /* two code points */
	acc(g, "\"abcdefg\"", false);
	gs_grammar_free(g);

	/* recursion through $ref: at the depth limit a key whose value has no room is refused,
	 * and the document can still be closed (never a dead end) */
	g = schema("{\"$defs\":{\"n\":{\"type\":\"object\",\"properties\":{\"k\":{\"$ref\":\"#/$defs/n\"}}}},"
		   "\"$ref\":\"#/$defs/n\"}");
	{
		char doc[512];
		size_t n = 0;
		for (int i = 0; i < GS_GRAMMAR_MAX_DEPTH - 1; i++)
			n += (size_t)snprintf(doc + n, sizeof doc - n, "{\"k\":");
		n += (size_t)snprintf(doc + n, sizeof doc - n, "{");
		struct gs_gstate st;
		gs_gstate_init(g, &st);
		CHECK(gs_gstate_step_bytes(g, &st, (const uint8_t *)doc, n) && st.depth == GS_GRAMMAR_MAX_DEPTH);
		struct gs_gstate c2 = st;
		CHECK(!gs_gstate_step_bytes(g, &c2, (const uint8_t *)"\"k\"", 3)); /* no room for its value */
		CHECK(gs_gstate_live(g, &st) && !gs_gstate_accepting(g, &st));
		for (int i = 0; i < GS_GRAMMAR_MAX_DEPTH; i++)
			doc[n++] = '}';
		doc[n] = '\0';
		acc(g, doc, true);
		acc(g, "{\"k\":{\"k\":{}}}", true);
		acc(g, "{\"k\":{\"j\":{}}}", false);
	}
	gs_grammar_free(g);

	/* choice */
	const char *ch = "{\"type\":\"choice\",\"choice\":[\"yes\",\"no\",\"not sure\"]}";
	CHECK(gs_grammar_compile(ch, strlen(ch), why, sizeof why, &g) == GS_OK && g);
	acc(g, "yes", true);
	acc(g, "not sure", true);
	acc(g, "not", false);
	acc(g, "\"yes\"", false);
	gs_grammar_free(g);

	/* text: no grammar */
	const char *tx = "{\"type\":\"text\"}";
	g = (struct gs_grammar *)1;
	CHECK(gs_grammar_compile(tx, strlen(tx), why, sizeof why, &g) == GS_OK && g == NULL);
}

static void test_refusals(void)
{
	refused("{\"type\":\"string\",\"pattern\":\"^a\"}", "unsupported keyword 'pattern' at /");
	refused("{\"type\":\"string\",\"format\":\"date\"}", "unsupported keyword 'format'");
	refused("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"number\",\"minimum\":1}}}",
		"keyword 'minimum' at /properties/a does not apply to type 'number'");
	refused("{\"allOf\":[{\"type\":\"string\"}]}", "unsupported keyword 'allOf'");
	refused("{\"type\":\"object\",\"patternProperties\":{}}", "unsupported keyword 'patternProperties'");
	refused("{\"type\":\"array\",\"prefixItems\":[]}", "unsupported keyword 'prefixItems'");
	refused("{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"number\"}]}", "two alternatives can both start with");
	refused("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"}},\"required\":[\"b\"]}",
		"names b, which is not in 'properties'");
	refused("{\"type\":\"string\",\"minLength\":5,\"maxLength\":2}", "minLength > maxLength");
	refused("{\"type\":\"integer\",\"minimum\":5,\"maximum\":2}", "no integer within the bounds");
	refused("{\"$ref\":\"#/$defs/nope\"}", "#/$defs/nope not found");
	refused("{\"$ref\":\"http://x\"}", "must be \"#/$defs/NAME\"");
	refused("{\"type\":\"date\"}", "unsupported type 'date'");
	refused("{\"enum\":[1],\"minLength\":1}", "cannot be combined with enum/const");
	refused("{\"type\":\"string\",\"enum\":[1,2]}", "no value of 'enum'");
	refused("{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/a\"}},\"$ref\":\"#/$defs/a\"}", "refers to itself");

	char why[512];
	struct gs_grammar *g = NULL;
	const char *bad[][2] = {
		{ "{\"type\":\"grammar\",\"grammar\":\"x\"}", "response_format.grammar is not supported" },
		{ "{\"type\":\"regex\"}", "response_format.regex must be a string" },
		{ "{\"type\":\"xml\"}", "response_format.type must be text, json_object, json_schema, choice or regex" },
		{ "{\"type\":\"json_schema\"}", "response_format.json_schema must be an object" },
		{ "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"schema\":{},\"extra\":1}}",
		  "response_format.json_schema.extra is not supported" },
		{ "{\"type\":\"json_object\",\"schema\":{}}", "response_format.schema is not supported" },
		{ "[1]", "response_format must be an object, got array" },
		{ "{\"type\":", "not valid JSON" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		enum gs_status st = gs_grammar_compile(bad[i][0], strlen(bad[i][0]), why, sizeof why, &g);
		CHECK_MSG(st == GS_ERR_INVALID_ARG && !g && strstr(why, bad[i][1]), "%s: '%s'", bad[i][0], why);
	}
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Random walks through the mask over the whole vocabulary: every allowed token keeps the text
 * a valid prefix; eos (an accepting state) or 48 tokens ends; a finished text must parse and
 * validate; a cut one must be a valid prefix. */
static void test_walks(const char *tok_path)
{
	struct gs_tokenizer *t = NULL;
	if (!tok_path || gs_tokenizer_load(tok_path, &t) != GS_OK) {
		fprintf(stderr, "Skipped: mask and walk tests (no tokenizer at %s)\n", tok_path ? tok_path : "(none)");
		return;
	}
	int32_t nv = gs_tokenizer_n_vocab(t);
	struct gs_vocab_trie *v = NULL;
	double t0 = now_s();
	CHECK(gs_vocab_trie_build(t, 0, nv, &v) == GS_OK);
	double t_trie = now_s() - t0;
	uint8_t *allow = malloc((size_t)nv);
	int32_t *ids = malloc((size_t)nv * sizeof *ids);
	uint64_t rng = 16;
	double t_compile = 0, t_mask = 0;
	int n_mask = 0, n_done = 0, n_cut = 0, n_brute = 0, n_brute_masks = 0;
	for (size_t si = 0; si < N_SCHEMAS; si++) {
		char rf[4096], why[512];
		snprintf(rf, sizeof rf, "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"w\",\"schema\":%s}}", SCHEMAS[si]);
		struct gs_grammar *g = NULL;
		t0 = now_s();
		enum gs_status st = gs_grammar_compile(rf, strlen(rf), why, sizeof why, &g);
		t_compile += now_s() - t0;
		CHECK_MSG(st == GS_OK, "schema %zu: %s", si, why);
		if (st != GS_OK)
			continue;
		cJSON *sch = cJSON_Parse(SCHEMAS[si]);
		for (int seed = 0; seed < 5; seed++) {
			struct gs_gstate s;
			gs_gstate_init(g, &s);
			char text[8192];
			size_t len = 0;
			bool finished = false;
			for (int step = 0; step < 48; step++) {
				t0 = now_s();
				size_t n = gs_grammar_mask(v, g, &s, allow);
				t_mask += now_s() - t0;
				n_mask++;
				bool acc_now = gs_gstate_accepting(g, &s);
				CHECK_MSG(n > 0 || acc_now, "schema %zu: dead state after '%.*s'", si, (int)len, text);
				uint64_t room;
				if ((si < 3 && seed == 0 && step < 3) || (si == 0 && seed < 2 && gs_gstate_in_string_body(g, &s, &room))) {
					/* the trie (and the plain-text path inside strings) against one walk per id */
					n_brute_masks++;
					for (int32_t id = 0; id < nv; id++) {
						size_t bl;
						const uint8_t *b = gs_vocab_trie_bytes(v, id, &bl);
						struct gs_gstate c = s;
						bool ok = b && gs_gstate_step_bytes(g, &c, b, bl);
						if (ok != (allow[id] != 0)) {
							n_brute++;
							break;
						}
					}
				}
				/* eos: with probability 1/3 when accepting, always when nothing else */
				if (acc_now && (n == 0 || gs_test_splitmix(&rng) % 3 == 0)) {
					finished = true;
					break;
				}
				size_t k = 0;
				for (int32_t id = 0; id < nv; id++)
					if (allow[id])
						ids[k++] = id;
				/* prefer short tokens half the time so structure gets closed */
				int32_t pick = ids[gs_test_splitmix(&rng) % k];
				if (gs_test_splitmix(&rng) & 1) {
					for (int tries = 0; tries < 8; tries++) {
						int32_t c2 = ids[gs_test_splitmix(&rng) % k];
						size_t l1, l2;
						gs_vocab_trie_bytes(v, pick, &l1);
						gs_vocab_trie_bytes(v, c2, &l2);
						if (l2 < l1)
							pick = c2;
					}
				}
				size_t bl;
				const uint8_t *b = gs_vocab_trie_bytes(v, pick, &bl);
				CHECK(gs_gstate_step_bytes(g, &s, b, bl));
				if (len + bl < sizeof text - 1) {
					memcpy(text + len, b, bl);
					len += bl;
				}
			}
			text[len] = '\0';
			if (finished) {
				n_done++;
				cJSON *doc = cJSON_ParseWithLength(text, len);
				CHECK_MSG(doc != NULL, "schema %zu seed %d: not JSON: %s", si, seed, text);
				if (doc)
					CHECK_MSG(valid(sch, sch, doc), "schema %zu seed %d: invalid: %s", si, seed, text);
				cJSON_Delete(doc);
			} else {
				n_cut++;
				CHECK_MSG(gs_grammar_prefix_ok(g, text, len), "schema %zu: cut text not a prefix", si);
			}
		}
		cJSON_Delete(sch);
		gs_grammar_free(g);
	}
	CHECK_MSG(n_brute == 0, "trie mask differs from per-token walks in %d masks", n_brute);
	CHECK(n_brute_masks >= 10);
	fprintf(stderr, "grammar: %d masks checked against per-token walks\n", n_brute_masks);
	CHECK(n_done >= (int)N_SCHEMAS); /* most walks finish: the check above really ran */
	fprintf(stderr, "grammar: %zu schemas x 5 walks: %d finished and valid, %d cut at 48 tokens\n", N_SCHEMAS,
		n_done, n_cut);
	fprintf(stderr, "grammar: trie build %.1f ms for %d ids; compile %.3f ms per schema; mask %.3f ms per token "
		"(full vocabulary, one rank)\n", t_trie * 1e3, nv, t_compile * 1e3 / N_SCHEMAS, t_mask * 1e3 / n_mask);
	free(ids);
	free(allow);
	gs_vocab_trie_free(v);
	gs_tokenizer_free(t);
}

int main(int argc, char **argv)
{
	test_accept_reject();
	test_refusals();
	test_walks(argc > 1 ? argv[1] : NULL);
	TEST_DONE();
}
