/* Offline batch mode I/O: JSONL requests in, resumable JSONL results out, progress lines.
 * Contracts are in gs_batchio.h; this file only says why where it is not obvious. */
#include "gs_batchio.h"
#include "gs_chat.h"
#include "gs_json.h"
#include "gs_sbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#define GS_BIO_MAX_EXACT_INT 9007199254740992.0 /* 2^53: doubles hold every integer up to it */

/* ---- output text: gs_sbuf (core/gs_sbuf.h) ------------------------------------------------ */

static bool gs_bio_put_i64(struct gs_sbuf *b, int64_t v)
{
	char tmp[24];
	int n = snprintf(tmp, sizeof(tmp), "%" PRId64, v);
	return gs_sbuf_put(b, tmp, (size_t)n);
}

/* Shortest "%.{1..9}g" that strtof() reads back as x: stable bytes, no float noise digits. */
static bool gs_bio_put_float(struct gs_sbuf *b, float x)
{
	char tmp[32];
	int n = 0;

	if (!isfinite(x))
		return gs_sbuf_puts(b, "null");
	for (int prec = 1; prec <= 9; prec++) {
		n = snprintf(tmp, sizeof(tmp), "%.*g", prec, (double)x);
		if (strtof(tmp, NULL) == x)
			break;
	}
	return gs_sbuf_put(b, tmp, (size_t)n);
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF), or 0. */
static size_t gs_bio_utf8_len(const unsigned char *s, size_t len)
{
	unsigned char c = s[0];
	size_t n;
	unsigned char lo = 0x80, hi = 0xBF;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		n = 2;
	else if (c >= 0xE0 && c <= 0xEF)
		n = 3;
	else if (c >= 0xF0 && c <= 0xF4)
		n = 4;
	else
		return 0;
	if (n > len)
		return 0;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if ((s[i] & 0xC0) != 0x80)
			return 0;
	return n;
}

static bool gs_bio_utf8_valid(const char *s)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t len = strlen(s), i = 0;

	while (i < len) {
		size_t n = gs_bio_utf8_len(u + i, len - i);
		if (n == 0)
			return false;
		i += n;
	}
	return true;
}

/* s as a JSON string; malformed UTF-8 bytes become \ufffd so the line stays valid JSON. */
static bool gs_bio_put_str(struct gs_sbuf *b, const char *s)
{
	const unsigned char *u = (const unsigned char *)(s ? s : "");
	size_t len = strlen((const char *)u), i = 0, run = 0;
	bool ok = gs_sbuf_put(b, "\"", 1);

	while (ok && i < len) {
		unsigned char c = u[i];
		const char *esc = NULL;
		char tmp[8];
		size_t n = 1;

		if (c == '"')
			esc = "\\\"";
		else if (c == '\\')
			esc = "\\\\";
		else if (c == '\n')
			esc = "\\n";
		else if (c == '\r')
			esc = "\\r";
		else if (c == '\t')
			esc = "\\t";
		else if (c == '\b')
			esc = "\\b";
		else if (c == '\f')
			esc = "\\f";
		else if (c < 0x20) {
			snprintf(tmp, sizeof(tmp), "\\u%04x", c);
			esc = tmp;
		} else if (c >= 0x80) {
			n = gs_bio_utf8_len(u + i, len - i);
			if (n == 0) {
				esc = "\\ufffd";
				n = 1;
			}
		}
		if (esc) {
			/* flush the plain run before the escape */
			ok = gs_sbuf_put(b, (const char *)u + i - run, run) && gs_sbuf_puts(b, esc);
			run = 0;
		} else {
			run += n;
		}
		i += n;
	}
	return ok && gs_sbuf_put(b, (const char *)u + i - run, run) && gs_sbuf_put(b, "\"", 1);
}

/* ---- string -> line map (open addressing) ------------------------------------------------ */

