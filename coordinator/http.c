/* gemmashard coordinator: the OpenAI-compatible HTTP API (gs_http.h) on libmicrohttpd.
 *
 * One thread per connection, so handlers block: a request's body is gathered (bounded by
 * limits.max_body_bytes), parsed with cJSON into a struct gs_gen_spec, submitted, and then
 * either collected whole (one JSON answer) or streamed as server-sent events by a content
 * reader that waits on the request in short slices and watches the socket, so a client that
 * goes away cancels its request within ~0.1 s. Every wait ends: the coordinator gives each
 * request a deadline.
 *
 * Ownership: a struct gs_http_req lives from the first call of the access handler to
 * MHD's request-completed callback (which frees it and counts the request for /metrics).
 * A submitted gs_creq is released exactly once: by the handler for a whole answer, by the
 * response's free callback for a stream. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "gs_coord.h"
#include "gs_http.h"
#include "gs_json.h"
#include "gs_sbuf.h"
#include "gs_util.h"

#define GS_HTTP_MAX_CONNECTIONS  1024
#define GS_HTTP_IDLE_TIMEOUT_S   60          /* an idle keep-alive connection is closed */
#define GS_HTTP_KEEPALIVE_S      15.0        /* a silent stream sends an SSE comment */
#define GS_HTTP_WAIT_SLICE_S     0.1         /* between two looks at the client's socket */
#define GS_HTTP_STREAM_BLOCK     (16 * 1024) /* most bytes handed to MHD per reader call */
#define GS_HTTP_DEFAULT_MAX_BODY (4u << 20)  /* when limits.max_body_bytes is 0 */
#define GS_HTTP_MAX_DISCARD      (64u << 20) /* body bytes past the limit read before closing */
#define GS_HTTP_OWNER            "gemmashard"

struct gs_http {
	struct gs_coord   *coord;
	struct MHD_Daemon *daemon;
	int                port;         /* bound port */
	atomic_bool        stopping;     /* gs_http_stop() began: waits give up */
	atomic_bool        starting;     /* MHD messages go to start_log (bind errors) */
	char               start_log[256];
};

enum gs_http_route {
	GS_HTTP_ROUTE_NONE,        /* 404 */
	GS_HTTP_ROUTE_CHAT,        /* POST /v1/chat/completions */
	GS_HTTP_ROUTE_COMPLETIONS, /* POST /v1/completions */
	GS_HTTP_ROUTE_MODELS,      /* GET  /v1/models */
	GS_HTTP_ROUTE_MODEL,       /* GET  /v1/models/{id} */
	GS_HTTP_ROUTE_HEALTH,      /* GET  /health (no key) */
	GS_HTTP_ROUTE_METRICS,     /* GET  /metrics (no key) */
	GS_HTTP_ROUTE_COUNT
};

/* One HTTP request (MHD's per-request pointer). */
struct gs_http_req {
	enum gs_http_route route;
	char              *body;      /* request body received so far [len], cap allocated */
	size_t             len, cap;
	size_t             limit;     /* limits.max_body_bytes */
	bool               dropping;  /* the body is read and dropped (too large, or refused) */
	bool               too_large; /* the body passed limit */
	size_t             dropped;   /* bytes dropped so far */
	int                early_status;    /* refused from its headers (404, 405, 401): the answer */
	const char        *early_code;      /* goes out once the body is in, so the connection */
	char               early_msg[320];  /* stays usable and the client sees no reset */
	int                status;    /* HTTP status queued; 0: none (the client left first) */
};

/* A parsed completion request. Strings are borrowed from the cJSON tree, except contents. */
struct gs_http_gen {
	struct gs_gen_spec spec;
	bool               chat;          /* /v1/chat/completions (else /v1/completions) */
	bool               stream;
	bool               include_usage; /* stream_options.include_usage */
	const char       **roles;         /* [spec.n_messages] */
	char             **contents;      /* [spec.n_messages] owned: text parts joined */
	enum gs_cerr       err;           /* why parsing failed */
	char               param[64];     /* the field it is about ("" : none) */
	char               why[512];
};

/* Output timings for /metrics. */
struct gs_http_timing {
	double t_submit;  /* gs_now_s() at submit */
	double t_last;    /* when the previous token batch arrived */
	bool   ttft_seen;
};

/* Logprobs being gathered, in the shape of the API (chat or completions). */
struct gs_http_lps {
	cJSON *obj;        /* chat: {"content": [...]}; completions: {"tokens", ...} */
	cJSON *content;    /* chat: entries {token, logprob, bytes, top_logprobs} */
	cJSON *tokens;     /* completions: parallel arrays */
	cJSON *token_lps;
	cJSON *tops;
	cJSON *offsets;
	size_t text_off;   /* completions: byte offset of the next token in the output */
};

/* A streamed answer: the state of the content reader (owned by the MHD response). */
struct gs_http_stream {
	struct gs_http          *h;
	struct MHD_Connection   *conn;
	struct gs_creq          *r;
	bool                     chat, include_usage, logprobs;
	char                     id[48];
	char                     model[256];
	long long                created;
	struct gs_sbuf       out;         /* SSE bytes not yet handed to MHD, from sent */
	size_t                   sent;
	bool                     role_sent;   /* chat: the delta.role chunk went out */
	bool                     settled;     /* r finished or was cancelled */
	bool                     done;        /* "data: [DONE]" is in out */
	size_t                   text_off;
	struct gs_http_timing    tm;
	int32_t                  prompt_tokens, completion_tokens;
};

/* ---- small helpers ------------------------------------------------------------------------ */

