/* Gemma 3 tokenizer loading: tokenizer.json -> the tables of tokenizer_internal.h (vocab
 * and merge hashes, added-token trie, byte and BMP tables), gs_tokenizer_free and the
 * per-id accessors. */
#include "tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Larger ids would only come from a corrupt file and would make us allocate gigabytes. */
#define GS_TOK_MAX_ID (1 << 24)

/* ---- hashing ------------------------------------------------------------------------- */

static uint64_t gs_tok_hash_bytes(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
	return h ^ (h >> 29);
}

int32_t gs_tok_vocab_get(const struct gs_tokenizer *t, const char *s, size_t n)
{
	uint64_t h = gs_tok_hash_bytes(s, n);
	uint32_t tag = (uint32_t)(h >> 32);
	uint32_t i = (uint32_t)h & t->vocab_mask;
	for (;; i = (i + 1) & t->vocab_mask) {
		const struct gs_tok_slot *sl = &t->vocab_slot[i];
		if (sl->id < 0)
			return -1;
		if (sl->tag == tag && sl->len == n && memcmp(t->slab + sl->off, s, n) == 0)
			return sl->id;
	}
}

/* First insertion wins; a JSON object cannot repeat a key anyway. */
static void gs_tok_vocab_put(struct gs_tokenizer *t, int32_t id)
{
	uint64_t h = gs_tok_hash_bytes(t->piece[id], t->piece_len[id]);
	uint32_t i = (uint32_t)h & t->vocab_mask;
	for (;; i = (i + 1) & t->vocab_mask) {
		int32_t o = t->vocab_slot[i].id;
		if (o < 0) {
			t->vocab_slot[i].tag = (uint32_t)(h >> 32);
			t->vocab_slot[i].len = t->piece_len[id];
			t->vocab_slot[i].off = (uint32_t)(t->piece[id] - t->slab);
			t->vocab_slot[i].id = id;
			return;
		}
		if (t->vocab_slot[i].tag == (uint32_t)(h >> 32) && t->piece_len[o] == t->piece_len[id] &&
		    memcmp(t->piece[o], t->piece[id], t->piece_len[id]) == 0)
			return;
	}
}

/* A later duplicate overwrites an earlier one, as HF's HashMap collect() does. */
static void gs_tok_merge_put(struct gs_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t new_id)
{
	uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
	uint64_t i = gs_tok_mix64(key) & t->merge_mask;
	for (;; i = (i + 1) & t->merge_mask) {
		struct gs_tok_merge *m = &t->merge[i];
		if (m->key == key || m->key == UINT64_MAX) {
			m->key = key;
			m->rank = rank;
			m->new_id = new_id;
			return;
		}
	}
}

static void gs_tok_edge_put(struct gs_tokenizer *t, int32_t node, uint8_t b, int32_t child)
{
	uint32_t key = (uint32_t)node * 256u + b + 1u;
	uint32_t i = (uint32_t)gs_tok_mix64(key) & t->edge_mask;
	while (t->trie_edge[i].key != 0)
		i = (i + 1) & t->edge_mask;
	t->trie_edge[i].key = key;
	t->trie_edge[i].child = child;
}

static uint64_t gs_tok_pow2_at_least(uint64_t n)
{
	uint64_t p = 16;
	while (p < n)
		p <<= 1;
	return p;
}

/* ---- UTF-8 ----------------------------------------------------------------------------- */

static size_t gs_utf8_put(uint32_t cp, char *o)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xC0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xE0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* ---- loading --------------------------------------------------------------------------- */

static enum gs_status gs_tok_read_file(const char *path, char **buf_out, size_t *len_out)
{
	FILE *f = fopen(path, "rb");
	struct stat sb;
	char *buf;

	if (!f)
		return gs_errorf(GS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
	if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
		fclose(f);
		return gs_errorf(GS_ERR_IO, "%s: not a regular file", path);
	}
	buf = malloc((size_t)sb.st_size + 1);
	if (!buf) {
		fclose(f);
		return gs_errorf(GS_ERR_NOMEM, "%s: cannot allocate %lld bytes", path, (long long)sb.st_size);
	}
	if (fread(buf, 1, (size_t)sb.st_size, f) != (size_t)sb.st_size) {
		free(buf);
		fclose(f);
		return gs_errorf(GS_ERR_IO, "%s: short read", path);
	}
	fclose(f);
	buf[sb.st_size] = '\0';
	*buf_out = buf;
	*len_out = (size_t)sb.st_size;
	return GS_OK;
}

