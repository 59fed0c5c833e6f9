/* gemmashard coordinator, HTTP front end: the OpenAI wire format. A request body (cJSON) becomes
 * a struct gs_gen_spec with each refusal naming its field as OpenAI clients expect; answers
 * are built as OpenAI's JSON (choices, logprobs in the chat and the completions shapes, usage,
 * error objects). Nothing here touches a connection. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_internal.h"
#include "gs_chat_openai.h"
#include "gs_grammar.h"
#include "gs_json.h"
#include "gs_sbuf.h"
#include "gs_util.h"

/* ---- error objects ------------------------------------------------------------------------ */

/* {"error": {"message", "type", "param", "code"}} as OpenAI clients parse it (malloc'd). */
char *gs_http_error_json(const char *type, const char *param, const char *code, const char *msg)
{
	cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
	char *s;

	cJSON_AddStringToObject(e, "message", msg);
	cJSON_AddStringToObject(e, "type", type);
	if (param && param[0])
		cJSON_AddStringToObject(e, "param", param);
	else
		cJSON_AddNullToObject(e, "param");
	if (code)
		cJSON_AddStringToObject(e, "code", code);
	else
		cJSON_AddNullToObject(e, "code");
	s = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	return s;
}

/* OpenAI's "code" for the classes clients branch on. */
const char *gs_http_cerr_code(enum gs_cerr e)
{
	switch (e) {
	case GS_CERR_NOT_FOUND:
		return "model_not_found";
	case GS_CERR_TOO_LARGE:
		return "context_length_exceeded";
	case GS_CERR_BUSY:
		return "rate_limit_exceeded";
	case GS_CERR_UNAUTHENTICATED:
		return "invalid_api_key";
	case GS_CERR_UNAVAILABLE:
		return "service_unavailable";
	case GS_CERR_DEADLINE:
		return "timeout";
	default:
		return NULL;
	}
}

/* The request field a coordinator message is about, when it starts with one
 * ("top_p must be ...", "max_tokens 9000 is above ..."); "" when none. */
void gs_http_param_of(const char *why, bool chat, char *param, size_t cap)
{
	static const char *const known[] = { "model", "messages", "prompt", "max_tokens", "temperature",
					     "top_p", "top_k", "min_p", "repetition_penalty", "seed",
					     "stop", "logprobs", "top_logprobs", "presence_penalty",
					     "frequency_penalty", "logit_bias", "min_tokens", "stop_token_ids" };
	size_t n = strcspn(why, " :[.");

	param[0] = '\0';
	if (strncmp(why, "chat:", 5) == 0) { /* the chat template refused the conversation */
		snprintf(param, cap, "messages");
		return;
	}
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		if (strlen(known[i]) == n && strncmp(why, known[i], n) == 0) {
			snprintf(param, cap, "%s", chat && strcmp(known[i], "prompt") == 0 ? "messages" : known[i]);
			return;
		}
	}
}

/* ---- request parsing ---------------------------------------------------------------------- */

/* RFC 8259: a JSON text is UTF-8. Refusing anything else here keeps broken bytes out of the
 * tokenizer and out of the answers we echo back. */
