/* Shared by tests/unit/test_grammar.c and tests/engine/test_structured.c: a JSON Schema
 * validator for the subset gs_grammar.h supports, written independently of the automaton
 * (over cJSON's parse), and the set of 40 schemas the generation tests run. */
#ifndef GRAMMAR_CASES_H
#define GRAMMAR_CASES_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <string.h>

/* ---- an independent validator for the subset ---------------------------------------------- */

static inline size_t utf8_count(const char *s)
{
	size_t n = 0;
	for (; *s; s++)
		n += ((unsigned char)*s & 0xC0) != 0x80;
	return n;
}

static inline const cJSON *resolve(const cJSON *root, const cJSON *sch)
{
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(sch, "$ref");
	if (!r)
		return sch;
	const char *p = r->valuestring;
	const char *name = strrchr(p, '/') + 1;
	const cJSON *defs = cJSON_GetObjectItemCaseSensitive(root, strstr(p, "$defs") ? "$defs" : "definitions");
	return resolve(root, cJSON_GetObjectItemCaseSensitive(defs, name));
}

static inline bool valid(const cJSON *root, const cJSON *sch, const cJSON *v);

static inline bool valid_type(const cJSON *root, const cJSON *sch, const char *t, const cJSON *v)
{
	const cJSON *x;
	if (!strcmp(t, "null"))
		return cJSON_IsNull(v);
	if (!strcmp(t, "boolean"))
		return cJSON_IsBool(v);
	if (!strcmp(t, "number"))
		return cJSON_IsNumber(v);
	if (!strcmp(t, "integer")) {
		if (!cJSON_IsNumber(v) || v->valuedouble != (double)(long long)v->valuedouble)
			return false;
		if ((x = cJSON_GetObjectItem(sch, "minimum")) && v->valuedouble < x->valuedouble)
			return false;
		if ((x = cJSON_GetObjectItem(sch, "maximum")) && v->valuedouble > x->valuedouble)
			return false;
		if ((x = cJSON_GetObjectItem(sch, "exclusiveMinimum")) && v->valuedouble <= x->valuedouble)
			return false;
		if ((x = cJSON_GetObjectItem(sch, "exclusiveMaximum")) && v->valuedouble >= x->valuedouble)
			return false;
		return true;
	}
	if (!strcmp(t, "string")) {
		if (!cJSON_IsString(v))
			return false;
		size_t n = utf8_count(v->valuestring);
		if ((x = cJSON_GetObjectItem(sch, "minLength")) && n < (size_t)x->valueint)
			return false;
		if ((x = cJSON_GetObjectItem(sch, "maxLength")) && n > (size_t)x->valueint)
			return false;
		return true;
	}
	if (!strcmp(t, "array")) {
		if (!cJSON_IsArray(v))
			return false;
		int n = cJSON_GetArraySize(v);
		if ((x = cJSON_GetObjectItem(sch, "minItems")) && n < x->valueint)
			return false;
		if ((x = cJSON_GetObjectItem(sch, "maxItems")) && n > x->valueint)
			return false;
		const cJSON *it = cJSON_GetObjectItem(sch, "items");
		for (const cJSON *e = v->child; it && e; e = e->next)
			if (!valid(root, it, e))
				return false;
		return true;
	}
	if (!strcmp(t, "object")) {
		if (!cJSON_IsObject(v))
			return false;
		const cJSON *props = cJSON_GetObjectItem(sch, "properties");
		const cJSON *req = cJSON_GetObjectItem(sch, "required");
		for (const cJSON *r = req ? req->child : NULL; r; r = r->next)
			if (!cJSON_GetObjectItemCaseSensitive(v, r->valuestring))
				return false;
		for (const cJSON *e = v->child; e; e = e->next) {
			const cJSON *ps = props ? cJSON_GetObjectItemCaseSensitive(props, e->string) : NULL;
			const cJSON *ap = cJSON_GetObjectItem(sch, "additionalProperties");
			if (!ps && cJSON_IsFalse(ap))
				return false;
			if (ps && !valid(root, ps, e))
				return false;
			for (const cJSON *f = e->next; f; f = f->next) /* duplicate keys */
				if (!strcmp(f->string, e->string))
					return false;
		}
		return true;
	}
	return false;
}