static bool gs_json_str_is(const cJSON *o, const char *key, const char *want)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) && strcmp(v->valuestring, want) == 0;
}

/* Only the Gemma pipeline is implemented; anything else must fail loudly, not mis-tokenize. */
static enum gs_status gs_tok_check_pipeline(const char *path, const cJSON *root, struct gs_tokenizer *t)
{
	const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
	const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");

	if (norm && !cJSON_IsNull(norm)) {
		const cJSON *pat = cJSON_GetObjectItemCaseSensitive(norm, "pattern");
		if (!gs_json_str_is(norm, "type", "Replace") || !gs_json_str_is(pat, "String", " ") ||
		    !gs_json_str_is(norm, "content", gs_tok_meta))
			return gs_errorf(GS_ERR_UNSUPPORTED,
					 "%s: normalizer is not Replace(' ' -> U+2581) (only the Gemma 3 pipeline is supported)",
					 path);
		t->space_to_meta = true;
	}
	if (pre && !cJSON_IsNull(pre)) {
		const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pre, "pattern");
		/* Split(' ', MergedWithPrevious) never fires once spaces became U+2581. */
		if (!t->space_to_meta || !gs_json_str_is(pre, "type", "Split") ||
		    !gs_json_str_is(pat, "String", " ") || !gs_json_str_is(pre, "behavior", "MergedWithPrevious"))
			return gs_errorf(GS_ERR_UNSUPPORTED,
					 "%s: pre_tokenizer is not the Gemma 3 Split(' ', MergedWithPrevious)", path);
	}
	return GS_OK;
}

static enum gs_status gs_tok_check_model(const char *path, const cJSON *model, struct gs_tokenizer *t)
{
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
	const cJSON *v;

	if (type && !cJSON_IsString(type))
		return gs_errorf(GS_ERR_FORMAT, "%s: model.type is not a string", path);
	if (type && strcmp(type->valuestring, "BPE") != 0)
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s: model type '%s' is not BPE", path, type->valuestring);
	v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
	if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0.0))
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s: BPE dropout is not supported", path);
	v = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
	if (v && !cJSON_IsNull(v))
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s: continuing_subword_prefix is not supported", path);
	v = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
	if (v && !cJSON_IsNull(v))
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s: end_of_word_suffix is not supported", path);
	v = cJSON_GetObjectItemCaseSensitive(model, "ignore_merges");
	if (cJSON_IsTrue(v))
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s: ignore_merges=true is not supported", path);
	t->byte_fallback = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
	t->fuse_unk = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "fuse_unk"));
	return GS_OK;
}

static enum gs_status gs_tok_check_added(const char *path, const cJSON *added, int32_t *max_id, size_t *bytes)
{
	const cJSON *a;
	size_t k = 0;

	if (!added || cJSON_IsNull(added))
		return GS_OK;
	if (!cJSON_IsArray(added))
		return gs_errorf(GS_ERR_FORMAT, "%s: added_tokens is not an array", path);
	cJSON_ArrayForEach(a, added) {
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(a, "id");
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(a, "content");
		if (!cJSON_IsNumber(id) || !cJSON_IsString(c) || id->valuedouble < 0 ||
		    id->valuedouble >= GS_TOK_MAX_ID || id->valuedouble != (double)id->valueint)
			return gs_errorf(GS_ERR_FORMAT, "%s: added_tokens[%zu] needs an integer id in [0, %d) and a string content",
					 path, k, GS_TOK_MAX_ID);
		if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "lstrip")) ||
		    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "rstrip")) ||
		    cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "single_word")))
			return gs_errorf(GS_ERR_UNSUPPORTED, "%s: added token '%s' uses lstrip/rstrip/single_word",
					 path, c->valuestring);
		if (id->valueint > *max_id)
			*max_id = id->valueint;
		*bytes += strlen(c->valuestring) + 1;
		k++;
	}
	return GS_OK;
}

