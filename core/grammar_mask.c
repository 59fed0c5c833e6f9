/* Token mask for structured output: a trie over the decoded bytes of one vocabulary slice,
 * laid out in preorder so one grammar step is a single forward walk that skips the whole
 * subtree of a byte the automaton refuses (gs_grammar.h). */
#include <stdlib.h>
#include <string.h>

#include "gs_grammar.h"

#define MCACHE_N     256
#define MCACHE_BYTES ((size_t)64 << 20)

/* One preorder trie over a set of ids' byte strings. */
struct ptrie {
	int32_t   n_nodes;
	uint8_t  *byte;  /* [n_nodes] edge byte into the node                    */
	uint16_t *depth; /* [n_nodes] 1-based                                    */
	int32_t  *skip;  /* [n_nodes] first node after the subtree                */
	int32_t  *tok0;  /* [n_nodes + 1] ids of node i: toks[tok0[i], tok0[i+1]) */
	int32_t  *toks;
};

struct gs_vocab_trie {
	int32_t  vocab0, n_slice;
	int32_t  n_all;   /* the tokenizer's vocabulary                            */
	uint8_t **bytes;  /* [n_all] owned byte strings, NULL: never allowed        */
	uint32_t *len;    /* [n_all]                                               */
	uint32_t max_len;
	struct ptrie all;     /* every allowed id of the slice                      */
	struct ptrie special; /* the slice's ids that are not plain string text     */
	/* Plain text: inside a string body the token keeps the automaton there and adds cps[i]
	 * code points (no quote, backslash, control byte, incomplete UTF-8). */
	uint8_t  *plain;  /* [n_slice] */
	uint32_t *cps;    /* [n_slice] */
	struct gs_gstate *scratch; /* [max_len + 1] */
	/* Masks of regular-expression DFA states, reused: such a mask depends on the state alone.
	 * Keyed by the grammar's serial (never reused) and the state; round-robin eviction. */
	struct {
		uint64_t serial;
		int32_t  state, n; /* n allowed slice indices in ids */
		int32_t *ids;
	} mcache[MCACHE_N];
	unsigned mcache_next;
	size_t   mcache_bytes;
};

struct entry {
	const uint8_t *b;
	uint32_t       n;
	int32_t        id;
};

static int entry_cmp(const void *pa, const void *pb)
{
	const struct entry *a = pa, *b = pb;
	uint32_t n = a->n < b->n ? a->n : b->n;
	int c = memcmp(a->b, b->b, n);
	if (c)
		return c;
	if (a->n != b->n)
		return a->n < b->n ? -1 : 1;
	return a->id < b->id ? -1 : a->id > b->id;
}

/* Decoded bytes of a piece: "▁" is a space; byte tokens are their byte; control tokens
 * ("<...>" that are not byte tokens) get none. */
static uint8_t *token_bytes(const struct gs_tokenizer *t, int32_t id, uint32_t *n)
{
	*n = 0;
	int bv = gs_tokenizer_byte_value(t, id);
	if (bv >= 0) {
		uint8_t *b = malloc(1);
		if (b) {
			b[0] = (uint8_t)bv;
			*n = 1;
		}
		return b;
	}
	const char *p = gs_tokenizer_piece(t, id);
	size_t pl = p ? strlen(p) : 0;
	if (pl == 0 || (p[0] == '<' && p[pl - 1] == '>' && pl > 2))
		return NULL;
	uint8_t *b = malloc(pl);
	if (!b)
		return NULL;
	uint32_t k = 0;
	for (size_t i = 0; i < pl;) {
		if (i + 3 <= pl && !memcmp(p + i, "\xE2\x96\x81", 3)) {
			b[k++] = ' ';
			i += 3;
		} else {
			b[k++] = (uint8_t)p[i++];
		}
	}
	*n = k;
	return b;
}