/* RFC 8259: a JSON text is UTF-8. Refusing anything else here keeps broken bytes out of the
 * tokenizer and out of the answers we echo back. */
static bool gs_http_utf8_valid(const char *s, size_t n)
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

/* The client closed its end (or the server is shutting the socket down). */
static bool gs_http_client_gone(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	struct pollfd pfd;

	if (!ci)
		return false;
	pfd = (struct pollfd){ .fd = ci->connect_fd, .events = POLLRDHUP };
	if (poll(&pfd, 1, 0) <= 0)
		return false;
	return (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

enum gs_http_wait {
	GS_HTTP_GOT,  /* *o holds the next output */
	GS_HTTP_GONE, /* the client went away or the server is stopping: r has been cancelled */
	GS_HTTP_IDLE  /* nothing for idle_s seconds */
};

/* Waits for the next output of r (into *o, which must be empty); idle_s <= 0: no IDLE. */
static enum gs_http_wait gs_http_next(struct gs_http *h, struct MHD_Connection *conn, struct gs_creq *r,
				      struct gs_creq_out *o, double idle_s)
{
	double t0 = gs_now_s();

	for (;;) {
		if (gs_creq_take(r, o))
			return GS_HTTP_GOT;
		if (atomic_load(&h->stopping) || gs_http_client_gone(conn)) {
			gs_creq_cancel(r);
			return GS_HTTP_GONE;
		}
		if (idle_s > 0 && gs_now_s() - t0 >= idle_s)
			return GS_HTTP_IDLE;
		gs_creq_wait(r, GS_HTTP_WAIT_SLICE_S);
	}
}

static void gs_http_out_reset(struct gs_creq_out *o)
{
	gs_creq_out_clear(o);
	memset(o, 0, sizeof(*o));
}

static void gs_http_observe(struct gs_coord *c, struct gs_http_timing *tm, const struct gs_creq_out *o)
{
	double now;

	if (o->n_ids <= 0)
		return;
	now = gs_now_s();
	if (!tm->ttft_seen) {
		tm->ttft_seen = true;
		gs_coord_observe_ttft(c, o->ttft_s > 0 ? o->ttft_s : now - tm->t_submit);
	} else {
		gs_coord_observe_tpot(c, (now - tm->t_last) / o->n_ids, o->n_ids);
	}
	tm->t_last = now;
}

/* ---- replies ------------------------------------------------------------------------------ */

static enum MHD_Result gs_http_reply(struct MHD_Connection *conn, struct gs_http_req *q, int status,
				     const char *content_type, char *body)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (!body)
		return MHD_NO;
	resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
					q->route == GS_HTTP_ROUTE_CHAT || q->route == GS_HTTP_ROUTE_COMPLETIONS ?
						"POST" : "GET, HEAD");
	if (status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
	ret = MHD_queue_response(conn, (unsigned)status, resp);
	MHD_destroy_response(resp);
	if (ret == MHD_YES)
		q->status = status;
	return ret;
}

static enum MHD_Result gs_http_reply_json(struct MHD_Connection *conn, struct gs_http_req *q, int status,
					  cJSON *root)
{
	char *body = cJSON_PrintUnformatted(root);

	cJSON_Delete(root);
	return gs_http_reply(conn, q, status, "application/json", body);
}

/* {"error": {"message", "type", "param", "code"}} as OpenAI clients parse it (malloc'd). */
static char *gs_http_error_json(const char *type, const char *param, const char *code, const char *msg)
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

static enum MHD_Result gs_http_error(struct MHD_Connection *conn, struct gs_http_req *q, int status,
				     const char *param, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));
static enum MHD_Result gs_http_error(struct MHD_Connection *conn, struct gs_http_req *q, int status,
				     const char *param, const char *code, const char *fmt, ...)
{
	const char *type = status == MHD_HTTP_UNAUTHORIZED	  ? gs_cerr_openai_type(GS_CERR_UNAUTHENTICATED) :
			   status >= 500			  ? gs_cerr_openai_type(GS_CERR_INTERNAL) :
								    gs_cerr_openai_type(GS_CERR_INVALID);
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return gs_http_reply(conn, q, status, "application/json", gs_http_error_json(type, param, code, msg));
}

/* OpenAI's "code" for the classes clients branch on. */
static const char *gs_http_cerr_code(enum gs_cerr e)
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

static enum MHD_Result gs_http_cerr_reply(struct MHD_Connection *conn, struct gs_http_req *q, enum gs_cerr e,
					  const char *param, const char *msg)
{
	return gs_http_reply(conn, q, gs_cerr_http_status(e), "application/json",
			     gs_http_error_json(gs_cerr_openai_type(e), param, gs_http_cerr_code(e), msg));
}

/* The request field a coordinator message is about, when it starts with one
 * ("top_p must be ...", "max_tokens 9000 is above ..."); "" when none. */
