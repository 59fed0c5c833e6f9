/* Gemma 3 tokenizer: HF tokenizer.json BPE with byte fallback, decode, incremental detok.
 *
 * Load builds three hash tables and keeps no JSON: piece strings live in one slab,
 * vocab lookup is open addressing over ids keyed by the piece bytes, merges map
 * (left_id, right_id) -> (rank, new_id), and added tokens form a byte trie so the raw text
 * can be split leftmost-longest before BPE, exactly like HF's AddedVocabulary. */
#include "gs_tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Larger ids would only come from a corrupt file and would make us allocate gigabytes. */
#define GS_TOK_MAX_ID (1 << 24)
#define GS_TOK_BMP    0x10000

struct gs_tok_merge {
	uint64_t key;    /* (left_id << 32) | right_id; UINT64_MAX = empty slot */
	int32_t  rank;   /* index in the merges list: lower merges first */
	int32_t  new_id; /* id of left piece + right piece */
};

/* Tag, length and slab offset live in the slot so a probe costs one cache miss for the
 * slot and one for the string, not three pointer chases (load does ~1.5M lookups). */
struct gs_tok_slot {
	uint32_t tag;    /* high hash bits */
	uint32_t len;
	uint32_t off;    /* piece offset in slab */
	int32_t  id;     /* -1 = empty */
};

struct gs_tok_edge {
	uint32_t key;    /* node * 256 + byte + 1; 0 = empty slot */
	int32_t  child;
};

struct gs_tokenizer {
	int32_t              n_vocab;        /* max id + 1 over vocab and added tokens */
	char               **piece;          /* [n_vocab] NUL-terminated, into slab; NULL = no such id */
	uint32_t            *piece_len;      /* [n_vocab] bytes */
	int16_t             *byte_val;       /* [n_vocab] 0..255 for <0xNN> pieces, else -1 */
	char                *slab;           /* all piece strings */

	struct gs_tok_slot  *vocab_slot;     /* [vocab_mask + 1] BPE-model ids */
	uint32_t             vocab_mask;
	struct gs_tok_merge *merge;          /* [merge_mask + 1] */
	uint64_t             merge_mask;
	int32_t             *bmp_id;         /* [GS_TOK_BMP] vocab id of each BMP char, -1 absent */
	int32_t              byte_id[256];   /* id of <0xNN>, -1 absent */
	bool                 byte_fallback;
	bool                 fuse_unk;
	bool                 space_to_meta;  /* normalizer Replace(' ', U+2581) present */
	int32_t              unk_id;         /* -1 when the model has none */
	int32_t              bos_id;         /* -1 when "<bos>" is absent */

	int32_t             *trie_term;      /* [n_nodes] added-token id ending at node, -1 none */
	int32_t              trie_root[256]; /* root children, -1 none */
	struct gs_tok_edge  *trie_edge;      /* [edge_mask + 1] non-root edges */
	uint32_t             edge_mask;
	int32_t              trie_nodes;
	size_t               max_piece_len;  /* longest decoded non-byte piece */
};

/* ---- hashing ------------------------------------------------------------------------- */

static uint64_t gs_tok_hash_bytes(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
	return h ^ (h >> 29);
}

static uint64_t gs_tok_mix64(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return k;
}

static int32_t gs_tok_vocab_get(const struct gs_tokenizer *t, const char *s, size_t n)
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

