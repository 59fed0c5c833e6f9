/* Batch mode I/O: request parsing, resumable output, progress lines.
 * argv[2] = scratch directory. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "gs_batchio.h"
#include "gs_test.h"

static char g_dir[512];

static void path_in(char *buf, size_t cap, const char *name)
{
	snprintf(buf, cap, "%s/%s", g_dir, name);
}

static void write_file(const char *path, const char *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	CHECK(f != NULL);
	if (!f)
		return;
	CHECK(fwrite(data, 1, len, f) == len);
	fclose(f);
}

static void append_file(const char *path, const char *data)
{
	FILE *f = fopen(path, "ab");
	CHECK(f != NULL);
	if (!f)
		return;
	fputs(data, f);
	fclose(f);
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *p = NULL;
	long n;

	*len = 0;
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	p = malloc((size_t)n + 1);
	if (p && fread(p, 1, (size_t)n, f) == (size_t)n) {
		p[n] = '\0';
		*len = (size_t)n;
	}
	fclose(f);
	return p;
}

static long file_size(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

/* Parse one line as request; the caller clears it. */
static struct gs_batch_req parse(const char *line)
{
	struct gs_batch_req r;
	CHECK(gs_batch_parse_line(line, strlen(line), 7, &r) == GS_OK);
	return r;
}

/* The line must be rejected with a message containing want, id as given. */
static void expect_error(const char *line, const char *want, const char *want_id)
{
	struct gs_batch_req r = parse(line);

	CHECK_MSG(r.error != NULL, "accepted: %s", line);
	if (r.error) {
		CHECK_MSG(strstr(r.error, want) != NULL, "line %s\n  error \"%s\"\n  lacks \"%s\"", line,
			  r.error, want);
		CHECK_MSG(strncmp(r.error, "line 7: ", 8) == 0, "no line prefix: %s", r.error);
	}
	CHECK(r.text == NULL && r.n_stop == 0);
	CHECK_STREQ(r.id ? r.id : "(null)", want_id);
	gs_batch_req_clear(&r);
}

static void test_parse_good(void)
{
	struct gs_batch_req r;

	/* defaults */
	r = parse("{\"id\": \"q1\", \"prompt\": \"Hello\"}");
	CHECK(r.error == NULL);
	CHECK_STREQ(r.id, "q1");
	CHECK_STREQ(r.text, "Hello");
	CHECK(!r.chat);
	CHECK(r.max_tokens == 256);
	CHECK(r.sp.temperature == 1.0f && r.sp.top_k == 0 && r.sp.top_p == 1.0f && r.sp.min_p == 0.0f &&
	      r.sp.repetition_penalty == 1.0f);
	CHECK(r.sp.seed == gs_batch_seed_from_id("q1"));
	CHECK(r.n_stop == 0 && !r.logprobs && r.top_logprobs == 0);
	CHECK(r.line_no == 7);
	gs_batch_req_clear(&r);

	/* the OpenAI fields of issue 16 */
	r = parse("{\"id\": \"o\", \"prompt\": \"p\", \"presence_penalty\": 0.5, \"frequency_penalty\": -1,"
		  "\"logit_bias\": {\"17\": 100, \"3\": -2.5}, \"min_tokens\": 4, \"ignore_eos\": true,"
		  "\"stop_token_ids\": [9, 11], \"max_completion_tokens\": 33, \"user\": \"u\", \"n\": 1, \"tools\": null}");
	CHECK_MSG(r.error == NULL, "%s", r.error ? r.error : "");
	CHECK(r.sp.presence_penalty == 0.5f && r.sp.frequency_penalty == -1.0f && r.sp.min_tokens == 4 &&
	      r.ignore_eos && r.max_tokens == 33);
	CHECK(r.sp.n_logit_bias == 2 && r.sp.logit_bias_id[0] == 17 && r.sp.logit_bias[0] == 100.0f &&
	      r.sp.logit_bias_id[1] == 3 && r.sp.logit_bias[1] == -2.5f);
	CHECK(r.n_stop_ids == 2 && r.stop_ids[0] == 9 && r.stop_ids[1] == 11);
	gs_batch_req_clear(&r);

	/* chat with every field */
	r = parse("{\"id\": 42, \"messages\": [{\"role\":\"system\",\"content\":\"Be brief.\"},"
		  "{\"role\":\"user\",\"content\":\" Hi \"},{\"role\":\"assistant\",\"content\":\"Hello.\"},"
		  "{\"role\":\"user\",\"content\":\"Dose?\"}], \"max_tokens\": 64, \"temperature\": 0.7,"
		  "\"top_k\": 40, \"top_p\": 0.9, \"min_p\": 0.05, \"repetition_penalty\": 1.1, \"seed\": 1234,"
		  "\"stop\": [\"\\n\\n\", \"END\"], \"logprobs\": true, \"top_logprobs\": 5, \"model\": \"x\"}");
	CHECK(r.error == NULL);
	if (r.error)
		fprintf(stderr, "  %s\n", r.error);
	CHECK_STREQ(r.id, "42");
	CHECK(r.chat);
	CHECK_STREQ(r.text ? r.text : "",
		    "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello."
		    "<end_of_turn>\n<start_of_turn>user\nDose?<end_of_turn>\n<start_of_turn>model\n");
	CHECK(r.max_tokens == 64);
	CHECK(r.sp.temperature == 0.7f && r.sp.top_k == 40 && r.sp.top_p == 0.9f && r.sp.min_p == 0.05f &&
	      r.sp.repetition_penalty == 1.1f && r.sp.seed == 1234);
	CHECK(r.n_stop == 2);
	if (r.n_stop == 2) {
		CHECK_STREQ(r.stop[0], "\n\n");
		CHECK_STREQ(r.stop[1], "END");
	}
	CHECK(r.logprobs && r.top_logprobs == 5);
	gs_batch_req_clear(&r);

	/* stop as a single string, nulls mean defaults, negative integer id, limits inclusive */
	r = parse("{\"id\": -5, \"prompt\": \"x\", \"stop\": \"###\", \"temperature\": null, \"seed\": null,"
		  "\"max_tokens\": 1048576, \"top_logprobs\": 20, \"logprobs\": true, \"seed\": 0}");
	CHECK(r.error == NULL);
	CHECK_STREQ(r.id, "-5");
	CHECK(r.n_stop == 1 && r.stop[0] && strcmp(r.stop[0], "###") == 0);
	CHECK(r.sp.temperature == 1.0f);
	CHECK(r.max_tokens == 1048576 && r.top_logprobs == 20);
	gs_batch_req_clear(&r);

	/* missing id: "line-N"; seed from that */
	r = parse("  {\"prompt\": \"\", \"temperature\": 0}  ");
	CHECK(r.error == NULL);
	CHECK_STREQ(r.id, "line-7");
	CHECK_STREQ(r.text, "");
	CHECK(r.sp.seed == gs_batch_seed_from_id("line-7"));
	CHECK(r.sp.temperature == 0.0f);
	gs_batch_req_clear(&r);

	/* a line need not be NUL-terminated: parse a prefix */
	const char *two = "{\"id\":\"a\",\"prompt\":\"p\"}{garbage";
	CHECK(gs_batch_parse_line(two, strlen("{\"id\":\"a\",\"prompt\":\"p\"}"), 1, &r) == GS_OK);
	CHECK(r.error == NULL);
	gs_batch_req_clear(&r);
}

