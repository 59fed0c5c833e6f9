/* JSON grammar for structured output: response_format -> node graph (compile), and the
 * byte-level pushdown automaton that runs it (gs_gstate_*). Rules in gs_grammar.h. */
#include "gs_grammar.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar_regex.h"
#include "gs_json.h"
#include "gs_util.h"

enum gn_kind { GN_ANY, GN_GOBJ, GN_GARR, GN_OBJ, GN_ARR, GN_STR, GN_INT, GN_NUM, GN_LIT, GN_ALT };

struct gprop {
	char   *key; /* "\"name\"" as JSON text, quotes included */
	size_t  key_len;
	int32_t node;
	bool    required;
};

struct gnode {
	enum gn_kind  kind;
	struct gprop *props; /* OBJ */
	int32_t       n_props;
	int32_t       item;  /* ARR */
	int64_t       lo, hi; /* ARR: items; STR: code points; INT: value bounds */
	char        **lits;  /* LIT: JSON texts (raw strings for a choice root) */
	size_t       *lit_len;
	int32_t       n_lits;
	int32_t      *alts;  /* ALT */
	int32_t       n_alts;
	uint8_t       first[32]; /* bytes that may start this node */
	int8_t        first_state; /* 0 not computed, 1 computing, 2 done */
};

struct gs_grammar {
	struct gnode *nodes;
	int32_t       n_nodes, cap_nodes;
	int32_t       root;
	int32_t       any, gstr, gnum, gconst; /* the generic nodes GN_ANY dispatches to */
	int32_t       gobj, garr;
	struct gs_regex *re; /* type "regex": the DFA runs instead of the nodes (state in f[0].node) */
	uint64_t      serial; /* process-unique, never reused (the mask cache's key) */
	int           refs;
	char         *text; /* cache key */
	size_t        text_len;
};

#define INT_DIGITS 18
#define NUM_DIGITS 15
#define EXP_DIGITS 3
static const int64_t INT_LIMIT = 999999999999999999LL; /* 18 nines */

/* ---- compile ------------------------------------------------------------------------------ */

struct gctx {
	struct gs_grammar *g;
	const cJSON       *root_schema;
	char              *why;
	size_t             cap;
	int                depth;
	struct { const char *name; int32_t node; } refs[64];
	int                n_refs;
	bool               has_nul; /* the text has an escaped NUL (\u0000) somewhere */
};

static enum gs_status gbad(struct gctx *c, const char *fmt, ...)
{
	va_list ap;
	char buf[512];
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (c->why && c->cap)
		snprintf(c->why, c->cap, "%s", buf);
	return gs_errorf(GS_ERR_INVALID_ARG, "%s", buf);
}

static int32_t gnew(struct gs_grammar *g, enum gn_kind k)
{
	if (g->n_nodes == g->cap_nodes) {
		int32_t nc = g->cap_nodes ? g->cap_nodes * 2 : 16;
		struct gnode *n = realloc(g->nodes, (size_t)nc * sizeof *n);
		if (!n)
			return -1;
		g->nodes = n;
		g->cap_nodes = nc;
	}
	memset(&g->nodes[g->n_nodes], 0, sizeof g->nodes[0]);
	g->nodes[g->n_nodes].kind = k;
	g->nodes[g->n_nodes].item = -1;
	return g->n_nodes++;
}

static void set_bit(uint8_t *set, unsigned b) { set[b >> 3] |= (uint8_t)(1u << (b & 7)); }
static bool has_bit(const uint8_t *set, unsigned b) { return set[b >> 3] >> (b & 7) & 1; }

static int32_t glit(struct gs_grammar *g, const char *const *texts, int n)
{
	int32_t id = gnew(g, GN_LIT);
	if (id < 0)
		return -1;
	struct gnode *nd = &g->nodes[id];
	nd->lits = calloc((size_t)n, sizeof *nd->lits);
	nd->lit_len = calloc((size_t)n, sizeof *nd->lit_len);
	if (!nd->lits || !nd->lit_len)
		return -1;
	nd->n_lits = n;
	for (int i = 0; i < n; i++) {
		nd->lits[i] = strdup(texts[i]);
		if (!nd->lits[i])
			return -1;
		nd->lit_len[i] = strlen(texts[i]);
	}
	return id;
}

static enum gs_status generic_nodes(struct gs_grammar *g)
{
	static const char *const consts[] = { "true", "false", "null" };
	g->any = gnew(g, GN_ANY);
	g->gobj = gnew(g, GN_GOBJ);
	g->garr = gnew(g, GN_GARR);
	g->gstr = gnew(g, GN_STR);
	g->gnum = gnew(g, GN_NUM);
	g->gconst = glit(g, consts, 3);
	if (g->any < 0 || g->gobj < 0 || g->garr < 0 || g->gstr < 0 || g->gnum < 0 || g->gconst < 0)
		return GS_ERR_NOMEM;
	g->nodes[g->gstr].lo = 0;
	g->nodes[g->gstr].hi = INT64_MAX;
	return GS_OK;
}

static const char *const ANNOTATIONS[] = { "title", "description", "default", "examples", "$comment",
					   "$schema", "$id", NULL };

static bool in_list(const char *k, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(k, *list) == 0)
			return true;
	return false;
}

static enum gs_status compile_node(struct gctx *c, const cJSON *s, const char *path, int32_t *out);

static enum gs_status get_count(struct gctx *c, const cJSON *s, const char *key, const char *path, int64_t *v)
{
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(s, key);
	if (!x)
		return GS_OK;
	if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 1e9 ||
	    x->valuedouble != (double)(int64_t)x->valuedouble)
		return gbad(c, "'%s' at %s must be a non-negative integer", key, path);
	*v = (int64_t)x->valuedouble;
	return GS_OK;
}

/* A value of enum/const kept when it fits the "type" list (NULL: any). */
static bool value_has_type(const cJSON *v, const cJSON *types)
{
	if (!types)
		return true;
	const cJSON *t;
	bool list = cJSON_IsArray(types);
	for (t = list ? types->child : types; t; t = list ? t->next : NULL) {
		const char *n = cJSON_IsString(t) ? t->valuestring : "";
		if ((!strcmp(n, "string") && cJSON_IsString(v)) || (!strcmp(n, "boolean") && cJSON_IsBool(v)) ||
		    (!strcmp(n, "null") && cJSON_IsNull(v)) || (!strcmp(n, "object") && cJSON_IsObject(v)) ||
		    (!strcmp(n, "array") && cJSON_IsArray(v)) || (!strcmp(n, "number") && cJSON_IsNumber(v)) ||
		    (!strcmp(n, "integer") && cJSON_IsNumber(v) && v->valuedouble == (double)(int64_t)v->valuedouble))
			return true;
		if (!list)
			break;
	}
	return false;
}