static void gs_http_param_of(const char *why, bool chat, char *param, size_t cap)
{
	static const char *const known[] = { "model", "messages", "prompt", "max_tokens", "temperature",
					     "top_p", "top_k", "min_p", "repetition_penalty", "seed",
					     "stop", "logprobs", "top_logprobs" };
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

/* Joins the "text" parts of a content array, each trimmed of ASCII white space as the Gemma
 * template's `item['text'] | trim` does. Other part types (images, audio) are refused. */
static bool gs_http_join_parts(struct gs_http_gen *g, int mi, const cJSON *parts, char **out)
{
	struct gs_sbuf b = { 0 };
	const cJSON *part;
	char param[64];
	int pi = 0;

	snprintf(param, sizeof(param), "messages[%d].content", mi);
	if (!gs_sbuf_put(&b, "", 0))
		goto out_nomem;
	cJSON_ArrayForEach(part, parts) {
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
		const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
		const char *s, *e;

		if (!cJSON_IsObject(part)) {
			gs_http_bad(g, param, "messages[%d].content[%d] must be an object, got %s", mi, pi,
				    gs_json_type(part));
			goto out_free_buf;
		}
		if (!cJSON_IsString(type)) {
			gs_http_bad(g, param, "messages[%d].content[%d].type must be a string, got %s", mi, pi,
				    gs_json_type(type));
			goto out_free_buf;
		}
		if (strcmp(type->valuestring, "text") != 0) {
			gs_http_bad(g, param,
				    "messages[%d].content[%d]: content parts of type \"%.64s\" are not supported "
				    "(only \"text\")", mi, pi, type->valuestring);
			goto out_free_buf;
		}
		if (!cJSON_IsString(text)) {
			gs_http_bad(g, param, "messages[%d].content[%d].text must be a string, got %s", mi, pi,
				    gs_json_type(text));
			goto out_free_buf;
		}
		s = text->valuestring;
		e = s + strlen(s);
		while (s < e && strchr(" \t\n\r\f\v", *s))
			s++;
		while (e > s && strchr(" \t\n\r\f\v", e[-1]))
			e--;
		if (!gs_sbuf_put(&b, s, (size_t)(e - s)))
			goto out_nomem;
		pi++;
	}
	*out = b.p;
	return true;

out_nomem:
	g->err = GS_CERR_INTERNAL;
	snprintf(g->why, sizeof(g->why), "out of memory");
	g->param[0] = '\0';
out_free_buf:
	free(b.p);
	return false;
}

static bool gs_http_parse_messages(struct gs_http_gen *g, const cJSON *root)
{
	const cJSON *msgs = gs_http_field(root, "messages"), *m;
	int n, i = 0;

	if (!cJSON_IsArray(msgs))
		return gs_http_bad(g, "messages", "messages must be an array of {\"role\", \"content\"} objects, got %s",
				   gs_json_type(msgs));
	n = cJSON_GetArraySize(msgs);
	if (n == 0)
		return gs_http_bad(g, "messages", "messages must not be empty");
	g->roles = calloc((size_t)n, sizeof(*g->roles));
	g->contents = calloc((size_t)n, sizeof(*g->contents));
	if (!g->roles || !g->contents) {
		g->err = GS_CERR_INTERNAL;
		snprintf(g->why, sizeof(g->why), "out of memory");
		return false;
	}
	g->spec.n_messages = n;
	cJSON_ArrayForEach(m, msgs) {
		const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
		char param[64];

		snprintf(param, sizeof(param), "messages[%d]", i);
		if (!cJSON_IsObject(m))
			return gs_http_bad(g, param, "messages[%d] must be an object, got %s", i, gs_json_type(m));
		snprintf(param, sizeof(param), "messages[%d].role", i);
		if (!cJSON_IsString(role))
			return gs_http_bad(g, param, "messages[%d].role must be a string, got %s", i,
					   gs_json_type(role));
		/* OpenAI's newer name for the system prompt. */
		g->roles[i] = strcmp(role->valuestring, "developer") == 0 ? "system" : role->valuestring;
		snprintf(param, sizeof(param), "messages[%d].content", i);
		if (cJSON_IsString(content)) {
			g->contents[i] = strdup(content->valuestring);
			if (!g->contents[i]) {
				g->err = GS_CERR_INTERNAL;
				snprintf(g->why, sizeof(g->why), "out of memory");
				return false;
			}
		} else if (cJSON_IsArray(content)) {
			if (!gs_http_join_parts(g, i, content, &g->contents[i]))
				return false;
		} else {
			return gs_http_bad(g, param,
					   "messages[%d].content must be a string or an array of text parts, got %s",
					   i, gs_json_type(content));
		}
		i++;
	}
	g->spec.roles = g->roles;
	g->spec.contents = (const char *const *)g->contents;
	return true;
}

static bool gs_http_parse_prompt(struct gs_http_gen *g, const cJSON *root)
{
	const cJSON *p = gs_http_field(root, "prompt");

	if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(cJSON_GetArrayItem(p, 0)))
		p = cJSON_GetArrayItem(p, 0);
	if (!cJSON_IsString(p))
		return gs_http_bad(g, "prompt", "prompt must be a string (or an array of exactly one string), got %s",
				   cJSON_IsArray(p) ? (cJSON_GetArraySize(p) == 1 ? "an array of one non-string" :
									   "an array of several items") :
						      gs_json_type(p));
	g->spec.prompt = p->valuestring;
	return true;
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

/* Fills g->spec from the request body; false with g->err/why/param set. */
static bool gs_http_parse_gen(struct gs_http_gen *g, const cJSON *root)
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
	if (g->chat ? !gs_http_parse_messages(g, root) : !gs_http_parse_prompt(g, root))
		return false;

	if (!gs_http_get_int(g, root, "max_tokens", 1, INT32_MAX, &iv, &given))
		return false;
	if (given)
		g->spec.max_tokens = (int32_t)iv;
	if (!gs_http_get_int(g, root, "max_completion_tokens", 1, INT32_MAX, &iv, &given))
		return false;
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
	if (given && iv != 1)
		return gs_http_bad(g, "n", "n must be 1 (one choice per request), got %" PRId64, iv);
	if (!gs_http_parse_stop(g, root) || !gs_http_parse_logprobs(g, root))
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

static void gs_http_gen_free(struct gs_http_gen *g)
{
	if (g->contents)
		for (int i = 0; i < g->spec.n_messages; i++)
			free(g->contents[i]);
	free(g->contents);
	free(g->roles);
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

static char *gs_http_token_text(struct gs_coord *c, int32_t id)
{
	char *t = gs_coord_token_text(c, id);

	return t ? t : strdup("");
}

/* {token, logprob, bytes} (chat). */
static cJSON *gs_http_chat_token(struct gs_coord *c, int32_t id, float logprob)
{
	cJSON *e = cJSON_CreateObject();
	char *t = gs_http_token_text(c, id);

	cJSON_AddStringToObject(e, "token", t ? t : "");
	cJSON_AddNumberToObject(e, "logprob", gs_http_logprob(logprob));
	cJSON_AddItemToObject(e, "bytes", gs_http_token_bytes(t ? t : ""));
	free(t);
	return e;
}

static bool gs_http_lps_init(struct gs_http_lps *a, bool chat)
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

static void gs_http_lps_add(struct gs_http_lps *a, struct gs_coord *c, const struct gs_creq_out *o)
{
	if (!o->lps)
		return;
	for (int32_t i = 0; i < o->n_ids; i++) {
		const struct gs_tok_lp *lp = &o->lps[i];

		if (a->content) {
			cJSON *e = gs_http_chat_token(c, lp->id, lp->logprob);
			cJSON *tops = cJSON_AddArrayToObject(e, "top_logprobs");

			for (int32_t k = 0; k < lp->n_top; k++)
				cJSON_AddItemToArray(tops, gs_http_chat_token(c, lp->top_ids[k], lp->top_logprobs[k]));
			cJSON_AddItemToArray(a->content, e);
		} else {
			char *t = gs_http_token_text(c, lp->id);
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
				char *tt = gs_http_token_text(c, lp->top_ids[k]);

				if (tt && !cJSON_HasObjectItem(top, tt))
					cJSON_AddNumberToObject(top, tt, gs_http_logprob(lp->top_logprobs[k]));
				free(tt);
			}
			cJSON_AddItemToArray(a->tops, top);
		}
	}
}

static cJSON *gs_http_usage(int32_t prompt_tokens, int32_t completion_tokens)
{
	cJSON *u = cJSON_CreateObject();

	cJSON_AddNumberToObject(u, "prompt_tokens", prompt_tokens);
	cJSON_AddNumberToObject(u, "completion_tokens", completion_tokens);
	cJSON_AddNumberToObject(u, "total_tokens", (double)prompt_tokens + completion_tokens);
	return u;
}

/* {"id", "object", "created", "model", "choices": []}; *choices gets the array. */
static cJSON *gs_http_envelope(const char *id, const char *object, long long created, const char *model,
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
static cJSON *gs_http_choice(bool chat, bool delta, bool with_role, const char *text, cJSON *lps,
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

/* ---- whole answers ------------------------------------------------------------------------ */

static enum MHD_Result gs_http_complete(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q,
					const struct gs_http_gen *g, struct gs_creq *r, const char *model,
					long long created)
{
	struct gs_http_timing tm = { .t_submit = gs_now_s() };
	struct gs_sbuf text = { 0 };
	struct gs_http_lps lps = { 0 };
	struct gs_creq_out o = { 0 };
	enum gs_cfinish finish = GS_CFIN_NONE;
	enum gs_cerr err = GS_CERR_INTERNAL;
	int32_t prompt_tokens = 0, completion_tokens = 0;
	cJSON *root, *choices;
	char id[48], err_msg[512] = "";
	bool ok = gs_sbuf_put(&text, "", 0);

	snprintf(id, sizeof(id), "%s-%" PRIu64, g->chat ? "chatcmpl" : "cmpl", gs_creq_id(r));
	if (ok && g->spec.logprobs)
		ok = gs_http_lps_init(&lps, g->chat);
	while (finish == GS_CFIN_NONE) {
		if (gs_http_next(h, conn, r, &o, 0) != GS_HTTP_GOT)
			goto out_client_gone;
		gs_http_observe(h->coord, &tm, &o);
		if (ok && o.text_len)
			ok = gs_sbuf_put(&text, o.text, o.text_len);
		if (lps.obj)
			gs_http_lps_add(&lps, h->coord, &o);
		prompt_tokens = o.prompt_tokens;
		completion_tokens = o.completion_tokens;
		finish = o.finish;
		err = o.err;
		snprintf(err_msg, sizeof(err_msg), "%s", o.err_msg);
		gs_http_out_reset(&o);
	}
	gs_creq_release(r);

	if (finish == GS_CFIN_ERROR || finish == GS_CFIN_CANCELLED || !ok) {
		cJSON_Delete(lps.obj);
		free(text.p);
		if (!ok)
			return gs_http_error(conn, q, 500, NULL, NULL, "out of memory building the answer");
		if (finish == GS_CFIN_CANCELLED)
			return gs_http_cerr_reply(conn, q, GS_CERR_UNAVAILABLE, NULL, "the request was cancelled");
		return gs_http_cerr_reply(conn, q, err, NULL, err_msg[0] ? err_msg : gs_cerr_str(err));
	}
	root = gs_http_envelope(id, g->chat ? "chat.completion" : "text_completion", created, model, &choices);
	cJSON_AddItemToArray(choices, gs_http_choice(g->chat, false, true, text.p, lps.obj, finish));
	cJSON_AddItemToObject(root, "usage", gs_http_usage(prompt_tokens, completion_tokens));
	free(text.p);
	return gs_http_reply_json(conn, q, MHD_HTTP_OK, root);

out_client_gone:
	gs_creq_release(r);
	cJSON_Delete(lps.obj);
	free(text.p);
	return MHD_NO;
}

/* ---- streamed answers --------------------------------------------------------------------- */

static bool gs_http_sse(struct gs_http_stream *s, cJSON *root)
{
	char *json = cJSON_PrintUnformatted(root);
	bool ok = json && gs_sbuf_put(&s->out, "data: ", 6) && gs_sbuf_put(&s->out, json, strlen(json)) &&
		  gs_sbuf_put(&s->out, "\n\n", 2);

	free(json);
	cJSON_Delete(root);
	return ok;
}

static cJSON *gs_http_chunk(struct gs_http_stream *s, cJSON *choice)
{
	cJSON *choices, *root = gs_http_envelope(s->id, s->chat ? "chat.completion.chunk" : "text_completion",
						  s->created, s->model, &choices);

	if (choice)
		cJSON_AddItemToArray(choices, choice);
	if (s->include_usage)
		cJSON_AddNullToObject(root, "usage");
	return root;
}

/* Turns one output of the request into SSE events in s->out. false: out of memory. */
static bool gs_http_stream_out(struct gs_http_stream *s, const struct gs_creq_out *o)
{
	struct gs_coord *c = s->h->coord;
	bool ok = true;

	gs_http_observe(c, &s->tm, o);
	s->prompt_tokens = o->prompt_tokens;
	s->completion_tokens = o->completion_tokens;
	if (s->chat && !s->role_sent) {
		s->role_sent = true;
		ok = gs_http_sse(s, gs_http_chunk(s, gs_http_choice(true, true, true, "", NULL, GS_CFIN_NONE)));
	}
	if (ok && (o->text_len > 0 || (s->logprobs && o->n_ids > 0))) {
		struct gs_http_lps lps = { 0 };

		if (s->logprobs && o->lps && gs_http_lps_init(&lps, s->chat)) {
			lps.text_off = s->text_off;
			gs_http_lps_add(&lps, c, o);
			s->text_off = lps.text_off;
		}
		ok = gs_http_sse(s, gs_http_chunk(s, gs_http_choice(s->chat, true, false, o->text, lps.obj,
								      GS_CFIN_NONE)));
	}
	if (o->finish == GS_CFIN_NONE || !ok)
		return ok;

	s->settled = true;
	if (o->finish == GS_CFIN_ERROR || o->finish == GS_CFIN_CANCELLED) {
		enum gs_cerr e = o->finish == GS_CFIN_ERROR ? o->err : GS_CERR_UNAVAILABLE;
		const char *msg = o->finish == GS_CFIN_ERROR ? (o->err_msg[0] ? o->err_msg : gs_cerr_str(e)) :
							       "the request was cancelled";
		char *json = gs_http_error_json(gs_cerr_openai_type(e), NULL, gs_http_cerr_code(e), msg);

		ok = json && gs_sbuf_put(&s->out, "data: ", 6) && gs_sbuf_put(&s->out, json, strlen(json)) &&
		     gs_sbuf_put(&s->out, "\n\n", 2);
		free(json);
	} else {
		ok = gs_http_sse(s, gs_http_chunk(s, gs_http_choice(s->chat, true, false, s->chat ? NULL : "", NULL,
								      o->finish)));
		if (ok && s->include_usage) {
			cJSON *root = gs_http_chunk(s, NULL);

			cJSON_ReplaceItemInObject(root, "usage", gs_http_usage(s->prompt_tokens, s->completion_tokens));
			ok = gs_http_sse(s, root);
		}
	}
	s->done = true;
	return ok && gs_sbuf_put(&s->out, "data: [DONE]\n\n", 14);
}

/* MHD content reader: hands out buffered events, else blocks (in slices) for the next output. */
static ssize_t gs_http_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct gs_http_stream *s = cls;
	struct gs_creq_out o = { 0 };

	for (;;) {
		if (s->sent < s->out.len) {
			size_t n = s->out.len - s->sent < max ? s->out.len - s->sent : max;

			memcpy(buf, s->out.p + s->sent, n);
			s->sent += n;
			if (s->sent == s->out.len)
				s->sent = 0, gs_sbuf_reset(&s->out);
			return (ssize_t)n;
		}
		if (s->done)
			return MHD_CONTENT_READER_END_OF_STREAM;
		switch (gs_http_next(s->h, s->conn, s->r, &o, GS_HTTP_KEEPALIVE_S)) {
		case GS_HTTP_GONE:
			s->settled = true;
			return MHD_CONTENT_READER_END_WITH_ERROR;
		case GS_HTTP_IDLE:
			/* An SSE comment: clients skip it; MHD sees traffic and keeps the connection. */
			if (!gs_sbuf_put(&s->out, ": keep-alive\n\n", 14))
				return MHD_CONTENT_READER_END_WITH_ERROR;
			continue;
		case GS_HTTP_GOT:
			break;
		}
		if (!gs_http_stream_out(s, &o)) {
			gs_http_out_reset(&o);
			return MHD_CONTENT_READER_END_WITH_ERROR; /* out of memory: the free cancels */
		}
		gs_http_out_reset(&o);
	}
}

/* MHD response free: the stream is over (or never started); the request goes. */
static void gs_http_stream_free(void *cls)
{
	struct gs_http_stream *s = cls;

	if (!s->settled)
		gs_creq_cancel(s->r);
	gs_creq_release(s->r);
	gs_sbuf_free(&s->out);
	free(s);
}

/* Waits for the request's first output before answering, so that a request that fails at
 * once (engine lost, deadline) still gets its proper HTTP status; then streams. */
static enum MHD_Result gs_http_stream(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q,
				      const struct gs_http_gen *g, struct gs_creq *r, const char *model,
				      long long created)
{
	struct gs_http_stream *s = calloc(1, sizeof(*s));
	struct gs_creq_out o = { 0 };
	struct MHD_Response *resp;
	enum MHD_Result ret;

	if (!s) {
		gs_creq_cancel(r);
		gs_creq_release(r);
		return gs_http_error(conn, q, 500, NULL, NULL, "out of memory");
	}
	*s = (struct gs_http_stream){ .h = h, .conn = conn, .r = r, .chat = g->chat,
				      .include_usage = g->include_usage, .logprobs = g->spec.logprobs,
				      .created = created, .tm = { .t_submit = gs_now_s() } };
	snprintf(s->id, sizeof(s->id), "%s-%" PRIu64, g->chat ? "chatcmpl" : "cmpl", gs_creq_id(r));
	snprintf(s->model, sizeof(s->model), "%s", model);

	if (gs_http_next(h, conn, r, &o, 0) != GS_HTTP_GOT) {
		s->settled = true;
		gs_http_stream_free(s);
		return MHD_NO;
	}
	if (o.finish == GS_CFIN_ERROR && o.n_ids == 0 && o.text_len == 0) {
		char msg[512];
		enum gs_cerr e = o.err;

		snprintf(msg, sizeof(msg), "%s", o.err_msg[0] ? o.err_msg : gs_cerr_str(e));
		gs_http_out_reset(&o);
		s->settled = true;
		gs_http_stream_free(s);
		return gs_http_cerr_reply(conn, q, e, NULL, msg);
	}
	if (!gs_http_stream_out(s, &o)) {
		gs_http_out_reset(&o);
		gs_http_stream_free(s);
		return gs_http_error(conn, q, 500, NULL, NULL, "out of memory");
	}
	gs_http_out_reset(&o);

	resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, GS_HTTP_STREAM_BLOCK, gs_http_stream_read, s,
						 gs_http_stream_free);
	if (!resp) {
		gs_http_stream_free(s);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	MHD_add_response_header(resp, "X-Accel-Buffering", "no");
	ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp); /* frees s now if queueing failed, else when the stream ends */
	if (ret == MHD_YES)
		q->status = MHD_HTTP_OK;
	return ret;
}

/* ---- routes ------------------------------------------------------------------------------- */

static enum MHD_Result gs_http_generate(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q)
{
	struct gs_http_gen g = { .chat = q->route == GS_HTTP_ROUTE_CHAT };
	struct gs_model_info info;
	struct gs_creq *r = NULL;
	const char *end = NULL;
	long long created = (long long)time(NULL);
	char model[256], why[512] = "", param[64];
	enum MHD_Result ret;
	enum gs_cerr e;
	cJSON *root;

	if (q->len == 0)
		return gs_http_error(conn, q, 400, NULL, NULL, "the request body is empty (expected a JSON object)");
	if (!gs_http_utf8_valid(q->body, q->len))
		return gs_http_error(conn, q, 400, NULL, NULL, "the request body is not valid UTF-8");
	root = cJSON_ParseWithLengthOpts(q->body, q->len, &end, false);
	if (!root)
		return gs_http_error(conn, q, 400, NULL, NULL, "invalid JSON in the request body (at byte %zu of %zu)",
				     end && end >= q->body ? (size_t)(end - q->body) : (size_t)0, q->len);
	if (!gs_http_parse_gen(&g, root)) {
		ret = gs_http_cerr_reply(conn, q, g.err, g.param, g.why);
		goto out_free_root;
	}
	e = gs_coord_model_info(h->coord, g.spec.model, &info);
	if (e != GS_CERR_NONE) {
		if (e == GS_CERR_NOT_FOUND)
			snprintf(why, sizeof(why), "the model '%.200s' does not exist", g.spec.model);
		else
			snprintf(why, sizeof(why), "%s", gs_cerr_str(e));
		ret = gs_http_cerr_reply(conn, q, e, "model", why);
		goto out_free_root;
	}
	snprintf(model, sizeof(model), "%s", info.name ? info.name : "");

	e = gs_coord_submit(h->coord, GS_API_HTTP, &g.spec, NULL, NULL, &r, why, sizeof(why));
	if (e != GS_CERR_NONE) {
		gs_http_param_of(why, g.chat, param, sizeof(param));
		ret = gs_http_cerr_reply(conn, q, e, param, why[0] ? why : gs_cerr_str(e));
		goto out_free_root;
	}
	/* The spec's strings were borrowed for the submit only. */
	cJSON_Delete(root);
	root = NULL;
	ret = g.stream ? gs_http_stream(h, conn, q, &g, r, model, created) :
			 gs_http_complete(h, conn, q, &g, r, model, created);

out_free_root:
	gs_http_gen_free(&g);
	cJSON_Delete(root);
	return ret;
}

static cJSON *gs_http_model_json(const struct gs_model_info *info)
{
	cJSON *m = cJSON_CreateObject();

	cJSON_AddStringToObject(m, "id", info->name ? info->name : "");
	cJSON_AddStringToObject(m, "object", "model");
	cJSON_AddNumberToObject(m, "created", floor(info->created));
	cJSON_AddStringToObject(m, "owned_by", GS_HTTP_OWNER);
	return m;
}

/* id NULL: the list. */
static enum MHD_Result gs_http_models(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q,
				      const char *id)
{
	struct gs_model_info info;
	enum gs_cerr e;
	cJSON *root;
	char why[300];

	if (id && !id[0])
		return gs_http_error(conn, q, 404, "model", "model_not_found", "no model id given after /v1/models/");
	e = gs_coord_model_info(h->coord, id, &info);
	if (e != GS_CERR_NONE) {
		snprintf(why, sizeof(why), e == GS_CERR_NOT_FOUND ? "the model '%.200s' does not exist" : "%s",
			 e == GS_CERR_NOT_FOUND ? id : gs_cerr_str(e));
		return gs_http_cerr_reply(conn, q, e, "model", why);
	}
	if (id)
		return gs_http_reply_json(conn, q, MHD_HTTP_OK, gs_http_model_json(&info));
	root = cJSON_CreateObject();
	cJSON_AddStringToObject(root, "object", "list");
	cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "data"), gs_http_model_json(&info));
	return gs_http_reply_json(conn, q, MHD_HTTP_OK, root);
}