static inline bool valid(const cJSON *root, const cJSON *sch, const cJSON *v)
{
	sch = resolve(root, sch);
	const cJSON *x;
	if ((x = cJSON_GetObjectItem(sch, "enum"))) {
		for (const cJSON *e = x->child; e; e = e->next)
			if (cJSON_Compare(e, v, true))
				return true;
		return false;
	}
	if ((x = cJSON_GetObjectItem(sch, "const")))
		return cJSON_Compare(x, v, true);
	if ((x = cJSON_GetObjectItem(sch, "anyOf")) || (x = cJSON_GetObjectItem(sch, "oneOf"))) {
		int n = 0;
		for (const cJSON *e = x->child; e; e = e->next)
			n += valid(root, e, v);
		return n >= 1;
	}
	const cJSON *t = cJSON_GetObjectItem(sch, "type");
	if (!t) {
		if (cJSON_GetObjectItem(sch, "properties"))
			return valid_type(root, sch, "object", v);
		return true;
	}
	if (cJSON_IsString(t))
		return valid_type(root, sch, t->valuestring, v);
	for (const cJSON *e = t->child; e; e = e->next)
		if (valid_type(root, sch, e->valuestring, v))
			return true;
	return false;
}

/* ---- the schema set of the walk test ------------------------------------------------------ */