static enum gs_status compile_enum(struct gctx *c, const cJSON *s, const char *path, int32_t *out)
{
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(s, "enum");
	const cJSON *k = cJSON_GetObjectItemCaseSensitive(s, "const");
	const cJSON *types = cJSON_GetObjectItemCaseSensitive(s, "type");
	for (const cJSON *x = s->child; x; x = x->next)
		if (strcmp(x->string, "enum") && strcmp(x->string, "const") && strcmp(x->string, "type") &&
		    !in_list(x->string, ANNOTATIONS))
			return gbad(c, "keyword '%s' at %s cannot be combined with enum/const", x->string, path);
	if (e && k)
		return gbad(c, "enum and const together at %s", path);
	if (e && (!cJSON_IsArray(e) || !e->child))
		return gbad(c, "'enum' at %s must be a non-empty array", path);
	char *texts[64];
	int n = 0;
	enum gs_status st = GS_OK;
	for (const cJSON *v = e ? e->child : k; v; v = e ? v->next : NULL) {
		if (!value_has_type(v, types))
			continue;
		if (n == 64) {
			st = gbad(c, "'enum' at %s has more than 64 values", path);
			break;
		}
		texts[n] = cJSON_PrintUnformatted(v);
		if (!texts[n]) {
			st = GS_ERR_NOMEM;
			break;
		}
		n++;
	}
	if (st == GS_OK && n == 0)
		st = gbad(c, "no value of '%s' at %s fits its type", e ? "enum" : "const", path);
	if (st == GS_OK) {
		*out = glit(c->g, (const char *const *)texts, n);
		if (*out < 0)
			st = GS_ERR_NOMEM;
	}
	for (int i = 0; i < n; i++)
		cJSON_free(texts[i]);
	return st;
}

static enum gs_status compile_alts(struct gctx *c, const cJSON *list, const char *kw, const char *path,
				   int32_t *out)
{
	if (!cJSON_IsArray(list) || !list->child)
		return gbad(c, "'%s' at %s must be a non-empty array of schemas", kw, path);
	int n = cJSON_GetArraySize(list), i = 0;
	int32_t id = gnew(c->g, GN_ALT);
	if (id < 0)
		return GS_ERR_NOMEM;
	int32_t *alts = calloc((size_t)n, sizeof *alts);
	if (!alts)
		return GS_ERR_NOMEM;
	c->g->nodes[id].alts = alts;
	c->g->nodes[id].n_alts = n;
	for (const cJSON *x = list->child; x; x = x->next, i++) {
		char sub[256];
		snprintf(sub, sizeof sub, "%s/%s/%d", path, kw, i);
		int32_t a;
		GS_TRY(compile_node(c, x, sub, &a));
		c->g->nodes[id].alts[i] = a;
	}
	*out = id;
	return GS_OK;
}

static enum gs_status compile_ref(struct gctx *c, const cJSON *ref, const char *path, int32_t *out)
{
	const char *r = cJSON_IsString(ref) ? ref->valuestring : NULL;
	const char *name = NULL, *container = NULL;
	if (r && !strncmp(r, "#/$defs/", 8)) {
		name = r + 8;
		container = "$defs";
	} else if (r && !strncmp(r, "#/definitions/", 14)) {
		name = r + 14;
		container = "definitions";
	}
	if (!name || strchr(name, '/') || strchr(name, '~'))
		return gbad(c, "'$ref' at %s must be \"#/$defs/NAME\" or \"#/definitions/NAME\"", path);
	for (int i = 0; i < c->n_refs; i++)
		if (!strcmp(c->refs[i].name, r)) {
			*out = c->refs[i].node;
			return GS_OK;
		}
	const cJSON *defs = cJSON_GetObjectItemCaseSensitive(c->root_schema, container);
	const cJSON *target = defs ? cJSON_GetObjectItemCaseSensitive(defs, name) : NULL;
	if (!target)
		return gbad(c, "'$ref' at %s: %s not found", path, r);
	if (c->n_refs == 64)
		return gbad(c, "more than 64 distinct '$ref' targets");
	/* An indirection node first, so a recursive reference finds it. */
	int32_t id = gnew(c->g, GN_ALT);
	if (id < 0)
		return GS_ERR_NOMEM;
	int32_t *alts = calloc(1, sizeof *alts);
	if (!alts)
		return GS_ERR_NOMEM;
	c->g->nodes[id].alts = alts;
	c->g->nodes[id].n_alts = 1;
	c->refs[c->n_refs].name = r;
	c->refs[c->n_refs].node = id;
	c->n_refs++;
	int32_t t;
	GS_TRY(compile_node(c, target, r + 1, &t));
	c->g->nodes[id].alts[0] = t;
	*out = id;
	return GS_OK;
}

static bool owned_by_listed(const char *k, const cJSON *types, const char *const *obj, const char *const *arr,
			    const char *const *str, const char *const *in)
{
	for (const cJSON *t = types->child; t; t = t->next) {
		const char *n = cJSON_IsString(t) ? t->valuestring : "";
		if ((!strcmp(n, "object") && in_list(k, obj)) || (!strcmp(n, "array") && in_list(k, arr)) ||
		    (!strcmp(n, "string") && in_list(k, str)) || (!strcmp(n, "integer") && in_list(k, in)))
			return true;
	}
	return false;
}

/* types: the schema's "type" list when type is one of several: keywords of the other listed
 * types are theirs, not refused here. */