static enum MHD_Result gs_http_health(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q)
{
	int n = gs_coord_healthy_engines(h->coord);
	cJSON *root = cJSON_CreateObject();

	cJSON_AddStringToObject(root, "status", n > 0 ? "ok" : "unavailable");
	cJSON_AddNumberToObject(root, "engines", n > 0 ? n : 0);
	return gs_http_reply_json(conn, q, n > 0 ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, root);
}

static enum MHD_Result gs_http_metrics(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q)
{
	char *text = gs_coord_metrics(h->coord);

	if (!text)
		return gs_http_error(conn, q, 500, NULL, NULL, "metrics are not available");
	return gs_http_reply(conn, q, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text);
}

static enum gs_http_route gs_http_route_of(const char *url)
{
	if (strcmp(url, "/v1/chat/completions") == 0)
		return GS_HTTP_ROUTE_CHAT;
	if (strcmp(url, "/v1/completions") == 0)
		return GS_HTTP_ROUTE_COMPLETIONS;
	if (strcmp(url, "/v1/models") == 0)
		return GS_HTTP_ROUTE_MODELS;
	if (strncmp(url, "/v1/models/", 11) == 0)
		return GS_HTTP_ROUTE_MODEL;
	if (strcmp(url, "/health") == 0)
		return GS_HTTP_ROUTE_HEALTH;
	if (strcmp(url, "/metrics") == 0)
		return GS_HTTP_ROUTE_METRICS;
	return GS_HTTP_ROUTE_NONE;
}

