/* gemmashard coordinator: the part every front end (gRPC, HTTP) shares (ARCHITECTURE.md §1, §6, §7).
 *
 * The coordinator owns the tokenizer and chat template, the engine links (engine leaders
 * connect to it and register with EngineHello), the router and the lifecycle of each client
 * request. Front ends turn their wire format into a struct gs_gen_spec, call
 * gs_coord_submit(), and then read the request's output as it arrives:
 *
 *   - pull style (HTTP, one thread per connection): gs_creq_wait() blocks until something is
 *     new, then gs_creq_take() moves it out;
 *   - push style (gRPC, one completion-queue thread): the notify callback given to
 *     gs_coord_submit() runs (on an engine-link thread, no coordinator lock held) each time
 *     something new is available; it must not block. The front end then calls
 *     gs_creq_take() from whichever thread suits it.
 *
 * Text is detokenised incrementally here (never half a UTF-8 character) and stop strings
 * are applied here: text that could be the start of a stop string is held back until it is
 * known not to be one, and a stop string ends the request (finish STOP; the engine is told
 * to cancel, which frees the KV in its next step).
 *
 * Thread safety: every function may be called from any thread. */
#ifndef GS_COORD_H
#define GS_COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gs_config.h"
#include "gs_params.h"
#include "gs_status.h"

#define GS_COORD_MAX_STOP         8
#define GS_COORD_MAX_STOP_BYTES   1024
#define GS_COORD_MAX_TOP_LOGPROBS 20
#define GS_COORD_MAX_STOP_IDS     8   /* stop_token_ids per request */
#define GS_COORD_MAX_IMAGES       64  /* --max-images-per-request at most this */

/* Where a request came from (metrics labels). */
enum gs_api { GS_API_GRPC, GS_API_HTTP, GS_API_COUNT };

/* Error classes; each maps to one gRPC status code and one HTTP status. */
enum gs_cerr {
	GS_CERR_NONE,            /* OK                     200 */
	GS_CERR_INVALID,         /* INVALID_ARGUMENT       400 invalid_request_error */
	GS_CERR_NOT_FOUND,       /* NOT_FOUND              404 (unknown model) */
	GS_CERR_TOO_LARGE,       /* RESOURCE_EXHAUSTED     400 (no engine could ever hold it) */
	GS_CERR_BUSY,            /* RESOURCE_EXHAUSTED     429 (concurrency limit) */
	GS_CERR_UNAVAILABLE,     /* UNAVAILABLE            503 (no engine / engine lost) */
	GS_CERR_DEADLINE,        /* DEADLINE_EXCEEDED      504 */
	GS_CERR_UNAUTHENTICATED, /* UNAUTHENTICATED        401 */
	GS_CERR_INTERNAL,        /* INTERNAL               500 */
	GS_CERR_COUNT
};
int gs_cerr_http_status(enum gs_cerr e);
int gs_cerr_grpc_code(enum gs_cerr e);          /* grpc_status_code value */
const char *gs_cerr_openai_type(enum gs_cerr e); /* "invalid_request_error", ... */
const char *gs_cerr_str(enum gs_cerr e);

enum gs_cfinish {
	GS_CFIN_NONE,      /* still running */
	GS_CFIN_STOP,      /* end of turn / eos / stop token / stop string */
	GS_CFIN_LENGTH,    /* max_tokens or the context */
	GS_CFIN_CANCELLED, /* the client cancelled (gs_creq_cancel) */
	GS_CFIN_ERROR,     /* see err / err_msg */
	GS_CFIN_COUNT
};
const char *gs_cfinish_openai(enum gs_cfinish f); /* "stop", "length", ... */

