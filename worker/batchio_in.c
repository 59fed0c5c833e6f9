/* Offline batch mode input: JSONL request lines -> struct gs_batch_req (gs_batch_parse_line),
 * the whole file with unique ids (gs_batch_read). Contracts are in gs_batchio.h. */
#include "batchio_internal.h"
#include "gs_batchio.h"
#include "gs_chat.h"
#include "gs_grammar.h"
#include "gs_json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <cjson/cJSON.h>

#define GS_BIO_MAX_EXACT_INT 9007199254740992.0 /* 2^53: doubles hold every integer up to it */

/* ---- 1. input ----------------------------------------------------------------------------- */

static void gs_bio_free_images(struct gs_batch_req *req)
{
	for (int i = 0; i < req->n_images; i++)
		free(req->images[i].data);
	free(req->images);
	req->images = NULL;
	req->n_images = 0;
}

void gs_batch_req_clear(struct gs_batch_req *req)
{
	gs_bio_free_images(req);
	free(req->id);
	free(req->text);
	for (int i = 0; i < req->n_stop; i++)
		free(req->stop[i]);
	free(req->error);
	free(req->response_format);
	memset(req, 0, sizeof(*req));
}

void gs_batch_free(struct gs_batch_req *reqs, size_t n)
{
	if (!reqs)
		return;
	for (size_t i = 0; i < n; i++)
		gs_batch_req_clear(&reqs[i]);
	free(reqs);
}

/* Marks req invalid with "line N: <msg>" and drops what an invalid request must not carry.
 * Returns GS_OK (the line is handled) or GS_ERR_NOMEM. */
static enum gs_status gs_bio_reject(struct gs_batch_req *req, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static enum gs_status gs_bio_reject(struct gs_batch_req *req, const char *fmt, ...)
{
	char *msg = NULL, *full = NULL;
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (rc < 0)
		return gs_errorf(GS_ERR_NOMEM, "batch: out of memory describing line %" PRId64, req->line_no);
	rc = asprintf(&full, "line %" PRId64 ": %s", req->line_no, msg);
	free(msg);
	if (rc < 0)
		return gs_errorf(GS_ERR_NOMEM, "batch: out of memory describing line %" PRId64, req->line_no);
	free(req->text);
	req->text = NULL;
	gs_bio_free_images(req);
	for (int i = 0; i < req->n_stop; i++) {
		free(req->stop[i]);
		req->stop[i] = NULL;
	}
	req->n_stop = 0;
	free(req->response_format);
	req->response_format = NULL;
	free(req->error);
	req->error = full;
	return GS_OK;
}

/* The field, or NULL when absent or null (null means "use the default"). */
static const cJSON *gs_bio_field(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsNull(v) ? NULL : v;
}

static bool gs_bio_is_int(const cJSON *v, double lo, double hi)
{
	return cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble) &&
	       v->valuedouble >= lo && v->valuedouble <= hi;
}

/* id: string (non-empty, valid UTF-8, bounded) or exact integer; else why is set. */
static enum gs_status gs_bio_parse_id(const cJSON *v, struct gs_batch_req *req, const char **why)
{
	char tmp[32];
	const char *s;

	*why = NULL;
	if (!v)
		return GS_OK;
	if (cJSON_IsString(v)) {
		s = v->valuestring;
		if (s[0] == '\0')
			*why = "id must not be empty";
		else if (strlen(s) > GS_BATCH_MAX_ID_BYTES)
			*why = "id is longer than 1024 bytes";
		else if (!gs_bio_utf8_valid(s))
			*why = "id is not valid UTF-8";
		if (*why)
			return GS_OK;
	} else if (gs_bio_is_int(v, -GS_BIO_MAX_EXACT_INT, GS_BIO_MAX_EXACT_INT)) {
		snprintf(tmp, sizeof(tmp), "%lld", (long long)v->valuedouble);
		s = tmp;
	} else if (cJSON_IsNumber(v)) {
		*why = "id must be a string or an integer within +-2^53 (quote larger ids)";
		return GS_OK;
	} else {
		*why = "id must be a string or an integer";
		return GS_OK;
	}
	char *id = strdup(s);
	if (!id)
		return gs_errorf(GS_ERR_NOMEM, "batch: out of memory for an id");
	free(req->id);
	req->id = id;
	return GS_OK;
}