static void test_parse_bad(void)
{
	expect_error("{\"id\": \"a\", \"prompt\": ", "invalid JSON near column", "line-7");
	expect_error("not json", "invalid JSON near column 1", "line-7");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\"} {}", "unexpected text after the JSON value at column 28",
		     "line-7");
	expect_error("[1, 2]", "must be a JSON object, got array", "line-7");
	expect_error("{\"id\": true, \"prompt\": \"x\"}", "id must be a string or an integer", "line-7");
	expect_error("{\"id\": 1.5, \"prompt\": \"x\"}", "id must be a string or an integer", "line-7");
	expect_error("{\"id\": 1e300, \"prompt\": \"x\"}", "quote larger ids", "line-7");
	expect_error("{\"id\": \"\", \"prompt\": \"x\"}", "id must not be empty", "line-7");
	expect_error("{\"id\": \"a\\u0000\", \"prompt\": \"x\"}", "a string contains \\u0000 (column 10)", "line-7");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\\\\\\u0000\"}", "\\u0000 (column 27)", "line-7");
	struct gs_batch_req lit = parse("{\"id\": \"a\", \"prompt\": \"\\\\u0000\"}"); /* an escaped backslash */
	CHECK(lit.error == NULL && lit.text && strcmp(lit.text, "\\u0000") == 0);
	gs_batch_req_clear(&lit);
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"messages\": []}", "either prompt or messages, not both", "a");
	expect_error("{\"id\": \"a\"}", "missing prompt or messages", "a");
	expect_error("{\"id\": \"a\", \"prompt\": 5}", "prompt must be a string, got number", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": 0}", "max_tokens must be an integer in [1, 1048576], got 0", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": 1048577}", "max_tokens must be an integer in [1, 1048576]", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": 2.5}", "max_tokens must be an integer", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"max_tokens\": \"5\"}", "max_tokens must be an integer, got string", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"temperature\": -1}", "temperature must be a finite number >= 0, got -1", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"temperature\": 1e300}", "temperature must be a finite number", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"temperature\": \"hot\"}", "temperature must be a number, got string", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"top_p\": 1.5}", "top_p must be in (0, 1], got 1.5", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"top_p\": 0}", "top_p must be in (0, 1], got 0", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"min_p\": 1}", "min_p must be in [0, 1), got 1", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"repetition_penalty\": 0}", "repetition_penalty must be a finite number > 0", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"top_k\": -1}", "top_k must be an integer in [0, 2147483647] (0 = off), got -1", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"top_k\": 1e10}", "top_k must be an integer in [0, 2147483647]", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"top_k\": [1]}", "top_k must be an integer, got array", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"seed\": -1}", "seed must be an integer in [0, 2^53], got -1", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"seed\": \"7\"}", "seed must be an integer, got string", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"stop\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]}",
		     "stop has 9 strings, at most 8 are allowed", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"stop\": \"\"}", "stop strings must not be empty", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"stop\": [\"ok\", 3]}", "stop[1] must be a string, got number", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"stop\": 3}", "stop must be a string or a list of strings, got number", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"logprobs\": \"yes\"}", "logprobs must be true or false, got string", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"logprobs\": true, \"top_logprobs\": 21}", "top_logprobs must be an integer in [0, 20], got 21", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"x\", \"top_logprobs\": 3}", "top_logprobs needs \"logprobs\": true", "a");
	expect_error("{\"id\": \"a\", \"messages\": {}}", "messages must be an array of {\"role\", \"content\"} objects, got object", "a");
	expect_error("{\"id\": \"a\", \"messages\": []}", "messages must not be empty", "a");
	expect_error("{\"id\": \"a\", \"messages\": [\"hi\"]}", "messages[0] must be an object, got string", "a");
	expect_error("{\"id\": \"a\", \"messages\": [{\"content\":\"x\"}]}", "messages[0].role must be a string, got nothing", "a");
	expect_error("{\"id\": \"a\", \"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
		     "messages[0].content[0].text must be a string, got nothing", "a");
	/* image_url parts (issue 15): data URLs only, base64, known types; the line fails with why */
	expect_error("{\"id\": \"a\", \"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
		     "\"image_url\":{\"url\":\"https://x.org/a.png\"}}]}]}", "the server fetches nothing", "a");
	expect_error("{\"id\": \"a\", \"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
		     "\"image_url\":{\"url\":\"data:image/png;base64,iVB*\"}}]}]}",
		     "messages[0].content[0].image_url.url: invalid base64: character 0x2a at offset 3", "a");
	expect_error("{\"id\": \"a\", \"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
		     "\"image_url\":{\"url\":\"data:text/plain;base64,aGk=\"}}]}]}",
		     "data URLs of type \"text/plain\" are not supported", "a");
	expect_error("{\"id\": \"a\", \"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
		     "\"image_url\":{\"url\":\"data:image/png;base64,aGk=\",\"detail\":\"high\"}}]}]}",
		     "detail: only \"auto\"", "a");
	expect_error("{\"id\": \"a\", \"messages\": [{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\"}]}]}",
		     "content parts of type \"input_audio\" are not supported", "a");
	{
		struct gs_batch_req r = parse("{\"id\": \"i\", \"messages\": [{\"role\":\"user\",\"content\":["
					      "{\"type\":\"text\",\"text\":\" Look \"},{\"type\":\"image_url\",\"image_url\":"
					      "{\"url\":\"data:application/dicom;base64,aGk=\",\"detail\":\"auto\","
					      "\"window\":{\"center\":40,\"width\":400}}}]}]}");
		CHECK_MSG(r.error == NULL, "%s", r.error ? r.error : "");
		CHECK_STREQ(r.text ? r.text : "", "<bos><start_of_turn>user\nLook<start_of_image><end_of_turn>\n"
						  "<start_of_turn>model\n");
		CHECK(r.n_images == 1 && r.images && r.images[0].n == 2 && memcmp(r.images[0].data, "hi", 2) == 0);
		CHECK(r.n_images == 1 && strcmp(r.images[0].mime, "application/dicom") == 0 && r.images[0].has_window &&
		      r.images[0].window_center == 40 && r.images[0].window_width == 400);
		gs_batch_req_clear(&r);
	}
	expect_error("{\"id\": \"a\", \"messages\": [{\"role\":\"user\",\"content\":\"1\"},{\"role\":\"user\",\"content\":\"2\"}]}",
		     "roles must alternate user/assistant", "a");
	expect_error("{\"id\": \"a\", \"messages\": [{\"role\":\"assistant\",\"content\":\"1\"}]}",
		     "roles must alternate", "a");
	expect_error("{\"id\": \"a\", \"messages\": [{\"role\":\"tool\",\"content\":\"1\"}]}", "unknown role 'tool'", "a");
	/* issue 16: nothing silently ignored */
	expect_error("{\"id\": \"a\", \"prompt\": \"p\", \"frobnicate\": 1}", "frobnicate is not a supported field", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"p\", \"tools\": []}", "tools is not supported", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"p\", \"n\": 9}", "n must be an integer in [1, 8]", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"p\", \"n\": 0}", "n must be an integer in [1, 8]", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"p\", \"n\": 1.5}", "n must be an integer in [1, 8]", "a");
	{
		struct gs_batch_req r = parse("{\"id\": \"a\", \"prompt\": \"p\", \"n\": 3}");
		CHECK(!r.error && r.n == 3);
		gs_batch_req_clear(&r);
		r = parse("{\"id\": \"a\", \"prompt\": \"p\"}");
		CHECK(!r.error && r.n == 1);
		gs_batch_req_clear(&r);
	}
	expect_error("{\"id\": \"a\", \"prompt\": \"p\", \"presence_penalty\": 3}", "presence_penalty must be in [-2, 2]", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"p\", \"logit_bias\": {\"5\": -101}}", "[-100, 100]", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"p\", \"logit_bias\": {\"t\": 1}}", "not a token id", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"p\", \"max_tokens\": 3, \"max_completion_tokens\": 4}", "differ", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"p\", \"stop_token_ids\": [1, -2]}", "stop_token_ids[1]", "a");
	expect_error("{\"id\": \"a\", \"prompt\": \"p\", \"ignore_eos\": 1}", "ignore_eos must be true or false", "a");
	expect_error("{\"id\": \"a\", \"messages\": [{\"role\":\"user\",\"content\":\"1\"},{\"role\":\"system\",\"content\":\"2\"}]}",
		     "system message is only allowed first", "a");
	expect_error("{\"id\": \"a\", \"messages\": [{\"role\":\"system\",\"content\":\"1\"}]}", "only a system message", "a");

	/* an id that is not UTF-8 could never match its escaped copy in the output */
	expect_error("{\"id\": \"a\xff\", \"prompt\": \"x\"}", "id is not valid UTF-8", "line-7");
	char longid[1200];
	snprintf(longid, sizeof(longid), "{\"id\": \"%01100d\", \"prompt\": \"x\"}", 0);
	expect_error(longid, "id is longer than 1024 bytes", "line-7");

	/* the thread's error slot is not left holding a request's mistake */
	CHECK_STREQ(gs_last_error(), "");
}