struct gs_bio_set {
	char   **key;  /* [cap] owned; NULL: empty slot */
	int64_t *val;  /* [cap] line number of the key  */
	size_t   cap;  /* power of two, or 0            */
	size_t   n;
};

uint64_t gs_batch_seed_from_id(const char *id)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (const unsigned char *p = (const unsigned char *)id; *p; p++)
		h = (h ^ *p) * 0x100000001b3ull;
	return h;
}

static size_t gs_bio_set_slot(const struct gs_bio_set *s, const char *key)
{
	size_t mask = s->cap - 1, i = (size_t)gs_batch_seed_from_id(key) & mask;

	while (s->key[i] && strcmp(s->key[i], key) != 0)
		i = (i + 1) & mask;
	return i;
}

static const int64_t *gs_bio_set_find(const struct gs_bio_set *s, const char *key)
{
	if (s->cap == 0)
		return NULL;
	size_t i = gs_bio_set_slot(s, key);
	return s->key[i] ? &s->val[i] : NULL;
}

/* Adds key (copied) unless present. false only on allocation failure. */
static bool gs_bio_set_add(struct gs_bio_set *s, const char *key, int64_t val)
{
	if (2 * (s->n + 1) > s->cap) {
		struct gs_bio_set g = { .cap = s->cap ? 2 * s->cap : 64 };
		g.key = calloc(g.cap, sizeof(*g.key));
		g.val = calloc(g.cap, sizeof(*g.val));
		if (!g.key || !g.val) {
			free(g.key);
			free(g.val);
			return false;
		}
		for (size_t i = 0; i < s->cap; i++) {
			if (!s->key[i])
				continue;
			size_t j = gs_bio_set_slot(&g, s->key[i]);
			g.key[j] = s->key[i];
			g.val[j] = s->val[i];
		}
		g.n = s->n;
		free(s->key);
		free(s->val);
		*s = g;
	}
	size_t i = gs_bio_set_slot(s, key);
	if (s->key[i])
		return true;
	s->key[i] = strdup(key);
	if (!s->key[i])
		return false;
	s->val[i] = val;
	s->n++;
	return true;
}

static void gs_bio_set_free(struct gs_bio_set *s)
{
	for (size_t i = 0; i < s->cap; i++)
		free(s->key[i]);
	free(s->key);
	free(s->val);
	memset(s, 0, sizeof(*s));
}

/* ---- 1. input ----------------------------------------------------------------------------- */