static inline const struct gs_tok_merge *gs_tok_merge_get(const struct gs_tokenizer *t,
							   int32_t a, int32_t b)
{
	uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
	uint64_t i = gs_tok_mix64(key) & t->merge_mask;
	for (;; i = (i + 1) & t->merge_mask) {
		const struct gs_tok_merge *m = &t->merge[i];
		if (m->key == key)
			return m;
		if (m->key == UINT64_MAX)
			return NULL;
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

static inline int32_t gs_tok_edge_get(const struct gs_tokenizer *t, int32_t node, uint8_t b)
{
	uint32_t key = (uint32_t)node * 256u + b + 1u;
	uint32_t i = (uint32_t)gs_tok_mix64(key) & t->edge_mask;
	for (;; i = (i + 1) & t->edge_mask) {
		if (t->trie_edge[i].key == key)
			return t->trie_edge[i].child;
		if (t->trie_edge[i].key == 0)
			return -1;
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

/* Length of the valid UTF-8 character at s (Rust/HF rules: no overlongs, no surrogates,
 * <= U+10FFFF); 0 when the bytes are complete but invalid, -1 when n is too short to tell. */
static int gs_utf8_len(const uint8_t *s, size_t n, uint32_t *cp)
{
	uint8_t c = s[0];
	uint8_t lo = 0x80, hi = 0xBF;
	int len;
	uint32_t v;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xC2 && c <= 0xDF) {
		len = 2;
		v = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		len = 3;
		v = c & 0x0F;
		if (c == 0xE0)
			lo = 0xA0;
		if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4;
		v = c & 0x07;
		if (c == 0xF0)
			lo = 0x90;
		if (c == 0xF4)
			hi = 0x8F;
	} else {
		return 0;
	}
	for (int i = 1; i < len; i++) {
		if ((size_t)i >= n)
			return -1;
		if (s[i] < lo || s[i] > hi)
			return 0;
		lo = 0x80;
		hi = 0xBF;
		v = (v << 6) | (s[i] & 0x3F);
	}
	*cp = v;
	return len;
}

static bool gs_utf8_valid(const uint8_t *s, size_t n)
{
	uint32_t cp;
	for (size_t i = 0; i < n;) {
		int l = gs_utf8_len(s + i, n - i, &cp);
		if (l <= 0)
			return false;
		i += (size_t)l;
	}
	return true;
}

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

static const char gs_tok_meta[] = "\xE2\x96\x81"; /* U+2581, SentencePiece's space */
static const char gs_tok_fffd[] = "\xEF\xBF\xBD";

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

/* Longest added token starting at s, or -1; its length in *mlen. */
static int32_t gs_tok_added_match(const struct gs_tokenizer *t, const uint8_t *s, size_t n, size_t *mlen)
{
	int32_t node, best = -1;

	if (n == 0 || (node = t->trie_root[s[0]]) < 0)
		return -1;
	for (size_t i = 1;; i++) {
		if (t->trie_term[node] >= 0) {
			best = t->trie_term[node];
			*mlen = i;
		}
		if (i == n || (node = gs_tok_edge_get(t, node, s[i])) < 0)
			return best;
	}
}

int32_t gs_tokenizer_find(const struct gs_tokenizer *t, const char *piece)
{
	size_t n = strlen(piece), mlen = 0;
	int32_t id = gs_tok_added_match(t, (const uint8_t *)piece, n, &mlen);

	if (id >= 0 && mlen == n)
		return id;
	return gs_tok_vocab_get(t, piece, n);
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

/* ---- encoding -------------------------------------------------------------------------- */

struct gs_bpe_entry {
	int32_t rank;
	int32_t pos;    /* index of the left symbol */
	int32_t new_id;
};

struct gs_bpe_work {
	int32_t             *sym;   /* [cap] id per symbol, -1 once merged into its left neighbour */
	int32_t             *prev;  /* [cap] */
	int32_t             *next;  /* [cap] -1 = last */
	struct gs_bpe_entry *heap;  /* min-heap on (rank, pos), lazily invalidated */
	size_t               heap_n, heap_cap;
};

static inline bool gs_bpe_less(const struct gs_bpe_entry *a, const struct gs_bpe_entry *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static bool gs_bpe_push(struct gs_bpe_work *w, int32_t rank, int32_t pos, int32_t new_id)
{
	size_t i;

	if (w->heap_n == w->heap_cap) {
		size_t cap = w->heap_cap ? 2 * w->heap_cap : 64;
		struct gs_bpe_entry *h = realloc(w->heap, cap * sizeof(*h));
		if (!h)
			return false;
		w->heap = h;
		w->heap_cap = cap;
	}
	i = w->heap_n++;
	struct gs_bpe_entry e = { rank, pos, new_id };
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!gs_bpe_less(&e, &w->heap[p]))
			break;
		w->heap[i] = w->heap[p];
		i = p;
	}
	w->heap[i] = e;
	return true;
}

static struct gs_bpe_entry gs_bpe_pop(struct gs_bpe_work *w)
{
	struct gs_bpe_entry top = w->heap[0], last = w->heap[--w->heap_n];
	size_t i = 0, n = w->heap_n;

	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= n)
			break;
		if (c + 1 < n && gs_bpe_less(&w->heap[c + 1], &w->heap[c]))
			c++;
		if (!gs_bpe_less(&w->heap[c], &last))
			break;
		w->heap[i] = w->heap[c];
		i = c;
	}
	if (n)
		w->heap[i] = last;
	return top;
}

static int32_t gs_tok_char_id(const struct gs_tokenizer *t, uint32_t cp, const char *s, int clen)
{
	if (cp == ' ' && t->space_to_meta)
		cp = 0x2581;
	if (cp < GS_TOK_BMP)
		return t->bmp_id[cp];
	return gs_tok_vocab_get(t, s, (size_t)clen);
}

/* BPE one word (text between added tokens, already valid UTF-8), HF Word::merge_all order:
 * pop the lowest (rank, pos); skip entries whose symbol died or whose current pair no longer
 * yields the same new id. Appends the ids to ids[*n]. */
static enum gs_status gs_bpe_word(const struct gs_tokenizer *t, const char *s, size_t len,
				  struct gs_bpe_work *w, int32_t *ids, size_t *n)
{
	int32_t nsym = 0;
	bool last_unk = false;

	for (size_t i = 0; i < len;) {
		uint32_t cp;
		int clen = gs_utf8_len((const uint8_t *)s + i, len - i, &cp);
		int32_t id = gs_tok_char_id(t, cp, s + i, clen);
		bool bytes_ok = t->byte_fallback;

		if (id >= 0) {
			w->sym[nsym++] = id;
			last_unk = false;
		} else {
			for (int b = 0; b < clen && bytes_ok; b++)
				bytes_ok = t->byte_id[(uint8_t)s[i + b]] >= 0;
			if (bytes_ok) {
				for (int b = 0; b < clen; b++)
					w->sym[nsym++] = t->byte_id[(uint8_t)s[i + b]];
				last_unk = false;
			} else if (t->unk_id < 0) {
				return gs_errorf(GS_ERR_UNSUPPORTED, "character U+%04X is not in the vocab and there is no unk token", cp);
			} else if (!(t->fuse_unk && last_unk)) {
				w->sym[nsym++] = t->unk_id;
				last_unk = true;
			}
		}
		i += (size_t)clen;
	}
	if (nsym == 0)
		return GS_OK;
	w->heap_n = 0;
	for (int32_t i = 0; i < nsym; i++) {
		w->prev[i] = i - 1;
		w->next[i] = i + 1 < nsym ? i + 1 : -1;
		if (i + 1 < nsym) {
			const struct gs_tok_merge *m = gs_tok_merge_get(t, w->sym[i], w->sym[i + 1]);
			if (m && !gs_bpe_push(w, m->rank, i, m->new_id))
				return gs_errorf(GS_ERR_NOMEM, "out of memory encoding %zu bytes", len);
		}
	}
	while (w->heap_n) {
		struct gs_bpe_entry top = gs_bpe_pop(w);
		int32_t pos = top.pos, nx, pv;
		const struct gs_tok_merge *m;

		if (w->sym[pos] < 0 || (nx = w->next[pos]) < 0)
			continue;
		m = gs_tok_merge_get(t, w->sym[pos], w->sym[nx]);
		if (!m || m->new_id != top.new_id)
			continue;
		w->sym[pos] = top.new_id;
		w->sym[nx] = -1;
		w->next[pos] = w->next[nx];
		if (w->next[nx] >= 0)
			w->prev[w->next[nx]] = pos;
		pv = w->prev[pos];
		if (pv >= 0 && (m = gs_tok_merge_get(t, w->sym[pv], w->sym[pos])) &&
		    !gs_bpe_push(w, m->rank, pv, m->new_id))
			return gs_errorf(GS_ERR_NOMEM, "out of memory encoding %zu bytes", len);
		nx = w->next[pos];
		if (nx >= 0 && (m = gs_tok_merge_get(t, w->sym[pos], w->sym[nx])) &&
		    !gs_bpe_push(w, m->rank, pos, m->new_id))
			return gs_errorf(GS_ERR_NOMEM, "out of memory encoding %zu bytes", len);
	}
	for (int32_t i = 0; i >= 0; i = w->next[i])
		ids[(*n)++] = w->sym[i];
	return GS_OK;
}

enum gs_status gs_tokenizer_encode(const struct gs_tokenizer *t, const char *text, size_t len,
				   bool add_bos, int32_t **ids_out, size_t *n_out)
{
	const uint8_t *u = (const uint8_t *)text;
	struct gs_bpe_work w = { 0 };
	int32_t *ids;
	size_t n = 0, seg = 0, pos = 0;
	enum gs_status st = GS_OK;

	*ids_out = NULL;
	*n_out = 0;
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		int l = gs_utf8_len(u + i, len - i, &cp);
		if (l <= 0)
			return gs_errorf(GS_ERR_INVALID_ARG, "text is not valid UTF-8 at byte %zu", i);
		i += (size_t)l;
	}
	if (add_bos && t->bos_id < 0)
		return gs_errorf(GS_ERR_UNSUPPORTED, "add_bos requested but the tokenizer has no <bos>");
	/* Every token covers at least one input byte: len + 1 ids is a hard bound. */
	ids = malloc((len + 1) * sizeof(int32_t));
	w.sym = malloc((len + 1) * sizeof(int32_t));
	w.prev = malloc((len + 1) * sizeof(int32_t));
	w.next = malloc((len + 1) * sizeof(int32_t));
	if (!ids || !w.sym || !w.prev || !w.next) {
		st = gs_errorf(GS_ERR_NOMEM, "out of memory encoding %zu bytes", len);
		goto out_free_work;
	}
	if (add_bos)
		ids[n++] = t->bos_id;
	while (pos < len) {
		size_t mlen = 0;
		int32_t id = gs_tok_added_match(t, u + pos, len - pos, &mlen);
		if (id < 0) {
			pos++;
			continue;
		}
		if (pos > seg && (st = gs_bpe_word(t, text + seg, pos - seg, &w, ids, &n)) != GS_OK)
			goto out_free_work;
		ids[n++] = id;
		pos += mlen;
		seg = pos;
	}
	if (len > seg && (st = gs_bpe_word(t, text + seg, len - seg, &w, ids, &n)) != GS_OK)
		goto out_free_work;
	*ids_out = ids;
	*n_out = n;
	ids = NULL;
out_free_work:
	free(w.heap);
	free(w.sym);
	free(w.prev);
	free(w.next);
	free(ids);
	return st;
}