static void test_seed(void)
{
	struct gs_batch_req a = parse("{\"id\": \"patient-17\", \"prompt\": \"x\"}");
	struct gs_batch_req b = parse("{\"prompt\": \"y\", \"id\": \"patient-17\", \"top_k\": 3}");
	struct gs_batch_req c = parse("{\"id\": \"patient-18\", \"prompt\": \"x\"}");
	struct gs_batch_req d = parse("{\"id\": 17, \"prompt\": \"x\"}");

	CHECK(a.sp.seed == b.sp.seed);
	CHECK(a.sp.seed != c.sp.seed);
	CHECK(d.sp.seed == gs_batch_seed_from_id("17"));
	/* FNV-1a 64 pinned: seeds stay the same across versions and machines */
	CHECK(gs_batch_seed_from_id("") == 0xcbf29ce484222325ull);
	CHECK(gs_batch_seed_from_id("a") == 0xaf63dc4c8601ec8cull);
	gs_batch_req_clear(&a);
	gs_batch_req_clear(&b);
	gs_batch_req_clear(&c);
	gs_batch_req_clear(&d);
}

static void test_read_file(void)
{
	char path[600];
	struct gs_batch_req *reqs = NULL;
	size_t n = 0;
	const char *data =
		"\xEF\xBB\xBF{\"id\": \"a\", \"prompt\": \"first\"}\r\n"   /* 1: BOM + CRLF */
		"\n"                                                      /* 2: blank */
		"   \t\n"                                                 /* 3: blank */
		"{\"prompt\": \"no id\"}\n"                               /* 4: line-4 */
		"{\"id\": \"a\", \"prompt\": \"again\"}\n"                /* 5: duplicate -> line-5 */
		"{\"id\": \"line-4\", \"prompt\": \"takes a generated id\"}\n" /* 6: duplicate -> line-6 */
		"{\"id\": \"line-8\", \"prompt\": \"explicit\"}\n"        /* 7 */
		"{broken\n"                                               /* 8: line-8 taken -> line-8#2 */
		"{\"id\": 9, \"prompt\": \"last, no newline\"}";          /* 9 */

	path_in(path, sizeof(path), "in.jsonl");
	write_file(path, data, strlen(data));
	CHECK(gs_batch_read(path, &reqs, &n) == GS_OK);
	CHECK(n == 7);
	if (n == 7) {
		CHECK_STREQ(reqs[0].id, "a");
		CHECK(reqs[0].line_no == 1 && !reqs[0].error);
		CHECK_STREQ(reqs[0].text, "first");
		CHECK_STREQ(reqs[1].id, "line-4");
		CHECK(reqs[1].line_no == 4 && !reqs[1].error);
		CHECK_STREQ(reqs[2].id, "line-5");
		CHECK(reqs[2].error && strstr(reqs[2].error, "line 5: duplicate id \"a\" (first used on line 1)"));
		CHECK(reqs[2].text == NULL);
		CHECK_STREQ(reqs[3].id, "line-6");
		CHECK(reqs[3].error && strstr(reqs[3].error, "duplicate id \"line-4\" (first used on line 4)"));
		CHECK_STREQ(reqs[4].id, "line-8");
		CHECK(!reqs[4].error);
		CHECK_STREQ(reqs[5].id, "line-8#2");
		CHECK(reqs[5].error && strstr(reqs[5].error, "line 8: invalid JSON near column"));
		CHECK_STREQ(reqs[6].id, "9");
		CHECK_STREQ(reqs[6].text, "last, no newline");
		CHECK(reqs[6].line_no == 9);
	}
	gs_batch_free(reqs, n);

	/* empty file: nothing, no error */
	write_file(path, "", 0);
	CHECK(gs_batch_read(path, &reqs, &n) == GS_OK);
	CHECK(n == 0 && reqs == NULL);

	/* file-level errors only */
	path_in(path, sizeof(path), "does-not-exist.jsonl");
	CHECK(gs_batch_read(path, &reqs, &n) == GS_ERR_IO);
	CHECK(strstr(gs_last_error(), "does-not-exist.jsonl") != NULL);
	CHECK(gs_batch_read(g_dir, &reqs, &n) == GS_ERR_IO); /* a directory */
	gs_clear_error();
}