/* e[0..n_e) sorted by bytes; total: the sum of their lengths (a bound on the nodes). */
static enum gs_status ptrie_build(struct ptrie *t, const struct entry *e, size_t n_e, size_t total,
				  uint32_t max_len)
{
	t->byte = malloc(total + 1);
	t->depth = malloc((total + 1) * sizeof *t->depth);
	t->skip = malloc((total + 1) * sizeof *t->skip);
	t->tok0 = malloc((total + 2) * sizeof *t->tok0);
	t->toks = malloc((n_e + 1) * sizeof *t->toks);
	int32_t *path = malloc((max_len + 1) * sizeof *path); /* open node at each depth */
	if (!t->byte || !t->depth || !t->skip || !t->tok0 || !t->toks || !path) {
		free(path);
		return GS_ERR_NOMEM;
	}
	int32_t nn = 0, nt = 0;
	uint32_t open = 0; /* depth of the current path */
	const struct entry *prev = NULL;
	for (size_t k = 0; k < n_e; k++) {
		uint32_t l = 0;
		if (prev)
			while (l < prev->n && l < e[k].n && prev->b[l] == e[k].b[l])
				l++;
		while (open > l) /* close nodes deeper than the common prefix */
			t->skip[path[--open]] = nn;
		for (uint32_t d = l; d < e[k].n; d++) {
			t->byte[nn] = e[k].b[d];
			t->depth[nn] = (uint16_t)(d + 1);
			t->tok0[nn] = nt;
			path[open++] = nn;
			nn++;
		}
		t->toks[nt++] = e[k].id; /* the node path[open-1] ends this entry */
		prev = &e[k];
	}
	while (open > 0)
		t->skip[path[--open]] = nn;
	t->tok0[nn] = nt;
	t->n_nodes = nn;
	free(path);
	return GS_OK;
}

void gs_vocab_trie_free(struct gs_vocab_trie *v)
{
	if (!v)
		return;
	if (v->bytes)
		for (int32_t i = 0; i < v->n_all; i++)
			free(v->bytes[i]);
	free(v->bytes);
	free(v->len);
	for (int i = 0; i < MCACHE_N; i++)
		free(v->mcache[i].ids);
	struct ptrie *t[2] = { &v->all, &v->special };
	for (int i = 0; i < 2; i++) {
		free(t[i]->byte);
		free(t[i]->depth);
		free(t[i]->skip);
		free(t[i]->tok0);
		free(t[i]->toks);
	}
	free(v->plain);
	free(v->cps);
	free(v->scratch);
	free(v);
}

enum gs_status gs_vocab_trie_build(const struct gs_tokenizer *t, int32_t vocab0, int32_t n_slice,
				   struct gs_vocab_trie **out)
{
	*out = NULL;
	if (n_slice <= 0 || vocab0 < 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "vocabulary trie: bad slice [%d, +%d)", vocab0, n_slice);
	struct gs_vocab_trie *v = calloc(1, sizeof *v);
	struct entry *e = calloc((size_t)n_slice, sizeof *e);
	if (!v || !e)
		goto out_nomem;
	v->vocab0 = vocab0;
	v->n_slice = n_slice;
	v->n_all = gs_tokenizer_n_vocab(t);
	v->bytes = calloc((size_t)v->n_all, sizeof *v->bytes);
	v->len = calloc((size_t)v->n_all, sizeof *v->len);
	if (!v->bytes || !v->len)
		goto out_nomem;
	for (int32_t id = 0; id < v->n_all; id++)
		v->bytes[id] = token_bytes(t, id, &v->len[id]);
	size_t n_e = 0, total = 0;
	for (int32_t i = 0; i < n_slice; i++) {
		int32_t id = vocab0 + i;
		if (id >= v->n_all)
			break;
		if (!v->bytes[id] || v->len[id] > 60000)
			continue;
		e[n_e++] = (struct entry){ .b = v->bytes[id], .n = v->len[id], .id = id };
		total += v->len[id];
		if (v->len[id] > v->max_len)
			v->max_len = v->len[id];
	}
	qsort(e, n_e, sizeof *e, entry_cmp);
	v->scratch = malloc((v->max_len + 1) * sizeof *v->scratch);
	v->plain = calloc((size_t)n_slice, 1);
	v->cps = calloc((size_t)n_slice, sizeof *v->cps);
	if (!v->scratch || !v->plain || !v->cps || ptrie_build(&v->all, e, n_e, total, v->max_len) != GS_OK)
		goto out_nomem;
	/* Plain text, decided by the automaton itself: a token that leaves a free string's body
	 * in the body, nothing pending, adds (count after) code points. */
	{
		static const char sr[] = "{\"type\":\"json_schema\",\"json_schema\":{\"schema\":{\"type\":\"string\"}}}";
		struct gs_grammar *g = NULL;
		struct gs_gstate s0, s1;
		uint64_t room;
		if (gs_grammar_compile(sr, sizeof sr - 1, NULL, 0, &g) != GS_OK || !g)
			goto out_nomem;
		gs_gstate_init(g, &s0);
		gs_gstate_step(g, &s0, '"');
		size_t n_sp = 0, total_sp = 0;
		for (size_t k = 0; k < n_e; k++) {
			s1 = s0;
			int32_t i = e[k].id - vocab0;
			if (gs_gstate_step_bytes(g, &s1, e[k].b, e[k].n) && gs_gstate_in_string_body(g, &s1, &room)) {
				v->plain[i] = 1;
				v->cps[i] = s1.f[0].count;
			} else {
				e[n_sp++] = e[k]; /* kept in order: still sorted */
				total_sp += e[k].n;
			}
		}
		gs_grammar_free(g);
		if (ptrie_build(&v->special, e, n_sp, total_sp, v->max_len) != GS_OK)
			goto out_nomem;
	}
	free(e);
	*out = v;
	return GS_OK;

out_nomem:
	free(e);
	gs_vocab_trie_free(v);
	return gs_errorf(GS_ERR_NOMEM, "vocabulary trie: out of memory");
}