/* Limits (command-line flags of gemmashard-coordinator). */
struct gs_coord_limits {
	size_t  max_body_bytes;      /* HTTP body / gRPC message (413 / RESOURCE_EXHAUSTED) */
	size_t  max_body_total;      /* HTTP bodies buffered at once, all connections together
					(503 above; 0: 256 MiB) */
	int32_t max_prompt_tokens;   /* 400 / INVALID_ARGUMENT above this */
	int32_t max_tokens_limit;    /* largest max_tokens accepted (400 / INVALID_ARGUMENT) */
	int32_t default_max_tokens;  /* used when the request gives none (then capped by context) */
	int32_t max_concurrent;      /* requests in flight (429 / RESOURCE_EXHAUSTED above) */
	double  heartbeat_timeout_s; /* engine marked down after this long without a heartbeat */
	double  default_timeout_s;   /* a request without a deadline gets this one (no client
					waits forever) */
	/* front-end transport limits (ARCHITECTURE.md §7, "Security") */
	double  http_idle_timeout_s;   /* an HTTP connection silent this long is closed */
	int32_t max_http_connections;  /* more are closed as soon as accepted */
	size_t  max_http_header_bytes; /* per connection (request line + headers); more: 431 */
	int32_t max_grpc_streams;      /* concurrent calls per gRPC connection (HTTP/2 streams) */
	int32_t max_images;            /* images per request (--max-images-per-request); 0: 4 */
};

struct gs_chat_msg;

/* A client request in front-end terms. All pointers are borrowed for the call only. */
struct gs_gen_spec {
	const char *model;                     /* served name (gs_coord_model_find); NULL or "": the
						  only model, INVALID when several are served */
	const char *prompt;                    /* raw text (<bos> is prepended), or NULL ...   */
	const char *const *roles;              /* ... chat messages: roles[i], contents[i]     */
	const char *const *contents;
	int         n_messages;
	int32_t     max_tokens;                /* <= 0: unset (default) */
	struct gs_sampling_params sp;          /* start from gs_sampling_params_default() */
	bool        has_seed;                  /* false: a fresh random seed */
	const char *stop[GS_COORD_MAX_STOP];   /* stop strings, non-empty */
	int         n_stop;
	bool        logprobs;
	int         top_logprobs;              /* 0..20, needs logprobs */
	double      deadline;                  /* gs_now_s() clock; 0: limits.default_timeout_s */
	const int32_t *prompt_ids;             /* a token-id prompt, used as given (no <bos> */
	int32_t     n_prompt_ids;              /*   added); instead of prompt and messages    */
	int32_t     stop_ids[GS_COORD_MAX_STOP_IDS]; /* stop_token_ids: end the answer, like eos */
	int         n_stop_ids;
	bool        ignore_eos;                /* eos and <end_of_turn> do not end the answer */
	const char *user;                      /* OpenAI "user": a label for the access log only */
	const char *response_format;           /* structured output: response_format JSON text
						  (gs_grammar_from_request), NULL: none */
	const struct gs_chat_msg *messages;    /* chat messages with content parts (gs_chat.h),
						  instead of roles/contents; n_messages of them */
	const uint8_t *images;                 /* n_images preprocessed images, one per image part in
						  order: n_images * S*S*3 RGB bytes, S = the model's
						  image_size (gs_coord_prepare_images) */
	int32_t     n_images;
};

/* What gs_creq_take() hands over: everything new since the previous take. Free with
 * gs_creq_out_clear(). */
struct gs_tok_lp {
	int32_t id;
	float   logprob;
	int32_t n_top;
	int32_t top_ids[GS_COORD_MAX_TOP_LOGPROBS];
	float   top_logprobs[GS_COORD_MAX_TOP_LOGPROBS];
};
struct gs_creq_out {
	char            *text;        /* new text, NUL-terminated, complete UTF-8 ("" if none) */
	size_t           text_len;
	int32_t         *ids;         /* new token ids [n_ids] */
	struct gs_tok_lp *lps;        /* [n_ids] when the request asked for logprobs, else NULL */
	int32_t          n_ids;
	enum gs_cfinish  finish;      /* != NONE: this is the last take */
	enum gs_cerr     err;         /* finish == ERROR */
	char             err_msg[512];
	int32_t          prompt_tokens, completion_tokens;
	double           ttft_s;      /* submit -> first token (once known) */
	const struct gs_coord_model *model; /* the request's model (token texts: gs_coord_model_token_text) */
};
void gs_creq_out_clear(struct gs_creq_out *o);