bool gs_http_utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *e = p + n;

	while (p < e) {
		unsigned c = *p, cp, min;
		size_t k;

		if (c < 0x80) {
			p++;
			continue;
		}
		if ((c & 0xE0) == 0xC0)
			k = 1, cp = c & 0x1F, min = 0x80;
		else if ((c & 0xF0) == 0xE0)
			k = 2, cp = c & 0x0F, min = 0x800;
		else if ((c & 0xF8) == 0xF0)
			k = 3, cp = c & 0x07, min = 0x10000;
		else
			return false;
		if ((size_t)(e - p) <= k)
			return false;
		for (size_t i = 1; i <= k; i++) {
			if ((p[i] & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		p += k + 1;
	}
	return true;
}

static bool gs_http_bad(struct gs_http_gen *g, const char *param, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static bool gs_http_bad(struct gs_http_gen *g, const char *param, const char *fmt, ...)
{
	va_list ap;

	g->err = GS_CERR_INVALID;
	snprintf(g->param, sizeof(g->param), "%s", param ? param : "");
	va_start(ap, fmt);
	vsnprintf(g->why, sizeof(g->why), fmt, ap);
	va_end(ap);
	return false;
}

static const cJSON *gs_http_field(const cJSON *obj, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);

	return cJSON_IsNull(v) ? NULL : v; /* null means "not given", as OpenAI clients send it */
}

/* An optional integer in [lo, hi]; *given tells whether it was there. */
static bool gs_http_get_int(struct gs_http_gen *g, const cJSON *obj, const char *name, int64_t lo, int64_t hi,
			    int64_t *out, bool *given)
{
	const cJSON *v = gs_http_field(obj, name);
	double d;

	*given = false;
	if (!v)
		return true;
	if (!cJSON_IsNumber(v))
		return gs_http_bad(g, name, "%s must be an integer, got %s", name, gs_json_type(v));
	d = v->valuedouble;
	if (!isfinite(d) || d != floor(d))
		return gs_http_bad(g, name, "%s must be an integer, got %g", name, d);
	if (d < -9223372036854775808.0 || d < (double)lo)
		return gs_http_bad(g, name, "%s must be >= %" PRId64 ", got %.0f", name, lo, d);
	if (d >= 9223372036854775808.0 || (int64_t)d > hi)
		return gs_http_bad(g, name, "%s must be <= %" PRId64 ", got %.0f", name, hi, d);
	*out = (int64_t)d;
	*given = true;
	return true;
}

/* An optional number; *out is left alone when absent. Ranges: gs_sampling_params_validate. */
static bool gs_http_get_num(struct gs_http_gen *g, const cJSON *obj, const char *name, float *out)
{
	const cJSON *v = gs_http_field(obj, name);

	if (!v)
		return true;
	if (!cJSON_IsNumber(v))
		return gs_http_bad(g, name, "%s must be a number, got %s", name, gs_json_type(v));
	*out = (float)v->valuedouble;
	return true;
}

static bool gs_http_get_bool(struct gs_http_gen *g, const cJSON *obj, const char *name, bool *out)
{
	const cJSON *v = gs_http_field(obj, name);

	if (!v)
		return true;
	if (!cJSON_IsBool(v))
		return gs_http_bad(g, name, "%s must be a boolean, got %s", name, gs_json_type(v));
	*out = cJSON_IsTrue(v);
	return true;
}

/* messages: OpenAI's shape with text and image_url parts (gs_chat_openai.h); images stay
 * encoded here, the coordinator decodes them once the model is known. */
static bool gs_http_parse_messages(struct gs_http_gen *g, const cJSON *root)
{
	enum gs_status st = gs_chat_openai_parse(gs_http_field(root, "messages"), GS_COORD_MAX_IMAGES, &g->chat_in,
						 g->why, sizeof(g->why), g->param, sizeof(g->param));

	if (st == GS_ERR_INVALID_ARG) {
		g->err = GS_CERR_INVALID;
		return false;
	}
	if (st != GS_OK) {
		g->err = GS_CERR_INTERNAL;
		snprintf(g->why, sizeof(g->why), "out of memory");
		g->param[0] = '\0';
		gs_clear_error();
		return false;
	}
	g->param[0] = '\0';
	g->spec.messages = g->chat_in.msgs;
	g->spec.n_messages = g->chat_in.n_msgs;
	return true;
}

/* A JSON array of token ids into a malloc'd array (ids are checked against the vocabulary by
 * the coordinator). */
static bool gs_http_int_list(struct gs_http_gen *g, const char *name, const cJSON *a, int32_t **out, int *n_out)
{
	const cJSON *x;
	int n = cJSON_GetArraySize(a), i = 0;

	*out = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
	if (!*out) {
		g->err = GS_CERR_INTERNAL;
		snprintf(g->why, sizeof(g->why), "out of memory");
		return false;
	}
	cJSON_ArrayForEach(x, a) {
		if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < 0 ||
		    x->valuedouble > INT32_MAX)
			return gs_http_bad(g, name, "%s[%d] must be a token id (an integer >= 0), got %s", name, i,
					   cJSON_IsNumber(x) ? "another number" : gs_json_type(x));
		(*out)[i++] = (int32_t)x->valuedouble;
	}
	*n_out = n;
	return true;
}

/* One prompt: a string or a list of token ids, into slot i of g. */
static bool gs_http_parse_one_prompt(struct gs_http_gen *g, const cJSON *p, int i)
{
	char name[32];
	int n = 0;

	if (cJSON_IsString(p)) {
		g->prompts[i] = p->valuestring;
		return true;
	}
	snprintf(name, sizeof(name), i ? "prompt[%d]" : "prompt", i);
	if (cJSON_IsArray(p) && cJSON_GetArraySize(p) > 0 && cJSON_IsNumber(cJSON_GetArrayItem(p, 0))) {
		if (!gs_http_int_list(g, name, p, &g->prompt_idv[i], &n))
			return false;
		g->n_prompt_idv[i] = n;
		return true;
	}
	return gs_http_bad(g, "prompt", "%s must be a string or a list of token ids, got %s", name,
			   cJSON_IsArray(p) ? (cJSON_GetArraySize(p) == 0 ? "an empty array" : "an array of non-numbers") :
					      gs_json_type(p));
}

/* prompt: a string, a list of token ids, or a list of up to GS_HTTP_MAX_PROMPTS of those (one
 * choice each). A token-id prompt is used as given: no <bos> is added. */
static bool gs_http_parse_prompt(struct gs_http_gen *g, const cJSON *root)
{
	const cJSON *p = gs_http_field(root, "prompt"), *it;
	int i = 0;

	g->n_prompts = 1;
	if (cJSON_IsArray(p) && cJSON_GetArraySize(p) > 0 &&
	    (cJSON_IsString(cJSON_GetArrayItem(p, 0)) || cJSON_IsArray(cJSON_GetArrayItem(p, 0)))) {
		if (cJSON_GetArraySize(p) > GS_HTTP_MAX_PROMPTS)
			return gs_http_bad(g, "prompt", "prompt may hold at most %d prompts, got %d", GS_HTTP_MAX_PROMPTS,
					   cJSON_GetArraySize(p));
		cJSON_ArrayForEach(it, p) {
			if (!gs_http_parse_one_prompt(g, it, i))
				return false;
			i++;
		}
		g->n_prompts = i;
	} else if (!gs_http_parse_one_prompt(g, p, 0)) {
		return false;
	}
	gs_http_use_prompt(g, 0);
	return true;
}

void gs_http_use_prompt(struct gs_http_gen *g, int i)
{
	g->spec.prompt = g->prompts[i];
	g->spec.prompt_ids = g->prompts[i] ? NULL : g->prompt_idv[i];
	g->spec.n_prompt_ids = g->prompts[i] ? 0 : g->n_prompt_idv[i];
}

static bool gs_http_parse_stop(struct gs_http_gen *g, const cJSON *root)
{
	const cJSON *stop = gs_http_field(root, "stop"), *s;
	int i = 0;

	if (!stop)
		return true;
	if (cJSON_IsString(stop)) {
		if (!stop->valuestring[0])
			return gs_http_bad(g, "stop", "stop must be a non-empty string");
		if (strlen(stop->valuestring) > GS_COORD_MAX_STOP_BYTES)
			return gs_http_bad(g, "stop", "stop is longer than %d bytes", GS_COORD_MAX_STOP_BYTES);
		g->spec.stop[0] = stop->valuestring;
		g->spec.n_stop = 1;
		return true;
	}
	if (!cJSON_IsArray(stop))
		return gs_http_bad(g, "stop", "stop must be a string or an array of strings, got %s",
				   gs_json_type(stop));
	if (cJSON_GetArraySize(stop) > GS_COORD_MAX_STOP)
		return gs_http_bad(g, "stop", "stop may hold at most %d strings, got %d", GS_COORD_MAX_STOP,
				   cJSON_GetArraySize(stop));
	cJSON_ArrayForEach(s, stop) {
		if (!cJSON_IsString(s))
			return gs_http_bad(g, "stop", "stop[%d] must be a string, got %s", i, gs_json_type(s));
		if (!s->valuestring[0])
			return gs_http_bad(g, "stop", "stop[%d] must be a non-empty string", i);
		if (strlen(s->valuestring) > GS_COORD_MAX_STOP_BYTES)
			return gs_http_bad(g, "stop", "stop[%d] is longer than %d bytes", i, GS_COORD_MAX_STOP_BYTES);
		g->spec.stop[i++] = s->valuestring;
	}
	g->spec.n_stop = i;
	return true;
}

static bool gs_http_parse_logprobs(struct gs_http_gen *g, const cJSON *root)
{
	int64_t v = 0;
	bool given;

	if (!g->chat) {
		/* Completions: logprobs is the number of alternatives per token. */
		if (!gs_http_get_int(g, root, "logprobs", 0, GS_COORD_MAX_TOP_LOGPROBS, &v, &given))
			return false;
		g->spec.logprobs = given;
		g->spec.top_logprobs = (int)v;
		return true;
	}
	if (!gs_http_get_bool(g, root, "logprobs", &g->spec.logprobs))
		return false;
	if (!gs_http_get_int(g, root, "top_logprobs", 0, GS_COORD_MAX_TOP_LOGPROBS, &v, &given))
		return false;
	if (given && v > 0 && !g->spec.logprobs)
		return gs_http_bad(g, "top_logprobs", "top_logprobs requires logprobs to be true");
	g->spec.top_logprobs = (int)v;
	return true;
}

/* Every top-level field a request may carry: honoured, or accepted only with its default
 * value (gs_http_parse_defaults). Anything else is refused naming it (docs/ARCHITECTURE.md). */
static const char *const gs_http_fields_common[] = {
	"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
	"repetition_penalty", "presence_penalty", "frequency_penalty", "logit_bias", "seed", "n", "stop",
	"stop_token_ids", "min_tokens", "ignore_eos", "logprobs", "stream", "stream_options", "user",
	"tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "response_format",
	"guided_choice", "guided_json", "structured_outputs", "guided_regex", "guided_grammar",
	"store", "metadata", "service_tier", "best_of", "echo", "suffix",
};

static bool gs_http_known_fields(struct gs_http_gen *g, const cJSON *root)
{
	const cJSON *f;

	cJSON_ArrayForEach(f, root) {
		bool ok = strcmp(f->string, g->chat ? "messages" : "prompt") == 0 ||
			  (g->chat && strcmp(f->string, "top_logprobs") == 0);
		for (size_t i = 0; !ok && i < sizeof(gs_http_fields_common) / sizeof(gs_http_fields_common[0]); i++)
			ok = strcmp(f->string, gs_http_fields_common[i]) == 0;
		if (!ok) {
			char name[48];
			snprintf(name, sizeof(name), "%s", f->string);
			for (char *c = name; *c; c++)
				if ((unsigned char)*c < 0x20 || *c == '"')
					*c = '?';
			return gs_http_bad(g, name, "%s is not a supported field of %s (see the README's API table)", name,
					   g->chat ? "/v1/chat/completions" : "/v1/completions");
		}
	}
	return true;
}

/* Fields accepted only with their default (what clients send unasked); any other value is
 * refused naming the field. Gemma 3's chat template has no tool format, so tools are refused. */
static bool gs_http_parse_defaults(struct gs_http_gen *g, const cJSON *root)
{
	static const char *const tool_fields[] = { "tools", "tool_choice", "functions", "function_call" };
	const cJSON *v;

	for (size_t i = 0; i < sizeof(tool_fields) / sizeof(tool_fields[0]); i++) {
		v = gs_http_field(root, tool_fields[i]);
		if (!v)
			continue;
		if (strcmp(tool_fields[i], "tool_choice") == 0 && cJSON_IsString(v) && strcmp(v->valuestring, "none") == 0)
			continue;
		if (strcmp(tool_fields[i], "tools") == 0 && cJSON_IsArray(v) && cJSON_GetArraySize(v) == 0)
			continue;
		return gs_http_bad(g, tool_fields[i],
				   "%s is not supported: the Gemma 3 chat template has no tool-calling format",
				   tool_fields[i]);
	}
	if ((v = gs_http_field(root, "parallel_tool_calls")) && !cJSON_IsBool(v))
		return gs_http_bad(g, "parallel_tool_calls", "parallel_tool_calls must be a boolean, got %s",
				   gs_json_type(v));
	if ((v = gs_http_field(root, "store")) && !cJSON_IsFalse(v))
		return gs_http_bad(g, "store", "store is not supported (only false): nothing is stored");
	if ((v = gs_http_field(root, "metadata")) && !(cJSON_IsObject(v) && !v->child))
		return gs_http_bad(g, "metadata", "metadata is not supported (only {} or null): nothing is stored");
	if ((v = gs_http_field(root, "service_tier")) &&
	    !(cJSON_IsString(v) && (!strcmp(v->valuestring, "auto") || !strcmp(v->valuestring, "default"))))
		return gs_http_bad(g, "service_tier", "service_tier is not supported (only \"auto\" or \"default\")");
	if ((v = gs_http_field(root, "best_of")) &&
	    !(cJSON_IsNumber(v) && (v->valuedouble == 1 || v->valuedouble == g->n)))
		return gs_http_bad(g, "best_of", "best_of is not supported (only 1, or equal to n: every sample is returned)");
	if ((v = gs_http_field(root, "echo")) && !cJSON_IsFalse(v))
		return gs_http_bad(g, "echo", "echo is not supported (only false)");
	if ((v = gs_http_field(root, "suffix")) && !(cJSON_IsString(v) && !v->valuestring[0]))
		return gs_http_bad(g, "suffix", "suffix is not supported: Gemma 3 has no fill-in-the-middle format");
	{ /* structured output: compiled (and cached) now, so a bad schema is a 400 naming it */
		static const char *const so[] = { "response_format", "guided_choice", "guided_json", "structured_outputs",
						  "guided_regex", "guided_grammar" };
		const char *param = "response_format";
		char why[512];
		for (size_t i = 0; i < sizeof(so) / sizeof(so[0]); i++)
			if (gs_http_field(root, so[i])) {
				param = so[i];
				break;
			}
		enum gs_status st = gs_grammar_from_request(root, &g->response_format, why, sizeof(why));
		if (st == GS_ERR_INVALID_ARG)
			return gs_http_bad(g, param, "%s", why);
		if (st != GS_OK) {
			g->err = GS_CERR_INTERNAL;
			snprintf(g->why, sizeof(g->why), "coordinator: out of memory");
			return false;
		}
		g->spec.response_format = g->response_format;
	}
	return true;
}

/* logit_bias {"token id": bias}, stop_token_ids, min_tokens, ignore_eos, user. */
static bool gs_http_parse_openai(struct gs_http_gen *g, const cJSON *root)
{
	struct gs_sampling_params *sp = &g->spec.sp;
	const cJSON *v, *e;
	int64_t iv;
	bool given;

	if (!gs_http_get_num(g, root, "presence_penalty", &sp->presence_penalty) ||
	    !gs_http_get_num(g, root, "frequency_penalty", &sp->frequency_penalty))
		return false;
	if ((v = gs_http_field(root, "logit_bias"))) {
		if (!cJSON_IsObject(v))
			return gs_http_bad(g, "logit_bias", "logit_bias must be an object {\"token id\": bias}, got %s",
					   gs_json_type(v));
		if (cJSON_GetArraySize(v) > GS_MAX_LOGIT_BIAS)
			return gs_http_bad(g, "logit_bias", "logit_bias may hold at most %d entries, got %d",
					   GS_MAX_LOGIT_BIAS, cJSON_GetArraySize(v));
		cJSON_ArrayForEach(e, v) {
			char *end = NULL;
			long id = strtol(e->string, &end, 10);
			if (!e->string[0] || *end || id < 0 || id > INT32_MAX || (e->string[0] == '0' && e->string[1]))
				return gs_http_bad(g, "logit_bias", "logit_bias: key \"%.32s\" is not a token id",
						   e->string);
			if (!cJSON_IsNumber(e))
				return gs_http_bad(g, "logit_bias", "logit_bias: the bias of token %ld must be a number, got %s",
						   id, gs_json_type(e));
			sp->logit_bias_id[sp->n_logit_bias] = (int32_t)id;
			sp->logit_bias[sp->n_logit_bias++] = (float)e->valuedouble;
		}
	}
	if (!gs_http_get_int(g, root, "min_tokens", 0, INT32_MAX, &iv, &given))
		return false;
	if (given)
		sp->min_tokens = (int32_t)iv;
	if (!gs_http_get_bool(g, root, "ignore_eos", &g->spec.ignore_eos))
		return false;
	if ((v = gs_http_field(root, "stop_token_ids"))) {
		int32_t *ids;
		int n = 0;
		if (!cJSON_IsArray(v))
			return gs_http_bad(g, "stop_token_ids", "stop_token_ids must be an array of token ids, got %s",
					   gs_json_type(v));
		if (cJSON_GetArraySize(v) > GS_COORD_MAX_STOP_IDS)
			return gs_http_bad(g, "stop_token_ids", "stop_token_ids may hold at most %d ids, got %d",
					   GS_COORD_MAX_STOP_IDS, cJSON_GetArraySize(v));
		if (!gs_http_int_list(g, "stop_token_ids", v, &ids, &n)) {
			free(ids);
			return false;
		}
		memcpy(g->spec.stop_ids, ids, sizeof(int32_t) * (size_t)n);
		g->spec.n_stop_ids = n;
		free(ids);
	}
	if ((v = gs_http_field(root, "user"))) {
		if (!cJSON_IsString(v))
			return gs_http_bad(g, "user", "user must be a string, got %s", gs_json_type(v));
		/* a label, not content: printable ASCII without spaces, cut to 63 bytes */
		snprintf(g->user, sizeof(g->user), "%s", v->valuestring);
		for (char *c = g->user; *c; c++)
			if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f || *c == '"' || *c == '\\')
				*c = '_';
		g->spec.user = g->user;
	}
	return true;
}

