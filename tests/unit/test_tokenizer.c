/* gs_tokenizer: bad files, hand-checked BPE on a tiny vocabulary, known Gemma 3 ids, the
 * incremental detokenizer across byte-fallback pushes, out-of-range ids.
 * argv[1] = real Gemma 3 tokenizer.json, argv[2] = scratch dir. */
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "gs_test.h"
#include "gs_tokenizer.h"

static char g_dir[512];

static const char *write_file(const char *name, const char *text)
{
	static char path[1024];
	FILE *f;
	snprintf(path, sizeof(path), "%s/%s", g_dir, name);
	f = fopen(path, "w");
	if (!f) {
		fprintf(stderr, "cannot write %s\n", path);
		return path;
	}
	fputs(text, f);
	fclose(f);
	return path;
}

static void expect_load_error(const char *name, const char *json, enum gs_status want, const char *needle)
{
	struct gs_tokenizer *t = (struct gs_tokenizer *)1;
	const char *path = write_file(name, json);
	enum gs_status st = gs_tokenizer_load(path, &t);
	CHECK_MSG(st == want, "%s: status %s, want %s (%s)", name, gs_status_str(st), gs_status_str(want),
		  gs_last_error());
	CHECK(t == NULL);
	CHECK_MSG(strstr(gs_last_error(), needle) != NULL, "%s: error '%s' lacks '%s'", name, gs_last_error(),
		  needle);
	CHECK_MSG(strstr(gs_last_error(), name) != NULL, "error '%s' does not name the file", gs_last_error());
}

/* Tiny tokenizer: a b c ab aa abc bc ▁ plus all 256 byte pieces; merges in rank order
 * (a,b) (a,a) (ab,c) (b,c); added tokens <bos>, <t>, <t>>. */
static char *tiny_json(void)
{
	size_t cap = 64 * 1024, k = 0;
	char *s = malloc(cap);
	k += (size_t)snprintf(s + k, cap - k,
			      "{\"added_tokens\":[{\"id\":1,\"content\":\"<bos>\",\"special\":true},"
			      "{\"id\":300,\"content\":\"<t>\",\"special\":false},"
			      "{\"id\":301,\"content\":\"<t>>\",\"special\":false}],"
			      "\"normalizer\":{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xE2\x96\x81\"},"
			      "\"pre_tokenizer\":null,"
			      "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"fuse_unk\":true,\"unk_token\":\"<unk>\","
			      "\"vocab\":{\"<unk>\":0,\"<bos>\":1,\"a\":2,\"b\":3,\"c\":4,\"ab\":5,\"aa\":6,\"abc\":7,\"bc\":8,"
			      "\"\xE2\x96\x81\":9");
	for (int b = 0; b < 256; b++)
		k += (size_t)snprintf(s + k, cap - k, ",\"<0x%02X>\":%d", b, 10 + b);
	snprintf(s + k, cap - k, "},\"merges\":[[\"a\",\"b\"],[\"a\",\"a\"],\"ab c\",[\"b\",\"c\"]]}}");
	return s;
}

static void expect_ids(const struct gs_tokenizer *t, const char *text, bool bos, const int32_t *want, size_t nwant)
{
	int32_t *ids = NULL;
	size_t n = 0;
	enum gs_status st = gs_tokenizer_encode(t, text, strlen(text), bos, &ids, &n);
	CHECK_MSG(st == GS_OK, "encode '%s': %s", text, gs_last_error());
	CHECK_MSG(n == nwant, "encode '%s': %zu ids, want %zu", text, n, nwant);
	for (size_t i = 0; i < n && i < nwant; i++)
		CHECK_MSG(ids[i] == want[i], "encode '%s': ids[%zu] = %d, want %d", text, i, ids[i], want[i]);
	free(ids);
}

#define EXPECT_IDS(t, text, bos, ...)                                                       \
	do {                                                                                \
		const int32_t w_[] = { __VA_ARGS__ };                                       \
		expect_ids((t), (text), (bos), w_, sizeof(w_) / sizeof(w_[0]));              \
	} while (0)

