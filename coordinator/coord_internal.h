/* gemmashard coordinator internals: the private state shared by coord.c (life cycle, misc API),
 * request.c (request life cycle and output), router.c (routing, admission, submit),
 * engine_link.c (engine links and their threads) and metrics.c, and the functions those files
 * call in one another. Front ends see only gs_coord.h.
 *
 * Threads: one listener accepting engine leaders, one reader per engine link (authentication,
 * then hello, token events, heartbeats), one monitor (heartbeat timeouts and request
 * deadlines), and the front ends' own threads calling in. Locks, always taken in this order:
 *   c->mu      the engine list, each engine's request list and counters, metrics;
 *   r->mu      one request's output state (never held while calling notify or taking c->mu);
 *   e->wmu     writes on one engine link, and its fd and stream (which the reader thread
 *              closes; the monitor shuts the socket down from outside).
 * A request is referenced by its front end (until gs_creq_release) and by the engine it
 * runs on (until the engine reports its end or the engine is lost). */
#ifndef GS_COORD_INTERNAL_H
#define GS_COORD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.pb-c.h"
#include "gs_apikeys.h"
#include "gs_access_log.h"
#include "gs_coord.h"
#include "gs_net.h"
#include "gs_tokenizer.h"

#define GS_KV_BLOCK_TOKENS 16
#define GS_COORD_MAX_CP    64 /* context-parallel groups of one engine (the engine's GS_KV_MAX_CP) */
#define GS_LINK_MAX_FRAME  (16u << 20) /* largest engine-link frame (worker/gs_link.h says the same):
					  a Submit's images must fit, GS_LINK_IMAGE_ROOM of it */
#define GS_LINK_IMAGE_ROOM (GS_LINK_MAX_FRAME - (1u << 20)) /* the rest: prompt ids and params */

/* ---- state ------------------------------------------------------------------------------- */

struct engine;

/* A request's preprocessed images (gs_gen_spec.images), shared by its n choices: immutable,
 * freed with the last reference. */
struct gs_creq_images {
	atomic_int refs;
	int32_t    n;
	size_t     each;               /* S*S*3 bytes per image */
	uint8_t    px[];               /* [n * each] */
};

struct gs_creq {
	struct gs_coord *c;
	uint64_t         id;
	enum gs_api      api;
	const struct gs_coord_model *model; /* the model it runs (routes only to its engines) */
	atomic_int       refs;
	gs_creq_notify_fn notify;      /* r->mu; NULL once released */
	void            *user;
	int              notifying;    /* r->mu: notify calls in progress */

	/* immutable after submit */
	int32_t         *prompt;
	int32_t          n_prompt;
	int32_t          max_tokens;
	struct gs_sampling_params sp;
	char            *stop[GS_COORD_MAX_STOP];
	int              n_stop;
	size_t           stop_max_len;
	bool             logprobs;
	int              top_logprobs;
	int32_t          stop_ids[GS_COORD_MAX_STOP_IDS];
	int              n_stop_ids;
	bool             ignore_eos;
	char            *response_format; /* structured output text (gs_grammar.h), NULL: none */
	struct gs_creq_images *images; /* NULL: none; Submit.images */
	double           t_submit, deadline;

	/* c->mu */
	struct engine   *eng;          /* NULL: not on an engine */
	struct gs_creq  *next, *prev;  /* in eng's list, or c->all when on none */
	bool             engine_got_tokens;
	bool             cancel_sent;

	/* r->mu */
	pthread_mutex_t  mu;
	pthread_cond_t   cv;
	struct gs_detok  dt;
	char            *text;         /* all generated text so far (stop strings cut it) */
	size_t           len, cap, emitted;
	int32_t         *ids;          /* ids not yet taken */
	struct gs_tok_lp *lps;
	int32_t          n_ids, cap_ids;
	enum gs_cfinish  finish;       /* set once */
	bool             finish_taken;
	enum gs_cerr     err;
	char             err_msg[512];
	int32_t          completion_tokens;
	double           ttft;
	bool             dirty;        /* something new for take */
};