/* Fills g->spec from the request body; false with g->err/why/param set. */
bool gs_http_parse_gen(struct gs_http_gen *g, const cJSON *root)
{
	struct gs_sampling_params *sp = &g->spec.sp;
	const cJSON *v;
	int64_t iv;
	bool given;
	char why[256];

	sp[0] = gs_sampling_params_default();
	if (!cJSON_IsObject(root))
		return gs_http_bad(g, NULL, "the request body must be a JSON object, got %s", gs_json_type(root));
	v = gs_http_field(root, "model");
	if (v && !cJSON_IsString(v))
		return gs_http_bad(g, "model", "model must be a string, got %s", gs_json_type(v));
	g->spec.model = v ? v->valuestring : NULL;
	if (!gs_http_known_fields(g, root) || !gs_http_parse_defaults(g, root))
		return false;
	if (g->chat ? !gs_http_parse_messages(g, root) : !gs_http_parse_prompt(g, root))
		return false;

	if (!gs_http_get_int(g, root, "max_tokens", 1, INT32_MAX, &iv, &given))
		return false;
	if (given)
		g->spec.max_tokens = (int32_t)iv;
	if (!gs_http_get_int(g, root, "max_completion_tokens", 1, INT32_MAX, &iv, &given))
		return false;
	if (given && g->spec.max_tokens > 0 && g->spec.max_tokens != iv)
		return gs_http_bad(g, "max_completion_tokens",
				   "max_completion_tokens (%" PRId64 ") and max_tokens (%d) differ; give one of them",
				   iv, (int)g->spec.max_tokens);
	if (given)
		g->spec.max_tokens = (int32_t)iv;

	if (!gs_http_get_num(g, root, "temperature", &sp->temperature) ||
	    !gs_http_get_num(g, root, "top_p", &sp->top_p) || !gs_http_get_num(g, root, "min_p", &sp->min_p) ||
	    !gs_http_get_num(g, root, "repetition_penalty", &sp->repetition_penalty))
		return false;
	/* top_k -1 is how vLLM clients say "off". */
	if (!gs_http_get_int(g, root, "top_k", -1, INT32_MAX, &iv, &given))
		return false;
	if (given)
		sp->top_k = iv < 0 ? 0 : (int32_t)iv;
	if (!gs_http_get_int(g, root, "seed", INT64_MIN, INT64_MAX, &iv, &g->spec.has_seed))
		return false;
	if (g->spec.has_seed)
		sp->seed = (uint64_t)iv;

	if (!gs_http_get_int(g, root, "n", INT64_MIN, INT64_MAX, &iv, &given))
		return false;
	if (given && (iv < 1 || iv > GS_COORD_MAX_N))
		return gs_http_bad(g, "n", "n must be an integer in [1, %d], got %" PRId64, GS_COORD_MAX_N, iv);
	g->n = given ? (int)iv : 1;
	if (!gs_http_parse_stop(g, root) || !gs_http_parse_logprobs(g, root) || !gs_http_parse_openai(g, root))
		return false;

	if (!gs_http_get_bool(g, root, "stream", &g->stream))
		return false;
	v = gs_http_field(root, "stream_options");
	if (v) {
		if (!cJSON_IsObject(v))
			return gs_http_bad(g, "stream_options", "stream_options must be an object, got %s",
					   gs_json_type(v));
		if (!g->stream)
			return gs_http_bad(g, "stream_options", "stream_options is only allowed when stream is true");
		if (!gs_http_get_bool(g, v, "include_usage", &g->include_usage)) {
			snprintf(g->param, sizeof(g->param), "stream_options.include_usage");
			return false;
		}
	}

	if (gs_sampling_params_validate(sp, why, sizeof(why)) != GS_OK) {
		gs_clear_error();
		gs_http_bad(g, NULL, "%s", why);
		gs_http_param_of(why, g->chat, g->param, sizeof(g->param));
		return false;
	}
	return true;
}