static enum gs_status compile_type(struct gctx *c, const cJSON *s, const char *type, const char *path,
				   int32_t *out, const cJSON *types)
{
	struct gs_grammar *g = c->g;
	static const char *const KW_OBJ[] = { "properties", "required", "additionalProperties", NULL };
	static const char *const KW_ARR[] = { "items", "minItems", "maxItems", NULL };
	static const char *const KW_STR[] = { "minLength", "maxLength", NULL };
	static const char *const KW_INT[] = { "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", NULL };
	static const char *const KW_NONE[] = { NULL };
	const char *const *own = KW_NONE;
	if (!strcmp(type, "object"))
		own = KW_OBJ;
	else if (!strcmp(type, "array"))
		own = KW_ARR;
	else if (!strcmp(type, "string"))
		own = KW_STR;
	else if (!strcmp(type, "integer"))
		own = KW_INT;
	else if (strcmp(type, "number") && strcmp(type, "boolean") && strcmp(type, "null"))
		return gbad(c, "unsupported type '%s' at %s", type, path);
	for (const cJSON *x = s->child; x; x = x->next) {
		const char *k = x->string;
		if (in_list(k, own) || in_list(k, ANNOTATIONS) || !strcmp(k, "type") ||
		    (path[0] == '\0' && (!strcmp(k, "$defs") || !strcmp(k, "definitions"))))
			continue;
		if (types && owned_by_listed(k, types, KW_OBJ, KW_ARR, KW_STR, KW_INT))
			continue;
		if (in_list(k, KW_OBJ) || in_list(k, KW_ARR) || in_list(k, KW_STR) || in_list(k, KW_INT))
			return gbad(c, "keyword '%s' at %s does not apply to type '%s'%s", k, path[0] ? path : "/",
				    type, !strcmp(type, "number") ? " (bounds are supported on integers only)" : "");
		return gbad(c, "unsupported keyword '%s' at %s", k, path[0] ? path : "/");
	}
	if (!strcmp(type, "boolean") || !strcmp(type, "null")) {
		static const char *const tf[] = { "true", "false" }, *const nl[] = { "null" };
		*out = type[0] == 'b' ? glit(g, tf, 2) : glit(g, nl, 1);
		return *out < 0 ? GS_ERR_NOMEM : GS_OK;
	}
	if (!strcmp(type, "number")) {
		*out = g->gnum;
		return GS_OK;
	}
	if (!strcmp(type, "string")) {
		int64_t lo = 0, hi = INT64_MAX;
		GS_TRY(get_count(c, s, "minLength", path, &lo));
		GS_TRY(get_count(c, s, "maxLength", path, &hi));
		if (lo > hi)
			return gbad(c, "minLength > maxLength at %s", path);
		int32_t id = gnew(g, GN_STR);
		if (id < 0)
			return GS_ERR_NOMEM;
		g->nodes[id].lo = lo;
		g->nodes[id].hi = hi;
		*out = id;
		return GS_OK;
	}
	if (!strcmp(type, "integer")) {
		int64_t lo = -INT_LIMIT, hi = INT_LIMIT;
		static const char *const kws[] = { "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum" };
		for (int i = 0; i < 4; i++) {
			const cJSON *x = cJSON_GetObjectItemCaseSensitive(s, kws[i]);
			if (!x)
				continue;
			if (!cJSON_IsNumber(x) || x->valuedouble < -1e18 || x->valuedouble > 1e18)
				return gbad(c, "'%s' at %s must be a number within +-1e18", kws[i], path);
			double d = x->valuedouble;
			int64_t v;
			if (i < 2) { /* lower bound: smallest integer allowed */
				v = (int64_t)d;
				if ((double)v < d)
					v++;
				if (i == 1 && (double)v == d)
					v++;
				if (v > lo)
					lo = v;
			} else {
				v = (int64_t)d;
				if ((double)v > d)
					v--;
				if (i == 3 && (double)v == d)
					v--;
				if (v < hi)
					hi = v;
			}
		}
		if (lo > hi)
			return gbad(c, "no integer within the bounds at %s", path);
		int32_t id = gnew(g, GN_INT);
		if (id < 0)
			return GS_ERR_NOMEM;
		g->nodes[id].lo = lo;
		g->nodes[id].hi = hi;
		*out = id;
		return GS_OK;
	}
	if (!strcmp(type, "array")) {
		int64_t lo = 0, hi = INT64_MAX;
		GS_TRY(get_count(c, s, "minItems", path, &lo));
		GS_TRY(get_count(c, s, "maxItems", path, &hi));
		if (lo > hi)
			return gbad(c, "minItems > maxItems at %s", path);
		const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
		int32_t item = g->any;
		if (items) {
			if (!cJSON_IsObject(items))
				return gbad(c, "'items' at %s must be a schema object", path);
			char sub[256];
			snprintf(sub, sizeof sub, "%s/items", path);
			GS_TRY(compile_node(c, items, sub, &item));
		}
		int32_t id = gnew(g, GN_ARR);
		if (id < 0)
			return GS_ERR_NOMEM;
		g->nodes[id].item = item;
		g->nodes[id].lo = lo;
		g->nodes[id].hi = hi;
		*out = id;
		return GS_OK;
	}
	/* object */
	const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
	const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
	const cJSON *add = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
	if (add && !cJSON_IsBool(add) && !cJSON_IsObject(add))
		return gbad(c, "'additionalProperties' at %s must be a boolean or a schema", path);
	if (props && !cJSON_IsObject(props))
		return gbad(c, "'properties' at %s must be an object", path);
	if (req && !cJSON_IsArray(req))
		return gbad(c, "'required' at %s must be an array of property names", path);
	for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
		if (!cJSON_IsString(r) || !props || !cJSON_GetObjectItemCaseSensitive(props, r->valuestring))
			return gbad(c, "'required' at %s names %s, which is not in 'properties'", path,
				    cJSON_IsString(r) ? r->valuestring : "a non-string");
	if (!props) {
		*out = g->gobj;
		return GS_OK;
	}
	int n = cJSON_GetArraySize(props);
	if (n > 64)
		return gbad(c, "more than 64 properties at %s", path);
	int32_t id = gnew(g, GN_OBJ);
	if (id < 0)
		return GS_ERR_NOMEM;
	struct gprop *pp = calloc((size_t)(n ? n : 1), sizeof *pp);
	if (!pp)
		return GS_ERR_NOMEM;
	g->nodes[id].props = pp;
	g->nodes[id].n_props = n;
	int i = 0;
	for (const cJSON *p = props->child; p; p = p->next, i++) {
		cJSON *ks = cJSON_CreateString(p->string);
		char *kt = ks ? cJSON_PrintUnformatted(ks) : NULL;
		cJSON_Delete(ks);
		if (!kt)
			return GS_ERR_NOMEM;
		g->nodes[id].props[i].key = strdup(kt);
		cJSON_free(kt);
		if (!g->nodes[id].props[i].key)
			return GS_ERR_NOMEM;
		g->nodes[id].props[i].key_len = strlen(g->nodes[id].props[i].key);
		for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
			if (!strcmp(r->valuestring, p->string))
				g->nodes[id].props[i].required = true;
		if (!cJSON_IsObject(p))
			return gbad(c, "property '%s' at %s must be a schema object", p->string, path);
		char sub[256];
		snprintf(sub, sizeof sub, "%s/properties/%s", path, p->string);
		int32_t v;
		GS_TRY(compile_node(c, p, sub, &v));
		g->nodes[id].props[i].node = v;
	}
	*out = id;
	return GS_OK;
}