static const char *const SCHEMAS[] = {
	"{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":120}},\"required\":[\"name\",\"age\"],\"additionalProperties\":false}",
	"{\"type\":\"object\",\"properties\":{\"ok\":{\"type\":\"boolean\"}},\"required\":[\"ok\"]}",
	"{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"null\"}},\"required\":[\"x\"]}",
	"{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"number\"}},\"required\":[\"v\"]}",
	"{\"type\":\"object\",\"properties\":{\"e\":{\"enum\":[\"red\",\"green\",\"blue\"]}},\"required\":[\"e\"]}",
	"{\"type\":\"object\",\"properties\":{\"c\":{\"const\":\"fixed\"}},\"required\":[\"c\"]}",
	"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":3}},\"required\":[\"a\"]}",
	"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"},\"b\":{\"type\":\"string\",\"maxLength\":4}},\"required\":[\"b\"]}",
	"{\"type\":\"object\",\"properties\":{\"o\":{\"type\":\"object\",\"properties\":{\"p\":{\"type\":\"integer\",\"minimum\":-5,\"maximum\":5}},\"required\":[\"p\"]}},\"required\":[\"o\"]}",
	"{\"type\":\"object\",\"properties\":{\"u\":{\"anyOf\":[{\"type\":\"string\",\"maxLength\":3},{\"type\":\"null\"},{\"type\":\"integer\",\"minimum\":0,\"maximum\":9}]}},\"required\":[\"u\"]}",
	"{\"type\":\"object\",\"properties\":{\"t\":{\"type\":[\"string\",\"null\"],\"maxLength\":5}},\"required\":[\"t\"]}",
	"{\"type\":\"array\",\"items\":{\"type\":\"boolean\"},\"minItems\":2,\"maxItems\":4}",
	"{\"type\":\"string\",\"minLength\":2,\"maxLength\":6}",
	"{\"type\":\"integer\",\"minimum\":100,\"maximum\":250}",
	"{\"enum\":[1,2,12,\"x\",null,true]}",
	"{\"type\":\"object\",\"properties\":{\"s\":{\"type\":\"string\",\"minLength\":3,\"maxLength\":3}},\"required\":[\"s\"]}",
	"{\"type\":\"object\",\"properties\":{\"opt1\":{\"type\":\"integer\"},\"opt2\":{\"type\":\"boolean\"},\"opt3\":{\"type\":\"null\"}}}",
	"{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":3}},\"required\":[\"n\"]}",
	"{\"type\":\"object\",\"properties\":{\"list\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"k\":{\"type\":\"string\",\"maxLength\":3},\"v\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":99}},\"required\":[\"k\",\"v\"]},\"maxItems\":3}},\"required\":[\"list\"]}",
	"{\"$defs\":{\"pt\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":9},\"y\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":9}},\"required\":[\"x\",\"y\"]}},\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/$defs/pt\"},\"b\":{\"$ref\":\"#/$defs/pt\"}},\"required\":[\"a\",\"b\"]}",
	"{\"type\":\"object\",\"properties\":{\"diagnosis\":{\"type\":\"string\",\"maxLength\":20},\"icd10\":{\"type\":\"string\",\"maxLength\":7},\"severity\":{\"enum\":[\"mild\",\"moderate\",\"severe\"]},\"confirmed\":{\"type\":\"boolean\"}},\"required\":[\"diagnosis\",\"severity\",\"confirmed\"]}",
	"{\"type\":\"object\",\"properties\":{\"meds\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":10},\"maxItems\":4},\"dose_mg\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":1000}},\"required\":[\"meds\",\"dose_mg\"]}",
	"{\"type\":\"object\",\"properties\":{\"any\":{}},\"required\":[\"any\"]}",
	"{\"type\":\"object\",\"properties\":{\"obj\":{\"type\":\"object\"}},\"required\":[\"obj\"]}",
	"{\"type\":\"object\",\"properties\":{\"arr\":{\"type\":\"array\",\"maxItems\":2}},\"required\":[\"arr\"]}",
	"{\"type\":\"object\",\"properties\":{\"q\":{\"type\":\"string\",\"maxLength\":0}},\"required\":[\"q\"]}",
	"{\"type\":\"object\",\"properties\":{\"neg\":{\"type\":\"integer\",\"minimum\":-1000,\"maximum\":-10}},\"required\":[\"neg\"]}",
	"{\"type\":\"object\",\"properties\":{\"big\":{\"type\":\"integer\",\"minimum\":1000000}},\"required\":[\"big\"]}",
	"{\"type\":\"object\",\"properties\":{\"m\":{\"type\":\"array\",\"items\":{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":1},\"minItems\":2,\"maxItems\":2},\"minItems\":2,\"maxItems\":2}},\"required\":[\"m\"]}",
	"{\"type\":\"object\",\"properties\":{\"k\\\"q\":{\"type\":\"boolean\"},\"\\u00e9t\\u00e9\":{\"type\":\"boolean\"}},\"required\":[\"k\\\"q\",\"\\u00e9t\\u00e9\"]}",
	"{\"type\":\"object\",\"properties\":{\"e\":{\"type\":\"string\",\"enum\":[\"a\\\"b\",\"c\\\\d\",\"\\u00fc\"]}},\"required\":[\"e\"]}",
	"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"integer\"},\"c\":{\"type\":\"integer\"}},\"required\":[\"c\"]}",
	"{\"type\":\"object\",\"properties\":{\"n\":{\"anyOf\":[{\"type\":\"number\"},{\"type\":\"string\",\"maxLength\":2}]}},\"required\":[\"n\"]}",
	"{\"type\":\"object\",\"properties\":{\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\",\"c\"]},\"minItems\":1,\"maxItems\":5}},\"required\":[\"tags\"]}",
	"{\"type\":\"object\",\"properties\":{\"o\":{\"oneOf\":[{\"type\":\"object\",\"properties\":{\"z\":{\"type\":\"null\"}},\"required\":[\"z\"]},{\"type\":\"array\",\"maxItems\":1,\"items\":{\"type\":\"null\"}}]}},\"required\":[\"o\"]}",
	"{\"type\":\"boolean\"}",
	"{\"type\":\"null\"}",
	"{\"type\":\"number\"}",
	"{\"properties\":{\"p\":{\"type\":\"integer\",\"minimum\":7,\"maximum\":7}},\"required\":[\"p\"]}",
	"{\"type\":\"object\",\"properties\":{\"patient\":{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":8},\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":130},\"sex\":{\"enum\":[\"F\",\"M\",\"X\"]}},\"required\":[\"id\",\"age\",\"sex\"]},\"vitals\":{\"type\":\"array\",\"items\":{\"type\":\"number\"},\"maxItems\":3}},\"required\":[\"patient\",\"vitals\"]}",
};
#define N_SCHEMAS (sizeof SCHEMAS / sizeof SCHEMAS[0])

#endif