/* A float field into *dst (untouched when absent). Range checks are the sampler's. */
static bool gs_bio_float(const cJSON *obj, const char *key, float *dst, const cJSON **bad)
{
	const cJSON *v = gs_bio_field(obj, key);

	if (!v)
		return true;
	if (!cJSON_IsNumber(v)) {
		*bad = v;
		return false;
	}
	*dst = (float)v->valuedouble;
	return true;
}

/* messages in OpenAI's shape, text and image_url (data: URL) parts (gs_chat_openai.h). */
static enum gs_status gs_bio_parse_messages(const cJSON *msgs, struct gs_batch_req *req)
{
	struct gs_chat_openai c;
	enum gs_status st;
	char why[512];
	char *text = NULL;

	st = gs_chat_openai_parse(msgs, GS_BATCH_MAX_IMAGES, &c, why, sizeof(why), NULL, 0);
	if (st == GS_ERR_INVALID_ARG) {
		st = gs_bio_reject(req, "%s", why);
		goto out_free;
	}
	if (st != GS_OK)
		goto out_free;
	if (c.n_msgs == 1 && strcmp(c.msgs[0].role, "system") == 0) {
		st = gs_bio_reject(req, "messages has only a system message; add a user message");
		goto out_free;
	}
	st = gs_chat_render(c.msgs, (size_t)c.n_msgs, true, &text);
	if (st == GS_ERR_INVALID_ARG) {
		st = gs_bio_reject(req, "%s", gs_last_error());
		gs_clear_error();
	} else if (st == GS_OK) {
		req->text = text;
		req->chat = true;
		req->images = c.images; /* taken */
		req->n_images = c.n_images;
		c.images = NULL;
		c.n_images = 0;
	}
out_free:
	gs_chat_openai_free(&c);
	return st;
}

static enum gs_status gs_bio_add_stop(struct gs_batch_req *req, const cJSON *it, int i)
{
	if (!cJSON_IsString(it))
		return gs_bio_reject(req, "stop[%d] must be a string, got %s", i, gs_json_type(it));
	if (it->valuestring[0] == '\0')
		return gs_bio_reject(req, "stop strings must not be empty");
	if (strlen(it->valuestring) > GS_BATCH_MAX_STOP_BYTES)
		return gs_bio_reject(req, "stop strings must be at most %d bytes", GS_BATCH_MAX_STOP_BYTES);
	req->stop[req->n_stop] = strdup(it->valuestring);
	if (!req->stop[req->n_stop])
		return gs_errorf(GS_ERR_NOMEM, "batch: out of memory for stop strings");
	req->n_stop++;
	return GS_OK;
}

static enum gs_status gs_bio_parse_stop(const cJSON *stop, struct gs_batch_req *req)
{
	const cJSON *it;
	int i = 0;

	if (cJSON_IsString(stop))
		return gs_bio_add_stop(req, stop, 0);
	if (!cJSON_IsArray(stop))
		return gs_bio_reject(req, "stop must be a string or a list of strings, got %s",
				     gs_json_type(stop));
	if (cJSON_GetArraySize(stop) > GS_BATCH_MAX_STOP)
		return gs_bio_reject(req, "stop has %d strings, at most %d are allowed",
				     cJSON_GetArraySize(stop), GS_BATCH_MAX_STOP);
	cJSON_ArrayForEach(it, stop) {
		GS_TRY(gs_bio_add_stop(req, it, i++));
		if (req->error)
			break;
	}
	return GS_OK;
}

/* Every field a line may carry (as on HTTP, docs/ARCHITECTURE.md): anything else is refused
 * naming it, and the fields accepted only with their default value are checked here. */
