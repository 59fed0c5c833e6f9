/* Gemma 3 tokenizer internals, shared by tokenizer_load.c, tokenizer_encode.c and
 * tokenizer_decode.c (not part of the API; gs_tokenizer.h is): the loaded tables and the
 * lookups into them. The merge and trie lookups are static inline, as the BPE loop needs.
 *
 * Load builds three hash tables and keeps no JSON: piece strings live in one slab,
 * vocab lookup is open addressing over ids keyed by the piece bytes, merges map
 * (left_id, right_id) -> (rank, new_id), and added tokens form a byte trie so the raw text
 * can be split leftmost-longest before BPE, exactly like HF's AddedVocabulary. */
#ifndef GS_TOKENIZER_INTERNAL_H
#define GS_TOKENIZER_INTERNAL_H

#include "gs_tokenizer.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GS_TOK_BMP 0x10000

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

/* ---- hash lookups (tokenizer_load.c builds the tables) --------------------------------- */

static inline uint64_t gs_tok_mix64(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdull;
	k ^= k >> 33;
	return k;
}

/* Id of the BPE-vocabulary piece s[0..n), -1 when absent (tokenizer_load.c). */
int32_t gs_tok_vocab_get(const struct gs_tokenizer *t, const char *s, size_t n);

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

/* ---- UTF-8 (tokenizer_decode.c) -------------------------------------------------------- */

/* Length of the valid UTF-8 character at s (Rust/HF rules: no overlongs, no surrogates,
 * <= U+10FFFF); 0 when the bytes are complete but invalid, -1 when n is too short to tell. */
int gs_utf8_len(const uint8_t *s, size_t n, uint32_t *cp);

static const char gs_tok_meta[] = "\xE2\x96\x81"; /* U+2581, SentencePiece's space */

#endif
