/* gemmashard coordinator, HTTP front end internals: the state shared by http.c (the server:
 * routing, authorization, request bodies, replies, the small routes), http_openai.c (the
 * OpenAI wire format: request parsing, answer JSON) and http_completions.c (the completion
 * routes: submit, then a whole answer or a stream of server-sent events). */
#ifndef GS_HTTP_INTERNAL_H
#define GS_HTTP_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "gs_apikeys.h"
#include "gs_chat_openai.h"
#include "gs_coord.h"
#include "gs_http.h"

struct gs_http {
	struct gs_coord   *coord;
	struct MHD_Daemon *daemon;
	int                port;         /* bound port */
	bool               client_cert_required; /* mutual TLS: every request's client certificate is verified */
	atomic_bool        stopping;     /* gs_http_stop() began: waits give up */
	atomic_bool        starting;     /* MHD messages go to start_log (bind errors) */
	int                max_connections;  /* MHD_OPTION_CONNECTION_LIMIT */
	unsigned           idle_timeout_s;   /* MHD_OPTION_CONNECTION_TIMEOUT; also the longest a request
						body may take to arrive */
	atomic_llong       limit_warned_ms;  /* when "connection limit reached" was last logged */
	size_t             body_budget;      /* limits.max_body_total */
	atomic_size_t      body_held;        /* bytes of request bodies allocated now, all requests */
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
	bool               busy;      /* its body would have passed the server's body budget (503) */
	size_t             dropped;   /* bytes dropped so far */
	int                early_status;    /* refused from its headers (404, 405, 401): the answer */
	const char        *early_code;      /* goes out once the body is in, so the connection */
	char               early_msg[320];  /* stays usable and the client sees no reset */
	int                status;    /* HTTP status queued; 0: none (the client left first) */
	/* for the access log and /metrics (gs_access) */
	double             t_start;   /* gs_now_s() when the headers were in */
	char               method[8]; /* "POST", "GET", ...; "OTHER" for anything else */
	char               key[GS_APIKEY_NAME_MAX + 1]; /* name of the API key used ("" none) */
	char               user[64];      /* the request's OpenAI "user" label ("" none) */
	uint64_t           req_id;    /* the submitted request's id; 0: none */
	const char        *model;     /* its model's served name (gs_coord_model); NULL: none */
	int32_t            prompt_tokens, completion_tokens;
	enum gs_cfinish    finish;    /* how the answer ended, as the client saw it */
};

/* A parsed completion request. Strings are borrowed from the cJSON tree, except contents. */
#define GS_HTTP_MAX_PROMPTS 8 /* prompts in one /v1/completions request */
#define GS_HTTP_MAX_CHOICES (GS_HTTP_MAX_PROMPTS * GS_COORD_MAX_N)

struct gs_http_gen {
	struct gs_gen_spec spec;
	bool               chat;          /* /v1/chat/completions (else /v1/completions) */
	bool               stream;
	bool               include_usage; /* stream_options.include_usage */
	struct gs_chat_openai chat_in;    /* owned: messages with parts, images still encoded */
	uint8_t           *images;        /* owned: spec.images, prepared for the model */
	/* /v1/completions with a list of prompts: one choice each (index i); spec holds prompt 0 */
	int                n_prompts;     /* 1..GS_HTTP_MAX_PROMPTS */
	int                n;             /* choices per prompt, 1..GS_COORD_MAX_N: choice index
					     prompt_index * n + i, seed + i (OpenAI's rule) */
	const char        *prompts[GS_HTTP_MAX_PROMPTS];     /* text, or NULL: ids below  */
	int32_t           *prompt_idv[GS_HTTP_MAX_PROMPTS];  /* owned token-id prompts    */
	int32_t            n_prompt_idv[GS_HTTP_MAX_PROMPTS];
	char               user[64];      /* OpenAI "user", sanitised: access-log label only */
	char              *response_format; /* owned: spec.response_format */
	enum gs_cerr       err;           /* why parsing failed */
	char               param[64];     /* the field it is about ("" : none) */
	char               why[512];
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

/* ---- http.c ------------------------------------------------------------------------------- */

/* Queues root (taken) as the JSON answer; q->status is set once queued. */
enum MHD_Result gs_http_reply_json(struct MHD_Connection *conn, struct gs_http_req *q, int status, cJSON *root);
/* An OpenAI error object with a formatted message; the type follows from the status. */
enum MHD_Result gs_http_error(struct MHD_Connection *conn, struct gs_http_req *q, int status, const char *param,
			      const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The error of a coordinator class: its HTTP status, OpenAI type and code. */
enum MHD_Result gs_http_cerr_reply(struct MHD_Connection *conn, struct gs_http_req *q, enum gs_cerr e,
				   const char *param, const char *msg);

/* ---- http_openai.c ------------------------------------------------------------------------ */

/* RFC 8259: a JSON text is UTF-8. */
bool gs_http_utf8_valid(const char *s, size_t n);
/* {"error": {"message", "type", "param", "code"}} (malloc'd; NULL when out of memory). */
char *gs_http_error_json(const char *type, const char *param, const char *code, const char *msg);
/* OpenAI's "code" for the classes clients branch on (NULL: none). */
const char *gs_http_cerr_code(enum gs_cerr e);
/* The request field a coordinator message is about ("" when none). */
void gs_http_param_of(const char *why, bool chat, char *param, size_t cap);
/* Fills g->spec from the request body; false with g->err/why/param set. */
bool gs_http_parse_gen(struct gs_http_gen *g, const cJSON *root);
/* A request body as received (len bytes; empty, not UTF-8 and not JSON are refused too), into
 * *root (the tree g->spec borrows from; NULL when the body is no JSON) and g->spec. false with
 * g->err/why/param set. Either way: gs_http_gen_free(g), then cJSON_Delete(*root). The server's
 * one way from bytes to a request; the fuzz tests drive it directly. */
bool gs_http_parse_body(struct gs_http_gen *g, const char *body, size_t len, cJSON **root);
void gs_http_gen_free(struct gs_http_gen *g);
/* /v1/completions: point g->spec at prompt i (0 .. n_prompts - 1). */
void gs_http_use_prompt(struct gs_http_gen *g, int i);
/* Logprobs in the shape of the API: init (false: out of memory), then add each output. */
bool gs_http_lps_init(struct gs_http_lps *a, bool chat);
void gs_http_lps_add(struct gs_http_lps *a, const struct gs_creq_out *o);
cJSON *gs_http_usage(int32_t prompt_tokens, int32_t completion_tokens);
/* {"id", "object", "created", "model", "choices": []}; *choices gets the array. */
cJSON *gs_http_envelope(const char *id, const char *object, long long created, const char *model, cJSON **choices);
/* One choice, chat or completions, whole (message) or streamed (delta); lps is taken. */
cJSON *gs_http_choice(bool chat, bool delta, bool with_role, const char *text, cJSON *lps, enum gs_cfinish finish);

/* ---- http_completions.c ------------------------------------------------------------------- */

/* POST /v1/chat/completions and /v1/completions, once the body is in. */
enum MHD_Result gs_http_generate(struct gs_http *h, struct MHD_Connection *conn, struct gs_http_req *q);

#endif