const uint8_t *gs_vocab_trie_bytes(const struct gs_vocab_trie *v, int32_t id, size_t *n)
{
	if (id < 0 || id >= v->n_all || !v->bytes[id]) {
		*n = 0;
		return NULL;
	}
	*n = v->len[id];
	return v->bytes[id];
}

static size_t walk(const struct gs_vocab_trie *v, const struct ptrie *t, const struct gs_grammar *g,
		   const struct gs_gstate *s, uint8_t *allow)
{
	struct gs_gstate *st = v->scratch;
	size_t n_allowed = 0;
	st[0].depth = s->depth;
	memcpy(st[0].f, s->f, (size_t)s->depth * sizeof s->f[0]);
	for (int32_t i = 0; i < t->n_nodes;) {
		uint32_t d = t->depth[i];
		struct gs_gstate *a = &st[d - 1], *b = &st[d];
		b->depth = a->depth;
		memcpy(b->f, a->f, (size_t)a->depth * sizeof a->f[0]);
		if (!gs_gstate_step(g, b, t->byte[i])) {
			i = t->skip[i];
			continue;
		}
		/* node i's ids end here; node i + 1 starts after every duplicate of its string */
		for (int32_t k = t->tok0[i]; k < t->tok0[i + 1]; k++) {
			allow[t->toks[k] - v->vocab0] = 1;
			n_allowed++;
		}
		i++;
	}
	return n_allowed;
}

/* A regular expression's DFA state: the cached mask, or the walk's, then cached. */
static size_t mask_dfa(struct gs_vocab_trie *v, const struct gs_grammar *g, const struct gs_gstate *s,
		       uint64_t serial, int32_t state, uint8_t *allow)
{
	memset(allow, 0, (size_t)v->n_slice);
	for (int i = 0; i < MCACHE_N; i++)
		if (v->mcache[i].ids && v->mcache[i].serial == serial && v->mcache[i].state == state) {
			for (int32_t k = 0; k < v->mcache[i].n; k++)
				allow[v->mcache[i].ids[k]] = 1;
			return (size_t)v->mcache[i].n;
		}
	size_t n = walk(v, &v->all, g, s, allow);
	size_t bytes = (n ? n : 1) * sizeof(int32_t);
	if (bytes > MCACHE_BYTES / 4)
		return n;
	int32_t *ids = malloc(bytes);
	if (!ids)
		return n; /* not cached: the mask itself is complete */
	int32_t k = 0;
	for (int32_t i = 0; i < v->n_slice; i++)
		if (allow[i])
			ids[k++] = i;
	/* evict round-robin from mcache_next until its slot is free and the new list fits */
	for (;;) {
		unsigned e = v->mcache_next;
		if (v->mcache[e].ids) {
			v->mcache_bytes -= (size_t)(v->mcache[e].n ? v->mcache[e].n : 1) * sizeof(int32_t);
			free(v->mcache[e].ids);
			v->mcache[e].ids = NULL;
		}
		if (v->mcache_bytes + bytes <= MCACHE_BYTES)
			break;
		v->mcache_next = (e + 1) % MCACHE_N;
	}
	unsigned e = v->mcache_next;
	v->mcache[e].serial = serial;
	v->mcache[e].state = state;
	v->mcache[e].n = k;
	v->mcache[e].ids = ids;
	v->mcache_bytes += bytes;
	v->mcache_next = (e + 1) % MCACHE_N;
	return n;
}

size_t gs_grammar_mask(const struct gs_vocab_trie *v, const struct gs_grammar *g, const struct gs_gstate *s,
		       uint8_t *allow)
{
	uint64_t room, serial;
	int32_t state;
	if (gs_grammar_dfa_state(g, s, &serial, &state))
		return mask_dfa((struct gs_vocab_trie *)v, g, s, serial, state, allow);
	if (!gs_gstate_in_string_body(g, s, &room)) {
		memset(allow, 0, (size_t)v->n_slice);
		return walk(v, &v->all, g, s, allow);
	}
	/* In a string: plain text by its code points, then the few other ids by the trie. */
	size_t n = 0;
	for (int32_t i = 0; i < v->n_slice; i++) {
		allow[i] = v->plain[i] && v->cps[i] <= room;
		n += allow[i];
	}
	return n + walk(v, &v->special, g, s, allow);
}