static void test_bad_files(void)
{
	struct gs_tokenizer *t = (struct gs_tokenizer *)1;
	char missing[600];

	snprintf(missing, sizeof(missing), "%s/does_not_exist.json", g_dir);
	CHECK(gs_tokenizer_load(missing, &t) == GS_ERR_IO);
	CHECK(t == NULL);
	CHECK(strstr(gs_last_error(), "does_not_exist.json") != NULL);

	expect_load_error("empty.json", "", GS_ERR_FORMAT, "not valid JSON");
	expect_load_error("truncated.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0", GS_ERR_FORMAT,
			  "not valid JSON");
	expect_load_error("array.json", "[1, 2, 3]", GS_ERR_FORMAT, "no \"model\" object");
	expect_load_error("unigram.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}",
			  GS_ERR_UNSUPPORTED, "model type 'Unigram' is not BPE");
	expect_load_error("no_merges.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}", GS_ERR_FORMAT,
			  "merges");
	expect_load_error("no_vocab.json", "{\"model\": {\"type\": \"BPE\", \"merges\": []}}", GS_ERR_FORMAT, "vocab");
	expect_load_error("bad_merge.json",
			  "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
			  "\"merges\": [[\"a\", \"b\"], [\"a\", \"zz\"]]}}",
			  GS_ERR_FORMAT, "piece 'zz' is not in the vocab");
	expect_load_error("bad_merge_result.json",
			  "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [[\"a\", \"b\"]]}}",
			  GS_ERR_FORMAT, "piece 'ab' is not in the vocab");
	expect_load_error("merge_shape.json",
			  "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [[\"a\"]]}}", GS_ERR_FORMAT,
			  "merges[0]");
	expect_load_error("neg_id.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -4}, \"merges\": []}}",
			  GS_ERR_FORMAT, "integer id");
	expect_load_error("huge_id.json",
			  "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 4000000000}, \"merges\": []}}",
			  GS_ERR_FORMAT, "integer id");
	expect_load_error("str_id.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"0\"}, \"merges\": []}}",
			  GS_ERR_FORMAT, "integer id");
	expect_load_error("bad_added.json",
			  "{\"added_tokens\": [{\"id\": \"x\"}], \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
			  "\"merges\": []}}",
			  GS_ERR_FORMAT, "added_tokens[0]");
	expect_load_error("normalizer.json",
			  "{\"normalizer\": {\"type\": \"NFKC\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
			  "\"merges\": []}}",
			  GS_ERR_UNSUPPORTED, "normalizer");
}

static void test_tiny(void)
{
	char *json = tiny_json();
	struct gs_tokenizer *t = NULL;
	enum gs_status st = gs_tokenizer_load(write_file("tiny.json", json), &t);

	free(json);
	CHECK_MSG(st == GS_OK, "tiny: %s", gs_last_error());
	if (st != GS_OK)
		return;
	CHECK(gs_tokenizer_n_vocab(t) == 302);
	CHECK(gs_tokenizer_find(t, "<t>>") == 301);
	CHECK(gs_tokenizer_find(t, "abc") == 7);
	CHECK(gs_tokenizer_find(t, "abcd") == -1);
	CHECK(gs_tokenizer_piece(t, 299) == NULL); /* gap between vocab and added ids */
	EXPECT_IDS(t, "abc", false, 7);           /* (a,b) then (ab,c) */
	EXPECT_IDS(t, "bcab", false, 8, 5);       /* (a,b) rank 0 first, then (b,c) */
	EXPECT_IDS(t, "aaa", false, 6, 2);        /* tie on (a,a): leftmost wins */
	EXPECT_IDS(t, "aaaa", false, 6, 6);
	EXPECT_IDS(t, "a b", true, 1, 2, 9, 3);   /* space -> U+2581 piece, bos */
	EXPECT_IDS(t, "d\xC3\xA9", false, 10 + 0x64, 10 + 0xC3, 10 + 0xA9); /* byte fallback */
	EXPECT_IDS(t, "a<t>>b<t>c", false, 2, 301, 3, 300, 4); /* leftmost-longest added tokens */
	EXPECT_IDS(t, "<bos><bos>", false, 1, 1);
	{
		int32_t *ids = (int32_t *)1;
		size_t n = 7;
		CHECK(gs_tokenizer_encode(t, "", 0, false, &ids, &n) == GS_OK);
		CHECK(n == 0);
		free(ids);
		/* Invalid UTF-8: overlong, surrogate, > U+10FFFF, truncated, stray continuation. */
		const char *bad[] = { "a\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "ok\xE2\x80", "\x80" };
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			CHECK(gs_tokenizer_encode(t, bad[i], strlen(bad[i]), false, &ids, &n) == GS_ERR_INVALID_ARG);
			CHECK(strstr(gs_last_error(), "UTF-8") != NULL);
		}
	}
	gs_tokenizer_free(t);
}