struct engine {
	struct gs_coord *c;
	int              fd;           /* e->wmu: the socket, for shutdown() from any thread; -1 closed */
	struct gs_stream *s;           /* e->wmu: the link once authenticated (NULL before, and after) */
	pthread_t        thread;
	pthread_mutex_t  wmu;
	char             id[128];
	char             peer[64];
	const struct gs_coord_model *model; /* the model it serves (from its hello); NULL before */
	bool             up;           /* registered and healthy */
	bool             gone;         /* reader finished; entry awaits reaping */
	int32_t          tp, cp;       /* its grid: C groups of T ranks (from its hello) */
	int32_t          max_context, kv_blocks_total, max_seqs, vocab; /* blocks: over all C groups */
	char             numerics[8];  /* matmul numerics from its hello: "fp32", "bf16", "cuda" */
	bool             vision;       /* from its hello: a vision tower is loaded */
	/* last heartbeat */
	double           last_hb;
	int32_t          hb_running, hb_waiting, hb_kv_free; /* free blocks: over all C groups */
	int32_t          hb_group_free[GS_COORD_MAX_CP], hb_group_used[GS_COORD_MAX_CP]; /* [cp] per group */
	int32_t          hb_sharded;   /* sequences running spread over more than one group */
	uint64_t         hb_steps, hb_tokens;
	double           hb_step_s;
	bool             prefix_cache;       /* from its hello */
	uint64_t         hb_prefix_hit, hb_prefix_query, hb_prefix_evictions; /* prompt tokens; blocks */
	/* coordinator's view */
	int32_t          inflight;
	int32_t          reserved_since_hb;  /* blocks of requests submitted since the heartbeat */
	struct gs_creq   head;               /* sentinel of the request list */
	struct engine   *next;
};

struct hist {
	uint64_t b[16];
	uint64_t count;
	double   sum;
};

struct status_count {
	enum gs_api api;
	char        status[32];
	uint64_t    n;
};

#define GS_MAX_KEY_COUNTS 4096 /* (key, API, status) series in /metrics */
struct key_count {
	enum gs_api api;
	char        key[GS_APIKEY_NAME_MAX + 1];
	char        status[32];
	uint64_t    n;
};

/* A served model's counters (c->mu). */
struct model_stats {
	uint64_t         requests;         /* client requests accepted (n choices count n) */
	uint64_t         generated_tokens;
};

struct gs_coord {
	struct gs_coord_limits limits;
	struct gs_coord_model *models; /* [n_models], immutable after create (strings malloc'd) */
	int              n_models;
	struct model_stats *mstats;    /* [n_models], c->mu */
	/* API keys (gs_apikeys.h): keys_lock guards the pointer, which a reload swaps */
	pthread_rwlock_t keys_lock;
	struct gs_apikeys *keys;       /* NULL: no key needed */
	char            *key_file;     /* --api-key-file; NULL: none */
	char            *env_key;      /* GEMMASHARD_API_KEY (wiped when freed); NULL: none */
	struct gs_alog  *alog;         /* the access log (gs_access_log.h) */
	bool             log_content;  /* --log-content */
	double           created;

	int              listen_fd;
	pthread_t        listener, monitor;
	atomic_bool      stopping;
	struct gs_cluster_tls *tls;    /* NULL: plaintext engine link */
	bool             link_insecure; /* plaintext off loopback (--insecure-engine-link) */
	atomic_int       handshaking;  /* connections not yet authenticated */