static enum gs_status compile_node(struct gctx *c, const cJSON *s, const char *path, int32_t *out)
{
	if (!cJSON_IsObject(s))
		return gbad(c, "schema at %s must be an object", path[0] ? path : "/");
	if (++c->depth > GS_GRAMMAR_MAX_DEPTH - 4) {
		c->depth--;
		return gbad(c, "schema nested deeper than %d at %s", GS_GRAMMAR_MAX_DEPTH - 4, path);
	}
	enum gs_status st;
	const cJSON *x;
	if ((x = cJSON_GetObjectItemCaseSensitive(s, "$ref"))) {
		for (const cJSON *y = s->child; y; y = y->next)
			if (strcmp(y->string, "$ref") && !in_list(y->string, ANNOTATIONS) &&
			    strcmp(y->string, "$defs") && strcmp(y->string, "definitions"))
				return gbad(c, "keyword '%s' next to '$ref' at %s", y->string, path[0] ? path : "/");
		st = compile_ref(c, x, path[0] ? path : "/", out);
	} else if (cJSON_GetObjectItemCaseSensitive(s, "enum") || cJSON_GetObjectItemCaseSensitive(s, "const")) {
		st = compile_enum(c, s, path[0] ? path : "/", out);
	} else if ((x = cJSON_GetObjectItemCaseSensitive(s, "anyOf")) ||
		   (x = cJSON_GetObjectItemCaseSensitive(s, "oneOf"))) {
		for (const cJSON *y = s->child; y; y = y->next)
			if (y != x && !in_list(y->string, ANNOTATIONS) && strcmp(y->string, "$defs") &&
			    strcmp(y->string, "definitions"))
				return gbad(c, "keyword '%s' next to '%s' at %s", y->string, x->string,
					    path[0] ? path : "/");
		st = compile_alts(c, x, x->string, path, out);
	} else {
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(s, "type");
		if (!t) {
			if (cJSON_GetObjectItemCaseSensitive(s, "properties"))
				st = compile_type(c, s, "object", path, out, NULL);
			else if (cJSON_GetObjectItemCaseSensitive(s, "items"))
				st = compile_type(c, s, "array", path, out, NULL);
			else {
				for (const cJSON *y = s->child; y; y = y->next)
					if (!in_list(y->string, ANNOTATIONS) && strcmp(y->string, "$defs") &&
					    strcmp(y->string, "definitions"))
						return gbad(c, "unsupported keyword '%s' at %s (without 'type')", y->string,
							    path[0] ? path : "/");
				*out = c->g->any;
				st = GS_OK;
			}
		} else if (cJSON_IsString(t)) {
			st = compile_type(c, s, t->valuestring, path, out, NULL);
		} else if (cJSON_IsArray(t) && t->child) {
			int n = cJSON_GetArraySize(t), i = 0;
			int32_t id = gnew(c->g, GN_ALT);
			int32_t *alts = calloc((size_t)n, sizeof *alts);
			if (id < 0 || !alts) {
				free(alts);
				return GS_ERR_NOMEM;
			}
			c->g->nodes[id].alts = alts;
			c->g->nodes[id].n_alts = n;
			st = GS_OK;
			for (const cJSON *y = t->child; y && st == GS_OK; y = y->next, i++) {
				if (!cJSON_IsString(y))
					return gbad(c, "'type' at %s must list strings", path[0] ? path : "/");
				int32_t a;
				st = compile_type(c, s, y->valuestring, path, &a, t);
				c->g->nodes[id].alts[i] = a;
			}
			*out = id;
		} else {
			st = gbad(c, "'type' at %s must be a string or a non-empty array", path[0] ? path : "/");
		}
	}
	c->depth--;
	return st;
}

/* FIRST sets; refuses alternatives that share a first byte (the automaton picks the
 * alternative by the first byte). */
static enum gs_status compute_first(struct gctx *c, int32_t id)
{
	struct gs_grammar *g = c->g;
	struct gnode *nd = &g->nodes[id];
	if (nd->first_state == 2)
		return GS_OK;
	if (nd->first_state == 1)
		return gbad(c, "a '$ref' refers to itself without an object or array in between");
	nd->first_state = 1;
	uint8_t f[32] = { 0 };
	switch (nd->kind) {
	case GN_ANY:
		for (const char *p = "{[\"-0123456789tfn"; *p; p++)
			set_bit(f, (uint8_t)*p);
		break;
	case GN_GOBJ:
	case GN_OBJ:
		set_bit(f, '{');
		break;
	case GN_GARR:
	case GN_ARR:
		set_bit(f, '[');
		break;
	case GN_STR:
		set_bit(f, '"');
		break;
	case GN_INT:
		if (nd->lo < 0)
			set_bit(f, '-');
		for (unsigned d = '0'; d <= '9'; d++)
			set_bit(f, d);
		break;
	case GN_NUM:
		set_bit(f, '-');
		for (unsigned d = '0'; d <= '9'; d++)
			set_bit(f, d);
		break;
	case GN_LIT:
		for (int i = 0; i < nd->n_lits; i++)
			if (nd->lit_len[i])
				set_bit(f, (uint8_t)nd->lits[i][0]);
		break;
	case GN_ALT:
		for (int i = 0; i < nd->n_alts; i++) {
			GS_TRY(compute_first(c, nd->alts[i]));
			nd = &g->nodes[id];
			const uint8_t *af = g->nodes[nd->alts[i]].first;
			for (int b = 0; b < 32; b++) {
				if (f[b] & af[b]) {
					unsigned ch = 0;
					for (unsigned k = 0; k < 8; k++)
						if ((f[b] & af[b]) >> k & 1)
							ch = (unsigned)b * 8 + k;
					return gbad(c, "anyOf/oneOf/type list: two alternatives can both start with '%c' "
						    "(alternatives must differ in their first character: object, array, "
						    "string, number, true/false, null)", (char)ch);
				}
				f[b] |= af[b];
			}
		}
		break;
	}
	nd = &g->nodes[id];
	memcpy(nd->first, f, sizeof f);
	nd->first_state = 2;
	return GS_OK;
}