struct gs_coord;
struct gs_creq;
struct gs_tokenizer;

/* ---- the model table (ARCHITECTURE.md §6 "Several models") ---------------------------------
 * One served model: --model DIR [--served-name NAME], repeatable. Lives as long as the
 * coordinator; front ends read it, never write it. Engines register for one model (their
 * EngineHello.model_id) and get only its requests. */
struct gs_coord_model {
	const char *name;                /* served name: what requests put in "model" */
	const char *dir;                 /* checkpoint folder */
	const char *architecture;        /* config.json's, e.g. "Gemma3ForConditionalGeneration" */
	int32_t     vocab_size;
	int32_t     max_position;        /* config's max_position_embeddings */
	int32_t     index;               /* 0.. in --model order */
	struct gs_vision_config vision;  /* present: takes images (image_size, mm_tokens_per_image, ids) */
	struct gs_tokenizer *tok;        /* its tokenizer (shared by models with the same file) */
	int32_t     end_of_turn;         /* <end_of_turn> id, -1 if none */
	size_t      detok_cap;           /* gs_detok_max_out(tok) */
};
/* The model a request names. NULL or "" is the served model only when exactly one is served.
 * Errors (message in why): GS_CERR_NOT_FOUND "The model `X` does not exist (served: a, b)",
 * GS_CERR_INVALID "model is required when 2 models are served (a, b)". */
enum gs_cerr gs_coord_model_find(struct gs_coord *c, const char *name, const struct gs_coord_model **out, char *why,
				 size_t cap);
/* GS_CERR_INVALID "model `X` does not take images" when n_images > 0 and m has no vision. */
enum gs_cerr gs_coord_model_images_ok(const struct gs_coord_model *m, int n_images, char *why, size_t cap);
int gs_coord_n_models(const struct gs_coord *c);
const struct gs_coord_model *gs_coord_model_at(const struct gs_coord *c, int i);
/* The model a request runs (never NULL). */
const struct gs_coord_model *gs_creq_model(const struct gs_creq *r);

typedef void (*gs_creq_notify_fn)(struct gs_creq *r, void *user);

/* Validates, renders the chat template, tokenises, routes, submits. On success *out is a
 * request the caller must gs_creq_release() once done with it (also after it finished). On
 * failure returns the class and writes the message to why (cap bytes); nothing is kept.
 * A request with no seed gets a random one. The chosen id is gs_creq_id(). */
enum gs_cerr gs_coord_submit(struct gs_coord *c, enum gs_api api, const struct gs_gen_spec *spec,
			     gs_creq_notify_fn notify, void *user, struct gs_creq **out, char *why,
			     size_t cap);
/* OpenAI's n: n (1..GS_COORD_MAX_N) choices of one spec, out[i] choice i, each a request of its
 * own (release each) whose seed is the spec's (or the random one) + i. They go to one engine in
 * one Submit, which prefills the prompt once (ARCHITECTURE.md §5); n requests in flight count
 * against --max-concurrent. All or nothing: on failure no out[i] is kept. */
#define GS_COORD_MAX_N 8
enum gs_cerr gs_coord_submit_n(struct gs_coord *c, enum gs_api api, const struct gs_gen_spec *spec, int n,
			       gs_creq_notify_fn notify, void *user, struct gs_creq **out, char *why, size_t cap);

/* Moves everything new into *o (which it overwrites). Returns true when o holds something
 * (text, ids or the finish); false when nothing new. Never blocks. */