/* The body as the server received it (len bytes, not NUL-terminated): UTF-8, then JSON, then
 * gs_http_parse_gen. */
bool gs_http_parse_body(struct gs_http_gen *g, const char *body, size_t len, cJSON **root)
{
	const char *end = NULL;

	*root = NULL;
	if (len == 0)
		return gs_http_bad(g, NULL, "the request body is empty (expected a JSON object)");
	if (!gs_http_utf8_valid(body, len))
		return gs_http_bad(g, NULL, "the request body is not valid UTF-8");
	*root = cJSON_ParseWithLengthOpts(body, len, &end, false);
	if (!*root)
		return gs_http_bad(g, NULL, "invalid JSON in the request body (at byte %zu of %zu)",
				   end && end >= body ? (size_t)(end - body) : (size_t)0, len);
	size_t nul = gs_json_find_nul_escape(body, len);
	if (nul)
		return gs_http_bad(g, NULL, "a string in the request body holds \\u0000 (at byte %zu), which is not "
				   "supported", nul);
	return gs_http_parse_gen(g, *root);
}

void gs_http_gen_free(struct gs_http_gen *g)
{
	gs_chat_openai_free(&g->chat_in);
	free(g->images);
	g->images = NULL;
	for (int i = 0; i < GS_HTTP_MAX_PROMPTS; i++)
		free(g->prompt_idv[i]);
	free(g->response_format);
	g->response_format = NULL;
}