void gs_grammar_free(struct gs_grammar *g)
{
	if (!g)
		return;
	if (__atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	for (int32_t i = 0; i < g->n_nodes; i++) {
		struct gnode *nd = &g->nodes[i];
		for (int32_t k = 0; k < nd->n_props; k++)
			free(nd->props[k].key);
		free(nd->props);
		for (int32_t k = 0; k < nd->n_lits; k++)
			free(nd->lits[k]);
		free(nd->lits);
		free(nd->lit_len);
		free(nd->alts);
	}
	free(g->nodes);
	gs_regex_free(g->re);
	free(g->text);
	free(g);
}

static enum gs_status compile_rf(struct gctx *c, const cJSON *rf)
{
	struct gs_grammar *g = c->g;
	if (!cJSON_IsObject(rf))
		return gbad(c, "response_format must be an object, got %s", gs_json_type(rf));
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(rf, "type");
	if (!cJSON_IsString(type))
		return gbad(c, "response_format.type must be a string, got %s", gs_json_type(type));
	const char *t = type->valuestring;
	const char *field = !strcmp(t, "json_schema") ? "json_schema" : !strcmp(t, "choice") ? "choice" :
			    !strcmp(t, "regex") ? "regex" : NULL;
	for (const cJSON *x = rf->child; x; x = x->next)
		if (strcmp(x->string, "type") && (!field || strcmp(x->string, field)))
			return gbad(c, "response_format.%s is not supported with type '%s'", x->string, t);
	if (!strcmp(t, "regex")) {
		const cJSON *re = cJSON_GetObjectItemCaseSensitive(rf, "regex");
		if (!cJSON_IsString(re))
			return gbad(c, "response_format.regex must be a string, got %s", gs_json_type(re));
		if (c->has_nul) /* cJSON's strings end at the first NUL: the pattern would be cut short */
			return gbad(c, "response_format.regex contains the character \\u0000 (write \\x00 in the pattern)");
		char buf[480];
		enum gs_status st = gs_regex_compile(re->valuestring, strlen(re->valuestring), buf, sizeof buf, &g->re);
		if (st == GS_ERR_INVALID_ARG)
			return gbad(c, "response_format.%s", buf);
		return st;
	}
	GS_TRY(generic_nodes(g));
	if (!strcmp(t, "json_object")) {
		g->root = g->gobj;
	} else if (!strcmp(t, "choice")) {
		const cJSON *ch = cJSON_GetObjectItemCaseSensitive(rf, "choice");
		if (!cJSON_IsArray(ch) || !ch->child || cJSON_GetArraySize(ch) > 64)
			return gbad(c, "choice must be an array of 1 to 64 non-empty strings");
		const char *texts[64];
		int n = 0;
		for (const cJSON *x = ch->child; x; x = x->next) {
			if (!cJSON_IsString(x) || !x->valuestring[0])
				return gbad(c, "choice must be an array of 1 to 64 non-empty strings");
			texts[n++] = x->valuestring;
		}
		g->root = glit(g, texts, n);
		if (g->root < 0)
			return GS_ERR_NOMEM;
	} else if (!strcmp(t, "json_schema")) {
		const cJSON *js = cJSON_GetObjectItemCaseSensitive(rf, "json_schema");
		if (!cJSON_IsObject(js))
			return gbad(c, "response_format.json_schema must be an object, got %s", gs_json_type(js));
		for (const cJSON *x = js->child; x; x = x->next) {
			if (!strcmp(x->string, "name")) {
				if (!cJSON_IsString(x) || strlen(x->valuestring) > 64)
					return gbad(c, "response_format.json_schema.name must be a string of at most 64 characters");
			} else if (!strcmp(x->string, "strict")) {
				if (!cJSON_IsBool(x) && !cJSON_IsNull(x))
					return gbad(c, "response_format.json_schema.strict must be a boolean");
			} else if (!strcmp(x->string, "description")) {
				if (!cJSON_IsString(x))
					return gbad(c, "response_format.json_schema.description must be a string");
			} else if (strcmp(x->string, "schema")) {
				return gbad(c, "response_format.json_schema.%s is not supported", x->string);
			}
		}
		const cJSON *schema = cJSON_GetObjectItemCaseSensitive(js, "schema");
		if (!cJSON_IsObject(schema))
			return gbad(c, "response_format.json_schema.schema must be an object, got %s",
				    gs_json_type(schema));
		c->root_schema = schema;
		enum gs_status st = compile_node(c, schema, "", &g->root);
		if (st != GS_OK) {
			if (st == GS_ERR_INVALID_ARG && c->why && c->cap) {
				char tmp[600];
				snprintf(tmp, sizeof tmp, "response_format.json_schema.schema: %s", c->why);
				snprintf(c->why, c->cap, "%s", tmp);
			}
			return st;
		}
	} else if (!strcmp(t, "grammar")) {
		return gbad(c, "response_format.type '%s' is not supported (json_object, json_schema, choice, regex, text)", t);
	} else {
		return gbad(c, "response_format.type must be text, json_object, json_schema, choice or regex, got '%s'", t);
	}
	for (int32_t i = 0; i < g->n_nodes; i++)
		GS_TRY(compute_first(c, i));
	return GS_OK;
}

enum gs_status gs_grammar_compile(const char *response_format, size_t len, char *why, size_t cap,
				  struct gs_grammar **out)
{
	*out = NULL;
	if (why && cap)
		why[0] = '\0';
	cJSON *rf = cJSON_ParseWithLength(response_format, len);
	struct gctx c = { .why = why, .cap = cap };
	for (size_t i = 0; i + 6 <= len; i++) /* an escaped NUL: \u0000 after an even run of backslashes */
		if (response_format[i] == '\\') {
			if (!memcmp(response_format + i + 1, "u0000", 5))
				c.has_nul = true;
			i++; /* skip the escaped character */
		}
	if (!rf)
		return gbad(&c, "response_format is not valid JSON");
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(rf, "type");
	if (cJSON_IsObject(rf) && cJSON_IsString(type) && !strcmp(type->valuestring, "text") &&
	    cJSON_GetArraySize(rf) == 1) {
		cJSON_Delete(rf);
		return GS_OK;
	}
	struct gs_grammar *g = calloc(1, sizeof *g);
	if (!g) {
		cJSON_Delete(rf);
		return GS_ERR_NOMEM;
	}
	g->refs = 1;
	static uint64_t next_serial;
	g->serial = __atomic_add_fetch(&next_serial, 1, __ATOMIC_RELAXED);
	c.g = g;
	enum gs_status st = compile_rf(&c, rf);
	cJSON_Delete(rf);
	if (st != GS_OK) {
		gs_grammar_free(g);
		return st;
	}
	*out = g;
	return GS_OK;
}

/* ---- cache ---------------------------------------------------------------------------------- */

#define GCACHE_N 64
static pthread_mutex_t gcache_mu = PTHREAD_MUTEX_INITIALIZER;
static struct gs_grammar *gcache[GCACHE_N];
static unsigned gcache_next;

enum gs_status gs_grammar_get(const char *response_format, size_t len, char *why, size_t cap,
			      struct gs_grammar **out)
{
	*out = NULL;
	pthread_mutex_lock(&gcache_mu);
	for (int i = 0; i < GCACHE_N; i++) {
		struct gs_grammar *g = gcache[i];
		if (g && g->text_len == len && !memcmp(g->text, response_format, len)) {
			__atomic_add_fetch(&g->refs, 1, __ATOMIC_ACQ_REL);
			*out = g;
			pthread_mutex_unlock(&gcache_mu);
			return GS_OK;
		}
	}
	pthread_mutex_unlock(&gcache_mu);
	struct gs_grammar *g;
	GS_TRY(gs_grammar_compile(response_format, len, why, cap, &g));
	if (!g)
		return GS_OK;
	g->text = malloc(len + 1);
	if (!g->text) {
		*out = g; /* usable, just not cached */
		return GS_OK;
	}
	memcpy(g->text, response_format, len);
	g->text[len] = '\0';
	g->text_len = len;
	__atomic_add_fetch(&g->refs, 1, __ATOMIC_ACQ_REL); /* the cache's reference */
	pthread_mutex_lock(&gcache_mu);
	struct gs_grammar *old = gcache[gcache_next];
	gcache[gcache_next] = g;
	gcache_next = (gcache_next + 1) % GCACHE_N;
	pthread_mutex_unlock(&gcache_mu);
	gs_grammar_free(old);
	*out = g;
	return GS_OK;
}

/* ---- automaton ------------------------------------------------------------------------------ */

void gs_gstate_init(const struct gs_grammar *g, struct gs_gstate *s)
{
	s->depth = 1;
	memset(&s->f[0], 0, sizeof s->f[0]);
	s->f[0].node = g->re ? gs_regex_start(g->re) : g->root;
}

static bool push(struct gs_gstate *s, int32_t node)
{
	if (s->depth == GS_GRAMMAR_MAX_DEPTH)
		return false;
	struct gs_gframe *f = &s->f[s->depth++];
	memset(f, 0, sizeof *f);
	f->node = node;
	return true;
}

/* Can an integer whose digits so far give magnitude m (nd digits, neg sign) still end in
 * [lo, hi] (ending now included)? */
static bool int_feasible(int64_t m, uint32_t nd, bool neg, int64_t lo, int64_t hi)
{
	int64_t span = 1; /* 10^k */
	int64_t a = m;
	for (uint32_t k = 0; nd + k <= INT_DIGITS; k++) {
		int64_t b = a + span - 1; /* completions with k more digits: [a, b] */
		int64_t vlo = neg ? -b : a, vhi = neg ? -a : b;
		if (k == 0) {
			vlo = neg ? -m : m;
			vhi = vlo;
		}
		if (vhi >= lo && vlo <= hi)
			return true;
		if (m == 0 && !neg)
			break; /* a leading 0 takes no more digits */
		if (nd + k + 1 > INT_DIGITS)
			break;
		a *= 10;
		span *= 10;
	}
	return false;
}

enum { R_REJECT, R_OK, R_RETRY };

/* phase of the frame as the number it has read ends: may it end here? */
static bool frame_can_end(const struct gs_grammar *g, const struct gs_gframe *f)
{
	const struct gnode *nd = &g->nodes[f->node];
	switch (nd->kind) {
	case GN_INT: {
		if (f->phase != 2 && f->phase != 3)
			return false;
		int64_t v = f->aux ? -f->val : f->val;
		return v >= nd->lo && v <= nd->hi;
	}
	case GN_NUM:
		return f->phase == 2 || f->phase == 3 || f->phase == 5 || f->phase == 8;
	case GN_LIT:
		if (f->phase == 0)
			return false;
		for (int i = 0; i < nd->n_lits; i++)
			if ((f->mask >> i & 1) && nd->lit_len[i] == f->count)
				return true;
		return false;
	default:
		return false;
	}
}

static int step_str(const struct gnode *nd, struct gs_gframe *f, uint8_t c, struct gs_gstate *s)
{
	switch (f->phase) {
	case 0:
		if (c != '"')
			return R_REJECT;
		f->phase = 1;
		return R_OK;
	case 1:
		if (f->aux) { /* UTF-8 continuation: range in mask (lo | hi << 8) */
			uint8_t lo = (uint8_t)f->mask, hi = (uint8_t)(f->mask >> 8);
			if (c < lo || c > hi)
				return R_REJECT;
			f->aux--;
			f->mask = 0x80 | 0xBF << 8;
			return R_OK;
		}
		if (c == '"') {
			if ((int64_t)f->count < nd->lo)
				return R_REJECT;
			s->depth--;
			return R_OK;
		}
		if (c < 0x20 || c == 0x7F || c >= 0xF5 || (c >= 0x80 && c < 0xC2))
			return R_REJECT;
		if ((int64_t)f->count >= nd->hi)
			return R_REJECT;
		f->count++;
		if (c == '\\') {
			f->phase = 2;
		} else if (c >= 0xC2) {
			uint8_t lo = 0x80, hi = 0xBF;
			f->aux = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
			if (c == 0xE0)
				lo = 0xA0;
			if (c == 0xED)
				hi = 0x9F;
			if (c == 0xF0)
				lo = 0x90;
			if (c == 0xF4)
				hi = 0x8F;
			f->mask = (uint64_t)lo | (uint64_t)hi << 8;
		}
		return R_OK;
	case 2:
		if (c == 'u') {
			f->phase = 3;
			return R_OK;
		}
		if (!strchr("\"\\/bfnrt", c) || c == 0)
			return R_REJECT;
		f->phase = 1;
		return R_OK;
	default: { /* 3..6: hex digits of \u; no surrogates (D800-DFFF) */
		bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
		if (!hex)
			return R_REJECT;
		if (f->phase == 3)
			f->idx = (c == 'd' || c == 'D');
		else if (f->phase == 4 && f->idx && !(c >= '0' && c <= '7'))
			return R_REJECT;
		f->phase = f->phase == 6 ? 1 : (uint8_t)(f->phase + 1);
		return R_OK;
	}
	}
}

static int step_int(const struct gnode *nd, struct gs_gframe *f, uint8_t c)
{
	bool digit = c >= '0' && c <= '9';
	switch (f->phase) {
	case 0:
		if (c == '-' && nd->lo < 0) {
			f->aux = 1;
			f->phase = 1;
			return R_OK;
		}
		/* fall through */
	case 1:
		if (!digit || (c == '0' && f->phase == 1)) /* no -0 */
			return R_REJECT;
		if (!int_feasible(c - '0', 1, f->aux, nd->lo, nd->hi))
			return R_REJECT;
		f->val = c - '0';
		f->count = 1;
		f->phase = c == '0' ? 3 : 2;
		return R_OK;
	case 2:
		if (digit && f->count < INT_DIGITS) {
			int64_t m = f->val * 10 + (c - '0');
			if (!int_feasible(m, f->count + 1, f->aux, nd->lo, nd->hi))
				return R_REJECT;
			f->val = m;
			f->count++;
			return R_OK;
		}
		/* fall through */
	default:
		return R_RETRY;
	}
}

static int step_num(struct gs_gframe *f, uint8_t c)
{
	bool digit = c >= '0' && c <= '9';
	switch (f->phase) {
	case 0:
		if (c == '-') {
			f->phase = 1;
			return R_OK;
		}
		/* fall through */
	case 1:
		if (!digit)
			return R_REJECT;
		f->phase = c == '0' ? 3 : 2;
		f->count = 1;
		return R_OK;
	case 2:
		if (digit) {
			if (f->count >= NUM_DIGITS)
				return R_RETRY;
			f->count++;
			return R_OK;
		}
		/* fall through */
	case 3:
		if (c == '.') {
			f->phase = 4;
			f->count = 0;
			return R_OK;
		}
		/* fall through */
	case 5:
		if (f->phase == 5 && digit) {
			if (f->count >= NUM_DIGITS)
				return R_RETRY;
			f->count++;
			return R_OK;
		}
		if (c == 'e' || c == 'E') {
			f->phase = 6;
			f->count = 0;
			return R_OK;
		}
		return R_RETRY;
	case 4:
		if (!digit)
			return R_REJECT;
		f->phase = 5;
		f->count = 1;
		return R_OK;
	case 6:
		if (c == '+' || c == '-') {
			f->phase = 7;
			return R_OK;
		}
		/* fall through */
	case 7:
		if (!digit)
			return R_REJECT;
		f->phase = 8;
		f->count = 1;
		return R_OK;
	default: /* 8 */
		if (digit && f->count < EXP_DIGITS) {
			f->count++;
			return R_OK;
		}
		return R_RETRY;
	}
}

static int step_lit(const struct gnode *nd, struct gs_gframe *f, uint8_t c)
{
	if (f->phase == 0) {
		f->phase = 1;
		f->mask = nd->n_lits == 64 ? ~0ull : (1ull << nd->n_lits) - 1;
		f->count = 0;
	}
	uint64_t m = 0;
	for (int i = 0; i < nd->n_lits; i++)
		if ((f->mask >> i & 1) && nd->lit_len[i] > f->count && (uint8_t)nd->lits[i][f->count] == c)
			m |= 1ull << i;
	if (m) {
		f->mask = m;
		f->count++;
		return R_OK;
	}
	return R_RETRY; /* no literal goes on with c: the caller ends it if one is complete */
}

/* Object window: properties idx .. the first required one at or after idx. */
static uint64_t key_window(const struct gnode *nd, uint16_t idx)
{
	uint64_t m = 0;
	for (int32_t j = idx; j < nd->n_props; j++) {
		m |= 1ull << j;
		if (nd->props[j].required)
			break;
	}
	return m;
}

static bool required_left(const struct gnode *nd, uint16_t idx)
{
	for (int32_t j = idx; j < nd->n_props; j++)
		if (nd->props[j].required)
			return true;
	return false;
}

static int step_obj(const struct gnode *nd, struct gs_gframe *f, uint8_t c, struct gs_gstate *s)
{
	switch (f->phase) {
	case 0:
		if (c != '{')
			return R_REJECT;
		f->phase = 1;
		f->idx = 0;
		return R_OK;
	case 1: /* after '{' */
	case 2: /* after ',' */
		if (c == '}' && f->phase == 1 && !required_left(nd, f->idx)) {
			s->depth--;
			return R_OK;
		}
		if (c != '"')
			return R_REJECT;
		f->mask = key_window(nd, f->idx);
		if (!f->mask)
			return R_REJECT;
		f->count = 1;
		f->phase = 3;
		return R_OK;
	case 3: { /* inside a key */
		uint64_t m = 0;
		for (int32_t j = 0; j < nd->n_props; j++)
			if ((f->mask >> j & 1) && nd->props[j].key_len > f->count &&
			    (uint8_t)nd->props[j].key[f->count] == c)
				m |= 1ull << j;
		if (!m)
			return R_REJECT;
		f->mask = m;
		f->count++;
		for (int32_t j = 0; j < nd->n_props; j++)
			if ((m >> j & 1) && nd->props[j].key_len == f->count) {
				if (s->depth == GS_GRAMMAR_MAX_DEPTH)
					return R_REJECT; /* no room for its value: the key is not begun */
				f->val = j;
				f->phase = 4;
			}
		return R_OK;
	}
	case 4:
		if (c != ':')
			return R_REJECT;
		f->phase = 5;
		f->idx = (uint16_t)(f->val + 1);
		return push(s, nd->props[f->val].node) ? R_OK : R_REJECT;
	default: /* 5: after a value */
		if (c == ',' && f->idx < nd->n_props) {
			f->phase = 2;
			return R_OK;
		}
		if (c == '}' && !required_left(nd, f->idx)) {
			s->depth--;
			return R_OK;
		}
		return R_REJECT;
	}
}

/* Generic object and any array (GOBJ, GARR, ARR). Returns R_RETRY after pushing a child
 * that must see c. */
static int step_gobj(const struct gs_grammar *g, struct gs_gframe *f, uint8_t c, struct gs_gstate *s)
{
	switch (f->phase) {
	case 0:
		if (c != '{')
			return R_REJECT;
		f->phase = 1;
		return R_OK;
	case 1:
		if (c == '}') {
			s->depth--;
			return R_OK;
		}
		/* fall through */
	case 2:
		if (c != '"')
			return R_REJECT;
		f->phase = 3;
		return push(s, g->gstr) ? R_RETRY : R_REJECT;
	case 3:
		if (c != ':')
			return R_REJECT;
		f->phase = 4;
		return push(s, g->any) ? R_OK : R_REJECT;
	default:
		if (c == ',') {
			f->phase = 2;
			return R_OK;
		}
		if (c == '}') {
			s->depth--;
			return R_OK;
		}
		return R_REJECT;
	}
}

static int step_arr(const struct gs_grammar *g, const struct gnode *nd, struct gs_gframe *f, uint8_t c,
		    struct gs_gstate *s)
{
	int64_t lo = nd->kind == GN_ARR ? nd->lo : 0, hi = nd->kind == GN_ARR ? nd->hi : INT64_MAX;
	int32_t item = nd->kind == GN_ARR ? nd->item : g->any;
	switch (f->phase) {
	case 0:
		if (c != '[')
			return R_REJECT;
		f->phase = 1;
		f->val = 0;
		return R_OK;
	case 1:
		if (c == ']' && lo == 0) {
			s->depth--;
			return R_OK;
		}
		if (hi == 0)
			return R_REJECT;
		/* fall through */
	case 3:
		f->phase = 2;
		f->val++;
		return push(s, item) ? R_RETRY : R_REJECT;
	default: /* 2: after an item */
		if (c == ',' && f->val < hi) {
			f->phase = 3;
			return R_OK;
		}
		if (c == ']' && f->val >= lo) {
			s->depth--;
			return R_OK;
		}
		return R_REJECT;
	}
}

bool gs_gstate_step(const struct gs_grammar *g, struct gs_gstate *s, uint8_t c)
{
	if (g->re) { /* one frame, the DFA state; depth stays 1 (a match may always go on or end) */
		int32_t to = gs_regex_next(g->re, s->f[0].node, c);
		if (to < 0)
			return false;
		s->f[0].node = to;
		return true;
	}
	for (;;) {
		if (s->depth == 0)
			return false;
		struct gs_gframe *f = &s->f[s->depth - 1];
		const struct gnode *nd = &g->nodes[f->node];
		int r;
		if (f->phase == 0 && (nd->kind == GN_ANY || nd->kind == GN_ALT)) {
			int32_t to = -1;
			if (!has_bit(nd->first, c))
				return false;
			if (nd->kind == GN_ANY) {
				to = c == '{' ? g->gobj : c == '[' ? g->garr : c == '"' ? g->gstr :
				     (c == 't' || c == 'f' || c == 'n') ? g->gconst : g->gnum;
			} else {
				for (int i = 0; i < nd->n_alts && to < 0; i++)
					if (has_bit(g->nodes[nd->alts[i]].first, c))
						to = nd->alts[i];
			}
			memset(f, 0, sizeof *f);
			f->node = to;
			continue;
		}
		switch (nd->kind) {
		case GN_STR:
			r = step_str(nd, f, c, s);
			break;
		case GN_INT:
			r = step_int(nd, f, c);
			break;
		case GN_NUM:
			r = step_num(f, c);
			break;
		case GN_LIT:
			r = step_lit(nd, f, c);
			if (r == R_RETRY && f->phase == 1 && f->count == 0)
				return false;
			break;
		case GN_OBJ:
			r = step_obj(nd, f, c, s);
			break;
		case GN_GOBJ:
			r = step_gobj(g, f, c, s);
			if (r == R_RETRY)
				continue; /* the key string sees c */
			break;
		case GN_ARR:
		case GN_GARR:
			r = step_arr(g, nd, f, c, s);
			if (r == R_RETRY)
				continue; /* the item sees c */
			break;
		default:
			return false;
		}
		if (r == R_OK)
			return true;
		if (r == R_REJECT)
			return false;
		/* R_RETRY from a number or literal: it ends here if it may, and c goes up */
		if (!frame_can_end(g, f))
			return false;
		s->depth--;
	}
}

bool gs_gstate_step_bytes(const struct gs_grammar *g, struct gs_gstate *s, const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!gs_gstate_step(g, s, b[i]))
			return false;
	return true;
}