/* A plain successful result for id with text. */
static struct gs_batch_result result(const char *id, const char *text)
{
	return (struct gs_batch_result){ .id = id, .text = text, .finish = GS_BATCH_FINISH_STOP,
					 .prompt_tokens = 10, .completion_tokens = 3 };
}

/* Every line ends in '\n', is a JSON object with a string id, ids are distinct; returns the
 * number of lines (or -1). ids[] receives up to cap ids. */
static int check_jsonl(const char *path, char ids[][32], int cap)
{
	size_t len;
	char *data = read_file(path, &len);
	int lines = 0;
	bool ok = data != NULL;

	for (size_t i = 0; ok && i < len;) {
		char *nl = memchr(data + i, '\n', len - i);
		if (!nl) {
			CHECK_MSG(false, "%s: last line has no newline", path);
			ok = false;
			break;
		}
		cJSON *o = cJSON_ParseWithLength(data + i, (size_t)(nl - (data + i)));
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
		CHECK_MSG(cJSON_IsString(id), "%s: line %d is not a record", path, lines + 1);
		if (cJSON_IsString(id)) {
			for (int k = 0; k < lines && k < cap; k++)
				CHECK_MSG(strcmp(ids[k], id->valuestring) != 0, "id %s twice", id->valuestring);
			if (lines < cap)
				snprintf(ids[lines], 32, "%s", id->valuestring);
		} else {
			ok = false;
		}
		cJSON_Delete(o);
		lines++;
		i = (size_t)(nl - data) + 1;
	}
	free(data);
	return ok ? lines : -1;
}