static enum gs_status gs_bio_parse_openai(const cJSON *obj, struct gs_batch_req *req)
{
	static const char *const known[] = {
		"id", "prompt", "messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p",
		"top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "logit_bias", "seed",
		"n", "stop", "stop_token_ids", "min_tokens", "ignore_eos", "logprobs", "top_logprobs", "user",
		/* structured output, as on HTTP (gs_grammar_from_request) */
		"response_format", "guided_choice", "guided_json", "structured_outputs", "guided_regex", "guided_grammar",
	};
	static const char *const tools[] = { "tools", "tool_choice", "functions", "function_call" };
	const cJSON *f, *v, *e;

	cJSON_ArrayForEach(f, obj) {
		bool ok = false;
		for (size_t i = 0; !ok && i < sizeof(known) / sizeof(known[0]); i++)
			ok = strcmp(f->string, known[i]) == 0;
		for (size_t i = 0; !ok && i < sizeof(tools) / sizeof(tools[0]); i++)
			if (strcmp(f->string, tools[i]) == 0 && !cJSON_IsNull(f))
				return gs_bio_reject(req, "%s is not supported: the Gemma 3 chat template has no tool-calling "
						     "format", tools[i]);
		if (!ok && !cJSON_IsNull(f))
			return gs_bio_reject(req, "%.48s is not a supported field of a batch line", f->string);
	}
	{
		char why[512];
		enum gs_status gst = gs_grammar_from_request(obj, &req->response_format, why, sizeof(why));
		if (gst == GS_ERR_INVALID_ARG)
			return gs_bio_reject(req, "%s", why);
		if (gst != GS_OK)
			return gst;
	}
	if ((v = gs_bio_field(obj, "model")) && !cJSON_IsString(v))
		return gs_bio_reject(req, "model must be a string, got %s", gs_json_type(v));
	req->n = 1;
	if ((v = gs_bio_field(obj, "n"))) {
		if (!gs_bio_is_int(v, 1, GS_BATCH_MAX_N))
			return gs_bio_reject(req, "n must be an integer in [1, %d]", GS_BATCH_MAX_N);
		req->n = (int)v->valuedouble;
	}
	if ((v = gs_bio_field(obj, "user")) && !cJSON_IsString(v))
		return gs_bio_reject(req, "user must be a string, got %s", gs_json_type(v));
	if ((v = gs_bio_field(obj, "max_completion_tokens"))) {
		const cJSON *mt = gs_bio_field(obj, "max_tokens");
		if (!gs_bio_is_int(v, 1, GS_BATCH_MAX_TOKENS_LIMIT))
			return gs_bio_reject(req, "max_completion_tokens must be an integer in [1, %d]",
					     GS_BATCH_MAX_TOKENS_LIMIT);
		if (mt && !(cJSON_IsNumber(mt) && mt->valuedouble == v->valuedouble))
			return gs_bio_reject(req, "max_completion_tokens and max_tokens differ; give one of them");
		req->max_tokens = (int32_t)v->valuedouble;
	}
	if ((v = gs_bio_field(obj, "min_tokens"))) {
		if (!gs_bio_is_int(v, 0, INT32_MAX))
			return gs_bio_reject(req, "min_tokens must be an integer >= 0");
		req->sp.min_tokens = (int32_t)v->valuedouble;
	}
	if ((v = gs_bio_field(obj, "ignore_eos"))) {
		if (!cJSON_IsBool(v))
			return gs_bio_reject(req, "ignore_eos must be true or false, got %s", gs_json_type(v));
		req->ignore_eos = cJSON_IsTrue(v);
	}
	if ((v = gs_bio_field(obj, "stop_token_ids"))) {
		int i = 0;
		if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > GS_BATCH_MAX_STOP)
			return gs_bio_reject(req, "stop_token_ids must be a list of at most %d token ids", GS_BATCH_MAX_STOP);
		cJSON_ArrayForEach(e, v) {
			if (!gs_bio_is_int(e, 0, INT32_MAX))
				return gs_bio_reject(req, "stop_token_ids[%d] must be a token id (an integer >= 0)", i);
			req->stop_ids[i++] = (int32_t)e->valuedouble;
		}
		req->n_stop_ids = i;
	}
	if ((v = gs_bio_field(obj, "logit_bias"))) {
		if (!cJSON_IsObject(v))
			return gs_bio_reject(req, "logit_bias must be an object {\"token id\": bias}, got %s",
					     gs_json_type(v));
		if (cJSON_GetArraySize(v) > GS_MAX_LOGIT_BIAS)
			return gs_bio_reject(req, "logit_bias may hold at most %d entries", GS_MAX_LOGIT_BIAS);
		cJSON_ArrayForEach(e, v) {
			char *end = NULL;
			long id = strtol(e->string, &end, 10);
			if (!e->string[0] || *end || id < 0 || id > INT32_MAX)
				return gs_bio_reject(req, "logit_bias: key \"%.32s\" is not a token id", e->string);
			if (!cJSON_IsNumber(e))
				return gs_bio_reject(req, "logit_bias: the bias of token %ld must be a number", id);
			req->sp.logit_bias_id[req->sp.n_logit_bias] = (int32_t)id;
			req->sp.logit_bias[req->sp.n_logit_bias++] = (float)e->valuedouble;
		}
	}
	return GS_OK;
}