/* ---- decoding -------------------------------------------------------------------------- */

/* Text of a non-byte piece with U+2581 turned back into ' '; o must hold piece_len bytes. */
static size_t gs_tok_piece_text(const struct gs_tokenizer *t, int32_t id, char *o)
{
	const char *p = t->piece[id];
	uint32_t n = t->piece_len[id];
	size_t k = 0;

	for (uint32_t i = 0; i < n; i++) {
		if (i + 2 < n && memcmp(p + i, gs_tok_meta, 3) == 0) {
			o[k++] = ' ';
			i += 2;
		} else {
			o[k++] = p[i];
		}
	}
	return k;
}

/* A finished <0xNN> run: its bytes when valid UTF-8, else U+FFFD per byte (HF ByteFallback). */
static size_t gs_tok_run_text(const uint8_t *run, size_t n, char *o)
{
	if (gs_utf8_valid(run, n)) {
		memcpy(o, run, n);
		return n;
	}
	for (size_t i = 0; i < n; i++)
		memcpy(o + 3 * i, gs_tok_fffd, 3);
	return 3 * n;
}

enum gs_status gs_tokenizer_decode(const struct gs_tokenizer *t, const int32_t *ids, size_t n,
				   char **text_out, size_t *len_out)
{
	size_t cap = 1, k = 0, run_start = 0, run_n = 0;
	char *o;

	*text_out = NULL;
	*len_out = 0;
	for (size_t i = 0; i < n; i++) {
		if (ids[i] < 0 || ids[i] >= t->n_vocab)
			return gs_errorf(GS_ERR_RANGE, "token id %d at position %zu is outside [0, %d)", ids[i], i,
					 t->n_vocab);
		/* A byte token may become 3 bytes of U+FFFD. */
		cap += t->byte_val[ids[i]] >= 0 ? 3 : t->piece_len[ids[i]];
	}
	o = malloc(cap);
	if (!o)
		return gs_errorf(GS_ERR_NOMEM, "out of memory decoding %zu tokens", n);
	for (size_t i = 0; i <= n; i++) {
		int b = i < n ? t->byte_val[ids[i]] : -1;
		/* HF drops ids without a piece before decoding, so they do not end a byte run. */
		if (i < n && !t->piece[ids[i]])
			continue;
		if (b >= 0) {
			if (run_n++ == 0)
				run_start = k;
			o[k++] = (char)b;
			continue;
		}
		if (run_n && !gs_utf8_valid((const uint8_t *)o + run_start, run_n)) {
			k = run_start;
			for (size_t j = 0; j < run_n; j++, k += 3)
				memcpy(o + k, gs_tok_fffd, 3);
		}
		run_n = 0;
		if (i < n)
			k += gs_tok_piece_text(t, ids[i], o + k);
	}
	o[k] = '\0';
	*text_out = o;
	*len_out = k;
	return GS_OK;
}