void gs_batch_req_clear(struct gs_batch_req *req)
{
	free(req->id);
	free(req->text);
	for (int i = 0; i < req->n_stop; i++)
		free(req->stop[i]);
	free(req->error);
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
	for (int i = 0; i < req->n_stop; i++) {
		free(req->stop[i]);
		req->stop[i] = NULL;
	}
	req->n_stop = 0;
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

static enum gs_status gs_bio_parse_messages(const cJSON *msgs, struct gs_batch_req *req)
{
	struct gs_chat_msg *m;
	int n = cJSON_GetArraySize(msgs), i = 0;
	const cJSON *it;
	enum gs_status st;
	char *text = NULL;

	if (!cJSON_IsArray(msgs))
		return gs_bio_reject(req, "messages must be an array, got %s", gs_json_type(msgs));
	if (n == 0)
		return gs_bio_reject(req, "messages must not be empty");
	m = calloc((size_t)n, sizeof(*m));
	if (!m)
		return gs_errorf(GS_ERR_NOMEM, "batch: out of memory for %d messages", n);
	cJSON_ArrayForEach(it, msgs) {
		const cJSON *role, *content;

		if (!cJSON_IsObject(it)) {
			st = gs_bio_reject(req, "messages[%d] must be an object, got %s", i, gs_json_type(it));
			goto out_free_msgs;
		}
		role = cJSON_GetObjectItemCaseSensitive(it, "role");
		content = cJSON_GetObjectItemCaseSensitive(it, "content");
		if (!cJSON_IsString(role)) {
			st = gs_bio_reject(req, "messages[%d].role must be a string, got %s", i,
					   role ? gs_json_type(role) : "nothing");
			goto out_free_msgs;
		}
		if (!cJSON_IsString(content)) {
			st = gs_bio_reject(req, "messages[%d].content must be a string, got %s%s", i,
					   content ? gs_json_type(content) : "nothing",
					   cJSON_IsArray(content) ? " (content parts are not supported in batch mode)"
								  : "");
			goto out_free_msgs;
		}
		m[i].role = role->valuestring;
		m[i].content = content->valuestring;
		i++;
	}
	if (n == 1 && strcmp(m[0].role, "system") == 0) {
		st = gs_bio_reject(req, "messages has only a system message; add a user message");
		goto out_free_msgs;
	}
	st = gs_chat_render(m, (size_t)n, true, &text);
	if (st == GS_ERR_INVALID_ARG) {
		st = gs_bio_reject(req, "%s", gs_last_error());
		gs_clear_error();
	} else if (st == GS_OK) {
		req->text = text;
		req->chat = true;
	}
out_free_msgs:
	free(m);
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
	    !gs_bio_float(obj, bad_key = "repetition_penalty", &req->sp.repetition_penalty, &bad))
		return gs_bio_reject(req, "%s must be a number, got %s", bad_key, gs_json_type(bad));
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

static bool gs_bio_is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Column (1-based) of a "\u0000" escape inside a JSON string, or 0. cJSON hands strings
 * over NUL-terminated, so it would silently cut such a string (an id, a prompt) short. */
static size_t gs_bio_find_nul_escape(const char *p, size_t n)
{
	bool in_str = false;

	for (size_t i = 0; i < n; i++) {
		if (!in_str) {
			in_str = p[i] == '"';
		} else if (p[i] == '"') {
			in_str = false;
		} else if (p[i] == '\\' && i + 1 < n) {
			if (p[i + 1] == 'u' && i + 5 < n && memcmp(p + i + 2, "0000", 4) == 0)
				return i + 1;
			i++; /* the escaped character */
		}
	}
	return 0;
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
	size_t nul_col = gs_bio_find_nul_escape(line, (size_t)(end - line));
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

/* ---- 2. output and resume ------------------------------------------------------------------- */

struct gs_batch_out {
	int               fd;
	char             *path;
	struct gs_bio_set done;     /* ids with a line in the file                      */
	struct gs_sbuf line;     /* reused line buffer                               */
	off_t             end;      /* file size: where the next line starts            */
	size_t            line_max; /* output line cap, '\n' included                    */
	bool              fsync;    /* GS_BATCH_FSYNC=1                                 */
	bool              broken;   /* a partial line could not be removed: refuse more */
};

static const char *const gs_bio_finish_name[GS_BATCH_FINISH_COUNT] = {
	[GS_BATCH_FINISH_STOP] = "stop",
	[GS_BATCH_FINISH_LENGTH] = "length",
};
_Static_assert(GS_BATCH_FINISH_COUNT == 2, "finish_reason names");

static bool gs_bio_put_error(struct gs_sbuf *b, const char *id, const char *msg, const char *type)
{
	return gs_sbuf_puts(b, "{\"id\":") && gs_bio_put_str(b, id) &&
	       gs_sbuf_puts(b, ",\"finish_reason\":\"error\",\"error\":{\"message\":") && gs_bio_put_str(b, msg) &&
	       gs_sbuf_puts(b, ",\"type\":") && gs_bio_put_str(b, type ? type : "invalid_request_error") &&
	       gs_sbuf_puts(b, "}}");
}

static bool gs_bio_put_logprobs(struct gs_sbuf *b, const struct gs_batch_result *r)
{
	bool ok = gs_sbuf_puts(b, ",\"logprobs\":{\"tokens\":[");

	for (size_t i = 0; ok && i < r->n_tokens; i++)
		ok = (i == 0 || gs_sbuf_put(b, ",", 1)) && gs_bio_put_str(b, r->tokens[i]);
	ok = ok && gs_sbuf_puts(b, "],\"token_logprobs\":[");
	for (size_t i = 0; ok && i < r->n_tokens; i++)
		ok = (i == 0 || gs_sbuf_put(b, ",", 1)) && gs_bio_put_float(b, r->token_logprobs[i]);
	ok = ok && gs_sbuf_put(b, "]", 1);
	if (ok && r->top_n > 0) {
		ok = gs_sbuf_puts(b, ",\"top_logprobs\":[");
		for (size_t i = 0; ok && i < r->n_tokens; i++) {
			bool first = true;
			ok = (i == 0 || gs_sbuf_put(b, ",", 1)) && gs_sbuf_put(b, "{", 1);
			for (size_t j = 0; ok && j < r->top_n; j++) {
				size_t k = i * r->top_n + j;
				if (!r->top_tokens[k])
					continue;
				ok = (first || gs_sbuf_put(b, ",", 1)) && gs_bio_put_str(b, r->top_tokens[k]) &&
				     gs_sbuf_put(b, ":", 1) && gs_bio_put_float(b, r->top_logprobs[k]);
				first = false;
			}
			ok = ok && gs_sbuf_put(b, "}", 1);
		}
		ok = ok && gs_sbuf_put(b, "]", 1);
	}
	return ok && gs_sbuf_put(b, "}", 1);
}

/* Appends the record (no '\n') to b. Fixed key order: that is what makes resumed and
 * uninterrupted runs byte-identical. */
static bool gs_bio_put_result(struct gs_sbuf *b, const struct gs_batch_result *r)
{
	if (r->error)
		return gs_bio_put_error(b, r->id, r->error, r->error_type);
	GS_ASSERT(r->finish >= 0 && r->finish < GS_BATCH_FINISH_COUNT);
	return gs_sbuf_puts(b, "{\"id\":") && gs_bio_put_str(b, r->id) && gs_sbuf_puts(b, ",\"text\":") &&
	       gs_bio_put_str(b, r->text) && gs_sbuf_puts(b, ",\"finish_reason\":\"") &&
	       gs_sbuf_puts(b, gs_bio_finish_name[r->finish]) &&
	       gs_sbuf_puts(b, "\",\"usage\":{\"prompt_tokens\":") && gs_bio_put_i64(b, r->prompt_tokens) &&
	       gs_sbuf_puts(b, ",\"completion_tokens\":") && gs_bio_put_i64(b, r->completion_tokens) &&
	       gs_sbuf_puts(b, ",\"total_tokens\":") &&
	       gs_bio_put_i64(b, r->prompt_tokens + r->completion_tokens) && gs_sbuf_put(b, "}", 1) &&
	       (!r->has_logprobs || gs_bio_put_logprobs(b, r)) && gs_sbuf_put(b, "}", 1);
}

enum gs_status gs_batch_result_json(const struct gs_batch_result *r, char **line, size_t *len)
{
	struct gs_sbuf b = { 0 };

	*line = NULL;
	if (len)
		*len = 0;
	if (!gs_bio_put_result(&b, r) || !gs_sbuf_reserve(&b, 0)) {
		gs_sbuf_free(&b);
		return gs_errorf(GS_ERR_NOMEM, "batch: out of memory rendering a result");
	}
	*line = b.p;
	if (len)
		*len = b.len;
	return GS_OK;
}

enum gs_bio_line_kind {
	GS_BIO_LINE_GOOD,    /* a batch record: its id is done                 */
	GS_BIO_LINE_BLANK,   /* whitespace only: kept, ignored                 */
	GS_BIO_LINE_TORN,    /* not JSON: a torn or zeroed tail, or corruption */
	GS_BIO_LINE_FOREIGN, /* JSON, but not one of our records               */
};

static enum gs_bio_line_kind gs_bio_classify(const char *p, size_t n, struct gs_bio_set *done,
					     int64_t line_no, bool *nomem)
{
	const char *end = NULL;
	const cJSON *id;
	cJSON *obj;
	size_t k = 0;
	enum gs_bio_line_kind kind = GS_BIO_LINE_FOREIGN;

	while (k < n && gs_bio_is_ws(p[k]))
		k++;
	if (k == n)
		return GS_BIO_LINE_BLANK;
	if (memchr(p, '\0', n))
		return GS_BIO_LINE_TORN;
	obj = cJSON_ParseWithLengthOpts(p, n, &end, false);
	if (!obj)
		return GS_BIO_LINE_TORN;
	for (; end < p + n; end++)
		if (!gs_bio_is_ws(*end)) {
			cJSON_Delete(obj);
			return GS_BIO_LINE_TORN;
		}
	id = cJSON_GetObjectItemCaseSensitive(obj, "id");
	if (cJSON_IsObject(obj) && cJSON_IsString(id) &&
	    (cJSON_GetObjectItemCaseSensitive(obj, "finish_reason") ||
	     cJSON_GetObjectItemCaseSensitive(obj, "error"))) {
		kind = GS_BIO_LINE_GOOD;
		if (!gs_bio_set_add(done, id->valuestring, line_no))
			*nomem = true;
	}
	cJSON_Delete(obj);
	return kind;
}

/* Reads the existing file, fills o->done and sets o->end to the end of the last line worth
 * keeping; cuts the torn tail off. */
static enum gs_status gs_bio_scan(struct gs_batch_out *o)
{
	struct gs_sbuf cur = { 0 };
	char *chunk;
	const size_t chunk_cap = 1u << 20;
	off_t off = 0, line_start = 0, keep_end = 0, size;
	int64_t line_no = 0, torn_line = 0;
	enum gs_status st = GS_OK;
	bool nomem = false;
	struct stat sb;

	if (fstat(o->fd, &sb) != 0)
		return gs_errorf(GS_ERR_IO, "batch output %s: stat: %s", o->path, strerror(errno));
	size = sb.st_size;
	chunk = malloc(chunk_cap);
	if (!chunk)
		return gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", o->path);
	while (off < size) {
		ssize_t got = pread(o->fd, chunk, chunk_cap, off);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			st = gs_errorf(GS_ERR_IO, "batch output %s: read: %s", o->path, strerror(errno));
			goto out_free_chunk;
		}
		if (got == 0)
			break; /* shrank under us; what we have is all there is */
		for (ssize_t i = 0; i < got;) {
			const char *nl = memchr(chunk + i, '\n', (size_t)(got - i));
			size_t take = nl ? (size_t)(nl - (chunk + i)) : (size_t)(got - i);

			if (cur.len + take > GS_BATCH_MAX_LINE_OUT) {
				/* Longer than we ever write: junk; keep counting bytes only. */
				cur.len = GS_BATCH_MAX_LINE_OUT + 1;
			} else if (!gs_sbuf_put(&cur, chunk + i, take)) {
				st = gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", o->path);
				goto out_free_chunk;
			}
			i += (ssize_t)take;
			if (!nl)
				break;
			i++; /* the '\n' */
			line_no++;
			enum gs_bio_line_kind kind =
				cur.len > GS_BATCH_MAX_LINE_OUT
					? GS_BIO_LINE_TORN
					: gs_bio_classify(cur.p, cur.len, &o->done, line_no, &nomem);
			off_t line_end = off + i;

			if (nomem) {
				st = gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", o->path);
				goto out_free_chunk;
			}
			if (kind == GS_BIO_LINE_FOREIGN) {
				st = gs_errorf(GS_ERR_FORMAT,
					       "batch output %s: line %" PRId64 " is JSON but not a batch result "
					       "(no string \"id\" with \"finish_reason\" or \"error\"); is --out "
					       "pointing at the wrong file? Left unchanged", o->path, line_no);
				goto out_free_chunk;
			}
			if (kind == GS_BIO_LINE_GOOD && torn_line) {
				st = gs_errorf(GS_ERR_FORMAT,
					       "batch output %s: line %" PRId64 " is not valid JSON but later lines "
					       "are; fix or delete it, then rerun. Left unchanged", o->path, torn_line);
				goto out_free_chunk;
			}
			if (kind == GS_BIO_LINE_TORN && !torn_line)
				torn_line = line_no;
			if (!torn_line)
				keep_end = line_end;
			line_start = line_end;
			gs_sbuf_reset(&cur);
		}
		off += got;
	}
	/* An unterminated tail is always torn: every record we write ends in '\n'. A foreign
	 * JSON object there still means "wrong file", so it is not cut. */
	if (off > line_start && cur.len <= GS_BATCH_MAX_LINE_OUT) {
		struct gs_bio_set scratch = { 0 };
		enum gs_bio_line_kind kind = gs_bio_classify(cur.p, cur.len, &scratch, line_no + 1, &nomem);
		gs_bio_set_free(&scratch);
		if (kind == GS_BIO_LINE_FOREIGN) {
			st = gs_errorf(GS_ERR_FORMAT,
				       "batch output %s: last line is JSON but not a batch result; is --out "
				       "pointing at the wrong file? Left unchanged", o->path);
			goto out_free_chunk;
		}
	}
	if (keep_end < off) {
		if (ftruncate(o->fd, keep_end) != 0) {
			st = gs_errorf(GS_ERR_IO, "batch output %s: cannot cut off the torn tail at byte %lld: %s",
				       o->path, (long long)keep_end, strerror(errno));
			goto out_free_chunk;
		}
		gs_log(GS_LOG_WARN, "batch output %s: removed %lld bytes of torn output after byte %lld "
		       "(an interrupted write); those requests run again", o->path,
		       (long long)(off - keep_end), (long long)keep_end);
	}
	o->end = keep_end;
out_free_chunk:
	gs_sbuf_free(&cur);
	free(chunk);
	return st;
}

enum gs_status gs_batch_out_open(const char *path, struct gs_batch_out **out)
{
	struct gs_batch_out *o;
	const char *env = getenv("GS_BATCH_FSYNC");
	enum gs_status st;

	*out = NULL;
	o = calloc(1, sizeof(*o));
	if (!o)
		return gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", path);
	o->fd = -1;
	o->line_max = GS_BATCH_MAX_LINE_OUT;
	o->fsync = env && strcmp(env, "1") == 0;
	o->path = strdup(path);
	if (!o->path) {
		st = gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", path);
		goto out_free_o;
	}
	o->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (o->fd < 0) {
		st = gs_errorf(GS_ERR_IO, "batch output %s: %s", path, strerror(errno));
		goto out_free_o;
	}
	/* Two writers (a requeued job while the old one still runs) would interleave lines. */
	if (flock(o->fd, LOCK_EX | LOCK_NB) != 0) {
		if (errno == EWOULDBLOCK) {
			st = gs_errorf(GS_ERR_IO, "batch output %s is in use by another process", path);
			goto out_free_o;
		}
		gs_log(GS_LOG_WARN, "batch output %s: cannot lock (%s); make sure only one job writes it",
		       path, strerror(errno));
	}
	st = gs_bio_scan(o);
	if (st != GS_OK)
		goto out_free_o;
	*out = o;
	return GS_OK;
out_free_o:
	gs_batch_out_close(o);
	return st;
}

bool gs_batch_out_done(const struct gs_batch_out *o, const char *id)
{
	return id && gs_bio_set_find(&o->done, id) != NULL;
}

size_t gs_batch_out_n_done(const struct gs_batch_out *o)
{
	return o->done.n;
}

void gs_batch_out_set_line_max(struct gs_batch_out *o, size_t max_bytes)
{
	GS_ASSERT(max_bytes >= 256 && max_bytes <= GS_BATCH_MAX_LINE_OUT);
	o->line_max = max_bytes;
}

enum gs_status gs_batch_out_write(struct gs_batch_out *o, const struct gs_batch_result *r)
{
	struct gs_sbuf *b = &o->line;
	ssize_t w;

	if (o->broken)
		return gs_errorf(GS_ERR_IO, "batch output %s: an earlier failed write left it unusable",
				 o->path);
	if (!r->id || !r->id[0])
		return gs_errorf(GS_ERR_INVALID_ARG, "batch output %s: a result without an id", o->path);
	if (gs_batch_out_done(o, r->id))
		return gs_errorf(GS_ERR_INVALID_ARG, "batch output %s: id \"%s\" was written already",
				 o->path, r->id);
	gs_sbuf_reset(b);
	if (!gs_bio_put_result(b, r) || !gs_sbuf_put(b, "\n", 1))
		return gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory for the result of %s",
				 o->path, r->id);
	if (b->len > o->line_max) {
		char msg[160];
		size_t big = b->len;

		snprintf(msg, sizeof(msg), "result too large: %zu bytes exceeds the %zu-byte line limit "
			 "(lower max_tokens or top_logprobs)", big, o->line_max);
		gs_log(GS_LOG_WARN, "batch output %s: id %s: %s", o->path, r->id, msg);
		gs_sbuf_reset(b);
		if (!gs_bio_put_error(b, r->id, msg, "server_error") || !gs_sbuf_put(b, "\n", 1))
			return gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", o->path);
	}

	/* One write(2) per line. Continuing a short write would make a second, separate append
	 * that a kill in between could tear; instead the partial bytes are removed below. */
	do
		w = write(o->fd, b->p, b->len);
	while (w < 0 && errno == EINTR);
	if (w < 0)
		return gs_errorf(GS_ERR_IO, "batch output %s: write: %s", o->path, strerror(errno));
	if ((size_t)w != b->len) {
		if (ftruncate(o->fd, o->end) != 0) {
			o->broken = true;
			return gs_errorf(GS_ERR_IO, "batch output %s: short write (%zd of %zu bytes) and the "
					 "partial line could not be removed (%s); a rerun will cut it off",
					 o->path, w, b->len, strerror(errno));
		}
		return gs_errorf(GS_ERR_IO, "batch output %s: short write (%zd of %zu bytes: disk full or "
				 "file size limit?); the partial line was removed", o->path, w, b->len);
	}
	o->end += (off_t)b->len;
	if (!gs_bio_set_add(&o->done, r->id, 0))
		return gs_errorf(GS_ERR_NOMEM, "batch output %s: out of memory", o->path);
	if (o->fsync && fdatasync(o->fd) != 0)
		return gs_errorf(GS_ERR_IO, "batch output %s: fdatasync: %s", o->path, strerror(errno));
	return GS_OK;
}