/* The request fields of an object whose id is settled. Returns GS_OK (maybe rejected). */
static enum gs_status gs_bio_parse_fields(const cJSON *obj, struct gs_batch_req *req)
{
	const cJSON *prompt = gs_bio_field(obj, "prompt");
	const cJSON *msgs = gs_bio_field(obj, "messages");
	const cJSON *v, *bad = NULL;
	const char *bad_key = NULL;
	char why[256];

	if (prompt && msgs)
		return gs_bio_reject(req, "give either prompt or messages, not both");
	if (!prompt && !msgs)
		return gs_bio_reject(req, "missing prompt or messages");

	if ((v = gs_bio_field(obj, "max_tokens"))) {
		if (!gs_bio_is_int(v, 1, GS_BATCH_MAX_TOKENS_LIMIT)) {
			if (cJSON_IsNumber(v))
				return gs_bio_reject(req, "max_tokens must be an integer in [1, %d], got %g",
						     GS_BATCH_MAX_TOKENS_LIMIT, v->valuedouble);
			return gs_bio_reject(req, "max_tokens must be an integer, got %s", gs_json_type(v));
		}
		req->max_tokens = (int32_t)v->valuedouble;
	}
	if (!gs_bio_float(obj, bad_key = "temperature", &req->sp.temperature, &bad) ||
	    !gs_bio_float(obj, bad_key = "top_p", &req->sp.top_p, &bad) ||
	    !gs_bio_float(obj, bad_key = "min_p", &req->sp.min_p, &bad) ||
	    !gs_bio_float(obj, bad_key = "repetition_penalty", &req->sp.repetition_penalty, &bad) ||
	    !gs_bio_float(obj, bad_key = "presence_penalty", &req->sp.presence_penalty, &bad) ||
	    !gs_bio_float(obj, bad_key = "frequency_penalty", &req->sp.frequency_penalty, &bad))
		return gs_bio_reject(req, "%s must be a number, got %s", bad_key, gs_json_type(bad));
	GS_TRY(gs_bio_parse_openai(obj, req));
	if (req->error)
		return GS_OK;
	if ((v = gs_bio_field(obj, "top_k"))) {
		if (!gs_bio_is_int(v, 0, INT32_MAX)) {
			if (cJSON_IsNumber(v))
				return gs_bio_reject(req, "top_k must be an integer in [0, %d] (0 = off), got %g",
						     INT32_MAX, v->valuedouble);
			return gs_bio_reject(req, "top_k must be an integer, got %s", gs_json_type(v));
		}
		req->sp.top_k = (int32_t)v->valuedouble;
	}
	if ((v = gs_bio_field(obj, "seed"))) {
		if (!gs_bio_is_int(v, 0, GS_BIO_MAX_EXACT_INT)) {
			if (cJSON_IsNumber(v))
				return gs_bio_reject(req, "seed must be an integer in [0, 2^53], got %g",
						     v->valuedouble);
			return gs_bio_reject(req, "seed must be an integer, got %s", gs_json_type(v));
		}
		req->sp.seed = (uint64_t)v->valuedouble;
	}
	if (gs_sampling_params_validate(&req->sp, why, sizeof(why)) != GS_OK) {
		gs_clear_error(); /* a request's mistake, reported in the record, not the thread */
		return gs_bio_reject(req, "%s", why);
	}
	if ((v = gs_bio_field(obj, "logprobs"))) {
		if (!cJSON_IsBool(v))
			return gs_bio_reject(req, "logprobs must be true or false, got %s", gs_json_type(v));
		req->logprobs = cJSON_IsTrue(v);
	}
	if ((v = gs_bio_field(obj, "top_logprobs"))) {
		if (!gs_bio_is_int(v, 0, GS_BATCH_MAX_TOP_LOGPROBS)) {
			if (cJSON_IsNumber(v))
				return gs_bio_reject(req, "top_logprobs must be an integer in [0, %d], got %g",
						     GS_BATCH_MAX_TOP_LOGPROBS, v->valuedouble);
			return gs_bio_reject(req, "top_logprobs must be an integer, got %s", gs_json_type(v));
		}
		req->top_logprobs = (int)v->valuedouble;
		if (req->top_logprobs > 0 && !req->logprobs)
			return gs_bio_reject(req, "top_logprobs needs \"logprobs\": true");
	}
	if ((v = gs_bio_field(obj, "stop")))
		GS_TRY(gs_bio_parse_stop(v, req));
	if (req->error)
		return GS_OK;

