/* Compare gs_tokenizer with Hugging Face tokenizers outputs produced by hf_ref.js.
 *
 * usage: tok_parity tokenizer.json corpus.jsonl ref.jsonl decode_cases.jsonl decode_ref.jsonl
 *   corpus.jsonl       per line {"text": "...", "hex": "<its UTF-8 bytes in hex>"}
 *   ref.jsonl          per corpus line {"ids":[..], "ids_bos":[..], "dec":"<hex>"} from HF
 *   decode_cases.jsonl one JSON array of ids per line (random, byte-token heavy)
 *   decode_ref.jsonl   one JSON string per line: HF decode of that case, hex
 * Text travels as hex because cJSON strings end at U+0000, which the corpus contains.
 * For every corpus line: encode (no bos / bos) equals HF exactly; decode(encode(x)) equals x
 * with U+2581 read as ' '; decode(HF ids) equals HF's decode; incremental detok equals decode.
 * Prints a summary and returns 1 on any mismatch. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "gs_tokenizer.h"

static int g_fail;
static int g_report_left = 20;

static void fail(size_t line, const char *what)
{
	g_fail++;
	if (g_report_left-- > 0)
		fprintf(stderr, "MISMATCH line %zu: %s\n", line, what);
}

/* Read a file line by line: returns malloc'd line without '\n' or NULL at EOF. */
static char *read_line(FILE *f)
{
	size_t cap = 0;
	char *buf = NULL;
	ssize_t n = getline(&buf, &cap, f);
	if (n < 0) {
		free(buf);
		return NULL;
	}
	if (n > 0 && buf[n - 1] == '\n')
		buf[n - 1] = '\0';
	return buf;
}

/* Hex string -> malloc'd bytes (NUL-terminated for convenience), NULL on bad input. */
static char *unhex(const char *h, size_t *n)
{
	size_t len = h ? strlen(h) : 1;
	char *o = len % 2 ? NULL : malloc(len / 2 + 1);
	if (!o)
		return NULL;
	for (size_t i = 0; i < len / 2; i++) {
		unsigned v;
		if (sscanf(h + 2 * i, "%2x", &v) != 1) {
			free(o);
			return NULL;
		}
		o[i] = (char)v;
	}
	o[len / 2] = '\0';
	*n = len / 2;
	return o;
}

static int32_t *json_ids(const cJSON *a, size_t *n)
{
	size_t k = 0, cnt = (size_t)cJSON_GetArraySize(a);
	int32_t *ids = malloc((cnt + 1) * sizeof(int32_t));
	const cJSON *e;
	cJSON_ArrayForEach(e, a) ids[k++] = (int32_t)e->valuedouble;
	*n = k;
	return ids;
}

static bool ids_equal(const int32_t *a, size_t na, const int32_t *b, size_t nb, size_t *first_diff)
{
	size_t i = 0;
	while (i < na && i < nb && a[i] == b[i])
		i++;
	*first_diff = i;
	return na == nb && i == na;
}

/* Push ids one at a time through gs_detok (with a deliberately small buffer first, to
 * exercise the "needs more room" path) and compare with want. */
static bool detok_matches(const struct gs_tokenizer *t, const int32_t *ids, size_t n, const char *want,
			  size_t want_len)
{
	size_t cap = gs_detok_max_out(t), k = 0, total = 0;
	char *buf = malloc(cap), *acc = malloc(want_len + cap + 1);
	struct gs_detok d;
	bool ok = true;

	gs_detok_init(&d, t);
	for (size_t i = 0; i <= n && ok; i++) {
		size_t small = 2;
		k = i < n ? gs_detok_push(&d, ids[i], buf, small) : gs_detok_flush(&d, buf, small);
		if (k > small)
			k = i < n ? gs_detok_push(&d, ids[i], buf, cap) : gs_detok_flush(&d, buf, cap);
		if (k > cap || total + k > want_len) {
			ok = false;
			break;
		}
		memcpy(acc + total, buf, k);
		total += k;
	}
	ok = ok && total == want_len && memcmp(acc, want, want_len) == 0;
	free(buf);
	free(acc);
	return ok;
}