/* ---- incremental detokenizer ----------------------------------------------------------- */

size_t gs_detok_max_out(const struct gs_tokenizer *t)
{
	return 3 * GS_DETOK_PENDING + t->max_piece_len;
}

void gs_detok_init(struct gs_detok *d, const struct gs_tokenizer *t)
{
	d->tok = t;
	d->n_pending = 0;
}

size_t gs_detok_flush(struct gs_detok *d, char *out, size_t cap)
{
	size_t need;

	if (d->n_pending == 0)
		return 0;
	need = gs_utf8_valid(d->pending, d->n_pending) ? d->n_pending : 3 * (size_t)d->n_pending;
	if (need > cap)
		return need;
	gs_tok_run_text(d->pending, d->n_pending, out);
	d->n_pending = 0;
	return need;
}

/* The pending run is full: emit its complete valid characters (or all of it as U+FFFD when
 * it holds an impossible sequence) and keep an incomplete tail. */
static size_t gs_detok_spill(struct gs_detok *d, char *out, size_t cap)
{
	size_t i = 0, keep;
	uint32_t cp;

	while (i < d->n_pending) {
		int l = gs_utf8_len(d->pending + i, d->n_pending - i, &cp);
		if (l == 0)
			return gs_detok_flush(d, out, cap);
		if (l < 0)
			break;
		i += (size_t)l;
	}
	if (i > cap)
		return i;
	memcpy(out, d->pending, i);
	keep = d->n_pending - i;
	memmove(d->pending, d->pending + i, keep);
	d->n_pending = (uint32_t)keep;
	return i;
}