bool gs_gstate_accepting(const struct gs_grammar *g, const struct gs_gstate *s)
{
	if (g->re)
		return gs_regex_accepting(g->re, s->f[0].node);
	/* Done, or only the root is open and it is a number/literal that may end here. */
	return s->depth == 0 || (s->depth == 1 && frame_can_end(g, &s->f[0]));
}

bool gs_gstate_live(const struct gs_grammar *g, const struct gs_gstate *s)
{
	struct gs_gstate c;
	for (unsigned b = 0; b < 256; b++) {
		c.depth = s->depth;
		memcpy(c.f, s->f, (size_t)s->depth * sizeof s->f[0]);
		if (gs_gstate_step(g, &c, (uint8_t)b))
			return true;
	}
	return false;
}

bool gs_gstate_in_string_body(const struct gs_grammar *g, const struct gs_gstate *s, uint64_t *room)
{
	if (s->depth == 0 || g->re)
		return false;
	const struct gs_gframe *f = &s->f[s->depth - 1];
	const struct gnode *nd = &g->nodes[f->node];
	if (nd->kind != GN_STR || f->phase != 1 || f->aux != 0)
		return false;
	*room = (uint64_t)(nd->hi - (int64_t)f->count);
	return true;
}

bool gs_grammar_dfa_state(const struct gs_grammar *g, const struct gs_gstate *s, uint64_t *serial, int32_t *state)
{
	if (!g->re)
		return false;
	*serial = g->serial;
	*state = s->f[0].node;
	return true;
}