/* ---- answers ------------------------------------------------------------------------------ */

/* Token bytes: a "<0xNN>" byte token is that one byte, any other token its UTF-8. */
static cJSON *gs_http_token_bytes(const char *t)
{
	cJSON *a = cJSON_CreateArray();
	unsigned v;
	int n = 0;

	if (sscanf(t, "<0x%2x>%n", &v, &n) == 1 && n == 6 && t[6] == '\0') {
		cJSON_AddItemToArray(a, cJSON_CreateNumber(v));
		return a;
	}
	for (const unsigned char *p = (const unsigned char *)t; *p; p++)
		cJSON_AddItemToArray(a, cJSON_CreateNumber(*p));
	return a;
}

static double gs_http_logprob(float v)
{
	return isfinite(v) ? v : -9999.0; /* what OpenAI sends for "impossible" */
}

static char *gs_http_token_text(const struct gs_coord_model *m, int32_t id)
{
	char *t = gs_coord_model_token_text(m, id);

	return t ? t : strdup("");
}

/* {token, logprob, bytes} (chat). */
static cJSON *gs_http_chat_token(const struct gs_coord_model *m, int32_t id, float logprob)
{
	cJSON *e = cJSON_CreateObject();
	char *t = gs_http_token_text(m, id);

	cJSON_AddStringToObject(e, "token", t ? t : "");
	cJSON_AddNumberToObject(e, "logprob", gs_http_logprob(logprob));
	cJSON_AddItemToObject(e, "bytes", gs_http_token_bytes(t ? t : ""));
	free(t);
	return e;
}