void gs_batch_out_close(struct gs_batch_out *o)
{
	if (!o)
		return;
	if (o->fd >= 0) {
		if (fdatasync(o->fd) != 0 && errno != EINVAL)
			gs_log(GS_LOG_WARN, "batch output %s: fdatasync: %s", o->path, strerror(errno));
		close(o->fd); /* drops the flock */
	}
	gs_bio_set_free(&o->done);
	gs_sbuf_free(&o->line);
	free(o->path);
	free(o);
}

/* ---- 3. progress ---------------------------------------------------------------------------- */

static double gs_bio_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* HH:MM:SS (hours grow past 99), or "--:--:--" for unknown/absurd. */
static void gs_bio_hms(double s, char *buf, size_t cap)
{
	if (!(s >= 0) || s > 3.6e8) {
		snprintf(buf, cap, "--:--:--");
		return;
	}
	unsigned long long t = (unsigned long long)(s + 0.5);
	snprintf(buf, cap, "%02llu:%02llu:%02llu", t / 3600, t / 60 % 60, t % 60);
}

static void gs_bio_progress_record(struct gs_batch_progress *p, size_t done, size_t total,
				   uint64_t tokens, double now)
{
	if (!p->started) {
		p->started = true;
		p->t0 = now;
		p->done0 = done;
		p->tokens0 = tokens;
	}
	p->done = done;
	p->total = total;
	p->tokens = tokens;
}

