/* Regular expressions for structured output: pattern -> syntax tree (parse) -> Thompson NFA over
 * UTF-8 bytes (build) -> DFA over byte classes by subset construction (determinise), with the
 * states that cannot reach a match removed, so every state the automaton is in can still end in
 * a whole match. Every stage is bounded (pattern length, repeat counts, NFA states, DFA states,
 * work), so a hostile pattern is refused, naming the limit, instead of hanging. Rules in
 * gs_grammar.h; written from the definitions, not from another engine's code. */
#include "grammar_regex.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CP_MAX    0x10FFFFu
#define MAX_NEST  200
#define WHOLE     ((size_t)-1)

struct crange {
	uint32_t lo, hi;
};

enum rk { RK_EMPTY, RK_SET, RK_CAT, RK_ALT, RK_REP };

struct rnode {
	enum rk k;
	int32_t a, b;     /* CAT/ALT: children; REP: a */
	int32_t min, max; /* REP; max -1: unbounded */
	int32_t r0, nr;   /* SET: ranges [r0, r0 + nr) of the pool */
};

/* NFA state: NB consumes a byte in [lo, hi] and goes to out; NS goes to out and out2 without
 * input; NE to out; NM is the match. */
enum nk { NB, NS, NE, NM };
struct nst {
	uint8_t kind, lo, hi;
	int32_t out, out2;
};

struct rctx {
	const uint8_t *p;
	size_t         len, pos;
	char          *why;
	size_t         cap;
	bool           failed;
	struct rnode  *nodes;
	int32_t        n_nodes, cap_nodes;
	struct crange *rs;
	int32_t        n_rs, cap_rs;
	struct nst    *nfa;
	int32_t        n_nfa, cap_nfa;
};

struct gs_regex {
	uint8_t  cls[256];
	int32_t  nc, n, start;
	int32_t *trans; /* [n * nc], -1 none */
	uint8_t *accept;
};