bool gs_http_lps_init(struct gs_http_lps *a, bool chat)
{
	memset(a, 0, sizeof(*a));
	a->obj = cJSON_CreateObject();
	if (chat) {
		a->content = cJSON_AddArrayToObject(a->obj, "content");
		if (a->content)
			return true;
		cJSON_Delete(a->obj);
		memset(a, 0, sizeof(*a));
		return false;
	}
	a->tokens = cJSON_AddArrayToObject(a->obj, "tokens");
	a->token_lps = cJSON_AddArrayToObject(a->obj, "token_logprobs");
	a->tops = cJSON_AddArrayToObject(a->obj, "top_logprobs");
	a->offsets = cJSON_AddArrayToObject(a->obj, "text_offset");
	if (a->tokens && a->token_lps && a->tops && a->offsets)
		return true;
	cJSON_Delete(a->obj);
	memset(a, 0, sizeof(*a));
	return false;
}

void gs_http_lps_add(struct gs_http_lps *a, const struct gs_creq_out *o)
{
	const struct gs_coord_model *m = o->model; /* token texts of the request's model */

	if (!o->lps)
		return;
	for (int32_t i = 0; i < o->n_ids; i++) {
		const struct gs_tok_lp *lp = &o->lps[i];

		if (a->content) {
			cJSON *e = gs_http_chat_token(m, lp->id, lp->logprob);
			cJSON *tops = cJSON_AddArrayToObject(e, "top_logprobs");

			for (int32_t k = 0; k < lp->n_top; k++)
				cJSON_AddItemToArray(tops, gs_http_chat_token(m, lp->top_ids[k], lp->top_logprobs[k]));
			cJSON_AddItemToArray(a->content, e);
		} else {
			char *t = gs_http_token_text(m, lp->id);
			cJSON *top = cJSON_CreateObject();
			unsigned v;
			int n = 0;

			cJSON_AddItemToArray(a->tokens, cJSON_CreateString(t ? t : ""));
			cJSON_AddItemToArray(a->token_lps, cJSON_CreateNumber(gs_http_logprob(lp->logprob)));
			cJSON_AddItemToArray(a->offsets, cJSON_CreateNumber((double)a->text_off));
			if (t)
				a->text_off += sscanf(t, "<0x%2x>%n", &v, &n) == 1 && n == 6 ? 1 : strlen(t);
			free(t);
			for (int32_t k = 0; k < lp->n_top; k++) {
				char *tt = gs_http_token_text(m, lp->top_ids[k]);

				if (tt && !cJSON_HasObjectItem(top, tt))
					cJSON_AddNumberToObject(top, tt, gs_http_logprob(lp->top_logprobs[k]));
				free(tt);
			}
			cJSON_AddItemToArray(a->tops, top);
		}
	}
}