static double gs_bio_tok_rate(const struct gs_batch_progress *p, double elapsed)
{
	if (elapsed <= 0 || p->tokens < p->tokens0)
		return 0.0;
	return (double)(p->tokens - p->tokens0) / elapsed;
}

int gs_batch_progress_format(const struct gs_batch_progress *p, double now, char *buf, size_t cap)
{
	double elapsed = now - p->t0, eta = -1;
	double pct = p->total ? 100.0 * (double)p->done / (double)p->total : 100.0;
	size_t ran = p->done > p->done0 ? p->done - p->done0 : 0;
	char hms[32];

	if (ran > 0 && elapsed > 0)
		eta = (double)(p->total > p->done ? p->total - p->done : 0) * elapsed / (double)ran;
	gs_bio_hms(eta, hms, sizeof(hms));
	return snprintf(buf, cap, "batch: %zu/%zu done (%.1f%%), %.1f tok/s, ETA %s", p->done, p->total,
			pct, gs_bio_tok_rate(p, elapsed), hms);
}

static void gs_bio_progress_tty(struct gs_batch_progress *p, FILE *f)
{
	if (!p->tty_checked) {
		p->tty = isatty(fileno(f)) == 1;
		p->tty_checked = true;
	}
}

void gs_batch_progress_update_at(struct gs_batch_progress *p, size_t done, size_t total,
				 uint64_t gen_tokens, double now, FILE *f)
{
	char line[256];
	int len;

	gs_bio_progress_record(p, done, total, gen_tokens, now);
	if (!f || (p->printed && now - p->t_last < 1.0))
		return;
	gs_bio_progress_tty(p, f);
	len = gs_batch_progress_format(p, now, line, sizeof(line));
	if (len < 0)
		return;
	if ((size_t)len >= sizeof(line))
		len = (int)sizeof(line) - 1;
	if (p->tty) {
		/* pad with blanks over a longer previous line, stay on the line */
		int pad = p->last_len > (size_t)len ? (int)(p->last_len - (size_t)len) : 0;
		fprintf(f, "\r%s%*s", line, pad, "");
	} else {
		fprintf(f, "%s\n", line);
	}
	fflush(f);
	p->last_len = (size_t)len;
	p->t_last = now;
	p->printed = true;
}