static void test_resume(void)
{
	char path[600], ref[600], ids[16][32];
	struct gs_batch_out *o = NULL, *o2 = NULL;
	const char *names[5] = { "a", "b", "c", "d", "e" };
	long before;

	path_in(path, sizeof(path), "out.jsonl");
	path_in(ref, sizeof(ref), "ref.jsonl");
	unlink(path);
	unlink(ref);

	/* the uninterrupted reference run, with an fdatasync per line */
	setenv("GS_BATCH_FSYNC", "1", 1);
	CHECK(gs_batch_out_open(ref, &o) == GS_OK);
	unsetenv("GS_BATCH_FSYNC");
	for (int i = 0; i < 5 && o; i++) {
		struct gs_batch_result r = result(names[i], "answer \"quoted\"\n");
		if (i == 3)
			r = (struct gs_batch_result){ .id = names[i], .error = "line 4: top_p must be in (0, 1]" };
		CHECK(gs_batch_out_write(o, &r) == GS_OK);
	}
	gs_batch_out_close(o);

	/* interrupted run: three records, then half a line as a kill mid-write would leave */
	CHECK(gs_batch_out_open(path, &o) == GS_OK);
	CHECK(o && gs_batch_out_n_done(o) == 0);
	for (int i = 0; i < 3 && o; i++) {
		struct gs_batch_result r = result(names[i], "answer \"quoted\"\n");
		CHECK(gs_batch_out_write(o, &r) == GS_OK);
		CHECK(gs_batch_out_done(o, names[i]));
	}
	/* the same id twice is refused and writes nothing */
	if (o) {
		struct gs_batch_result r = result("a", "again");
		before = file_size(path);
		CHECK(gs_batch_out_write(o, &r) == GS_ERR_INVALID_ARG);
		CHECK(strstr(gs_last_error(), "\"a\" was written already") != NULL);
		CHECK(file_size(path) == before);
		/* a second process (here: a second open) is refused while this one holds it */
		CHECK(gs_batch_out_open(path, &o2) == GS_ERR_IO);
		CHECK(strstr(gs_last_error(), "in use by another process") != NULL);
		CHECK(o2 == NULL);
	}
	gs_batch_out_close(o);
	before = file_size(path);
	append_file(path, "{\"id\":\"d\",\"text\":\"half a li");

	/* resume: 3 done, the torn part gone, new lines appended */
	CHECK(gs_batch_out_open(path, &o) == GS_OK);
	CHECK(o && gs_batch_out_n_done(o) == 3);
	CHECK(file_size(path) == before);
	if (o) {
		CHECK(gs_batch_out_done(o, "a") && gs_batch_out_done(o, "b") && gs_batch_out_done(o, "c"));
		CHECK(!gs_batch_out_done(o, "d") && !gs_batch_out_done(o, "e"));
		for (int i = 0; i < 5; i++) {
			if (gs_batch_out_done(o, names[i]))
				continue;
			struct gs_batch_result r = result(names[i], "answer \"quoted\"\n");
			if (i == 3)
				r = (struct gs_batch_result){ .id = names[i], .error = "line 4: top_p must be in (0, 1]" };
			CHECK(gs_batch_out_write(o, &r) == GS_OK);
		}
	}
	gs_batch_out_close(o);
	CHECK(check_jsonl(path, ids, 16) == 5);

	/* byte-identical to the run that was never interrupted */
	size_t la, lb;
	char *a = read_file(path, &la), *b = read_file(ref, &lb);
	CHECK(a && b && la == lb && memcmp(a, b, la) == 0);
	free(a);
	free(b);

	/* reopen once more: nothing torn, nothing cut, all five done */
	before = file_size(path);
	CHECK(gs_batch_out_open(path, &o) == GS_OK);
	CHECK(o && gs_batch_out_n_done(o) == 5);
	gs_batch_out_close(o);
	CHECK(file_size(path) == before);

	/* a crash that left zeros and a newline at the end: cut back to the last good line */
	append_file(path, "{\"id\":\"f\",\"te");
	{
		FILE *f = fopen(path, "ab");
		char zeros[100] = { 0 };
		CHECK(f && fwrite(zeros, 1, sizeof(zeros), f) == sizeof(zeros));
		if (f) {
			fputs("\n{\"id\":\"g\"\n", f);
			fclose(f);
		}
	}
	CHECK(gs_batch_out_open(path, &o) == GS_OK);
	CHECK(o && gs_batch_out_n_done(o) == 5);
	gs_batch_out_close(o);
	CHECK(file_size(path) == before);
	CHECK(check_jsonl(path, ids, 16) == 5);
}

