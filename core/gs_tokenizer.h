/* gemmashard core: Gemma 3 tokenizer (HF tokenizer.json, BPE with byte fallback) and an
 * incremental, UTF-8-safe detokenizer.
 *
 * Behaviour matches Hugging Face `tokenizers` for the Gemma 3 tokenizer.json:
 *   encode: added tokens (<start_of_turn>, "\n\n", "<unused94>", ...) are split out of the raw
 *           text first (leftmost-longest); every piece in between has ' ' replaced by U+2581
 *           and is merged as ONE BPE word (lowest merge rank first, ties leftmost); characters
 *           absent from the vocabulary become one <0xNN> token per UTF-8 byte.
 *   decode: U+2581 -> ' ', runs of <0xNN> tokens are joined into bytes (a run that is not
 *           valid UTF-8 becomes one U+FFFD per byte, as HF's ByteFallback decoder does),
 *           everything concatenated. Special tokens are not skipped.
 * A loaded tokenizer is immutable: any number of threads may encode/decode with it at once. */
#ifndef GS_TOKENIZER_H
#define GS_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gs_status.h"

struct gs_tokenizer;

/* Well-known Gemma 3 ids (reference/gemma3.md 5.3); look others up with gs_tokenizer_find. */
enum {
	GS_TOK_PAD           = 0,
	GS_TOK_EOS           = 1,
	GS_TOK_BOS           = 2,
	GS_TOK_UNK           = 3,
	GS_TOK_START_OF_TURN = 105,
	GS_TOK_END_OF_TURN   = 106,
};

/* Load tokenizer.json. Fails (never aborts) with a gs_errorf reason naming the file when it is
 * unreadable, not JSON, not a BPE model, lacks vocab/merges, or has merges whose pieces are not
 * in the vocabulary. */
enum gs_status gs_tokenizer_load(const char *path, struct gs_tokenizer **out);
void           gs_tokenizer_free(struct gs_tokenizer *t);

/* Highest id + 1 over the BPE vocabulary and the added tokens (262145 for Gemma 3). */
int32_t gs_tokenizer_n_vocab(const struct gs_tokenizer *t);

/* Encode len bytes of UTF-8 text (need not be NUL-terminated). add_bos prepends <bos>
 * (HF add_special_tokens=True); use false for a rendered chat template, which has "<bos>".
 * *ids_out is malloc'd (caller frees; NULL when *n_out == 0 is NOT guaranteed).
 * Invalid UTF-8 (overlong, surrogate, truncated, > U+10FFFF) -> GS_ERR_INVALID_ARG naming the
 * byte offset: HF only ever sees valid Unicode strings, so there is no exact answer to match. */
enum gs_status gs_tokenizer_encode(const struct gs_tokenizer *t, const char *text, size_t len,
				   bool add_bos, int32_t **ids_out, size_t *n_out);

/* Decode ids to text (malloc'd, NUL-terminated, *len_out excludes the NUL; caller frees).
 * An id < 0 or >= n_vocab -> GS_ERR_RANGE. */
enum gs_status gs_tokenizer_decode(const struct gs_tokenizer *t, const int32_t *ids, size_t n,
				   char **text_out, size_t *len_out);

/* Raw piece of an id ("▁the", "<0xE2>", "<end_of_turn>"), or NULL when out of range/unused. */
const char *gs_tokenizer_piece(const struct gs_tokenizer *t, int32_t id);
/* Id of an exact piece (vocabulary or added token), -1 when absent. */
int32_t     gs_tokenizer_find(const struct gs_tokenizer *t, const char *piece);
/* Byte value of a byte-fallback token <0xNN>, or -1 when id is not one. */
int         gs_tokenizer_byte_value(const struct gs_tokenizer *t, int32_t id);
/* Longest decoded text one non-byte token can produce (sizes gs_detok_push buffers). */
size_t      gs_tokenizer_max_piece_len(const struct gs_tokenizer *t);

/* Incremental detokenizer: plain struct, embed it per sequence, no allocation per token.
 *
 * Byte-fallback tokens are held until the run of <0xNN> tokens ends (the next ordinary token
 * or flush), because HF turns a whole run into U+FFFD per byte when any part of it is invalid:
 * holding it is what makes pushes + flush equal gs_tokenizer_decode() exactly. A run longer
 * than GS_DETOK_PENDING bytes is the one exception: its complete valid characters are emitted
 * early to bound the state; it can only differ from decode when such a run is also invalid. */
#define GS_DETOK_PENDING 128

struct gs_detok {
	const struct gs_tokenizer *tok;
	uint32_t                   n_pending;                  /* bytes held in pending */
	uint8_t                    pending[GS_DETOK_PENDING];  /* current <0xNN> run */
};

/* Bytes a gs_detok_push/flush can need at most: size `out` with this and it always fits. */
size_t gs_detok_max_out(const struct gs_tokenizer *t);

void gs_detok_init(struct gs_detok *d, const struct gs_tokenizer *t);
/* Append the text that token id completes to out. Returns the number of bytes written.
 * If that text does not fit in cap, nothing is written, the state is unchanged, and the
 * return value is the size needed (> cap), like snprintf. Out-of-range ids are ignored
 * (HF's decode drops them too). out is not NUL-terminated. */
size_t gs_detok_push(struct gs_detok *d, int32_t id, char *out, size_t cap);
/* Emit whatever is held (end of stream). Same return contract as gs_detok_push. */
size_t gs_detok_flush(struct gs_detok *d, char *out, size_t cap);

/* Print load time, encode throughput on ~1 MB of clinical text and a 128K-token prompt encode
 * time to out (for `gemmashard bench` and tests/tokenizer/tok_bench). */
enum gs_status gs_tokenizer_bench(const char *tokenizer_path, FILE *out);

#endif
