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
 * response's free callback for a stream.
 *
 * This file: the server (MHD daemon, routing, authorization, request bodies, replies, the
 * model, health and metrics routes). The OpenAI wire format (request parsing, answer JSON):
 * http_openai.c; the completion routes (whole and streamed answers): http_completions.c;
 * what they share: http_internal.h. */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_internal.h"
#include "gs_tls.h"
#include "gs_util.h"

#define GS_HTTP_MAX_CONNECTIONS  1024        /* when limits.max_http_connections is 0 */
#define GS_HTTP_IDLE_TIMEOUT_S   60          /* when limits.http_idle_timeout_s is 0 */
#define GS_HTTP_MAX_HEADER_BYTES (32u << 10) /* when limits.max_http_header_bytes is 0 */
#define GS_HTTP_LIMIT_WARN_MS    10000       /* "connection limit reached" at most this often */
#define GS_HTTP_DEFAULT_MAX_BODY (4u << 20)  /* when limits.max_body_bytes is 0 */
#define GS_HTTP_MAX_DISCARD      (64u << 20) /* body bytes past the limit read before closing */
#define GS_HTTP_OWNER            "gemmashard"

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

enum MHD_Result gs_http_reply_json(struct MHD_Connection *conn, struct gs_http_req *q, int status,
				   cJSON *root)
{
	char *body = cJSON_PrintUnformatted(root);

	cJSON_Delete(root);
	return gs_http_reply(conn, q, status, "application/json", body);
}

enum MHD_Result gs_http_error(struct MHD_Connection *conn, struct gs_http_req *q, int status,
			      const char *param, const char *code, const char *fmt, ...)
{
	const char *type = status == MHD_HTTP_UNAUTHORIZED ||
					   status == MHD_HTTP_FORBIDDEN ? gs_cerr_openai_type(GS_CERR_UNAUTHENTICATED) :
			   status >= 500			  ? gs_cerr_openai_type(GS_CERR_INTERNAL) :
								    gs_cerr_openai_type(GS_CERR_INVALID);
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return gs_http_reply(conn, q, status, "application/json", gs_http_error_json(type, param, code, msg));
}

enum MHD_Result gs_http_cerr_reply(struct MHD_Connection *conn, struct gs_http_req *q, enum gs_cerr e,
				   const char *param, const char *msg)
{
	return gs_http_reply(conn, q, gs_cerr_http_status(e), "application/json",
			     gs_http_error_json(gs_cerr_openai_type(e), param, gs_http_cerr_code(e), msg));
}

/* ---- routes ------------------------------------------------------------------------------- */

/* OpenAI's model object, plus vLLM's max_model_len, "capabilities": {"vision": bool} (takes
 * images), and the healthy engines with their matmul numerics (README "Several models"). */
static cJSON *gs_http_model_json(const struct gs_model_info *info)
{
	cJSON *m = cJSON_CreateObject(), *caps, *nums;

	cJSON_AddStringToObject(m, "id", info->name ? info->name : "");
	cJSON_AddStringToObject(m, "object", "model");
	cJSON_AddNumberToObject(m, "created", floor(info->created));
	cJSON_AddStringToObject(m, "owned_by", GS_HTTP_OWNER);
	cJSON_AddNumberToObject(m, "max_model_len", info->max_model_len);
	caps = cJSON_AddObjectToObject(m, "capabilities");
	cJSON_AddBoolToObject(caps, "vision", info->vision);
	cJSON_AddNumberToObject(m, "engines", info->engines);
	nums = cJSON_AddArrayToObject(m, "numerics");
	for (int i = 0; i < info->n_numerics; i++)
		cJSON_AddItemToArray(nums, cJSON_CreateString(info->numerics[i]));
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
	if (id) {
		const struct gs_coord_model *m;
		e = gs_coord_model_find(h->coord, id, &m, why, sizeof(why));
		if (e == GS_CERR_NONE)
			e = gs_coord_model_info(h->coord, id, &info);
		if (e != GS_CERR_NONE)
			return gs_http_cerr_reply(conn, q, e, "model", why);
		return gs_http_reply_json(conn, q, MHD_HTTP_OK, gs_http_model_json(&info));
	}
	root = cJSON_CreateObject();
	cJSON_AddStringToObject(root, "object", "list");
	cJSON *data = cJSON_AddArrayToObject(root, "data");
	for (int i = 0; i < gs_coord_n_models(h->coord); i++)
		if (gs_coord_model_info(h->coord, gs_coord_model_at(h->coord, i)->name, &info) == GS_CERR_NONE)
			cJSON_AddItemToArray(data, gs_http_model_json(&info));
	return gs_http_reply_json(conn, q, MHD_HTTP_OK, root);
}