static void test_resume_refusals(void)
{
	char path[600];
	struct gs_batch_out *o = NULL;
	const char *good = "{\"id\":\"a\",\"finish_reason\":\"stop\"}\n";
	char data[512];
	long before;

	path_in(path, sizeof(path), "bad-middle.jsonl");
	snprintf(data, sizeof(data), "%s{\"id\":\"b\",\"te\n%s", good, "{\"id\":\"c\",\"error\":{}}\n");
	write_file(path, data, strlen(data));
	before = file_size(path);
	CHECK(gs_batch_out_open(path, &o) == GS_ERR_FORMAT);
	CHECK(o == NULL);
	CHECK(strstr(gs_last_error(), "line 2 is not valid JSON but later lines are") != NULL);
	CHECK(file_size(path) == before);

	/* --out pointing at the input file: refused, untouched */
	path_in(path, sizeof(path), "looks-like-input.jsonl");
	snprintf(data, sizeof(data), "{\"id\":\"a\",\"prompt\":\"x\"}\n{\"id\":\"b\",\"prompt\":\"y\"");
	write_file(path, data, strlen(data));
	before = file_size(path);
	CHECK(gs_batch_out_open(path, &o) == GS_ERR_FORMAT);
	CHECK(strstr(gs_last_error(), "line 1 is JSON but not a batch result") != NULL);
	CHECK(file_size(path) == before);
	snprintf(data, sizeof(data), "%s{\"id\":\"b\",\"prompt\":\"y\"}", good);
	write_file(path, data, strlen(data));
	before = file_size(path);
	CHECK(gs_batch_out_open(path, &o) == GS_ERR_FORMAT);
	CHECK(strstr(gs_last_error(), "last line is JSON but not a batch result") != NULL);
	CHECK(file_size(path) == before);

	/* a file that is only a torn line is emptied; blank lines are kept */
	path_in(path, sizeof(path), "only-torn.jsonl");
	write_file(path, "{\"id\":\"a\",\"text\":\"x", 18);
	CHECK(gs_batch_out_open(path, &o) == GS_OK);
	CHECK(o && gs_batch_out_n_done(o) == 0);
	gs_batch_out_close(o);
	CHECK(file_size(path) == 0);
	snprintf(data, sizeof(data), "%s\n%s", good, good);
	write_file(path, data, strlen(data));
	CHECK(gs_batch_out_open(path, &o) == GS_OK);
	CHECK(o && gs_batch_out_n_done(o) == 1);
	gs_batch_out_close(o);
	CHECK(file_size(path) == (long)strlen(data));

	/* unopenable */
	path_in(path, sizeof(path), "no-such-dir/out.jsonl");
	CHECK(gs_batch_out_open(path, &o) == GS_ERR_IO);
	gs_clear_error();
}

static void test_big_lines(void)
{
	char path[600], ids[4][32];
	struct gs_batch_out *o = NULL;
	size_t big = 8u << 20, len;
	char *text = malloc(big + 1);

	CHECK(text != NULL);
	if (!text)
		return;
	for (size_t i = 0; i < big; i++)
		text[i] = (char)('a' + i % 26);
	text[big] = '\0';
	text[1000] = '\n'; /* escapes inside a big line */

	path_in(path, sizeof(path), "big.jsonl");
	unlink(path);
	CHECK(gs_batch_out_open(path, &o) == GS_OK);
	if (o) {
		struct gs_batch_result r = result("big", text), s = result("small", "ok");
		CHECK(gs_batch_out_write(o, &r) == GS_OK);
		CHECK(gs_batch_out_write(o, &s) == GS_OK);

		/* over the cap: the record becomes an error record for the same id, still one line */
		gs_batch_out_set_line_max(o, 4096);
		text[10000] = '\0';
		struct gs_batch_result t = result("toolarge", text);
		CHECK(gs_batch_out_write(o, &t) == GS_OK);
		CHECK(gs_batch_out_done(o, "toolarge"));
	}
	gs_batch_out_close(o);
	CHECK(check_jsonl(path, ids, 4) == 3);

	char *data = read_file(path, &len);
	char *l2 = data ? strchr(data, '\n') : NULL;
	CHECK(l2 && (size_t)(l2 - data) > big); /* the whole 8 MiB text on line 1 */
	if (data) {
		cJSON *first = cJSON_ParseWithLength(data, (size_t)(l2 - data));
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(first, "text");
		CHECK(cJSON_IsString(t) && strlen(t->valuestring) == big);
		cJSON_Delete(first);
		char *l3 = strchr(l2 + 1, '\n');
		CHECK(l3 && strstr(l3 + 1, "{\"id\":\"toolarge\",\"finish_reason\":\"error\",\"error\":"
					    "{\"message\":\"result too large: 10121 bytes exceeds the 4096-byte line limit") == l3 + 1);
	}
	free(data);
	free(text);
}