static enum gs_status gs_tok_build_trie(const char *path, struct gs_tokenizer *t, const cJSON *added,
					size_t total_bytes)
{
	const cJSON *a;

	t->trie_term = malloc((total_bytes + 1) * sizeof(int32_t));
	t->edge_mask = (uint32_t)gs_tok_pow2_at_least(2 * total_bytes + 2) - 1;
	t->trie_edge = calloc((size_t)t->edge_mask + 1, sizeof(*t->trie_edge));
	if (!t->trie_term || !t->trie_edge)
		return gs_errorf(GS_ERR_NOMEM, "%s: out of memory for added tokens", path);
	memset(t->trie_root, 0xff, sizeof(t->trie_root));
	t->trie_nodes = 0;
	cJSON_ArrayForEach(a, added) {
		const char *c = cJSON_GetObjectItemCaseSensitive(a, "content")->valuestring;
		int32_t id = cJSON_GetObjectItemCaseSensitive(a, "id")->valueint;
		size_t n = strlen(c);
		int32_t node = -1;

		if (n == 0)
			continue;
		for (size_t i = 0; i < n; i++) {
			uint8_t b = (uint8_t)c[i];
			int32_t next = node < 0 ? t->trie_root[b] : gs_tok_edge_get(t, node, b);
			if (next < 0) {
				next = t->trie_nodes++;
				t->trie_term[next] = -1;
				if (node < 0)
					t->trie_root[b] = next;
				else
					gs_tok_edge_put(t, node, b, next);
			}
			node = next;
		}
		t->trie_term[node] = id;
	}
	return GS_OK;
}

/* Lay the pieces out in the slab and build the vocab hash (BPE vocab only: added tokens
 * take part in splitting, never in merging). */
static enum gs_status gs_tok_build_vocab(const char *path, struct gs_tokenizer *t, const cJSON *vocab,
					 const cJSON *added, size_t slab_bytes)
{
	const cJSON *e;
	char *w;

	if (slab_bytes >= UINT32_MAX)
		return gs_errorf(GS_ERR_UNSUPPORTED, "%s: pieces total %zu bytes (limit 4 GiB)", path, slab_bytes);
	t->piece = calloc((size_t)t->n_vocab, sizeof(char *));
	t->piece_len = calloc((size_t)t->n_vocab, sizeof(uint32_t));
	t->byte_val = malloc((size_t)t->n_vocab * sizeof(int16_t));
	t->slab = malloc(slab_bytes + 1);
	t->vocab_mask = (uint32_t)gs_tok_pow2_at_least(2 * (uint64_t)cJSON_GetArraySize(vocab) + 2) - 1;
	t->vocab_slot = malloc(((size_t)t->vocab_mask + 1) * sizeof(*t->vocab_slot));
	if (!t->piece || !t->piece_len || !t->byte_val || !t->slab || !t->vocab_slot)
		return gs_errorf(GS_ERR_NOMEM, "%s: out of memory for the vocabulary", path);
	memset(t->vocab_slot, 0xff, ((size_t)t->vocab_mask + 1) * sizeof(*t->vocab_slot));

	w = t->slab;
	cJSON_ArrayForEach(e, vocab) {
		size_t n = strlen(e->string);
		int32_t id = e->valueint;
		if (!t->piece[id]) {
			memcpy(w, e->string, n + 1);
			t->piece[id] = w;
			t->piece_len[id] = (uint32_t)n;
			w += n + 1;
		}
		gs_tok_vocab_put(t, id);
	}
	/* HF decodes an id through the added vocabulary first. */
	cJSON_ArrayForEach(e, added) {
		const char *c = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
		int32_t id = cJSON_GetObjectItemCaseSensitive(e, "id")->valueint;
		size_t n = strlen(c);
		memcpy(w, c, n + 1);
		t->piece[id] = w;
		t->piece_len[id] = (uint32_t)n;
		w += n + 1;
	}
	return GS_OK;
}

static enum gs_status gs_tok_build_merges(const char *path, struct gs_tokenizer *t, const cJSON *merges)
{
	size_t n = (size_t)cJSON_GetArraySize(merges);
	size_t cap = 256, k = 0;
	char *cat = malloc(cap);
	const cJSON *m;
	enum gs_status st = GS_OK;

	t->merge_mask = gs_tok_pow2_at_least(2 * (uint64_t)n + 2) - 1;
	t->merge = malloc((t->merge_mask + 1) * sizeof(*t->merge));
	if (!cat || !t->merge) {
		st = gs_errorf(GS_ERR_NOMEM, "%s: out of memory for %zu merges", path, n);
		goto out_free_cat;
	}
	for (uint64_t i = 0; i <= t->merge_mask; i++)
		t->merge[i].key = UINT64_MAX;