static enum MHD_Result gs_http_health(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q)
{
	int n = gs_coord_healthy_engines(h->coord);
	cJSON *root = cJSON_CreateObject();

	cJSON_AddStringToObject(root, "status", n > 0 ? "ok" : "unavailable");
	/* served name -> healthy engines; before "engines", which scripts take as the last match */
	cJSON *per_model = cJSON_AddObjectToObject(root, "models");
	for (int i = 0; i < gs_coord_n_models(h->coord); i++) {
		struct gs_model_info info;
		const char *name = gs_coord_model_at(h->coord, i)->name;
		if (gs_coord_model_info(h->coord, name, &info) == GS_CERR_NONE)
			cJSON_AddNumberToObject(per_model, name, info.engines);
	}
	cJSON_AddNumberToObject(root, "engines", n > 0 ? n : 0);
	cJSON_AddStringToObject(root, "engine_link", gs_coord_engine_link_mode(h->coord));
	if (!strcmp(gs_coord_engine_link_mode(h->coord), "plaintext-insecure"))
		cJSON_AddStringToObject(root, "warning", "the engine link is plaintext and unauthenticated off loopback "
					"(--insecure-engine-link): prompts cross the network unencrypted and any host can "
					"register as an engine");
	return gs_http_reply_json(conn, q, n > 0 ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, root);
}

static enum MHD_Result gs_http_metrics(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q)
{
	char *text = gs_coord_metrics(h->coord);

	if (!text)
		return gs_http_error(conn, q, 500, NULL, NULL, "metrics are not available");
	return gs_http_reply(conn, q, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text);
}

/* The method for the access log: one of HTTP's own, else "OTHER" (never the client's text). */
static void gs_http_method_name(const char *method, char *out, size_t cap)
{
	static const char *const known[] = { "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
					     "CONNECT" };

	snprintf(out, cap, "OTHER");
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (strcmp(method, known[i]) == 0)
			snprintf(out, cap, "%s", known[i]);
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

/* With a client CA (mutual TLS): the client's certificate must verify, on every route. NULL
 * when it does; else the status (401 none, 403 not trusted) with the reason in why. */
static const char *gs_http_client_cert(struct MHD_Connection *conn, int *status, char *why, size_t cap)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);

	switch (gs_tls_verify_peer(ci ? ci->tls_session : NULL, why, cap)) {
	case GS_TLS_PEER_OK:
		return NULL;
	case GS_TLS_PEER_MISSING:
		*status = MHD_HTTP_UNAUTHORIZED;
		return "client_certificate_required";
	default:
		*status = MHD_HTTP_FORBIDDEN;
		return "client_certificate_rejected";
	}
}