bool gs_grammar_prefix_ok(const struct gs_grammar *g, const char *text, size_t n)
{
	struct gs_gstate s;
	gs_gstate_init(g, &s);
	return gs_gstate_step_bytes(g, &s, (const uint8_t *)text, n);
}

bool gs_grammar_accepts(const struct gs_grammar *g, const char *text, size_t n)
{
	struct gs_gstate s;
	gs_gstate_init(g, &s);
	return gs_gstate_step_bytes(g, &s, (const uint8_t *)text, n) && gs_gstate_accepting(g, &s);
}

/* ---- the request fields --------------------------------------------------------------------- */

static char *print_choice(const cJSON *list)
{
	cJSON *o = cJSON_CreateObject();
	char *s = NULL;
	if (o && cJSON_AddStringToObject(o, "type", "choice") && cJSON_AddItemToObject(o, "choice", cJSON_Duplicate(list, true)))
		s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return s;
}

static char *print_regex(const cJSON *re)
{
	cJSON *o = cJSON_CreateObject();
	char *s = NULL;
	if (o && cJSON_AddStringToObject(o, "type", "regex") && cJSON_AddItemToObject(o, "regex", cJSON_Duplicate(re, true)))
		s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return s;
}

static char *print_schema(const cJSON *schema)
{
	cJSON *o = cJSON_CreateObject(), *js = cJSON_CreateObject();
	char *s = NULL;
	if (o && js && cJSON_AddStringToObject(o, "type", "json_schema") && cJSON_AddItemToObject(o, "json_schema", js)) {
		js = NULL;
		if (cJSON_AddItemToObject(cJSON_GetObjectItem(o, "json_schema"), "schema", cJSON_Duplicate(schema, true)))
			s = cJSON_PrintUnformatted(o);
	}
	cJSON_Delete(js);
	cJSON_Delete(o);
	return s;
}