/* A real short write: the file size limit stops write(2) part-way (SIGXFSZ ignored). */
static void test_short_write(void)
{
	char path[600], ids[4][32];
	struct gs_batch_out *o = NULL;
	struct rlimit old, lim;
	char text[2000];

	memset(text, 'x', sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	path_in(path, sizeof(path), "short.jsonl");
	unlink(path);
	CHECK(gs_batch_out_open(path, &o) == GS_OK);
	if (!o)
		return;
	struct gs_batch_result a = result("a", "fine"), b = result("b", text);
	CHECK(gs_batch_out_write(o, &a) == GS_OK);
	long before = file_size(path);

	CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
	signal(SIGXFSZ, SIG_IGN);
	lim = old;
	lim.rlim_cur = (rlim_t)before + 100;
	CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
	enum gs_status st = gs_batch_out_write(o, &b);
	CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
	signal(SIGXFSZ, SIG_DFL);

	CHECK(st == GS_ERR_IO);
	CHECK(strstr(gs_last_error(), "short write (100 of") != NULL);
	CHECK(strstr(gs_last_error(), "the partial line was removed") != NULL);
	CHECK(file_size(path) == before);
	CHECK(!gs_batch_out_done(o, "b"));
	/* the limit lifted, the same record goes through */
	CHECK(gs_batch_out_write(o, &b) == GS_OK);
	gs_batch_out_close(o);
	CHECK(check_jsonl(path, ids, 4) == 2);
	gs_clear_error();
}

static void test_json_format(void)
{
	char *line = NULL;
	size_t len = 0;

	/* fixed key order, usage totals */
	struct gs_batch_result r = result("q\"1", "a\"b\\c\n\t\x01 \xE2\x82\xAC \xFF|\xE2\x82");
	r.finish = GS_BATCH_FINISH_LENGTH;
	CHECK(gs_batch_result_json(&r, &line, &len) == GS_OK);
	CHECK_STREQ(line ? line : "",
		    "{\"id\":\"q\\\"1\",\"text\":\"a\\\"b\\\\c\\n\\t\\u0001 \xE2\x82\xAC \\ufffd|\\ufffd\\ufffd\","
		    "\"finish_reason\":\"length\",\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":3,"
		    "\"total_tokens\":13}}");
	CHECK(line && len == strlen(line));
	cJSON *o = line ? cJSON_Parse(line) : NULL;
	CHECK(o != NULL);
	cJSON_Delete(o);
	free(line);

	/* logprobs, OpenAI completions style; a NULL alternative is skipped; -inf is null */
	const char *tokens[2] = { "Hel", "lo" };
	const float lp[2] = { -0.5f, -0.1f };
	const char *top[4] = { "Hel", "Hi", "lo", NULL };
	const float top_lp[4] = { -0.5f, -1.25f, -0.1f, 0.0f };
	r = result("x", "Hello");
	r.has_logprobs = true;
	r.n_tokens = 2;
	r.tokens = tokens;
	r.token_logprobs = lp;
	r.top_n = 2;
	r.top_tokens = top;
	r.top_logprobs = top_lp;
	CHECK(gs_batch_result_json(&r, &line, &len) == GS_OK);
	CHECK_STREQ(line ? line : "",
		    "{\"id\":\"x\",\"text\":\"Hello\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":10,"
		    "\"completion_tokens\":3,\"total_tokens\":13},\"logprobs\":{\"tokens\":[\"Hel\",\"lo\"],"
		    "\"token_logprobs\":[-0.5,-0.1],\"top_logprobs\":[{\"Hel\":-0.5,\"Hi\":-1.25},{\"lo\":-0.1}]}}");
	free(line);

	const float odd[2] = { -INFINITY, -1.0e-7f };
	r.token_logprobs = odd;
	r.top_n = 0;
	CHECK(gs_batch_result_json(&r, &line, &len) == GS_OK);
	CHECK(line && strstr(line, "\"logprobs\":{\"tokens\":[\"Hel\",\"lo\"],\"token_logprobs\":[null,-1e-07]}}"));
	free(line);

	/* n > 1: the choices after the rest, each with its index, finish and logprobs */
	{
		struct gs_batch_result ch[2] = { result("x", "Hello"), result("x", "Hi") };
		ch[0].has_logprobs = ch[1].has_logprobs = true;
		ch[0].n_tokens = 2, ch[0].tokens = tokens, ch[0].token_logprobs = lp;
		ch[1].n_tokens = 1, ch[1].tokens = tokens + 1, ch[1].token_logprobs = lp + 1;
		ch[1].finish = GS_BATCH_FINISH_LENGTH;
		ch[1].completion_tokens = 1;
		r = ch[0];
		r.completion_tokens = 4;
		r.n_choices = 2;
		r.choices = ch;
		CHECK(gs_batch_result_json(&r, &line, &len) == GS_OK);
		CHECK_STREQ(line ? line : "",
			    "{\"id\":\"x\",\"text\":\"Hello\",\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":10,"
			    "\"completion_tokens\":4,\"total_tokens\":14},\"logprobs\":{\"tokens\":[\"Hel\",\"lo\"],"
			    "\"token_logprobs\":[-0.5,-0.1]},\"choices\":[{\"index\":0,\"text\":\"Hello\",\"finish_reason\":"
			    "\"stop\",\"completion_tokens\":3,\"logprobs\":{\"tokens\":[\"Hel\",\"lo\"],\"token_logprobs\":"
			    "[-0.5,-0.1]}},{\"index\":1,\"text\":\"Hi\",\"finish_reason\":\"length\",\"completion_tokens\":1,"
			    "\"logprobs\":{\"tokens\":[\"lo\"],\"token_logprobs\":[-0.1]}}]}");
		free(line);
	}

	/* error records */
	struct gs_batch_result e = { .id = "line-3", .error = "line 3: invalid JSON at column 1" };
	CHECK(gs_batch_result_json(&e, &line, &len) == GS_OK);
	CHECK_STREQ(line ? line : "",
		    "{\"id\":\"line-3\",\"finish_reason\":\"error\",\"error\":{\"message\":"
		    "\"line 3: invalid JSON at column 1\",\"type\":\"invalid_request_error\"}}");
	free(line);
	e.error_type = "server_error";
	CHECK(gs_batch_result_json(&e, &line, &len) == GS_OK);
	CHECK(line && strstr(line, "\"type\":\"server_error\"}}"));
	free(line);
}

static void test_progress(void)
{
	struct gs_batch_progress p = { 0 };
	char buf[256], *out;
	size_t len;
	FILE *f = tmpfile();

	CHECK(f != NULL);
	if (!f)
		return;
	/* resumed with 20 done: rates count this run only */
	gs_batch_progress_update_at(&p, 20, 2000, 500, 100.0, f);     /* printed (first)      */
	gs_batch_progress_update_at(&p, 30, 2000, 900, 100.5, f);     /* < 1 s: not printed   */
	gs_batch_progress_update_at(&p, 120, 2000, 7854, 148.0, f);   /* printed              */
	gs_batch_progress_update_at(&p, 121, 2000, 7900, 148.9, f);   /* < 1 s: not printed   */
	CHECK(gs_batch_progress_format(&p, 148.0, buf, sizeof(buf)) > 0);
	CHECK_STREQ(buf, "batch: 121/2000 done (6.0%), 154.2 tok/s, ETA 00:14:53");
	p.done = 120;
	p.tokens = 7854;
	CHECK(gs_batch_progress_format(&p, 148.0, buf, sizeof(buf)) > 0);
	/* 100 records in 48 s -> 1880 left take 902.4 s; 7354 tokens / 48 s */
	CHECK_STREQ(buf, "batch: 120/2000 done (6.0%), 153.2 tok/s, ETA 00:15:02");
	CHECK(gs_batch_progress_summary(&p, 3, 148.0, buf, sizeof(buf)) > 0);
	CHECK_STREQ(buf, "batch: finished 120/2000 (100 this run, 3 errors) in 00:00:48, 7354 tokens, 153.2 tok/s");
	gs_batch_progress_finish(&p, 1, f);

	fflush(f);
	len = (size_t)ftell(f);
	out = calloc(1, len + 1);
	rewind(f);
	CHECK(out && fread(out, 1, len, f) == len);
	if (out) {
		/* not a terminal: newline-terminated lines, two progress lines and the summary */
		const char *want = "batch: 20/2000 done (1.0%), 0.0 tok/s, ETA --:--:--\n"
				   "batch: 120/2000 done (6.0%), 153.2 tok/s, ETA 00:15:02\n"
				   "batch: finished 120/2000 (100 this run, 1 error) in ";
		CHECK_MSG(strncmp(out, want, strlen(want)) == 0, "got:\n%s", out);
		CHECK(strchr(out, '\r') == NULL);
		int nl = 0;
		for (char *c = out; *c; c++)
			nl += *c == '\n';
		CHECK(nl == 3);
	}
	free(out);
	fclose(f);

	/* a terminal: '\r', the shorter line blanks the leftover, the summary starts a new line */
	f = tmpfile();
	CHECK(f != NULL);
	if (!f)
		return;
	p = (struct gs_batch_progress){ .tty_checked = true, .tty = true };
	gs_batch_progress_update_at(&p, 0, 100000, 0, 0.0, f);
	gs_batch_progress_update_at(&p, 5, 10, 1000, 2.0, f);
	gs_batch_progress_finish(&p, 0, f);
	fflush(f);
	len = (size_t)ftell(f);
	out = calloc(1, len + 1);
	rewind(f);
	CHECK(out && fread(out, 1, len, f) == len);
	if (out) {
		const char *l1 = "\rbatch: 0/100000 done (0.0%), 0.0 tok/s, ETA --:--:--";
		const char *l2 = "\rbatch: 5/10 done (50.0%), 500.0 tok/s, ETA 00:00:02";
		CHECK(strncmp(out, l1, strlen(l1)) == 0);
		const char *second = out + strlen(l1);
		CHECK(strncmp(second, l2, strlen(l2)) == 0);
		const char *pad = second + strlen(l2);
		size_t want_pad = strlen(l1) - strlen(l2);
		CHECK(strspn(pad, " ") == want_pad);
		const char *sum = "\nbatch: finished 5/10 (5 this run, 0 errors) in ";
		CHECK(strncmp(pad + want_pad, sum, strlen(sum)) == 0);
		CHECK(out[len - 1] == '\n');
	}
	free(out);
	fclose(f);

	/* total 0 and no time elapsed do not divide by zero */
	p = (struct gs_batch_progress){ 0 };
	gs_batch_progress_update_at(&p, 0, 0, 0, 5.0, NULL);
	CHECK(gs_batch_progress_format(&p, 5.0, buf, sizeof(buf)) > 0);
	CHECK_STREQ(buf, "batch: 0/0 done (100.0%), 0.0 tok/s, ETA --:--:--");
}

int main(int argc, char **argv)
{
	snprintf(g_dir, sizeof(g_dir), "%s", argc > 2 ? argv[2] : "/tmp/gs_test_batchio");
	if (mkdir(g_dir, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "cannot create %s\n", g_dir);
		return 1;
	}
	gs_log_set_level(GS_LOG_ERROR); /* the torn-tail warnings are expected here */

	test_parse_good();
	test_parse_bad();
	test_seed();
	test_read_file();
	test_resume();
	test_resume_refusals();
	test_big_lines();
	test_short_write();
	test_json_format();
	test_progress();
	TEST_DONE();
}