	/* Last: the text is the only large allocation. */
	if (msgs)
		return gs_bio_parse_messages(msgs, req);
	if (!cJSON_IsString(prompt))
		return gs_bio_reject(req, "prompt must be a string, got %s", gs_json_type(prompt));
	req->text = strdup(prompt->valuestring);
	if (!req->text)
		return gs_errorf(GS_ERR_NOMEM, "batch: out of memory for a prompt");
	return GS_OK;
}

enum gs_status gs_batch_parse_line(const char *line, size_t len, int64_t line_no,
				   struct gs_batch_req *req)
{
	const char *end = NULL, *why = NULL;
	cJSON *obj = NULL;
	enum gs_status st;
	char gen[40];

	memset(req, 0, sizeof(*req));
	req->line_no = line_no;
	req->max_tokens = GS_BATCH_DEFAULT_MAX_TOKENS;
	req->sp = gs_sampling_params_default();

	/* Every record needs an id, even one that fails to parse: start from "line-N". */
	snprintf(gen, sizeof(gen), "line-%" PRId64, line_no);
	req->id = strdup(gen);
	if (!req->id)
		return gs_errorf(GS_ERR_NOMEM, "batch: out of memory at line %" PRId64, line_no);

	if (len > GS_BATCH_MAX_LINE_IN) {
		st = gs_bio_reject(req, "line is %zu bytes, more than the %u MiB limit", len,
				   GS_BATCH_MAX_LINE_IN >> 20);
		goto out_done;
	}
	if (memchr(line, '\0', len)) {
		st = gs_bio_reject(req, "line contains a NUL byte");
		goto out_done;
	}
	obj = cJSON_ParseWithLengthOpts(line, len, &end, false);
	if (!obj) {
		size_t col = end && end >= line && end <= line + len ? (size_t)(end - line) + 1 : 1;
		st = gs_bio_reject(req, "invalid JSON near column %zu", col);
		goto out_done;
	}
	size_t nul_col = gs_json_find_nul_escape(line, (size_t)(end - line));
	if (nul_col) {
		st = gs_bio_reject(req, "a string contains \\u0000 (column %zu), which is not supported",
				   nul_col);
		goto out_free_obj;
	}
	for (const char *p = end; p < line + len; p++) {
		if (!gs_bio_is_ws(*p)) {
			st = gs_bio_reject(req, "unexpected text after the JSON value at column %zu",
					   (size_t)(p - line) + 1);
			goto out_free_obj;
		}
	}
	if (!cJSON_IsObject(obj)) {
		st = gs_bio_reject(req, "a request must be a JSON object, got %s", gs_json_type(obj));
		goto out_free_obj;
	}
	st = gs_bio_parse_id(gs_bio_field(obj, "id"), req, &why);
	if (st != GS_OK)
		goto out_free_obj;
	if (why) {
		st = gs_bio_reject(req, "%s", why);
		goto out_free_obj;
	}
	if (!gs_bio_field(obj, "seed"))
		req->sp.seed = gs_batch_seed_from_id(req->id);
	st = gs_bio_parse_fields(obj, req);
out_free_obj:
	cJSON_Delete(obj);
out_done:
	if (st != GS_OK)
		gs_batch_req_clear(req);
	return st;
}