enum gs_status gs_grammar_from_request(const cJSON *req, char **rf_out, char *why, size_t cap)
{
	static const char *const fields[] = { "response_format", "guided_choice", "guided_json", "structured_outputs",
					      "guided_regex", "guided_grammar" };
	struct gctx c = { .why = why, .cap = cap };
	const cJSON *given = NULL;
	char *rf = NULL;

	*rf_out = NULL;
	for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, fields[i]);
		if (!v || cJSON_IsNull(v))
			continue;
		if (given)
			return gbad(&c, "%s and %s: give one of them", given->string, v->string);
		given = v;
	}
	if (!given)
		return GS_OK;
	const char *f = given->string;
	if (!strcmp(f, "guided_grammar"))
		return gbad(&c, "%s is not supported (response_format json_object/json_schema/regex, guided_choice, "
			    "guided_json and guided_regex are)", f);
	if (!strcmp(f, "response_format")) {
		if (!cJSON_IsObject(given))
			return gbad(&c, "response_format must be an object, got %s", gs_json_type(given));
		rf = cJSON_PrintUnformatted(given);
	} else if (!strcmp(f, "guided_choice")) {
		rf = print_choice(given);
	} else if (!strcmp(f, "guided_regex")) {
		if (!cJSON_IsString(given))
			return gbad(&c, "guided_regex must be a string, got %s", gs_json_type(given));
		rf = print_regex(given);
	} else if (!strcmp(f, "guided_json")) {
		if (!cJSON_IsObject(given))
			return gbad(&c, "guided_json must be a schema object, got %s", gs_json_type(given));
		rf = print_schema(given);
	} else { /* structured_outputs: exactly one of choice, json, regex */
		if (!cJSON_IsObject(given) || cJSON_GetArraySize(given) != 1)
			return gbad(&c, "structured_outputs must be an object with exactly one of \"choice\", \"json\" or "
				    "\"regex\"");
		const cJSON *x = given->child;
		if (!strcmp(x->string, "choice")) {
			rf = print_choice(x);
		} else if (!strcmp(x->string, "json") && cJSON_IsObject(x)) {
			rf = print_schema(x);
		} else if (!strcmp(x->string, "regex")) {
			if (!cJSON_IsString(x))
				return gbad(&c, "structured_outputs.regex must be a string, got %s", gs_json_type(x));
			rf = print_regex(x);
		} else {
			return gbad(&c, "structured_outputs.%s is not supported (choice, json, regex are)", x->string);
		}
	}
	if (!rf)
		return gs_errorf(GS_ERR_NOMEM, "out of memory");
	/* Compiled now (and cached): a schema is refused at request time, naming the keyword. */
	struct gs_grammar *g = NULL;
	enum gs_status st = gs_grammar_get(rf, strlen(rf), why, cap, &g);
	if (st == GS_OK && !g) { /* {"type": "text"}: nothing to constrain */
		cJSON_free(rf);
		return GS_OK;
	}
	gs_grammar_free(g);
	if (st != GS_OK) {
		if (st == GS_ERR_INVALID_ARG && strcmp(f, "response_format") && why && cap) {
			char tmp[600]; /* the message names the request's own field */
			snprintf(tmp, sizeof tmp, "%s: %s", f, why);
			snprintf(why, cap, "%s", tmp);
		}
		cJSON_free(rf);
		return st;
	}
	*rf_out = strdup(rf);
	cJSON_free(rf);
	return *rf_out ? GS_OK : gs_errorf(GS_ERR_NOMEM, "out of memory");
}