size_t gs_detok_push(struct gs_detok *d, int32_t id, char *out, size_t cap)
{
	const struct gs_tokenizer *t = d->tok;
	size_t need, run, k;
	int b;

	if (id < 0 || id >= t->n_vocab || !t->piece[id])
		return 0;
	b = t->byte_val[id];
	if (b >= 0) {
		k = 0;
		if (d->n_pending == GS_DETOK_PENDING) {
			k = gs_detok_spill(d, out, cap);
			if (k > cap)
				return k; /* nothing consumed */
		}
		d->pending[d->n_pending++] = (uint8_t)b;
		return k;
	}
	run = d->n_pending == 0 ? 0 : gs_utf8_valid(d->pending, d->n_pending) ? d->n_pending : 3 * (size_t)d->n_pending;
	need = run + t->piece_len[id]; /* decoded piece is never longer than the raw piece */
	if (need > cap) {
		char tmp[512];
		/* Compute the exact size only when the cheap bound does not fit. */
		need = run + (t->piece_len[id] <= sizeof(tmp) ? gs_tok_piece_text(t, id, tmp) : t->piece_len[id]);
		if (need > cap)
			return need;
	}
	k = d->n_pending ? gs_tok_run_text(d->pending, d->n_pending, out) : 0;
	d->n_pending = 0;
	return k + gs_tok_piece_text(t, id, out + k);
}

/* ---- benchmark ------------------------------------------------------------------------- */