	cJSON_ArrayForEach(m, merges) {
		const char *a, *b;
		size_t la, lb;
		int32_t ia, ib, inew;

		if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
		    cJSON_IsString(m->child->next)) {
			a = m->child->valuestring;
			b = m->child->next->valuestring;
			la = strlen(a);
			lb = strlen(b);
		} else if (cJSON_IsString(m) && strchr(m->valuestring, ' ')) {
			/* Older files: "left right". */
			a = m->valuestring;
			la = (size_t)(strchr(a, ' ') - a);
			b = a + la + 1;
			lb = strlen(b);
		} else {
			st = gs_errorf(GS_ERR_FORMAT, "%s: merges[%zu] is neither [left, right] nor \"left right\"",
				       path, k);
			goto out_free_cat;
		}
		if (la + lb + 1 > cap) {
			char *grown;
			cap = 2 * (la + lb + 1);
			grown = realloc(cat, cap);
			if (!grown) {
				st = gs_errorf(GS_ERR_NOMEM, "%s: out of memory", path);
				goto out_free_cat;
			}
			cat = grown;
		}
		memcpy(cat, a, la);
		memcpy(cat + la, b, lb);
		ia = gs_tok_vocab_get(t, cat, la);
		ib = gs_tok_vocab_get(t, cat + la, lb);
		inew = gs_tok_vocab_get(t, cat, la + lb);
		if (ia < 0 || ib < 0 || inew < 0) {
			cat[la + lb] = '\0';
			st = gs_errorf(GS_ERR_FORMAT, "%s: merges[%zu]: piece '%.*s' is not in the vocab", path, k,
				       ia < 0 ? (int)la : ib < 0 ? (int)lb : (int)(la + lb),
				       ia < 0 ? cat : ib < 0 ? cat + la : cat);
			goto out_free_cat;
		}
		gs_tok_merge_put(t, ia, ib, (int32_t)k, inew);
		k++;
	}
out_free_cat:
	free(cat);
	return st;
}

/* Tables derived from the pieces: byte tokens, BMP char ids, longest decoded piece. */
static void gs_tok_build_derived(struct gs_tokenizer *t)
{
	char name[8];
	char u[4];

	for (int b = 0; b < 256; b++) {
		snprintf(name, sizeof(name), "<0x%02X>", b);
		t->byte_id[b] = gs_tok_vocab_get(t, name, 6);
	}
	for (int32_t id = 0; id < t->n_vocab; id++) {
		const char *p = t->piece[id];
		size_t len = 0;
		t->byte_val[id] = -1;
		if (!p)
			continue;
		/* HF's ByteFallback decoder recognises any 6-char "<0xHH>" token by its text. */
		if (t->piece_len[id] == 6 && memcmp(p, "<0x", 3) == 0 && p[5] == '>') {
			char *end;
			char hex[3] = { p[3], p[4], 0 };
			long v = strtol(hex, &end, 16);
			if (end == hex + 2 && hex[0] != '+' && hex[0] != '-') {
				t->byte_val[id] = (int16_t)v;
				continue;
			}
		}
		for (uint32_t i = 0; i < t->piece_len[id]; i++)
			len += (i + 2 < t->piece_len[id] && memcmp(p + i, gs_tok_meta, 3) == 0) ? (i += 2, 1) : 1;
		if (len > t->max_piece_len)
			t->max_piece_len = len;
	}
	for (uint32_t cp = 0; cp < GS_TOK_BMP; cp++) {
		if (cp >= 0xD800 && cp <= 0xDFFF) {
			t->bmp_id[cp] = -1;
			continue;
		}
		t->bmp_id[cp] = gs_tok_vocab_get(t, u, gs_utf8_put(cp, u));
	}
}

enum gs_status gs_tokenizer_load(const char *path, struct gs_tokenizer **out)
{
	struct gs_tokenizer *t;
	char *buf = NULL;
	size_t len = 0, slab_bytes = 0, added_bytes = 0;
	cJSON *root;
	const cJSON *model, *vocab, *merges, *added, *e;
	int32_t max_id = -1;
	enum gs_status st;