static void expect_decode(const struct gs_tokenizer *t, const int32_t *ids, size_t n, const char *want)
{
	char *s = NULL;
	size_t len = 0;
	enum gs_status st = gs_tokenizer_decode(t, ids, n, &s, &len);
	CHECK_MSG(st == GS_OK, "decode: %s", gs_last_error());
	if (st == GS_OK) {
		CHECK(len == strlen(want));
		CHECK_STREQ(s, want);
	}
	free(s);
}

/* Push ids one by one; returns the concatenation (static buffer) and checks each step. */
static const char *detok_all(const struct gs_tokenizer *t, const int32_t *ids, size_t n, const size_t *want_step)
{
	static char acc[4096];
	char out[1024];
	size_t k = 0, w;
	struct gs_detok d;

	gs_detok_init(&d, t);
	for (size_t i = 0; i < n; i++) {
		w = gs_detok_push(&d, ids[i], out, sizeof(out));
		if (want_step)
			CHECK_MSG(w == want_step[i], "push %zu wrote %zu bytes, want %zu", i, w, want_step[i]);
		memcpy(acc + k, out, w);
		k += w;
	}
	w = gs_detok_flush(&d, out, sizeof(out));
	memcpy(acc + k, out, w);
	acc[k + w] = '\0';
	return acc;
}