bool gs_creq_take(struct gs_creq *r, struct gs_creq_out *o);
/* Blocks until gs_creq_take() would return true, or until timeout_s passes (returns false). */
bool gs_creq_wait(struct gs_creq *r, double timeout_s);
/* The client is gone or asked to stop: the engine frees its KV in its next step. The
 * request then finishes with CANCELLED (if it had not finished already). Does not call the
 * notify callback (the caller knows), so it may be called with the front end's locks held. */
void gs_creq_cancel(struct gs_creq *r);
/* The front end is done with r (after finish, or after gs_creq_cancel). After it returns the
 * notify callback is not running and will not run again. Must not be called from inside the
 * notify callback. */
void gs_creq_release(struct gs_creq *r);
uint64_t gs_creq_id(const struct gs_creq *r);
/* Token text for logprobs, of m's tokenizer (a token may be half a UTF-8 character: such bytes
 * come back as "\ufffd"-free hex escapes "<0xNN>"). Returns a malloc'd string. */
char *gs_coord_model_token_text(const struct gs_coord_model *m, int32_t id);

/* One finished client request as its front end saw it, for /metrics and the access log
 * (gs_access_log.h). Strings are the server's own, never text from the client. */
struct gs_access {
	enum gs_api     api;
	const char     *key;           /* name of the API key it used; NULL or "": none */
	const char     *user;          /* the request's OpenAI "user" label (printable, no spaces;
					  NULL or "": none) -- a label, never content */
	const char     *method;        /* "POST", "GET", ... ("OTHER" for anything else) */
	const char     *route;         /* "/v1/chat/completions", "/gemmashard.v1.Inference/Generate",
					  "unknown" */
	const char     *status;        /* what the client saw: HTTP status or gRPC code name */
	uint64_t        request_id;    /* gs_creq_id(); 0: never submitted */
	const char     *model;         /* gs_creq_model()->name; NULL: never submitted (with one model
					  served, a submitted request without it counts for that one) */
	int32_t         prompt_tokens, completion_tokens;
	enum gs_cfinish finish;        /* NONE: never submitted, or no finish reached the client */
	double          latency_s;     /* arrival to the final status (or the client leaving) */
	bool            probe;         /* a health check: counted, not written to the access log */
};
/* Front-end bookkeeping: one call per finished client request. Counts it for /metrics (by API
 * and status, and by key name when it used one) and writes its access-log line. */
void gs_coord_request_done(struct gs_coord *c, const struct gs_access *a);
/* Per streamed token: seconds between this token batch and the previous one, per token. */
void gs_coord_observe_tpot(struct gs_coord *c, double seconds_per_token, int32_t n_tokens);
void gs_coord_observe_ttft(struct gs_coord *c, double seconds);

/* Authorization: true when no key is configured (key_name gets ""), or when the header is
 * "Bearer <key>" for one of the keys (key_name gets its name, at most cap - 1 characters).
 * Compares against every key in constant time (gs_apikeys_match). */
bool gs_coord_authorized(struct gs_coord *c, const char *authorization, char *key_name, size_t cap);
/* SIGHUP: reads the API key file again and swaps the new keys in (requests in flight and
 * open connections are not affected); a bad file keeps the old keys and logs why. Also opens
 * the access log file again (log rotation). GS_OK, or the status of the failed reload. */
enum gs_status gs_coord_reload(struct gs_coord *c);

/* One image as a client sent it: the encoded file (PNG, JPEG, DICOM), borrowed. */
struct gs_coord_image_in {
	const void *data;
	size_t      n;
	const char *mime;              /* "image/png", "image/jpeg", "application/dicom"; NULL: sniff */
	bool        has_window;        /* DICOM: this VOI window instead of the file's */
	double      window_center, window_width;
};
/* Images of a request to the named model, decoded and resized to its image_size
 * (gs_image_prepare) before admission, so that every problem is a 400 / INVALID_ARGUMENT now:
 * model errors as gs_coord_model_find, an image to a text-only model, more than
 * limits.max_images, a bad image (the message names image i, counted from 0). *out: malloc'd
 * n * S*S*3 bytes (NULL when n == 0). */