	*out = NULL;
	GS_TRY(gs_tok_read_file(path, &buf, &len));
	root = cJSON_ParseWithLength(buf, len);
	if (!root) {
		const char *ep = cJSON_GetErrorPtr();
		long off = (ep && ep >= buf && ep <= buf + len) ? (long)(ep - buf) : -1;
		free(buf);
		return gs_errorf(GS_ERR_FORMAT, "%s: not valid JSON (parse error near byte %ld)", path, off);
	}
	free(buf);

	t = calloc(1, sizeof(*t));
	if (!t) {
		st = gs_errorf(GS_ERR_NOMEM, "%s: out of memory", path);
		goto out_free_json;
	}
	t->unk_id = -1;
	t->bos_id = -1;
	model = cJSON_GetObjectItemCaseSensitive(root, "model");
	if (!cJSON_IsObject(model)) {
		st = gs_errorf(GS_ERR_FORMAT, "%s: no \"model\" object", path);
		goto out_free_tok;
	}
	if ((st = gs_tok_check_model(path, model, t)) != GS_OK)
		goto out_free_tok;
	if ((st = gs_tok_check_pipeline(path, root, t)) != GS_OK)
		goto out_free_tok;
	vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
	merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
	if (!cJSON_IsObject(vocab) || !vocab->child) {
		st = gs_errorf(GS_ERR_FORMAT, "%s: model.vocab is missing or not a non-empty object", path);
		goto out_free_tok;
	}
	if (!cJSON_IsArray(merges)) {
		st = gs_errorf(GS_ERR_FORMAT, "%s: model.merges is missing or not an array", path);
		goto out_free_tok;
	}
	cJSON_ArrayForEach(e, vocab) {
		if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= GS_TOK_MAX_ID ||
		    e->valuedouble != (double)e->valueint) {
			st = gs_errorf(GS_ERR_FORMAT, "%s: vocab entry '%s' has no integer id in [0, %d)", path,
				       e->string, GS_TOK_MAX_ID);
			goto out_free_tok;
		}
		if (e->valueint > max_id)
			max_id = e->valueint;
		slab_bytes += strlen(e->string) + 1;
	}
	added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
	if ((st = gs_tok_check_added(path, added, &max_id, &added_bytes)) != GS_OK)
		goto out_free_tok;
	t->n_vocab = max_id + 1;
	t->bmp_id = malloc(GS_TOK_BMP * sizeof(int32_t));
	if (!t->bmp_id) {
		st = gs_errorf(GS_ERR_NOMEM, "%s: out of memory", path);
		goto out_free_tok;
	}
	if ((st = gs_tok_build_vocab(path, t, vocab, added, slab_bytes + added_bytes)) != GS_OK)
		goto out_free_tok;
	if ((st = gs_tok_build_merges(path, t, merges)) != GS_OK)
		goto out_free_tok;
	if ((st = gs_tok_build_trie(path, t, added, added_bytes)) != GS_OK)
		goto out_free_tok;
	gs_tok_build_derived(t);

	e = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
	if (cJSON_IsString(e))
		t->unk_id = gs_tok_vocab_get(t, e->valuestring, strlen(e->valuestring));
	t->bos_id = gs_tokenizer_find(t, "<bos>");
	cJSON_Delete(root);
	*out = t;
	return GS_OK;

out_free_tok:
	gs_tokenizer_free(t);
out_free_json:
	cJSON_Delete(root);
	return st;
}

void gs_tokenizer_free(struct gs_tokenizer *t)
{
	if (!t)
		return;
	free(t->piece);
	free(t->piece_len);
	free(t->byte_val);
	free(t->slab);
	free(t->vocab_slot);
	free(t->merge);
	free(t->bmp_id);
	free(t->trie_term);
	free(t->trie_edge);
	free(t);
}

int32_t gs_tokenizer_n_vocab(const struct gs_tokenizer *t)
{
	return t->n_vocab;
}

const char *gs_tokenizer_piece(const struct gs_tokenizer *t, int32_t id)
{
	if (id < 0 || id >= t->n_vocab)
		return NULL;
	return t->piece[id];
}

int gs_tokenizer_byte_value(const struct gs_tokenizer *t, int32_t id)
{
	if (id < 0 || id >= t->n_vocab)
		return -1;
	return t->byte_val[id];
}

size_t gs_tokenizer_max_piece_len(const struct gs_tokenizer *t)
{
	return t->max_piece_len;
}