/* First call of a request (headers in): client certificate, route, method, key, declared size. */
static enum MHD_Result gs_http_begin(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q,
				     const char *url, const char *method)
{
	bool post = q->route == GS_HTTP_ROUTE_CHAT || q->route == GS_HTTP_ROUTE_COMPLETIONS;
	const char *clen = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	const char *auth, *code;
	size_t declared = 0;
	char *end, why[300];
	int status;

	if (clen) {
		unsigned long long v;

		errno = 0;
		v = strtoull(clen, &end, 10);
		if (errno == 0 && end != clen)
			declared = v > SIZE_MAX ? SIZE_MAX : (size_t)v;
	}
	if (h->client_cert_required && (code = gs_http_client_cert(conn, &status, why, sizeof(why))))
		return gs_http_refuse(conn, q, declared, status, code, "%s", why);
	if (q->route == GS_HTTP_ROUTE_NONE)
		return gs_http_refuse(conn, q, declared, 404, "unknown_url", "unknown URL: %s %.200s", method, url);
	if (post ? strcmp(method, MHD_HTTP_METHOD_POST) != 0 :
		   strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return gs_http_refuse(conn, q, declared, 405, "method_not_allowed", "%.200s takes %s, not %s", url,
				      post ? "POST" : "GET", method);
	if (q->route != GS_HTTP_ROUTE_HEALTH && q->route != GS_HTTP_ROUTE_METRICS) {
		auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
		if (!gs_coord_authorized(h->coord, auth ? auth : "", q->key, sizeof(q->key)))
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
static void gs_http_drop_body(struct gs_http *h, struct gs_http_req *q)
{
	q->dropping = true;
	q->dropped = q->len;
	free(q->body);
	atomic_fetch_sub(&h->body_held, q->cap);
	q->body = NULL;
	q->len = q->cap = 0;
}

static enum MHD_Result gs_http_receive(struct gs_http *h, struct gs_http_req *q, const char *data, size_t n)
{
	if (!q->dropping && q->len + n > q->limit) {
		q->too_large = true;
		gs_http_drop_body(h, q);
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
		/* every connection's body counts against one budget: 1024 connections at the
		 * per-body limit must not pin 1024 x that much memory */
		if (atomic_fetch_add(&h->body_held, cap - q->cap) + (cap - q->cap) > h->body_budget) {
			atomic_fetch_sub(&h->body_held, cap - q->cap);
			q->busy = true;
			gs_http_drop_body(h, q);
			q->dropped += n;
			return MHD_YES;
		}
		p = realloc(q->body, cap);
		if (!p) {
			atomic_fetch_sub(&h->body_held, cap - q->cap);
			return MHD_NO;
		}
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
		q->t_start = gs_now_s();
		gs_http_method_name(method, q->method, sizeof(q->method));
		return gs_http_begin(h, conn, q, url, method);
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;

		*upload_data_size = 0;
		/* a body trickled in to hold the connection: the idle timeout alone would never fire */
		if (gs_now_s() - q->t_start > h->idle_timeout_s)
			return MHD_NO;
		return gs_http_receive(h, q, upload_data, n);
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
		if (q->busy)
			return gs_http_error(conn, q, 503, NULL, "server_busy",
					     "the server holds too many request bodies at once (limit %zu bytes in all, "
					     "--max-body-total); retry later", h->body_budget);
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
	static const char *const route_name[GS_HTTP_ROUTE_COUNT] = {
		"unknown", "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{id}", "/health",
		"/metrics",
	};
	_Static_assert(GS_HTTP_ROUTE_COUNT == 7, "route_name has one entry per route");
	struct gs_http *h = cls;
	struct gs_http_req *q = *con_cls;
	char status[16];

	if (!q)
		return;
	/* Scrapes and probes are not client requests. 499: the client left before an answer. */
	if (q->route != GS_HTTP_ROUTE_HEALTH && q->route != GS_HTTP_ROUTE_METRICS) {
		snprintf(status, sizeof(status), "%d", q->status ? q->status : 499);
		gs_coord_request_done(h->coord, &(struct gs_access){
			.api = GS_API_HTTP, .key = q->key, .user = q->user, .method = q->method,
			.route = route_name[q->route],
			.status = status, .request_id = q->req_id, .model = q->req_id ? q->model : NULL,
			.prompt_tokens = q->prompt_tokens,
			.completion_tokens = q->completion_tokens, .finish = q->finish,
			.latency_s = gs_now_s() - q->t_start });
	}
	free(q->body);
	atomic_fetch_sub(&h->body_held, q->cap);
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
	if (strstr(msg, "connection limit")) {
		/* MHD closes a connection over --max-http-connections as soon as it accepts it */
		long long now = (long long)(gs_now_s() * 1e3), last = atomic_load(&h->limit_warned_ms);

		if (now - last >= GS_HTTP_LIMIT_WARN_MS && atomic_compare_exchange_strong(&h->limit_warned_ms, &last, now))
			gs_log(GS_LOG_WARN, "http: %d connections open (--max-http-connections): new connections are "
			       "closed at once until one ends", h->max_connections);
	}
	gs_log(GS_LOG_DEBUG, "http: %s", msg);
}

/* ---- life cycle --------------------------------------------------------------------------- */

enum gs_status gs_http_start(struct gs_coord *c, const char *host, int port, const struct gs_tls *tls,
			     struct gs_http **out)
{
	struct MHD_OptionItem tls_opts[] = {
		{ MHD_OPTION_HTTPS_MEM_KEY, 0, tls ? tls->key_pem : NULL },
		{ MHD_OPTION_HTTPS_MEM_CERT, 0, tls ? tls->cert_pem : NULL },
		{ MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)GS_TLS_HTTP_PRIORITIES },
		/* MHD asks for a client certificate when it has a trust list; gs_http_begin requires it */
		{ tls && tls->client_ca_pem ? MHD_OPTION_HTTPS_MEM_TRUST : MHD_OPTION_END, 0,
		  tls ? tls->client_ca_pem : NULL },
		{ MHD_OPTION_END, 0, NULL },
	};
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE };
	struct addrinfo *ai = NULL;
	struct gs_http *h;
	char service[16];
	unsigned flags;
	const union MHD_DaemonInfo *di;
	const struct gs_coord_limits *lim = gs_coord_get_limits(c);
	/* transport limits (ARCHITECTURE.md §7): idle or stalled connections are closed after the
	 * timeout; past the connection limit MHD closes new connections at once; a request line
	 * and headers that do not fit the connection's memory get 431 before any handler runs */
	unsigned idle_timeout_s = lim->http_idle_timeout_s > 0 ? (unsigned)lim->http_idle_timeout_s : GS_HTTP_IDLE_TIMEOUT_S;
	size_t header_bytes = lim->max_http_header_bytes ? lim->max_http_header_bytes : GS_HTTP_MAX_HEADER_BYTES;
	int rc, err;

	*out = NULL;
	if (port < 0 || port > 65535)
		return gs_errorf(GS_ERR_INVALID_ARG, "HTTP port must be in 0..65535, got %d", port);
	if (!host || !host[0])
		host = "127.0.0.1";
	if (tls && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
		return gs_errorf(GS_ERR_UNSUPPORTED, "HTTPS: this libmicrohttpd was built without TLS (GnuTLS) support; "
				 "install one that has it, or serve without --tls-cert/--tls-key");
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
	h->max_connections = lim->max_http_connections > 0 ? lim->max_http_connections : GS_HTTP_MAX_CONNECTIONS;
	h->idle_timeout_s = idle_timeout_s;
	h->body_budget = lim->max_body_total ? lim->max_body_total : (size_t)256 << 20;
	h->client_cert_required = tls && tls->client_ca_pem;
	atomic_store(&h->starting, true);
	flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	if (tls)
		flags |= MHD_USE_TLS;
	errno = 0;
	h->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, gs_http_access, h,
				     MHD_OPTION_SOCK_ADDR, ai->ai_addr,
				     MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
				     MHD_OPTION_CONNECTION_LIMIT, (unsigned)h->max_connections,
				     MHD_OPTION_CONNECTION_TIMEOUT, idle_timeout_s,
				     MHD_OPTION_CONNECTION_MEMORY_LIMIT, header_bytes,
				     MHD_OPTION_NOTIFY_COMPLETED, gs_http_completed, h,
				     MHD_OPTION_EXTERNAL_LOGGER, gs_http_mhd_log, h,
				     MHD_OPTION_ARRAY, tls ? tls_opts : &tls_opts[4],
				     MHD_OPTION_END);
	err = errno;
	freeaddrinfo(ai);
	atomic_store(&h->starting, false);
	if (!h->daemon) {
		enum gs_status st = gs_errorf(GS_ERR_IO, "cannot serve %s on %s:%d: %s", tls ? "HTTPS" : "HTTP", host, port,
					      h->start_log[0] ? h->start_log : strerror(err ? err : EADDRINUSE));

		free(h);
		return st;
	}
	di = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
	h->port = di && di->port ? di->port : port;
	gs_log(GS_LOG_INFO, "%s (OpenAI API) listening on %s:%d%s", tls ? "HTTPS" : "HTTP", host, h->port,
	       h->client_cert_required ? ", client certificates required" : "");
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