/* A refusal decided from the headers (404, 405, 401). It goes out once the body is in
 * (dropped), so the connection stays usable and the client sees no reset; at once when the
 * declared body is larger than the limit (MHD then closes without reading it). */
static enum MHD_Result gs_http_refuse(struct MHD_Connection *conn, struct gs_http_req *q, size_t declared,
				      int status, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));
static enum MHD_Result gs_http_refuse(struct MHD_Connection *conn, struct gs_http_req *q, size_t declared,
				      int status, const char *code, const char *fmt, ...)
{
	va_list ap;

	q->early_status = status;
	q->early_code = code;
	va_start(ap, fmt);
	vsnprintf(q->early_msg, sizeof(q->early_msg), fmt, ap);
	va_end(ap);
	q->dropping = true;
	if (declared > q->limit)
		return gs_http_error(conn, q, status, NULL, code, "%s", q->early_msg);
	return MHD_YES;
}

/* First call of a request (headers in): route, method, key, declared size. */
static enum MHD_Result gs_http_begin(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q,
				     const char *url, const char *method)
{
	bool post = q->route == GS_HTTP_ROUTE_CHAT || q->route == GS_HTTP_ROUTE_COMPLETIONS;
	const char *clen = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	const char *auth;
	size_t declared = 0;
	char *end;

	if (clen) {
		unsigned long long v;

		errno = 0;
		v = strtoull(clen, &end, 10);
		if (errno == 0 && end != clen)
			declared = v > SIZE_MAX ? SIZE_MAX : (size_t)v;
	}
	if (q->route == GS_HTTP_ROUTE_NONE)
		return gs_http_refuse(conn, q, declared, 404, "unknown_url", "unknown URL: %s %.200s", method, url);
	if (post ? strcmp(method, MHD_HTTP_METHOD_POST) != 0 :
		   strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return gs_http_refuse(conn, q, declared, 405, "method_not_allowed", "%.200s takes %s, not %s", url,
				      post ? "POST" : "GET", method);
	if (q->route != GS_HTTP_ROUTE_HEALTH && q->route != GS_HTTP_ROUTE_METRICS) {
		auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
		if (!gs_coord_authorized(h->coord, auth ? auth : ""))
			return gs_http_refuse(conn, q, declared, 401, "invalid_api_key", "%s",
					      auth ? "invalid API key" :
						     "missing API key (send the header 'Authorization: Bearer <key>')");
	}
	if (declared > q->limit)
		return gs_http_error(conn, q, 413, NULL, "request_too_large",
				     "the request body (%zu bytes) is larger than the limit of %zu bytes", declared,
				     q->limit);
	return MHD_YES;
}

/* A piece of the body: kept while under the limit, else counted and dropped (the 413 goes
 * out once the body is in, since MHD cannot answer in the middle of an upload). */
static enum MHD_Result gs_http_receive(struct gs_http_req *q, const char *data, size_t n)
{
	if (!q->dropping && q->len + n > q->limit) {
		q->too_large = q->dropping = true;
		q->dropped = q->len;
		free(q->body);
		q->body = NULL;
		q->len = q->cap = 0;
	}
	if (q->dropping) {
		q->dropped += n;
		return q->dropped > q->limit + GS_HTTP_MAX_DISCARD ? MHD_NO : MHD_YES;
	}
	if (q->len + n > q->cap) {
		size_t cap = q->cap ? q->cap : 4096;
		char *p;

		while (cap < q->len + n)
			cap *= 2;
		if (cap > q->limit)
			cap = q->limit;
		p = realloc(q->body, cap);
		if (!p)
			return MHD_NO;
		q->body = p;
		q->cap = cap;
	}
	memcpy(q->body + q->len, data, n);
	q->len += n;
	return MHD_YES;
}

static enum MHD_Result gs_http_access(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
				      const char *version, const char *upload_data, size_t *upload_data_size,
				      void **con_cls)
{
	struct gs_http *h = cls;
	struct gs_http_req *q = *con_cls;
	const struct gs_coord_limits *lim;

	if (!q) {
		q = calloc(1, sizeof(*q));
		if (!q)
			return MHD_NO;
		*con_cls = q;
		lim = gs_coord_get_limits(h->coord);
		q->limit = lim && lim->max_body_bytes ? lim->max_body_bytes : GS_HTTP_DEFAULT_MAX_BODY;
		q->route = gs_http_route_of(url);
		return gs_http_begin(h, conn, q, url, method);
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;

		*upload_data_size = 0;
		return gs_http_receive(q, upload_data, n);
	}
	if (q->early_status)
		return gs_http_error(conn, q, q->early_status, NULL, q->early_code, "%s", q->early_msg);

	switch (q->route) {
	case GS_HTTP_ROUTE_CHAT:
	case GS_HTTP_ROUTE_COMPLETIONS:
		if (q->too_large)
			return gs_http_error(conn, q, 413, NULL, "request_too_large",
					     "the request body (%zu bytes) is larger than the limit of %zu bytes",
					     q->dropped, q->limit);
		return gs_http_generate(h, conn, q);
	case GS_HTTP_ROUTE_MODELS:
		return gs_http_models(h, conn, q, NULL);
	case GS_HTTP_ROUTE_MODEL:
		return gs_http_models(h, conn, q, url + 11);
	case GS_HTTP_ROUTE_HEALTH:
		return gs_http_health(h, conn, q);
	case GS_HTTP_ROUTE_METRICS:
		return gs_http_metrics(h, conn, q);
	default:
		return MHD_NO; /* GS_HTTP_ROUTE_NONE has its early_status */
	}
}

/* MHD: the request is over (answered, or the connection closed). */
static void gs_http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			      enum MHD_RequestTerminationCode toe)
{
	struct gs_http *h = cls;
	struct gs_http_req *q = *con_cls;
	char status[16];

	if (!q)
		return;
	/* Scrapes and probes are not client requests. 499: the client left before an answer. */
	if (q->route != GS_HTTP_ROUTE_HEALTH && q->route != GS_HTTP_ROUTE_METRICS) {
		snprintf(status, sizeof(status), "%d", q->status ? q->status : 499);
		gs_coord_count_request(h->coord, GS_API_HTTP, status);
	}
	free(q->body);
	free(q);
	*con_cls = NULL;
}