cJSON *gs_http_usage(int32_t prompt_tokens, int32_t completion_tokens)
{
	cJSON *u = cJSON_CreateObject();

	cJSON_AddNumberToObject(u, "prompt_tokens", prompt_tokens);
	cJSON_AddNumberToObject(u, "completion_tokens", completion_tokens);
	cJSON_AddNumberToObject(u, "total_tokens", (double)prompt_tokens + completion_tokens);
	return u;
}

/* {"id", "object", "created", "model", "choices": []}; *choices gets the array. */
cJSON *gs_http_envelope(const char *id, const char *object, long long created, const char *model,
			cJSON **choices)
{
	cJSON *root = cJSON_CreateObject();

	cJSON_AddStringToObject(root, "id", id);
	cJSON_AddStringToObject(root, "object", object);
	cJSON_AddNumberToObject(root, "created", (double)created);
	cJSON_AddStringToObject(root, "model", model);
	*choices = cJSON_AddArrayToObject(root, "choices");
	return root;
}

/* One choice: chat {index, message|delta, logprobs, finish_reason} or completions
 * {index, text, logprobs, finish_reason}. lps is taken (NULL: "logprobs": null). */
cJSON *gs_http_choice(bool chat, bool delta, bool with_role, const char *text, cJSON *lps,
		      enum gs_cfinish finish)
{
	cJSON *ch = cJSON_CreateObject();

	cJSON_AddNumberToObject(ch, "index", 0);
	if (chat) {
		cJSON *m = cJSON_AddObjectToObject(ch, delta ? "delta" : "message");

		if (with_role)
			cJSON_AddStringToObject(m, "role", "assistant");
		if (text)
			cJSON_AddStringToObject(m, "content", text);
	} else {
		cJSON_AddStringToObject(ch, "text", text ? text : "");
	}
	if (lps)
		cJSON_AddItemToObject(ch, "logprobs", lps);
	else
		cJSON_AddNullToObject(ch, "logprobs");
	if (finish != GS_CFIN_NONE)
		cJSON_AddStringToObject(ch, "finish_reason", gs_cfinish_openai(finish));
	else
		cJSON_AddNullToObject(ch, "finish_reason");
	return ch;
}
