/* Structured output: a JSON grammar compiled from an OpenAI `response_format` and run as a
 * byte-level pushdown automaton, plus the token mask over a vocabulary trie.
 *
 * gs_grammar_compile() takes the response_format object's JSON text:
 *   {"type": "text"}                       no grammar (*out = NULL)
 *   {"type": "json_object"}                any JSON object
 *   {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}
 *   {"type": "choice", "choice": ["a", ...]} exactly one of the strings, raw (vLLM guided_choice)
 *   {"type": "regex", "regex": "..."}     a string the whole pattern matches (vLLM guided_regex):
 *     Python re.fullmatch semantics with re.ASCII; syntax, limits and refusals in
 *     core/grammar_regex.c / grammar_regex.h (a byte-level DFA run behind the same gs_gstate
 *     interface: one frame, state number in f[0].node, every reachable state can still match)
 * Documents are compact JSON (no insignificant whitespace); object properties come in the
 * schema's order, optional ones may be left out; only listed properties are produced.
 * Schema keywords supported: type (string or list), properties, required,
 * additionalProperties (only listed properties are ever produced, which every value of it
 * allows), items, minItems, maxItems, enum, const (<= 64 values), minLength, maxLength,
 * minimum/maximum/exclusiveMinimum/exclusiveMaximum on integers, anyOf/oneOf whose
 * alternatives start with different characters, $ref to #/$defs/NAME or
 * #/definitions/NAME, and the annotations title, description, default, examples, $comment,
 * $schema, $id. Anything else is refused with GS_ERR_INVALID_ARG naming the keyword and its
 * place ("unsupported keyword 'pattern' at /properties/id").
 * Bounds: integers up to 18 digits, numbers up to 15 integer and 15 fraction digits and a
 * 3-digit exponent, nesting up to GS_GRAMMAR_MAX_DEPTH, strings valid UTF-8 without \u
 * surrogates (so maxLength counts code points exactly as JSON Schema does). */
#ifndef GS_GRAMMAR_H
#define GS_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_status.h"
#include "gs_tokenizer.h"

#define GS_GRAMMAR_MAX_DEPTH 32

struct gs_grammar; /* opaque, immutable once compiled: share it between sequences */

/* One stack frame of the automaton (plain data: a state is copied with memcpy). */
struct gs_gframe {
	int32_t  node;
	uint8_t  phase;
	uint8_t  aux;
	uint16_t idx;
	uint32_t count;
	uint64_t mask;
	int64_t  val;
};

struct gs_gstate {
	int32_t          depth; /* 0: the document is complete */
	struct gs_gframe f[GS_GRAMMAR_MAX_DEPTH];
};

/* Compile response_format text (len bytes). GS_OK with *out NULL for {"type":"text"}. */
enum gs_status gs_grammar_compile(const char *response_format, size_t len, char *why, size_t cap,
				  struct gs_grammar **out);
void gs_grammar_free(struct gs_grammar *g); /* NULL is fine; drops one reference */

/* Process-wide cache by text: the same response_format text compiles once. Returns a
 * reference the caller drops with gs_grammar_free(). Thread-safe. */
enum gs_status gs_grammar_get(const char *response_format, size_t len, char *why, size_t cap,
			      struct gs_grammar **out);

/* The structured-output fields of an OpenAI/vLLM request object (cJSON *): response_format,
 * guided_choice (list of strings), guided_json (schema), structured_outputs {"choice": [...]}
 * or {"json": schema} or {"regex": pattern}, guided_regex (pattern); guided_grammar and
 * structured_outputs.grammar are refused by name, as is more than one of them. *rf_out: malloc'd response_format text for
 * gs_req_params.response_format (canonical, so the cache sees equal requests as equal), NULL
 * when none or {"type": "text"}. Compiles once (cached) so a bad schema is refused here. */
struct cJSON;
enum gs_status gs_grammar_from_request(const struct cJSON *req, char **rf_out, char *why, size_t cap);

void gs_gstate_init(const struct gs_grammar *g, struct gs_gstate *s);
/* Feed one byte; false: the byte is not allowed here (*s is then undefined: work on a copy). */
bool gs_gstate_step(const struct gs_grammar *g, struct gs_gstate *s, uint8_t c);
bool gs_gstate_step_bytes(const struct gs_grammar *g, struct gs_gstate *s, const uint8_t *b, size_t n);
/* The document may end here (end of sequence allowed). */
bool gs_gstate_accepting(const struct gs_grammar *g, const struct gs_gstate *s);
/* Some byte continues the document from s (every byte is a token of the vocabulary's
 * byte fallback, so then some token does too). Not live and not accepting: a dead end the
 * engine ends with eos (a schema nested past GS_GRAMMAR_MAX_DEPTH can lead there). */
bool gs_gstate_live(const struct gs_grammar *g, const struct gs_gstate *s);
/* Inside a string's body (no escape or UTF-8 sequence pending): *room = code points the
 * string may still take. A token of plain text (gs_vocab_trie) keeps the state there. */
bool gs_gstate_in_string_body(const struct gs_grammar *g, const struct gs_gstate *s, uint64_t *room);
/* A regular-expression grammar: true, with its process-unique serial and the DFA state of s
 * (the token mask of a DFA state depends on nothing else, so gs_grammar_mask caches it per
 * trie). False for the JSON kinds. */
bool gs_grammar_dfa_state(const struct gs_grammar *g, const struct gs_gstate *s, uint64_t *serial, int32_t *state);
/* Whole-text helpers for tests and checks. */
bool gs_grammar_accepts(const struct gs_grammar *g, const char *text, size_t n);
bool gs_grammar_prefix_ok(const struct gs_grammar *g, const char *text, size_t n);

/* ---- token mask -------------------------------------------------------------------------
 * A trie over the decoded bytes of the vocabulary ids [vocab0, vocab0 + n_slice), built
 * once per rank and shared by every request. Ids that decode to nothing or are control
 * tokens ("<...>" pieces other than byte tokens) are never allowed by a grammar. */
struct gs_vocab_trie;
enum gs_status gs_vocab_trie_build(const struct gs_tokenizer *t, int32_t vocab0, int32_t n_slice,
				   struct gs_vocab_trie **out);
void gs_vocab_trie_free(struct gs_vocab_trie *v);
/* Bytes of any id of the tokenizer's vocabulary (not only the slice's): what the automaton
 * advances by when the id is chosen; NULL when never allowed. */
const uint8_t *gs_vocab_trie_bytes(const struct gs_vocab_trie *v, int32_t id, size_t *n);

/* allow[0..n_slice) = 1 for each id of the slice whose bytes the grammar accepts from s,
 * else 0. Returns how many are allowed. The eos ids are the caller's: allowed exactly when
 * gs_gstate_accepting(). Uses the trie's own scratch and its cache of regex-state masks (up
 * to 256 states, 64 MiB): one call at a time per trie. */
size_t gs_grammar_mask(const struct gs_vocab_trie *v, const struct gs_grammar *g, const struct gs_gstate *s,
		       uint8_t *allow);

#endif