enum gs_cerr gs_coord_prepare_images(struct gs_coord *c, const char *model, const struct gs_coord_image_in *in, int n,
				     uint8_t **out, char *why, size_t cap);

/* Tokenize with the named model's tokenizer (model errors as gs_coord_model_find). *ids is malloc'd. */
enum gs_cerr gs_coord_tokenize(struct gs_coord *c, const char *model, const char *text, bool add_bos,
			       int32_t **ids, size_t *n, char *why, size_t cap);

struct gs_model_info {
	const char *name;            /* served model name */
	const char *architecture;    /* "Gemma3ForCausalLM", ... */
	int32_t     vocab_size;
	int32_t     max_context;     /* the largest of the healthy engines' (0: none up) */
	int32_t     engines;         /* healthy engines */
	int32_t     tensor_parallel; /* T of the first healthy engine (0: none) */
	double      created;         /* unix time the coordinator started */
	const char *numerics[3];     /* matmul numerics of the healthy engines, each once: "fp32", "bf16", "cuda" */
	int32_t     n_numerics;
	bool        vision;          /* the model takes images */
	int32_t     image_size;      /* vision: images are image_size^2 RGB */
	int32_t     mm_tokens_per_image;
	int32_t     max_model_len;   /* max_context, or the checkpoint's max_position_embeddings when no
					engine is up */
};
/* Model errors as gs_coord_model_find (NULL or "": the only served model). */
enum gs_cerr gs_coord_model_info(struct gs_coord *c, const char *model, struct gs_model_info *info);
/* Engines up (for health checks). */
int gs_coord_healthy_engines(struct gs_coord *c);
/* How engines connect (for /health): "mtls" (certificates of the cluster CA), "plaintext"
 * (loopback only, unauthenticated) or "plaintext-insecure" (--insecure-engine-link). */
const char *gs_coord_engine_link_mode(const struct gs_coord *c);
/* Prometheus text exposition (malloc'd). */
char *gs_coord_metrics(struct gs_coord *c);
const struct gs_coord_limits *gs_coord_get_limits(const struct gs_coord *c);

/* ---- life cycle (main.c) ----------------------------------------------------------------- */
#define GS_COORD_MAX_MODELS 16 /* --model flags */
struct gs_coord_model_dir {
	const char *dir;              /* config.json + tokenizer.json */
	const char *served_name;      /* NULL: the model folder's name */
};
struct gs_coord_config {
	const char *model_dir;        /* one model: config.json + tokenizer.json ... */
	const char *served_name;      /* ... and its name (NULL: the model folder's name) */
	const struct gs_coord_model_dir *models; /* n_models > 0: these models (--model repeated) */
	int         n_models;         /*   instead of model_dir / served_name; names must differ */
	const char *engine_listen;    /* "127.0.0.1:50061" */
	const char *api_key;          /* GEMMASHARD_API_KEY (key name "env"); NULL: none */
	const char *api_key_file;     /* --api-key-file (gs_apikeys.h); NULL: none */
	const char *access_log;       /* --access-log FILE; NULL or "-": stderr */
	bool        log_content;      /* --log-content: prompts and outputs go to the access log */
	struct gs_coord_limits limits;
	/* The engine link (ARCHITECTURE.md §7 "Security"): mutual TLS with the cluster CA when all
	 * three are set (--cluster-ca/--cluster-cert/--cluster-key), else plaintext, which is
	 * refused off loopback unless insecure_engine_link (--insecure-engine-link). */
	const char *cluster_ca, *cluster_cert, *cluster_key;
	bool        insecure_engine_link;
};
enum gs_status gs_coord_create(const struct gs_coord_config *cfg, struct gs_coord **out);
/* Stops accepting engines, fails every request still running (UNAVAILABLE), frees. */
void gs_coord_free(struct gs_coord *c);

#endif