static double gs_tok_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Deterministic clinical-note text of about n bytes (ASCII plus a few multi-byte units). */
static char *gs_tok_bench_text(size_t n, size_t *len_out)
{
	static const char *const drug[] = { "metoprolol", "lisinopril", "atorvastatin", "metformin",
					    "apixaban", "furosemide", "amoxicillin-clavulanate", "levothyroxine" };
	static const char *const freq[] = { "PO BID", "PO daily", "IV q8h", "PO TID", "SC qHS", "PRN" };
	static const char *const line[] = {
		"Patient is a %d y/o M with hx of HTN, T2DM and CKD stage %d, presenting with SOB x%d days.\n",
		"Vitals: BP %d/%d mmHg, HR %d bpm, SpO2 %d%% on RA, T 37.%d \xC2\xB0""C.\n",
		"Labs: Na %d, K 4.%d, Cr 1.%d mg/dL, eGFR %d mL/min/1.73m\xC2\xB2, troponin <0.0%d ng/mL.\n",
		"Assessment/Plan:\t#%d Acute on chronic HFrEF (EF %d%%) - diurese, daily weights, strict I/O.\n",
		"  - Continue home meds; f/u in %d weeks with cardiology.  Pt verbalized understanding (%d/%d).\n",
	};
	char *buf = malloc(n + 512);
	size_t k = 0;
	uint32_t s = 12345;

	if (!buf)
		return NULL;
	while (k < n) {
		uint32_t r[6];
		for (int i = 0; i < 6; i++) {
			s = s * 1664525u + 1013904223u;
			r[i] = s >> 8;
		}
		if (r[5] % 3 == 0)
			k += (size_t)snprintf(buf + k, 512, "%s %u mg %s\n", drug[r[0] % 8], 5 * (1 + r[1] % 40),
					      freq[r[2] % 6]);
		else
			k += (size_t)snprintf(buf + k, 512, line[r[5] % 5], (int)(20 + r[0] % 70), (int)(r[1] % 9),
					      (int)(60 + r[2] % 100), (int)(r[3] % 100), (int)(r[4] % 10), 3);
	}
	buf[k] = '\0';
	*len_out = k;
	return buf;
}

enum gs_status gs_tokenizer_bench(const char *tokenizer_path, FILE *out)
{
	struct gs_tokenizer *t;
	char *text;
	int32_t *ids = NULL;
	size_t len, n = 0, cut;
	double t0, t_load, t_enc, t_long;
	enum gs_status st;

	t0 = gs_tok_now();
	GS_TRY(gs_tokenizer_load(tokenizer_path, &t));
	t_load = gs_tok_now() - t0;
	text = gs_tok_bench_text((size_t)1 << 20, &len);
	if (!text) {
		st = gs_errorf(GS_ERR_NOMEM, "bench: out of memory");
		goto out_free_tok;
	}
	t0 = gs_tok_now();
	if ((st = gs_tokenizer_encode(t, text, len, true, &ids, &n)) != GS_OK)
		goto out_free_text;
	t_enc = gs_tok_now() - t0;
	fprintf(out, "tokenizer load:    %.3f s (%d ids)\n", t_load, t->n_vocab);
	fprintf(out, "encode 1 MiB text: %.3f s, %.1f MB/s, %zu tokens (%.2f bytes/token)\n", t_enc,
		(double)len / 1e6 / t_enc, n, (double)len / (double)n);
	free(ids);
	ids = NULL;

	/* A prefix holding about 128K tokens, cut at a character boundary. */
	cut = (size_t)(131072.0 * (double)len / (double)n * 1.01);
	if (cut > len)
		cut = len;
	while (cut < len && ((uint8_t)text[cut] & 0xC0) == 0x80)
		cut++;
	t0 = gs_tok_now();
	if ((st = gs_tokenizer_encode(t, text, cut, true, &ids, &n)) != GS_OK)
		goto out_free_text;
	t_long = gs_tok_now() - t0;
	fprintf(out, "encode long prompt: %zu tokens (%zu bytes) in %.3f s\n", n, cut, t_long);
	free(ids);
out_free_text:
	free(text);
out_free_tok:
	gs_tokenizer_free(t);
	return st;
}