static void gs_http_mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct gs_http *h = cls;
	char msg[256];
	size_t n;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == '.'))
		msg[--n] = '\0';
	if (atomic_load(&h->starting))
		snprintf(h->start_log, sizeof(h->start_log), "%s", msg);
	gs_log(GS_LOG_DEBUG, "http: %s", msg);
}

/* ---- life cycle --------------------------------------------------------------------------- */

enum gs_status gs_http_start(struct gs_coord *c, const char *host, int port, struct gs_http **out)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
	struct addrinfo *ai = NULL;
	struct gs_http *h;
	char service[16];
	unsigned flags;
	const union MHD_DaemonInfo *di;
	int rc, err;

	*out = NULL;
	if (port < 0 || port > 65535)
		return gs_errorf(GS_ERR_INVALID_ARG, "HTTP port must be in 0..65535, got %d", port);
	if (!host || !host[0])
		host = "127.0.0.1";
	snprintf(service, sizeof(service), "%d", port);
	rc = getaddrinfo(host, service, &hints, &ai);
	if (rc != 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "HTTP listen address '%s': %s", host, gai_strerror(rc));
	h = calloc(1, sizeof(*h));
	if (!h) {
		freeaddrinfo(ai);
		return gs_errorf(GS_ERR_NOMEM, "HTTP server: out of memory");
	}
	h->coord = c;
	atomic_store(&h->starting, true);
	flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	errno = 0;
	h->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, gs_http_access, h,
				     MHD_OPTION_SOCK_ADDR, ai->ai_addr,
				     MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
				     MHD_OPTION_CONNECTION_LIMIT, (unsigned)GS_HTTP_MAX_CONNECTIONS,
				     MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)GS_HTTP_IDLE_TIMEOUT_S,
				     MHD_OPTION_NOTIFY_COMPLETED, gs_http_completed, h,
				     MHD_OPTION_EXTERNAL_LOGGER, gs_http_mhd_log, h,
				     MHD_OPTION_END);
	err = errno;
	freeaddrinfo(ai);
	atomic_store(&h->starting, false);
	if (!h->daemon) {
		enum gs_status st = gs_errorf(GS_ERR_IO, "cannot serve HTTP on %s:%d: %s", host, port,
					      h->start_log[0] ? h->start_log : strerror(err ? err : EADDRINUSE));

		free(h);
		return st;
	}
	di = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
	h->port = di && di->port ? di->port : port;
	gs_log(GS_LOG_INFO, "HTTP (OpenAI API) listening on %s:%d", host, h->port);
	*out = h;
	return GS_OK;
}

int gs_http_port(const struct gs_http *h)
{
	return h ? h->port : 0;
}

void gs_http_stop(struct gs_http *h)
{
	if (!h)
		return;
	atomic_store(&h->stopping, true);
	MHD_stop_daemon(h->daemon); /* shuts every socket down; handlers notice within a slice */
	free(h);
}