/* Second pass: make ids unique. A repeat (or a generated "line-N" an explicit id took
 * first) is renamed "line-N[#k]" and, unless already invalid, turned into an error. */
static enum gs_status gs_bio_unique_ids(struct gs_batch_req *reqs, size_t n)
{
	struct gs_bio_set seen = { 0 };
	enum gs_status st = GS_OK;

	for (size_t i = 0; i < n && st == GS_OK; i++) {
		struct gs_batch_req *r = &reqs[i];
		const int64_t *first = gs_bio_set_find(&seen, r->id);

		if (first) {
			char *orig = r->id, *id = NULL;
			int64_t first_line = *first;

			for (int k = 1; !id || gs_bio_set_find(&seen, id); k++) {
				free(id);
				if ((k == 1 ? asprintf(&id, "line-%" PRId64, r->line_no)
					    : asprintf(&id, "line-%" PRId64 "#%d", r->line_no, k)) < 0) {
					id = NULL;
					break;
				}
			}
			if (!id) {
				st = gs_errorf(GS_ERR_NOMEM, "batch: out of memory renaming ids");
				break;
			}
			r->id = id;
			if (!r->error)
				st = gs_bio_reject(r, "duplicate id \"%s\" (first used on line %" PRId64 ")",
						   orig, first_line);
			free(orig);
		}
		if (st == GS_OK && !gs_bio_set_add(&seen, r->id, r->line_no))
			st = gs_errorf(GS_ERR_NOMEM, "batch: out of memory checking ids");
	}
	gs_bio_set_free(&seen);
	return st;
}

enum gs_status gs_batch_read(const char *path, struct gs_batch_req **reqs, size_t *n_out)
{
	struct gs_batch_req *v = NULL;
	size_t n = 0, cap = 0, lcap = 0;
	char *line = NULL;
	ssize_t len;
	int64_t line_no = 0;
	enum gs_status st = GS_OK;
	FILE *f;

	*reqs = NULL;
	*n_out = 0;
	f = fopen(path, "r");
	if (!f)
		return gs_errorf(GS_ERR_IO, "batch input %s: %s", path, strerror(errno));
	errno = 0;
	while ((len = getline(&line, &lcap, f)) >= 0) {
		const char *p = line;
		size_t l = (size_t)len;

		line_no++;
		if (line_no == 1 && l >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) {
			p += 3; /* UTF-8 byte order mark from some editors */
			l -= 3;
		}
		while (l > 0 && (p[l - 1] == '\n' || p[l - 1] == '\r'))
			l--;
		size_t k = 0;
		while (k < l && gs_bio_is_ws(p[k]))
			k++;
		if (k == l)
			continue;
		if (n == cap) {
			size_t nc = cap ? 2 * cap : 64;
			struct gs_batch_req *nv = realloc(v, nc * sizeof(*v));
			if (!nv) {
				st = gs_errorf(GS_ERR_NOMEM, "batch input %s: out of memory at line %" PRId64,
					       path, line_no);
				goto out_free_reqs;
			}
			v = nv;
			cap = nc;
		}
		st = gs_batch_parse_line(p, l, line_no, &v[n]);
		if (st != GS_OK)
			goto out_free_reqs;
		n++;
	}
	if (ferror(f)) {
		st = gs_errorf(GS_ERR_IO, "batch input %s: read error after line %" PRId64 ": %s", path,
			       line_no, strerror(errno ? errno : EIO));
		goto out_free_reqs;
	}
	st = gs_bio_unique_ids(v, n);
	if (st != GS_OK)
		goto out_free_reqs;
	*reqs = v;
	*n_out = n;
	v = NULL;
	n = 0;
out_free_reqs:
	gs_batch_free(v, n);
	free(line);
	fclose(f);
	return st;
}