static enum gs_status rbad(struct rctx *c, size_t pos, const char *fmt, ...)
{
	char buf[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	char at[48] = ""; /* WHOLE: a limit of the whole pattern, no one position */
	if (pos != WHOLE)
		snprintf(at, sizeof at, " at position %zu", pos);
	if (!c->failed && c->why && c->cap)
		snprintf(c->why, c->cap, "regex: %s%s", buf, at);
	c->failed = true;
	return gs_errorf(GS_ERR_INVALID_ARG, "regex: %s%s", buf, at);
}

static int32_t rnew(struct rctx *c, enum rk k)
{
	if (c->n_nodes == c->cap_nodes) {
		int32_t nc = c->cap_nodes ? 2 * c->cap_nodes : 64;
		struct rnode *n = realloc(c->nodes, (size_t)nc * sizeof *n);
		if (!n)
			return -1;
		c->nodes = n;
		c->cap_nodes = nc;
	}
	c->nodes[c->n_nodes] = (struct rnode){ .k = k, .a = -1, .b = -1 };
	return c->n_nodes++;
}

static bool radd(struct rctx *c, uint32_t lo, uint32_t hi)
{
	if (c->n_rs == c->cap_rs) {
		int32_t nc = c->cap_rs ? 2 * c->cap_rs : 256;
		struct crange *n = realloc(c->rs, (size_t)nc * sizeof *n);
		if (!n)
			return false;
		c->rs = n;
		c->cap_rs = nc;
	}
	c->rs[c->n_rs++] = (struct crange){ lo, hi };
	return true;
}

static int crange_cmp(const void *a, const void *b)
{
	const struct crange *x = a, *y = b;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sort and merge ranges [r0, n_rs), negate if asked, drop the surrogates (never valid UTF-8),
 * and make a SET node of them. */
static int32_t finish_set(struct rctx *c, int32_t r0, bool negate)
{
	int32_t n = c->n_rs - r0;
	qsort(c->rs + r0, (size_t)n, sizeof *c->rs, crange_cmp);
	int32_t m = 0;
	for (int32_t i = 0; i < n; i++) {
		struct crange r = c->rs[r0 + i];
		if (m && r.lo <= c->rs[r0 + m - 1].hi + 1) {
			if (r.hi > c->rs[r0 + m - 1].hi)
				c->rs[r0 + m - 1].hi = r.hi;
		} else {
			c->rs[r0 + m++] = r;
		}
	}
	c->n_rs = r0 + m;
	int32_t s0 = c->n_rs; /* the final ranges go after the merged ones */
	uint32_t next = 0;
	for (int32_t i = 0; i <= m; i++) {
		uint32_t lo, hi;
		if (negate) {
			lo = next;
			hi = i < m ? (c->rs[r0 + i].lo ? c->rs[r0 + i].lo - 1 : 0) : CP_MAX;
			bool empty = i < m && c->rs[r0 + i].lo == 0;
			if (i < m)
				next = c->rs[r0 + i].hi + 1;
			if (empty || lo > hi || lo > CP_MAX)
				continue;
		} else {
			if (i == m)
				break;
			lo = c->rs[r0 + i].lo;
			hi = c->rs[r0 + i].hi;
		}
		/* minus [D800, DFFF] */
		if (lo < 0xD800 && hi >= 0xD800) {
			if (!radd(c, lo, 0xD7FF))
				return -1;
			lo = 0xE000;
		} else if (lo >= 0xD800 && lo <= 0xDFFF) {
			lo = 0xE000;
		}
		if (lo <= hi && !radd(c, lo, hi))
			return -1;
	}
	int32_t k = c->n_rs - s0;
	memmove(c->rs + r0, c->rs + s0, (size_t)k * sizeof *c->rs);
	c->n_rs = r0 + k;
	int32_t id = rnew(c, RK_SET);
	if (id >= 0) {
		c->nodes[id].r0 = r0;
		c->nodes[id].nr = k;
	}
	return id;
}

/* ---- parse ---------------------------------------------------------------------------------- */

static bool at_end(const struct rctx *c) { return c->pos >= c->len; }
static int peek(const struct rctx *c) { return at_end(c) ? -1 : c->p[c->pos]; }

/* One UTF-8 code point of the pattern. */
static enum gs_status read_cp(struct rctx *c, uint32_t *cp)
{
	size_t at = c->pos;
	uint8_t b = c->p[c->pos++];
	int n = b < 0x80 ? 0 : b >= 0xC2 && b < 0xE0 ? 1 : b >= 0xE0 && b < 0xF0 ? 2 : b >= 0xF0 && b < 0xF5 ? 3 : -1;
	if (n < 0)
		return rbad(c, at, "invalid UTF-8 in the pattern");
	uint32_t v = n == 0 ? b : n == 1 ? b & 0x1Fu : n == 2 ? b & 0x0Fu : b & 0x07u;
	for (int i = 0; i < n; i++) {
		if (at_end(c) || (c->p[c->pos] & 0xC0) != 0x80)
			return rbad(c, at, "invalid UTF-8 in the pattern");
		v = v << 6 | (c->p[c->pos++] & 0x3Fu);
	}
	if ((n == 2 && v < 0x800) || (n == 3 && (v < 0x10000 || v > CP_MAX)) || (v >= 0xD800 && v <= 0xDFFF))
		return rbad(c, at, "invalid UTF-8 in the pattern");
	*cp = v;
	return GS_OK;
}

static enum gs_status read_hex(struct rctx *c, int digits, size_t at, uint32_t *cp)
{
	uint32_t v = 0;
	for (int i = 0; i < digits; i++) {
		int h = peek(c);
		int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
		if (d < 0)
			return rbad(c, at, "escape needs %d hex digits", digits);
		v = v << 4 | (uint32_t)d;
		c->pos++;
	}
	if (v > CP_MAX || (v >= 0xD800 && v <= 0xDFFF))
		return rbad(c, at, "escape U+%04X is not a Unicode scalar value", v);
	*cp = v;
	return GS_OK;
}

/* After a backslash. *cp: a single code point, or *cls (d w s D W S) with *cp unset. */
static enum gs_status read_escape(struct rctx *c, bool in_class, uint32_t *cp, int *cls)
{
	size_t at = c->pos - 1;
	*cls = 0;
	if (at_end(c))
		return rbad(c, at, "trailing backslash");
	int e = c->p[c->pos++];
	switch (e) {
	case 'd': case 'w': case 's': case 'D': case 'W': case 'S':
		*cls = e;
		return GS_OK;
	case 'n': *cp = '\n'; return GS_OK;
	case 't': *cp = '\t'; return GS_OK;
	case 'r': *cp = '\r'; return GS_OK;
	case 'f': *cp = '\f'; return GS_OK;
	case 'v': *cp = '\v'; return GS_OK;
	case 'a': *cp = 7; return GS_OK;
	case '0':
		if (peek(c) >= '0' && peek(c) <= '7')
			return rbad(c, at, "octal escapes are not supported (use \\xHH)");
		*cp = 0;
		return GS_OK;
	case 'x': return read_hex(c, 2, at, cp);
	case 'u': return read_hex(c, 4, at, cp);
	case 'U': return read_hex(c, 8, at, cp);
	case 'b':
		if (in_class) {
			*cp = 8;
			return GS_OK;
		}
		return rbad(c, at, "word boundary \\b is not supported");
	case 'B': return rbad(c, at, "word boundary \\B is not supported");
	case 'A': case 'Z': case 'z': case 'G':
		return rbad(c, at, "anchor \\%c is not supported (the whole output always matches)", e);
	case 'k': return rbad(c, at, "backreference \\k is not supported");
	case 'p': case 'P': return rbad(c, at, "Unicode property \\%c is not supported", e);
	default:
		break;
	}
	if (e >= '1' && e <= '9')
		return rbad(c, at, "backreference \\%c is not supported", e);
	if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || e >= 0x80)
		return rbad(c, at, "unknown escape \\%c", e >= 0x80 ? '?' : e);
	*cp = (uint32_t)e; /* escaped punctuation is itself */
	return GS_OK;
}

static bool add_class(struct rctx *c, int cls)
{
	/* ASCII meanings (Python's re.ASCII); the capitals are the complements over every code point. */
	switch (cls | 0x20) {
	case 'd':
		return radd(c, '0', '9');
	case 'w':
		return radd(c, '0', '9') && radd(c, 'A', 'Z') && radd(c, '_', '_') && radd(c, 'a', 'z');
	default: /* s */
		return radd(c, '\t', '\r') && radd(c, ' ', ' ');
	}
}

/* A class escape as its own node (negated for D W S). */
static int32_t class_node(struct rctx *c, int cls)
{
	int32_t r0 = c->n_rs;
	if (!add_class(c, cls))
		return -1;
	return finish_set(c, r0, cls >= 'A' && cls <= 'Z');
}

/* Append the complement of a class escape's set to the pool (for \D \W \S inside [...]). */
static bool add_negated_class(struct rctx *c, int cls)
{
	struct crange tmp[4];
	int32_t r0 = c->n_rs;
	if (!add_class(c, cls))
		return false;
	int32_t n = c->n_rs - r0;
	memcpy(tmp, c->rs + r0, (size_t)n * sizeof *tmp);
	c->n_rs = r0;
	uint32_t next = 0;
	for (int32_t i = 0; i < n; i++) {
		if (tmp[i].lo > next && !radd(c, next, tmp[i].lo - 1))
			return false;
		next = tmp[i].hi + 1;
	}
	return radd(c, next, CP_MAX);
}

static enum gs_status parse_class(struct rctx *c, int32_t *out)
{
	size_t open = c->pos - 1;
	bool neg = false;
	if (peek(c) == '^') {
		neg = true;
		c->pos++;
	}
	int32_t r0 = c->n_rs;
	bool first = true;
	for (;;) {
		if (at_end(c))
			return rbad(c, open, "unterminated character class");
		if (peek(c) == ']' && !first) {
			c->pos++;
			break;
		}
		first = false;
		size_t at = c->pos;
		uint32_t lo, hi;
		int cls = 0;
		if (peek(c) == '[' && c->pos + 1 < c->len && (c->p[c->pos + 1] == ':' || c->p[c->pos + 1] == '=' ||
							     c->p[c->pos + 1] == '.'))
			return rbad(c, at, "POSIX classes [:...:] are not supported");
		if (peek(c) == '\\') {
			c->pos++;
			GS_TRY(read_escape(c, true, &lo, &cls));
		} else {
			GS_TRY(read_cp(c, &lo));
		}
		if (cls) {
			bool ok = cls >= 'a' ? add_class(c, cls) : add_negated_class(c, cls);
			if (!ok)
				return GS_ERR_NOMEM;
			if (peek(c) == '-' && c->pos + 1 < c->len && c->p[c->pos + 1] != ']')
				return rbad(c, c->pos, "a range cannot start at the class escape \\%c", cls);
			continue;
		}
		hi = lo;
		if (peek(c) == '-' && c->pos + 1 < c->len && c->p[c->pos + 1] != ']') {
			c->pos++;
			if (peek(c) == '\\') {
				c->pos++;
				GS_TRY(read_escape(c, true, &hi, &cls));
				if (cls)
					return rbad(c, at, "a range cannot end at the class escape \\%c", cls);
			} else {
				GS_TRY(read_cp(c, &hi));
			}
			if (hi < lo)
				return rbad(c, at, "bad character range (end before start)");
		}
		if (!radd(c, lo, hi))
			return GS_ERR_NOMEM;
	}
	*out = finish_set(c, r0, neg);
	return *out < 0 ? GS_ERR_NOMEM : GS_OK;
}

static enum gs_status parse_alt(struct rctx *c, int depth, int32_t *out);

static enum gs_status parse_group(struct rctx *c, int depth, int32_t *out)
{
	size_t open = c->pos - 1;
	if (peek(c) == '?') {
		c->pos++;
		int x = peek(c);
		int y = c->pos + 1 < c->len ? c->p[c->pos + 1] : -1;
		if (x == ':') {
			c->pos++;
		} else if (x == '=' || x == '!' || (x == '<' && (y == '=' || y == '!'))) {
			return rbad(c, open, "lookaround (?%c...) is not supported", x == '<' ? '<' : x);
		} else if (x == 'P' && y == '=') {
			return rbad(c, open, "backreference (?P=...) is not supported");
		} else if (x == '>') {
			return rbad(c, open, "atomic group (?>...) is not supported");
		} else if (x == '#') {
			return rbad(c, open, "comment group (?#...) is not supported");
		} else if ((x == 'P' && y == '<') || x == '<') {
			c->pos += x == 'P' ? 2 : 1; /* a named group: the name does not change the language */
			while (!at_end(c) && peek(c) != '>')
				c->pos++;
			if (at_end(c) || c->pos == open + (x == 'P' ? 4 : 3))
				return rbad(c, open, "bad group name");
			c->pos++;
		} else {
			return rbad(c, open, "inline flags or group form (?%c are not supported", x < 0 ? ' ' : x);
		}
	}
	GS_TRY(parse_alt(c, depth + 1, out));
	if (peek(c) != ')')
		return rbad(c, open, "missing )");
	c->pos++;
	return GS_OK;
}

/* {m}, {m,}, {m,n}, {,n}; false (and pos unchanged) when not a quantifier: then '{' is a literal. */
static bool parse_braces(struct rctx *c, long *m, long *n)
{
	size_t p = c->pos + 1;
	long a = -1, b = -1;
	bool comma = false;
	while (p < c->len && c->p[p] >= '0' && c->p[p] <= '9') {
		a = (a < 0 ? 0 : a) * 10 + (c->p[p++] - '0');
		if (a > 100000000)
			a = 100000000;
	}
	if (p < c->len && c->p[p] == ',') {
		comma = true;
		p++;
		while (p < c->len && c->p[p] >= '0' && c->p[p] <= '9') {
			b = (b < 0 ? 0 : b) * 10 + (c->p[p++] - '0');
			if (b > 100000000)
				b = 100000000;
		}
	}
	if (p >= c->len || c->p[p] != '}' || (a < 0 && b < 0))
		return false;
	*m = a < 0 ? 0 : a;
	*n = comma ? b : a; /* -1: unbounded */
	c->pos = p + 1;
	return true;
}

static enum gs_status parse_piece(struct rctx *c, int depth, int32_t *out)
{
	size_t at = c->pos;
	int ch = c->p[c->pos++];
	int32_t id;
	uint32_t cp;
	int cls;
	switch (ch) {
	case '(':
		GS_TRY(parse_group(c, depth, &id));
		break;
	case '[':
		GS_TRY(parse_class(c, &id));
		break;
	case '.': {
		int32_t r0 = c->n_rs;
		if (!radd(c, '\n', '\n'))
			return GS_ERR_NOMEM;
		id = finish_set(c, r0, true);
		break;
	}
	case '^':
		if (at != 0)
			return rbad(c, at, "^ is only supported at the start of the pattern");
		id = rnew(c, RK_EMPTY);
		break;
	case '$':
		if (at != c->len - 1)
			return rbad(c, at, "$ is only supported at the end of the pattern");
		id = rnew(c, RK_EMPTY);
		break;
	case '*': case '+': case '?':
		return rbad(c, at, "nothing to repeat before '%c'", ch);
	case '{': {
		long m, n;
		c->pos--;
		if (parse_braces(c, &m, &n))
			return rbad(c, at, "nothing to repeat before '{'");
		c->pos++;
		int32_t r0 = c->n_rs;
		id = radd(c, '{', '{') ? finish_set(c, r0, false) : -1;
		break;
	}
	case '\\':
		GS_TRY(read_escape(c, false, &cp, &cls));
		if (cls) {
			id = class_node(c, cls);
		} else {
			int32_t r0 = c->n_rs;
			id = radd(c, cp, cp) ? finish_set(c, r0, false) : -1;
		}
		break;
	default:
		c->pos--;
		GS_TRY(read_cp(c, &cp));
		{
			int32_t r0 = c->n_rs;
			id = radd(c, cp, cp) ? finish_set(c, r0, false) : -1;
		}
		break;
	}
	if (id < 0)
		return GS_ERR_NOMEM;
	/* quantifiers */
	bool quantified = false;
	for (;;) {
		size_t q = c->pos;
		int x = peek(c);
		long m, n;
		if (x == '*' || x == '+' || x == '?') {
			c->pos++;
			m = x == '+';
			n = x == '?' ? 1 : -1;
		} else if (x == '{' && parse_braces(c, &m, &n)) {
			if (n >= 0 && n < m)
				return rbad(c, q, "bad repeat {%ld,%ld} (max below min)", m, n);
			if (m > GS_REGEX_MAX_REPEAT || n > GS_REGEX_MAX_REPEAT)
				return rbad(c, q, "repeat count above %d", GS_REGEX_MAX_REPEAT);
		} else {
			break;
		}
		if (quantified)
			return rbad(c, q, "multiple repeat (wrap the repeated part in a group)");
		quantified = true;
		if (peek(c) == '?') {
			c->pos++; /* lazy: the same language, and only the language matters here */
		} else if (peek(c) == '+') {
			return rbad(c, c->pos, "possessive quantifier is not supported");
		}
		int32_t r = rnew(c, RK_REP);
		if (r < 0)
			return GS_ERR_NOMEM;
		c->nodes[r].a = id;
		c->nodes[r].min = (int32_t)m;
		c->nodes[r].max = (int32_t)n;
		id = r;
	}
	*out = id;
	return GS_OK;
}

static enum gs_status parse_cat(struct rctx *c, int depth, int32_t *out)
{
	int32_t acc = -1;
	while (!at_end(c) && peek(c) != '|' && peek(c) != ')') {
		int32_t p = -1;
		GS_TRY(parse_piece(c, depth, &p));
		if (acc < 0) {
			acc = p;
		} else {
			int32_t k = rnew(c, RK_CAT);
			if (k < 0)
				return GS_ERR_NOMEM;
			c->nodes[k].a = acc;
			c->nodes[k].b = p;
			acc = k;
		}
	}
	if (acc < 0 && (acc = rnew(c, RK_EMPTY)) < 0)
		return GS_ERR_NOMEM;
	*out = acc;
	return GS_OK;
}

static enum gs_status parse_alt(struct rctx *c, int depth, int32_t *out)
{
	if (depth > MAX_NEST)
		return rbad(c, c->pos, "groups nested deeper than %d", MAX_NEST);
	int32_t acc;
	GS_TRY(parse_cat(c, depth, &acc));
	while (peek(c) == '|') {
		c->pos++;
		int32_t b;
		GS_TRY(parse_cat(c, depth, &b));
		int32_t k = rnew(c, RK_ALT);
		if (k < 0)
			return GS_ERR_NOMEM;
		c->nodes[k].a = acc;
		c->nodes[k].b = b;
		acc = k;
	}
	*out = acc;
	return GS_OK;
}

/* ---- NFA ------------------------------------------------------------------------------------ */

static int32_t nnew(struct rctx *c, uint8_t kind, uint8_t lo, uint8_t hi)
{
	if (c->n_nfa >= GS_REGEX_MAX_NFA) {
		rbad(c, WHOLE, "pattern too large (more than %d automaton states; lower the repeat counts)",
		     GS_REGEX_MAX_NFA);
		return -1;
	}
	if (c->n_nfa == c->cap_nfa) {
		int32_t nc = c->cap_nfa ? 2 * c->cap_nfa : 256;
		struct nst *n = realloc(c->nfa, (size_t)nc * sizeof *n);
		if (!n)
			return -1;
		c->nfa = n;
		c->cap_nfa = nc;
	}
	c->nfa[c->n_nfa] = (struct nst){ .kind = kind, .lo = lo, .hi = hi, .out = -1, .out2 = -1 };
	return c->n_nfa++;
}

struct frag {
	int32_t s, e; /* e: an NE state whose out is still open */
};

static int enc_utf8(uint32_t cp, uint8_t *b)
{
	if (cp < 0x80) {
		b[0] = (uint8_t)cp;
		return 1;
	}
	if (cp < 0x800) {
		b[0] = (uint8_t)(0xC0 | cp >> 6);
		b[1] = (uint8_t)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		b[0] = (uint8_t)(0xE0 | cp >> 12);
		b[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
		b[2] = (uint8_t)(0x80 | (cp & 0x3F));
		return 3;
	}
	b[0] = (uint8_t)(0xF0 | cp >> 18);
	b[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
	b[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
	b[3] = (uint8_t)(0x80 | (cp & 0x3F));
	return 4;
}

/* The byte paths of one SET: each a sequence of 1-4 byte ranges. Paths are built from the end
 * and share equal tails (the continuation bytes [80-BF]...), which keeps the DFA of a repeated
 * "." or negated class at a few states per repetition. */
struct upath {
	int     n;
	uint8_t lo[4], hi[4];
};

struct ubuild {
	struct upath tail[64]; /* tails already built: tail[i] starts at state tail_st[i] */
	int32_t      tail_st[64];
	int          n_tails;
};

static int32_t upath_state(struct rctx *c, struct ubuild *u, const struct upath *p, int k, int32_t e)
{
	/* the state that reads bytes k..n-1 of p and then goes to e */
	struct upath t = { .n = p->n - k };
	memcpy(t.lo, p->lo + k, (size_t)t.n);
	memcpy(t.hi, p->hi + k, (size_t)t.n);
	for (int i = 0; i < u->n_tails; i++)
		if (u->tail[i].n == t.n && !memcmp(u->tail[i].lo, t.lo, (size_t)t.n) &&
		    !memcmp(u->tail[i].hi, t.hi, (size_t)t.n))
			return u->tail_st[i];
	int32_t next = k + 1 < p->n ? upath_state(c, u, p, k + 1, e) : e;
	if (next < 0)
		return -1;
	int32_t x = nnew(c, NB, p->lo[k], p->hi[k]);
	if (x < 0)
		return -1;
	c->nfa[x].out = next;
	if (k > 0 && u->n_tails < 64) {
		u->tail[u->n_tails] = t;
		u->tail_st[u->n_tails++] = x;
	}
	return x;
}

/* Add the byte paths of code points [lo, hi] (same encoded length n) from state s to state e,
 * splitting the range until every byte position is a plain byte range. */
static bool utf8_paths(struct rctx *c, struct ubuild *u, uint32_t lo, uint32_t hi, int n, int32_t s, int32_t e)
{
	for (int i = 1; i < n; i++) {
		uint32_t m = (1u << (6 * i)) - 1;
		if ((lo & ~m) != (hi & ~m)) {
			if (lo & m)
				return utf8_paths(c, u, lo, lo | m, n, s, e) && utf8_paths(c, u, (lo | m) + 1, hi, n, s, e);
			if ((hi & m) != m)
				return utf8_paths(c, u, lo, (hi & ~m) - 1, n, s, e) && utf8_paths(c, u, hi & ~m, hi, n, s, e);
		}
	}
	struct upath p = { .n = n };
	enc_utf8(lo, p.lo);
	enc_utf8(hi, p.hi);
	int32_t x = upath_state(c, u, &p, 0, e);
	int32_t sp = x < 0 ? -1 : nnew(c, NS, 0, 0);
	if (sp < 0)
		return false;
	/* s is the head of a chain of splits: sp joins it */
	c->nfa[sp].out = x;
	c->nfa[sp].out2 = c->nfa[s].out2;
	c->nfa[s].out2 = sp;
	return true;
}

static bool build(struct rctx *c, int32_t id, struct frag *f)
{
	const struct rnode nd = c->nodes[id];
	switch (nd.k) {
	case RK_EMPTY:
		f->s = f->e = nnew(c, NE, 0, 0);
		return f->s >= 0;
	case RK_SET: {
		/* s: an NS whose out is unused (-1) and whose out2 chain holds one split per path */
		f->s = nnew(c, NS, 0, 0);
		f->e = nnew(c, NE, 0, 0);
		if (f->s < 0 || f->e < 0)
			return false;
		static const uint32_t top[4] = { 0x7F, 0x7FF, 0xFFFF, CP_MAX };
		struct ubuild u;
		u.n_tails = 0;
		for (int32_t i = 0; i < nd.nr; i++) {
			uint32_t lo = c->rs[nd.r0 + i].lo, hi = c->rs[nd.r0 + i].hi;
			uint32_t bot = 0;
			for (int n = 0; n < 4; n++) {
				uint32_t a = lo > bot ? lo : bot, b = hi < top[n] ? hi : top[n];
				if (a <= b && !utf8_paths(c, &u, a, b, n + 1, f->s, f->e))
					return false;
				bot = top[n] + 1;
			}
		}
		return true;
	}
	case RK_CAT: {
		struct frag a, b;
		if (!build(c, nd.a, &a) || !build(c, nd.b, &b))
			return false;
		c->nfa[a.e].out = b.s;
		*f = (struct frag){ a.s, b.e };
		return true;
	}
	case RK_ALT: {
		struct frag a, b;
		int32_t s = nnew(c, NS, 0, 0), e = nnew(c, NE, 0, 0);
		if (s < 0 || e < 0 || !build(c, nd.a, &a) || !build(c, nd.b, &b))
			return false;
		c->nfa[s].out = a.s;
		c->nfa[s].out2 = b.s;
		c->nfa[a.e].out = e;
		c->nfa[b.e].out = e;
		*f = (struct frag){ s, e };
		return true;
	}
	case RK_REP:
		break;
	}
	/* x{m,n}: m copies, then x* or (x(x(...)?)?)? with n - m copies */
	int32_t s = nnew(c, NE, 0, 0);
	if (s < 0)
		return false;
	int32_t cur = s;
	for (int32_t i = 0; i < nd.min; i++) {
		struct frag x;
		if (!build(c, nd.a, &x))
			return false;
		c->nfa[cur].out = x.s;
		cur = x.e;
	}
	int32_t e = nnew(c, NE, 0, 0);
	if (e < 0)
		return false;
	if (nd.max < 0) {
		struct frag x;
		int32_t loop = nnew(c, NS, 0, 0);
		if (loop < 0 || !build(c, nd.a, &x))
			return false;
		c->nfa[loop].out = x.s;
		c->nfa[loop].out2 = e;
		c->nfa[x.e].out = loop;
		c->nfa[cur].out = loop;
	} else {
		for (int32_t i = nd.min; i < nd.max; i++) {
			struct frag x;
			int32_t sp = nnew(c, NS, 0, 0);
			if (sp < 0 || !build(c, nd.a, &x))
				return false;
			c->nfa[sp].out = x.s;
			c->nfa[sp].out2 = e;
			c->nfa[cur].out = sp;
			cur = x.e;
		}
		c->nfa[cur].out = e;
	}
	*f = (struct frag){ s, e };
	return true;
}

/* ---- DFA ------------------------------------------------------------------------------------ */

struct dctx {
	struct rctx *c;
	int32_t     *mark, gen;
	int32_t     *stack;
	int32_t     *pool; /* the NFA sets of the DFA states, back to back */
	size_t       n_pool, cap_pool;
	size_t      *off;
	int32_t     *len;
	uint32_t    *hash;
	int32_t      n;
	int32_t     *table; /* hash -> DFA state + 1 */
	uint32_t     tmask;
	long         work;
};

static int int_cmp(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return x < y ? -1 : x > y;
}

/* The important states (NB, NM) reached from seeds[0..n) without input, sorted, into out. */
static int32_t closure(struct dctx *d, const int32_t *seeds, int32_t n, int32_t *out)
{
	const struct nst *nfa = d->c->nfa;
	int32_t sp = 0, k = 0;
	d->gen++;
	for (int32_t i = 0; i < n; i++)
		if (d->mark[seeds[i]] != d->gen) {
			d->mark[seeds[i]] = d->gen;
			d->stack[sp++] = seeds[i];
		}
	while (sp) {
		int32_t x = d->stack[--sp];
		d->work++;
		const struct nst *s = &nfa[x];
		if (s->kind == NB || s->kind == NM) {
			out[k++] = x;
			continue;
		}
		int32_t t[2] = { s->out, s->kind == NS ? s->out2 : -1 };
		for (int j = 0; j < 2; j++)
			if (t[j] >= 0 && d->mark[t[j]] != d->gen) {
				d->mark[t[j]] = d->gen;
				d->stack[sp++] = t[j];
			}
	}
	qsort(out, (size_t)k, sizeof *out, int_cmp);
	return k;
}

static uint32_t set_hash(const int32_t *s, int32_t n)
{
	uint32_t h = 2166136261u;
	for (int32_t i = 0; i < n; i++)
		h = (h ^ (uint32_t)s[i]) * 16777619u;
	return h;
}

/* The DFA state of the set (added if new); -2: over the budget or out of memory. */
static int32_t dstate(struct dctx *d, const int32_t *set, int32_t n)
{
	uint32_t h = set_hash(set, n);
	for (uint32_t i = h & d->tmask;; i = (i + 1) & d->tmask) {
		int32_t x = d->table[i] - 1;
		if (x < 0) {
			if (d->n >= GS_REGEX_MAX_DFA)
				return -2;
			if (d->n_pool + (size_t)n > d->cap_pool) {
				size_t nc = (d->cap_pool + (size_t)n) * 2;
				int32_t *p = realloc(d->pool, nc * sizeof *p);
				if (!p)
					return -2;
				d->pool = p;
				d->cap_pool = nc;
			}
			if (n) /* an empty set (a class with no code point) has no bytes to copy */
				memcpy(d->pool + d->n_pool, set, (size_t)n * sizeof *set);
			d->off[d->n] = d->n_pool;
			d->len[d->n] = n;
			d->hash[d->n] = h;
			d->n_pool += (size_t)n;
			d->table[i] = d->n + 1;
			return d->n++;
		}
		if (d->hash[x] == h && d->len[x] == n && (!n || !memcmp(d->pool + d->off[x], set, (size_t)n * sizeof *set)))
			return x;
	}
}

void gs_regex_free(struct gs_regex *re)
{
	if (!re)
		return;
	free(re->trans);
	free(re->accept);
	free(re);
}

static enum gs_status determinise(struct rctx *c, int32_t start, int32_t match, struct gs_regex *re)
{
	/* byte classes: bytes no transition tells apart share a column */
	uint8_t bnd[257] = { 0 };
	for (int32_t i = 0; i < c->n_nfa; i++)
		if (c->nfa[i].kind == NB) {
			bnd[c->nfa[i].lo] = 1;
			bnd[c->nfa[i].hi + 1] = 1;
		}
	int32_t nc = 0, rep[256];
	for (int b = 0; b < 256; b++) {
		if (b == 0 || bnd[b])
			rep[nc++] = b;
		re->cls[b] = (uint8_t)(nc - 1);
	}
	re->nc = nc;

	struct dctx d = { .c = c, .tmask = 2 * GS_REGEX_MAX_DFA * 2 - 1 };
	size_t nn = (size_t)c->n_nfa;
	d.mark = calloc(nn, sizeof *d.mark);
	d.stack = malloc(nn * sizeof *d.stack);
	int32_t *seeds = malloc(nn * sizeof *seeds), *set = malloc(nn * sizeof *set);
	d.off = malloc(GS_REGEX_MAX_DFA * sizeof *d.off);
	d.len = malloc(GS_REGEX_MAX_DFA * sizeof *d.len);
	d.hash = malloc(GS_REGEX_MAX_DFA * sizeof *d.hash);
	d.table = calloc((size_t)d.tmask + 1, sizeof *d.table);
	int32_t tcap = 64; /* rows of trans */
	int32_t *trans = malloc((size_t)tcap * (size_t)nc * sizeof *trans);
	enum gs_status st = GS_ERR_NOMEM;
	if (!d.mark || !d.stack || !seeds || !set || !d.off || !d.len || !d.hash || !d.table || !trans)
		goto out;
	int32_t k = closure(&d, &start, 1, set);
	if (dstate(&d, set, k) != 0)
		goto out;
	for (int32_t x = 0; x < d.n; x++) {
		if (x == tcap) {
			int32_t *t = realloc(trans, (size_t)tcap * 2 * (size_t)nc * sizeof *trans);
			if (!t)
				goto out;
			trans = t;
			tcap *= 2;
		}
		for (int32_t cl = 0; cl < nc; cl++) {
			int32_t ns = 0;
			uint8_t b = (uint8_t)rep[cl];
			const int32_t *cur = d.len[x] ? d.pool + d.off[x] : NULL; /* an empty set: no pool yet */
			for (int32_t i = 0; i < d.len[x]; i++) {
				const struct nst *s = &c->nfa[cur[i]];
				if (s->kind == NB && s->lo <= b && b <= s->hi)
					seeds[ns++] = s->out;
			}
			d.work += d.len[x];
			int32_t to = -1;
			if (ns) {
				k = closure(&d, seeds, ns, set);
				to = dstate(&d, set, k);
				if (to == -2) {
					st = d.n >= GS_REGEX_MAX_DFA
						? rbad(c, WHOLE, "pattern too complex (its automaton exceeds %d states)", GS_REGEX_MAX_DFA)
						: GS_ERR_NOMEM;
					goto out;
				}
			}
			trans[(size_t)x * nc + cl] = to;
			if (d.work > GS_REGEX_MAX_WORK || (long)d.n * nc > GS_REGEX_MAX_CELLS) {
				st = rbad(c, WHOLE, "pattern too complex (compiling it takes more than the work limit)");
				goto out;
			}
		}
	}
	/* keep the states from which a match is reachable (reverse reachability) */
	int32_t n = d.n;
	uint8_t *accept = calloc((size_t)n, 1), *alive = calloc((size_t)n, 1);
	int32_t *rcount = calloc((size_t)n + 1, sizeof *rcount), *redge = NULL, *queue = malloc((size_t)n * sizeof *queue);
	if (!accept || !alive || !rcount || !queue) {
		free(accept);
		free(alive);
		free(rcount);
		free(queue);
		goto out;
	}
	size_t n_edges = 0;
	for (int32_t x = 0; x < n; x++) {
		const int32_t *cur = d.len[x] ? d.pool + d.off[x] : NULL; /* an empty set: no pool yet */
		for (int32_t i = 0; i < d.len[x]; i++)
			if (cur[i] == match)
				accept[x] = 1;
		for (int32_t cl = 0; cl < nc; cl++)
			if (trans[(size_t)x * nc + cl] >= 0) {
				rcount[trans[(size_t)x * nc + cl] + 1]++;
				n_edges++;
			}
	}
	for (int32_t x = 0; x < n; x++)
		rcount[x + 1] += rcount[x];
	redge = malloc((n_edges + 1) * sizeof *redge);
	int32_t *fill = calloc((size_t)n, sizeof *fill);
	if (!redge || !fill) {
		free(accept);
		free(alive);
		free(rcount);
		free(queue);
		free(redge);
		free(fill);
		goto out;
	}
	for (int32_t x = 0; x < n; x++)
		for (int32_t cl = 0; cl < nc; cl++) {
			int32_t t = trans[(size_t)x * nc + cl];
			if (t >= 0)
				redge[rcount[t] + fill[t]++] = x;
		}
	int32_t qh = 0, qt = 0;
	for (int32_t x = 0; x < n; x++)
		if (accept[x]) {
			alive[x] = 1;
			queue[qt++] = x;
		}
	while (qh < qt) {
		int32_t t = queue[qh++];
		for (int32_t j = rcount[t]; j < rcount[t + 1]; j++)
			if (!alive[redge[j]]) {
				alive[redge[j]] = 1;
				queue[qt++] = redge[j];
			}
	}
	bool start_alive = alive[0];
	for (size_t i = 0; i < (size_t)n * nc; i++)
		if (trans[i] >= 0 && !alive[trans[i]])
			trans[i] = -1;
	free(alive);
	free(rcount);
	free(queue);
	free(redge);
	free(fill);
	if (!start_alive) {
		free(accept);
		st = rbad(c, WHOLE, "the pattern matches no string");
		goto out;
	}
	int32_t *shrunk = realloc(trans, (size_t)n * nc * sizeof *trans);
	re->trans = shrunk ? shrunk : trans;
	trans = NULL;
	re->accept = accept;
	re->n = n;
	re->start = 0;
	st = GS_OK;
out:
	free(d.mark);
	free(d.stack);
	free(seeds);
	free(set);
	free(d.off);
	free(d.len);
	free(d.hash);
	free(d.table);
	free(d.pool);
	free(trans);
	return st;
}

enum gs_status gs_regex_compile(const char *pat, size_t len, char *why, size_t cap, struct gs_regex **out)
{
	*out = NULL;
	struct rctx c = { .p = (const uint8_t *)pat, .len = len, .why = why, .cap = cap };
	enum gs_status st;
	struct gs_regex *re = NULL;
	if (len > GS_REGEX_MAX_PATTERN) {
		st = rbad(&c, GS_REGEX_MAX_PATTERN, "pattern longer than %d bytes", GS_REGEX_MAX_PATTERN);
		goto done;
	}
	int32_t root;
	st = parse_alt(&c, 0, &root);
	if (st == GS_OK && !at_end(&c))
		st = rbad(&c, c.pos, "unbalanced )");
	if (st != GS_OK)
		goto done;
	struct frag f;
	int32_t match;
	if (!build(&c, root, &f) || (match = nnew(&c, NM, 0, 0)) < 0) {
		st = c.failed ? GS_ERR_INVALID_ARG : GS_ERR_NOMEM;
		goto done;
	}
	c.nfa[f.e].out = match;
	re = calloc(1, sizeof *re);
	if (!re) {
		st = GS_ERR_NOMEM;
		goto done;
	}
	st = determinise(&c, f.s, match, re);
	if (st != GS_OK) {
		gs_regex_free(re);
		re = NULL;
	}
done:
	if (st == GS_ERR_NOMEM && why && cap && !c.failed)
		snprintf(why, cap, "regex: out of memory");
	free(c.nodes);
	free(c.rs);
	free(c.nfa);
	*out = re;
	return st;
}

int32_t gs_regex_start(const struct gs_regex *re) { return re->start; }
int32_t gs_regex_n_states(const struct gs_regex *re) { return re->n; }

int32_t gs_regex_next(const struct gs_regex *re, int32_t state, uint8_t c)
{
	if (state < 0 || state >= re->n)
		return -1;
	return re->trans[(size_t)state * re->nc + re->cls[c]];
}

bool gs_regex_accepting(const struct gs_regex *re, int32_t state)
{
	return state >= 0 && state < re->n && re->accept[state];
}