static int run_corpus(const struct gs_tokenizer *t, const char *corpus_path, const char *ref_path)
{
	FILE *fc = fopen(corpus_path, "r"), *fr = fopen(ref_path, "r");
	char *lc, *lr;
	size_t line = 0, n_pass = 0;

	if (!fc || !fr) {
		fprintf(stderr, "cannot open %s or %s\n", corpus_path, ref_path);
		return -1;
	}
	while ((lc = read_line(fc)) != NULL) {
		cJSON *jc = cJSON_Parse(lc), *jr;
		int before = g_fail;
		lr = read_line(fr);
		line++;
		jr = lr ? cJSON_Parse(lr) : NULL;
		size_t len = 0, hf_len = 0;
		char *text = unhex(cJSON_GetStringValue(cJSON_GetObjectItem(jc, "hex")), &len);
		char *hf_dec = unhex(cJSON_GetStringValue(cJSON_GetObjectItem(jr, "dec")), &hf_len);
		if (!text || !hf_dec) {
			fail(line, "corpus/reference line unreadable (reference shorter than corpus?)");
		} else {
			size_t nref, nref_bos, n, nb, d;
			int32_t *ref = json_ids(cJSON_GetObjectItem(jr, "ids"), &nref);
			int32_t *ref_bos = json_ids(cJSON_GetObjectItem(jr, "ids_bos"), &nref_bos);
			int32_t *ids = NULL, *ids_b = NULL;
			char *dec = NULL, *dec2 = NULL, msg[256];
			size_t dlen = 0, dlen2 = 0;

			if (gs_tokenizer_encode(t, text, len, false, &ids, &n) != GS_OK ||
			    gs_tokenizer_encode(t, text, len, true, &ids_b, &nb) != GS_OK) {
				snprintf(msg, sizeof(msg), "encode failed: %s", gs_last_error());
				fail(line, msg);
			} else {
				if (!ids_equal(ids, n, ref, nref, &d)) {
					snprintf(msg, sizeof(msg), "encode: %zu ids vs HF %zu, first diff at %zu (ours %d, HF %d)",
						 n, nref, d, d < n ? ids[d] : -1, d < nref ? ref[d] : -1);
					fail(line, msg);
				}
				if (!ids_equal(ids_b, nb, ref_bos, nref_bos, &d))
					fail(line, "encode with bos differs from HF add_special_tokens=true");
				if (gs_tokenizer_decode(t, ids, n, &dec, &dlen) != GS_OK) {
					fail(line, "decode(encode(x)) failed");
				} else {
					/* U+2581 in the input legitimately decodes to ' '. */
					char *exp = malloc(len + 1);
					size_t elen = 0;
					for (size_t i = 0; i < len;) {
						if (i + 3 <= len && memcmp(text + i, "\xE2\x96\x81", 3) == 0) {
							exp[elen++] = ' ';
							i += 3;
						} else {
							exp[elen++] = text[i++];
						}
					}
					if (dlen != elen || memcmp(dec, exp, elen) != 0)
						fail(line, "decode(encode(x)) != x");
					free(exp);
				}
			}
			if (gs_tokenizer_decode(t, ref, nref, &dec2, &dlen2) != GS_OK || dlen2 != hf_len ||
			    memcmp(dec2, hf_dec, dlen2) != 0)
				fail(line, "decode(HF ids) != HF decode");
			else if (!detok_matches(t, ref, nref, dec2, dlen2))
				fail(line, "incremental detok != decode");
			free(ref);
			free(ref_bos);
			free(ids);
			free(ids_b);
			free(dec);
			free(dec2);
		}
		if (g_fail == before)
			n_pass++;
		free(text);
		free(hf_dec);
		cJSON_Delete(jc);
		cJSON_Delete(jr);
		free(lc);
		free(lr);
	}
	fclose(fc);
	fclose(fr);
	printf("corpus: %zu lines, %zu passed\n", line, n_pass);
	return (int)line;
}

static int run_decode_cases(const struct gs_tokenizer *t, const char *cases_path, const char *ref_path)
{
	FILE *fc = fopen(cases_path, "r"), *fr = fopen(ref_path, "r");
	char *lc, *lr;
	size_t line = 0, n_pass = 0;

	if (!fc || !fr) {
		fprintf(stderr, "cannot open %s or %s\n", cases_path, ref_path);
		return -1;
	}
	while ((lc = read_line(fc)) != NULL) {
		cJSON *jc = cJSON_Parse(lc), *jr;
		int before = g_fail;
		size_t n, dlen, hf_len = 0;
		int32_t *ids;
		char *dec, *hf_dec;

		lr = read_line(fr);
		line++;
		jr = lr ? cJSON_Parse(lr) : NULL;
		hf_dec = unhex(cJSON_GetStringValue(jr), &hf_len);
		if (!cJSON_IsArray(jc) || !hf_dec) {
			fail(line, "decode case unreadable");
		} else {
			ids = json_ids(jc, &n);
			if (gs_tokenizer_decode(t, ids, n, &dec, &dlen) != GS_OK) {
				fail(line, "decode case: decode failed");
			} else {
				if (dlen != hf_len || memcmp(dec, hf_dec, dlen) != 0)
					fail(line, "decode case: differs from HF decode");
				if (!detok_matches(t, ids, n, dec, dlen))
					fail(line, "decode case: incremental detok != decode");
				free(dec);
			}
			free(ids);
		}
		if (g_fail == before)
			n_pass++;
		free(hf_dec);
		cJSON_Delete(jc);
		cJSON_Delete(jr);
		free(lc);
		free(lr);
	}
	fclose(fc);
	fclose(fr);
	printf("decode cases: %zu, %zu passed\n", line, n_pass);
	return (int)line;
}

int main(int argc, char **argv)
{
	struct gs_tokenizer *t;
	int lines, cases;

	if (argc != 6) {
		fprintf(stderr, "usage: %s tokenizer.json corpus.jsonl ref.jsonl decode_cases.jsonl decode_ref.jsonl\n",
			argv[0]);
		return 2;
	}
	if (gs_tokenizer_load(argv[1], &t) != GS_OK) {
		fprintf(stderr, "load: %s\n", gs_last_error());
		return 1;
	}
	lines = run_corpus(t, argv[2], argv[3]);
	cases = run_decode_cases(t, argv[4], argv[5]);
	gs_tokenizer_free(t);
	if (lines < 2000 || cases < 1) {
		fprintf(stderr, "too few cases (%d corpus lines, %d decode cases)\n", lines, cases);
		return 1;
	}
	printf("%d mismatches\n", g_fail);
	return g_fail ? 1 : 0;
}