void gs_batch_progress_update(struct gs_batch_progress *p, size_t done, size_t total,
			      uint64_t gen_tokens, FILE *f)
{
	gs_batch_progress_update_at(p, done, total, gen_tokens, gs_bio_now(), f);
}

int gs_batch_progress_summary(const struct gs_batch_progress *p, size_t n_errors, double now,
			      char *buf, size_t cap)
{
	double elapsed = p->started ? now - p->t0 : 0;
	char hms[32];

	gs_bio_hms(elapsed, hms, sizeof(hms));
	return snprintf(buf, cap,
			"batch: finished %zu/%zu (%zu this run, %zu error%s) in %s, %" PRIu64 " tokens, %.1f tok/s",
			p->done, p->total, p->done > p->done0 ? p->done - p->done0 : 0, n_errors,
			n_errors == 1 ? "" : "s", hms,
			p->tokens >= p->tokens0 ? p->tokens - p->tokens0 : 0, gs_bio_tok_rate(p, elapsed));
}

void gs_batch_progress_finish(struct gs_batch_progress *p, size_t n_errors, FILE *f)
{
	char line[256];
	double now = gs_bio_now();

	if (!f)
		return;
	gs_bio_progress_tty(p, f);
	gs_batch_progress_summary(p, n_errors, now, line, sizeof(line));
	fprintf(f, "%s%s\n", p->tty && p->printed ? "\n" : "", line);
	fflush(f);
}