	pthread_mutex_t  mu;
	struct engine   *engines;
	int32_t          running;      /* client requests not yet released */
	uint64_t         next_id;
	uint64_t         engines_lost, generated_tokens, moved;
	uint64_t         auth_failures[GS_AUTH_COUNT]; /* engines refused, by reason */
	uint64_t         hello_refused; /* engines refused at their hello (unknown model, shape) */
	double           auth_logged[GS_AUTH_COUNT];   /* last log line per reason (rate limit) */
	uint64_t         auth_unlogged[GS_AUTH_COUNT]; /* refusals since that line */
	struct status_count counts[64];
	int              n_counts;
	struct key_count *key_counts;  /* [n_key_counts], requests by key name, API and status */
	int              n_key_counts, cap_key_counts;
	struct hist      ttft, tpot;
};

/* ---- request lists (c->mu) --------------------------------------------------------------- */

static inline void creq_list_init(struct gs_creq *h)
{
	h->next = h->prev = h;
}

static inline void creq_list_add(struct gs_creq *h, struct gs_creq *r)
{
	r->next = h->next;
	r->prev = h;
	h->next->prev = r;
	h->next = r;
}

static inline void creq_list_del(struct gs_creq *r)
{
	r->prev->next = r->next;
	r->next->prev = r->prev;
	r->next = r->prev = r;
}

/* ---- request.c --------------------------------------------------------------------------- */

/* Drops one reference; the last one frees r. */
void creq_unref(struct gs_creq *r);
/* Called with r->mu held: make the request finished (first caller wins, returns true). */
bool creq_finish_locked(struct gs_creq *r, enum gs_cfinish f, enum gs_cerr err, const char *msg);
/* Calls the front end's callback unless it released r. No lock held. */
void creq_notify(struct gs_creq *r);
/* One engine TokenEvent for r. Returns true when the engine is done with r (finish). Sets
 * *cancel when a stop string ended it here (the engine must be told). Takes r->mu. */
bool creq_apply_event(struct gs_creq *r, const Gemmashard__Engine__TokenEvent *ev, bool *cancel, int32_t *n_new);
/* Finish r here and tell its engine, if any, to stop it; tell: call notify if it changed. */
void creq_end(struct gs_creq *r, enum gs_cfinish f, enum gs_cerr err, const char *msg, bool tell);

/* ---- router.c ---------------------------------------------------------------------------- */

/* Called with c->mu held: take r off its engine (the engine's reference moves to the caller). */
void creq_detach_locked(struct gs_creq *r);
/* Submit r to some engine other than avoid; on failure finish it with the error. Takes and
 * drops c->mu. Returns the error class (NONE on success). */
enum gs_cerr coord_dispatch(struct gs_coord *c, struct gs_creq *r, const struct engine *avoid, char *why,
			    size_t cap);

/* ---- clients.c (API keys, access log) --------------------------------------------------- */

/* The keys (--api-key-file, GEMMASHARD_API_KEY) and the access log. On failure the caller
 * still calls coord_clients_free(). */
enum gs_status coord_clients_init(struct gs_coord *c, const struct gs_coord_config *cfg);
void coord_clients_free(struct gs_coord *c);
/* --log-content: r's prompt (as rendered) and output go to the access log. No lock held. */
void coord_log_content(struct gs_creq *r);

/* ---- metrics.c --------------------------------------------------------------------------- */

/* Counts a finished client request by API and status, and by key name when it used one. */
void coord_count_request(struct gs_coord *c, const struct gs_access *a);

/* ---- engine_link.c ----------------------------------------------------------------------- */

/* Tell e to cancel request id; on a write failure the link is shut down (its reader fails it). */
void engine_send_cancel(struct engine *e, uint64_t id);
/* Send r's Submit to e; GS_ERR_IO when the link is closed or the write fails. */
/* Submit r; n > 1: r and the n - 1 requests with the next ids, as one group (SamplingParams.n). */
enum gs_status engine_send_submit(struct engine *e, struct gs_creq *r, int n);
/* Joins and frees engines whose reader has finished (all: every engine, shutting links down). */
void coord_reap_engines(struct gs_coord *c, bool all);
/* Thread bodies (arg: the struct gs_coord). */
void *coord_listener_main(void *arg);
void *coord_monitor_main(void *arg);

#endif