static void test_real(const char *path)
{
	struct gs_tokenizer *t = NULL;
	enum gs_status st = gs_tokenizer_load(path, &t);
	int32_t e2, x80, x94, x41, the, nl;

	CHECK_MSG(st == GS_OK, "load %s: %s", path, gs_last_error());
	if (st != GS_OK)
		return;
	/* Ids from reference/gemma3.md 5.3. */
	CHECK(gs_tokenizer_n_vocab(t) == 262145);
	CHECK(gs_tokenizer_find(t, "<end_of_turn>") == 106);
	CHECK(gs_tokenizer_find(t, "<start_of_turn>") == 105);
	CHECK(gs_tokenizer_find(t, "<image_soft_token>") == 262144);
	CHECK(gs_tokenizer_find(t, "<start_of_image>") == 255999);
	CHECK(gs_tokenizer_find(t, "not a piece at all") == -1);
	CHECK_STREQ(gs_tokenizer_piece(t, 2), "<bos>");
	CHECK_STREQ(gs_tokenizer_piece(t, 107), "\n");
	CHECK(gs_tokenizer_piece(t, 262145) == NULL);
	CHECK(gs_tokenizer_piece(t, -1) == NULL);
	/* Chat framing tokenizes to the control ids with no BPE across them. */
	EXPECT_IDS(t, "<start_of_turn>user\n", false, 105, 2364, 107);
	EXPECT_IDS(t, "<end_of_turn>\n<start_of_turn>model\n", false, 106, 107, 105, 4368, 107);
	EXPECT_IDS(t, "", true, 2);
	EXPECT_IDS(t, "\n\n", false, gs_tokenizer_find(t, "\n\n"));
	/* Digits are single tokens (split_digits). */
	EXPECT_IDS(t, "25", false, gs_tokenizer_find(t, "2"), gs_tokenizer_find(t, "5"));

	/* Detokenizer: U+2014 as three byte tokens is held until the run ends. */
	e2 = gs_tokenizer_find(t, "<0xE2>");
	x80 = gs_tokenizer_find(t, "<0x80>");
	x94 = gs_tokenizer_find(t, "<0x94>");
	x41 = gs_tokenizer_find(t, "<0x41>");
	the = gs_tokenizer_find(t, "\xE2\x96\x81the");
	nl = 107;
	CHECK(e2 >= 0 && x80 >= 0 && x94 >= 0 && x41 >= 0 && the >= 0);
	CHECK(gs_tokenizer_byte_value(t, e2) == 0xE2);
	CHECK(gs_tokenizer_byte_value(t, the) == -1);
	{
		int32_t ids[] = { the, e2, x80, x94, the, e2, x80, x94 };
		size_t steps[] = { 4, 0, 0, 0, 3 + 4, 0, 0, 0 };
		CHECK_STREQ(detok_all(t, ids, 8, steps), " the\xE2\x80\x94 the\xE2\x80\x94");
		expect_decode(t, ids, 8, " the\xE2\x80\x94 the\xE2\x80\x94");
	}
	{ /* Impossible run: one U+FFFD per byte of the run (HF ByteFallback), then the token. */
		int32_t ids[] = { e2, x41, nl, e2, x80 };
		const char *want = "\xEF\xBF\xBD\xEF\xBF\xBD\n\xEF\xBF\xBD\xEF\xBF\xBD";
		CHECK_STREQ(detok_all(t, ids, 5, NULL), want);
		expect_decode(t, ids, 5, want);
	}
	{ /* Too small a buffer: nothing written, size needed returned, state kept. */
		struct gs_detok d;
		char out[64];
		size_t w;
		gs_detok_init(&d, t);
		CHECK(gs_detok_push(&d, e2, out, 0) == 0);
		CHECK(gs_detok_push(&d, x80, out, 0) == 0);
		CHECK(gs_detok_push(&d, x94, out, 0) == 0);
		w = gs_detok_push(&d, the, out, 2);
		CHECK(w == 7);
		w = gs_detok_push(&d, the, out, sizeof(out));
		CHECK(w == 7 && memcmp(out, "\xE2\x80\x94 the", 7) == 0);
		CHECK(gs_detok_flush(&d, out, sizeof(out)) == 0);
		/* Out-of-range ids are dropped, like HF's decode, without breaking a byte run. */
		CHECK(gs_detok_push(&d, e2, out, sizeof(out)) == 0);
		CHECK(gs_detok_push(&d, 262145, out, sizeof(out)) == 0);
		CHECK(gs_detok_push(&d, -7, out, sizeof(out)) == 0);
		CHECK(gs_detok_push(&d, x80, out, sizeof(out)) == 0);
		CHECK(gs_detok_push(&d, x94, out, sizeof(out)) == 0);
		CHECK(gs_detok_flush(&d, out, 1) == 3);
		CHECK(gs_detok_flush(&d, out, sizeof(out)) == 3 && memcmp(out, "\xE2\x80\x94", 3) == 0);
	}
	{ /* decode: out-of-range ids are an error. */
		int32_t bad1[] = { 2, 262145 }, bad2[] = { -1 };
		char *s = (char *)1;
		size_t len;
		CHECK(gs_tokenizer_decode(t, bad1, 2, &s, &len) == GS_ERR_RANGE);
		CHECK(s == NULL);
		CHECK(strstr(gs_last_error(), "262145") != NULL);
		CHECK(gs_tokenizer_decode(t, bad2, 1, &s, &len) == GS_ERR_RANGE);
		expect_decode(t, NULL, 0, "");
	}
	{ /* Specials are not skipped and ▁ pieces become spaces. */
		int32_t ids[] = { 2, 105, 2364, 107, the, 106 };
		expect_decode(t, ids, 6, "<bos><start_of_turn>user\n the<end_of_turn>");
	}
	gs_tokenizer_free(t);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s tokenizer.json scratch_dir\n", argv[0]);
		return 2;
	}
	snprintf(g_dir, sizeof(g_dir), "%s", argv[2]);
	if (mkdir(g_dir, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "cannot create %s\n", g_dir);
		return 1;
	}
	test_bad_files();
	test_tiny();
	test_real(argv[1]);
	TEST_DONE();
}
