/* gemmashard coordinator core: engine links, router, request life cycle, metrics
 * (gs_coord.h; DESIGN.md §1, §6, §7).
 *
 * Threads: one listener accepting engine leaders, one reader per engine link (hello, token
 * events, heartbeats), one monitor (heartbeat timeouts and request deadlines), and the
 * front ends' own threads calling in. Locks, always taken in this order:
 *   c->mu      the engine list, each engine's request list and counters, metrics;
 *   r->mu      one request's output state (never held while calling notify or taking c->mu);
 *   e->wmu     writes on one engine link.
 * A request is referenced by its front end (until gs_creq_release) and by the engine it
 * runs on (until the engine reports its end or the engine is lost). */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine.pb-c.h"
#include "gs_chat.h"
#include "gs_config.h"
#include "gs_sbuf.h"
#include "gs_coord.h"
#include "gs_frame.h"
#include "gs_tokenizer.h"
#include "gs_util.h"

#define GS_KV_BLOCK_TOKENS 16
#define GS_LINK_MAX_FRAME  (16u << 20)
#define GS_HELLO_TIMEOUT_MS 5000

/* ---- error classes ---------------------------------------------------------------------- */

int gs_cerr_http_status(enum gs_cerr e)
{
	static const int map[GS_CERR_COUNT] = { 200, 400, 404, 400, 429, 503, 504, 401, 500 };
	return e < GS_CERR_COUNT ? map[e] : 500;
}

int gs_cerr_grpc_code(enum gs_cerr e)
{
	/* grpc_status_code: OK 0, INVALID_ARGUMENT 3, DEADLINE_EXCEEDED 4, NOT_FOUND 5,
	 * RESOURCE_EXHAUSTED 8, INTERNAL 13, UNAVAILABLE 14, UNAUTHENTICATED 16. */
	static const int map[GS_CERR_COUNT] = { 0, 3, 5, 8, 8, 14, 4, 16, 13 };
	return e < GS_CERR_COUNT ? map[e] : 13;
}

const char *gs_cerr_openai_type(enum gs_cerr e)
{
	switch (e) {
	case GS_CERR_INVALID:
	case GS_CERR_NOT_FOUND:
	case GS_CERR_TOO_LARGE:
		return "invalid_request_error";
	case GS_CERR_BUSY:
		return "rate_limit_error";
	case GS_CERR_UNAUTHENTICATED:
		return "authentication_error";
	case GS_CERR_UNAVAILABLE:
		return "service_unavailable";
	case GS_CERR_DEADLINE:
		return "timeout";
	default:
		return "server_error";
	}
}

const char *gs_cerr_str(enum gs_cerr e)
{
	static const char *const s[GS_CERR_COUNT] = { "OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED",
						      "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED",
						      "UNAUTHENTICATED", "INTERNAL" };
	return e < GS_CERR_COUNT ? s[e] : "INTERNAL";
}

const char *gs_cfinish_openai(enum gs_cfinish f)
{
	switch (f) {
	case GS_CFIN_STOP:
		return "stop";
	case GS_CFIN_LENGTH:
		return "length";
	case GS_CFIN_CANCELLED:
		return "cancelled";
	case GS_CFIN_ERROR:
		return "error";
	default:
		return NULL;
	}
}

/* ---- state ------------------------------------------------------------------------------- */

struct engine;

struct gs_creq {
	struct gs_coord *c;
	uint64_t         id;
	enum gs_api      api;
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
	int              fd;
	pthread_t        thread;
	pthread_mutex_t  wmu;
	char             id[128];
	char             peer[64];
	bool             up;           /* registered and healthy */
	bool             gone;         /* reader finished; entry awaits reaping */
	int32_t          tp, max_context, kv_blocks_total, max_seqs, vocab;
	/* last heartbeat */
	double           last_hb;
	int32_t          hb_running, hb_waiting, hb_kv_free;
	uint64_t         hb_steps, hb_tokens;
	double           hb_step_s;
	/* coordinator's view */
	int32_t          inflight;
	int32_t          reserved_since_hb;  /* blocks of requests submitted since the heartbeat */
	struct gs_creq   head;               /* sentinel of the request list */
	struct engine   *next;
};

#define GS_N_TTFT_BUCKETS 14
#define GS_N_TPOT_BUCKETS 14
static const double ttft_buckets[GS_N_TTFT_BUCKETS] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
							 0.25,  0.5,    1,     2.5,  5,     10,  30 };
static const double tpot_buckets[GS_N_TPOT_BUCKETS] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
							 0.075,  0.1,   0.25,   0.5,   1,    2.5,   5 };

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

struct gs_coord {
	struct gs_coord_limits limits;
	char            *served_name;
	char            *api_key;
	char             architecture[64];
	int32_t          vocab;
	struct gs_tokenizer *tok;
	int32_t          end_of_turn;
	size_t           detok_cap;
	double           created;

	int              listen_fd;
	pthread_t        listener, monitor;
	atomic_bool      stopping;

	pthread_mutex_t  mu;
	struct engine   *engines;
	int32_t          running;      /* client requests not yet released */
	uint64_t         next_id;
	uint64_t         engines_lost, generated_tokens, moved;
	struct status_count counts[64];
	int              n_counts;
	struct hist      ttft, tpot;
};

/* ---- small helpers ----------------------------------------------------------------------- */

static void list_init(struct gs_creq *h)
{
	h->next = h->prev = h;
}

static void list_add(struct gs_creq *h, struct gs_creq *r)
{
	r->next = h->next;
	r->prev = h;
	h->next->prev = r;
	h->next = r;
}

static void list_del(struct gs_creq *r)
{
	r->prev->next = r->next;
	r->next->prev = r->prev;
	r->next = r->prev = r;
}

static int32_t blocks_for(int32_t positions)
{
	return (positions + GS_KV_BLOCK_TOKENS - 1) / GS_KV_BLOCK_TOKENS;
}

static void creq_unref(struct gs_creq *r)
{
	if (atomic_fetch_sub(&r->refs, 1) != 1)
		return;
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	for (int i = 0; i < r->n_stop; i++)
		free(r->stop[i]);
	free(r->prompt);
	free(r->text);
	free(r->ids);
	free(r->lps);
	free(r);
}

static void wake(struct gs_creq *r)
{
	pthread_cond_broadcast(&r->cv);
}

/* Called with r->mu held: make the request finished (first caller wins). */
static bool finish_locked(struct gs_creq *r, enum gs_cfinish f, enum gs_cerr err, const char *msg)
{
	if (r->finish != GS_CFIN_NONE)
		return false;
	r->finish = f;
	r->err = err;
	if (msg)
		snprintf(r->err_msg, sizeof(r->err_msg), "%s", msg);
	r->dirty = true;
	wake(r);
	return true;
}

/* Calls the front end's callback unless it released r; release waits for calls in flight. */
static void notify(struct gs_creq *r)
{
	pthread_mutex_lock(&r->mu);
	gs_creq_notify_fn fn = r->notify;
	void *user = r->user;
	if (fn)
		r->notifying++;
	pthread_mutex_unlock(&r->mu);
	if (!fn)
		return;
	fn(r, user);
	pthread_mutex_lock(&r->mu);
	if (--r->notifying == 0)
		pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

/* ---- engine link writes ------------------------------------------------------------------ */

static enum gs_status engine_send(struct engine *e, const Gemmashard__Engine__EngineMessage *m)
{
	pthread_mutex_lock(&e->wmu);
	enum gs_status st = e->fd >= 0 ? gs_engine_msg_send(e->fd, m) : GS_ERR_IO;
	pthread_mutex_unlock(&e->wmu);
	return st;
}

static void engine_send_cancel(struct engine *e, uint64_t id)
{
	Gemmashard__Engine__Cancel cm = GEMMASHARD__ENGINE__CANCEL__INIT;
	Gemmashard__Engine__EngineMessage m = GEMMASHARD__ENGINE__ENGINE_MESSAGE__INIT;
	cm.request_id = id;
	m.body_case = GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_CANCEL;
	m.cancel = &cm;
	if (engine_send(e, &m) != GS_OK) {
		gs_log(GS_LOG_WARN, "coordinator: cancel %" PRIu64 " to engine %s: %s", id, e->id, gs_last_error());
		gs_clear_error();
		shutdown(e->fd, SHUT_RDWR); /* the reader notices and fails the link */
	}
}

static enum gs_status engine_send_submit(struct engine *e, struct gs_creq *r)
{
	Gemmashard__Engine__SamplingParams sp = GEMMASHARD__ENGINE__SAMPLING_PARAMS__INIT;
	Gemmashard__Engine__Submit sub = GEMMASHARD__ENGINE__SUBMIT__INIT;
	Gemmashard__Engine__EngineMessage m = GEMMASHARD__ENGINE__ENGINE_MESSAGE__INIT;
	int32_t stop_id = r->c->end_of_turn;

	sp.temperature = r->sp.temperature;
	sp.top_k = r->sp.top_k;
	sp.top_p = r->sp.top_p;
	sp.min_p = r->sp.min_p;
	sp.repetition_penalty = r->sp.repetition_penalty;
	sp.seed = r->sp.seed;
	sp.max_tokens = r->max_tokens;
	if (stop_id >= 0) {
		sp.n_stop_ids = 1;
		sp.stop_ids = &stop_id;
	}
	sp.top_logprobs = r->logprobs ? r->top_logprobs : 0;
	sp.logprobs = r->logprobs;
	sub.request_id = r->id;
	sub.n_prompt = (size_t)r->n_prompt;
	sub.prompt = r->prompt;
	sub.params = &sp;
	m.body_case = GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_SUBMIT;
	m.submit = &sub;
	return engine_send(e, &m);
}

/* ---- routing ----------------------------------------------------------------------------- */

/* Called with c->mu held. The least-loaded healthy engine that could hold the request, or
 * NULL with *why_err set: UNAVAILABLE (no engine up) or TOO_LARGE (none could ever). */
static struct engine *route_locked(struct gs_coord *c, const struct gs_creq *r, const struct engine *avoid,
				   enum gs_cerr *why_err, int32_t *best_ctx)
{
	struct engine *best = NULL;
	int32_t need = blocks_for(r->n_prompt + r->max_tokens);
	bool any_up = false;

	*best_ctx = 0;
	for (struct engine *e = c->engines; e; e = e->next) {
		if (!e->up || e == avoid)
			continue;
		any_up = true;
		if (e->max_context > *best_ctx)
			*best_ctx = e->max_context;
		if (r->n_prompt + r->max_tokens > e->max_context || need > e->kv_blocks_total)
			continue;
		if (!best) {
			best = e;
			continue;
		}
		bool fits_e = e->hb_kv_free - e->reserved_since_hb >= need;
		bool fits_b = best->hb_kv_free - best->reserved_since_hb >= need;
		if (fits_e != fits_b) {
			if (fits_e)
				best = e;
			continue;
		}
		if (e->inflight < best->inflight ||
		    (e->inflight == best->inflight &&
		     e->hb_kv_free - e->reserved_since_hb > best->hb_kv_free - best->reserved_since_hb))
			best = e;
	}
	if (!best)
		*why_err = any_up ? GS_CERR_TOO_LARGE : GS_CERR_UNAVAILABLE;
	return best;
}

/* Called with c->mu held: put r on e (the caller sends the Submit after unlocking). */
static void attach_locked(struct engine *e, struct gs_creq *r)
{
	list_del(r);
	list_add(&e->head, r);
	r->eng = e;
	e->inflight++;
	e->reserved_since_hb += blocks_for(r->n_prompt + r->max_tokens);
	atomic_fetch_add(&r->refs, 1); /* the engine's reference */
}

/* Called with c->mu held: take r off its engine (the engine's reference moves to the caller). */
static void detach_locked(struct gs_creq *r)
{
	struct engine *e = r->eng;
	if (!e)
		return;
	list_del(r);
	e->inflight--;
	r->eng = NULL;
}

/* Submit r to some engine other than avoid; on failure finish it with the error. Takes and
 * drops c->mu. Returns the error class (NONE on success). */
static enum gs_cerr dispatch(struct gs_coord *c, struct gs_creq *r, const struct engine *avoid, char *why,
			     size_t cap)
{
	for (int tries = 0; tries < 8; tries++) {
		enum gs_cerr err = GS_CERR_NONE;
		int32_t best_ctx;

		pthread_mutex_lock(&c->mu);
		struct engine *e = route_locked(c, r, avoid, &err, &best_ctx);
		if (!e) {
			pthread_mutex_unlock(&c->mu);
			if (err == GS_CERR_UNAVAILABLE)
				snprintf(why, cap, "no engine is serving model \"%s\" right now", c->served_name);
			else
				snprintf(why, cap,
					 "can never fit: %d prompt + %d max_tokens tokens exceed every engine's "
					 "context (largest %d) or KV capacity",
					 r->n_prompt, r->max_tokens, best_ctx);
			return err;
		}
		attach_locked(e, r);
		pthread_mutex_unlock(&c->mu);
		if (engine_send_submit(e, r) == GS_OK)
			return GS_CERR_NONE;
		gs_log(GS_LOG_WARN, "coordinator: submit to engine %s failed: %s", e->id, gs_last_error());
		gs_clear_error();
		shutdown(e->fd, SHUT_RDWR);
		pthread_mutex_lock(&c->mu);
		bool still = r->eng == e;
		if (still) {
			detach_locked(r);
			e->up = false;
		}
		pthread_mutex_unlock(&c->mu);
		if (!still)
			return GS_CERR_NONE; /* the link reader already failed or moved it */
		creq_unref(r);           /* the engine's reference */
		avoid = e;
	}
	snprintf(why, cap, "no engine accepted the request");
	return GS_CERR_UNAVAILABLE;
}

/* ---- output of a request ----------------------------------------------------------------- */

static bool text_reserve(struct gs_creq *r, size_t extra)
{
	if (r->len + extra + 1 <= r->cap)
		return true;
	size_t nc = r->cap ? r->cap : 256;
	while (nc < r->len + extra + 1)
		nc *= 2;
	char *p = realloc(r->text, nc);
	if (!p)
		return false;
	r->text = p;
	r->cap = nc;
	return true;
}

/* Earliest stop string in text, searching only where `added` new bytes could complete one.
 * Returns the cut position or -1. */
static long find_stop(const struct gs_creq *r, size_t added)
{
	long best = -1;
	for (int i = 0; i < r->n_stop; i++) {
		size_t sl = strlen(r->stop[i]);
		size_t from = r->len > added + sl ? r->len - added - sl : 0;
		const char *hit = r->len >= sl ? strstr(r->text + from, r->stop[i]) : NULL;
		if (hit && (best < 0 || hit - r->text < best))
			best = hit - r->text;
	}
	return best;
}

/* Bytes at the end of text that could still grow into a stop string: held back. */
static size_t stop_holdback(const struct gs_creq *r)
{
	size_t hold = 0;
	for (int i = 0; i < r->n_stop; i++) {
		size_t sl = strlen(r->stop[i]);
		for (size_t k = sl - 1; k > hold; k--) {
			if (k <= r->len - r->emitted && memcmp(r->text + r->len - k, r->stop[i], k) == 0) {
				hold = k;
				break;
			}
		}
	}
	return hold;
}

static bool ids_push(struct gs_creq *r, int32_t id, const struct gs_tok_lp *lp)
{
	if (r->n_ids == r->cap_ids) {
		int32_t nc = r->cap_ids ? 2 * r->cap_ids : 16;
		int32_t *ni = realloc(r->ids, sizeof(*ni) * (size_t)nc);
		if (!ni)
			return false;
		r->ids = ni;
		if (r->logprobs) {
			struct gs_tok_lp *nl = realloc(r->lps, sizeof(*nl) * (size_t)nc);
			if (!nl)
				return false;
			r->lps = nl;
		}
		r->cap_ids = nc;
	}
	r->ids[r->n_ids] = id;
	if (r->logprobs)
		r->lps[r->n_ids] = *lp;
	r->n_ids++;
	return true;
}

/* One engine TokenEvent for r. Returns true when the engine is done with r (finish). Sets
 * *cancel when a stop string ended it here (the engine must be told). */
static bool apply_event(struct gs_creq *r, const Gemmashard__Engine__TokenEvent *ev, bool *cancel, int32_t *n_new)
{
	struct gs_coord *c = r->c;
	bool engine_done = ev->finish != GEMMASHARD__ENGINE__FINISH__FINISH_NONE;
	char *piece = NULL;

	*cancel = false;
	*n_new = 0;
	pthread_mutex_lock(&r->mu);
	if (r->finish != GS_CFIN_NONE)
		goto out; /* finished here already (stop string, cancel, deadline): drop */
	if (ev->n_tokens && r->ttft == 0)
		r->ttft = gs_now_s() - r->t_submit;
	piece = malloc(c->detok_cap);
	if (!piece) {
		finish_locked(r, GS_CFIN_ERROR, GS_CERR_INTERNAL, "coordinator: out of memory");
		*cancel = !engine_done;
		goto out;
	}
	size_t ntop = r->logprobs ? (size_t)r->top_logprobs : 0;
	for (size_t i = 0; i < ev->n_tokens; i++) {
		int32_t id = ev->tokens[i];
		bool last = i + 1 == ev->n_tokens;
		struct gs_tok_lp lp = { .id = id };
		bool is_stop_tok = last && ev->finish == GEMMASHARD__ENGINE__FINISH__FINISH_STOP;

		r->completion_tokens++;
		(*n_new)++;
		if (is_stop_tok)
			break; /* the end-of-turn / eos token ends the answer; its text is not part of it */
		if (r->logprobs) {
			lp.logprob = i < ev->n_logprobs ? ev->logprobs[i] : 0.0f;
			for (size_t j = 0; j < ntop && j < GS_COORD_MAX_TOP_LOGPROBS; j++) {
				size_t k = i * ntop + j;
				if (k >= ev->n_top_ids || k >= ev->n_top_logprobs)
					break;
				lp.top_ids[j] = ev->top_ids[k];
				lp.top_logprobs[j] = ev->top_logprobs[k];
				lp.n_top++;
			}
		}
		if (!ids_push(r, id, &lp))
			goto oom;
		size_t k = gs_detok_push(&r->dt, id, piece, c->detok_cap);
		if (!text_reserve(r, k))
			goto oom;
		memcpy(r->text + r->len, piece, k);
		r->len += k;
		r->text[r->len] = '\0';
		r->dirty = true;
		long cut = r->n_stop ? find_stop(r, k) : -1;
		if (cut >= 0) {
			r->len = (size_t)cut;
			r->text[r->len] = '\0';
			if (r->emitted > r->len)
				r->emitted = r->len;
			finish_locked(r, GS_CFIN_STOP, GS_CERR_NONE, NULL);
			*cancel = !engine_done;
			goto out;
		}
	}
	if (engine_done) {
		switch (ev->finish) {
		case GEMMASHARD__ENGINE__FINISH__FINISH_STOP:
		case GEMMASHARD__ENGINE__FINISH__FINISH_LENGTH: {
			size_t k = gs_detok_flush(&r->dt, piece, c->detok_cap);
			if (!text_reserve(r, k))
				goto oom;
			memcpy(r->text + r->len, piece, k);
			r->len += k;
			r->text[r->len] = '\0';
			long cut = r->n_stop ? find_stop(r, k) : -1;
			if (cut >= 0)
				r->len = (size_t)cut, r->text[r->len] = '\0';
			finish_locked(r, ev->finish == GEMMASHARD__ENGINE__FINISH__FINISH_STOP || cut >= 0
						 ? GS_CFIN_STOP : GS_CFIN_LENGTH,
				      GS_CERR_NONE, NULL);
			break;
		}
		case GEMMASHARD__ENGINE__FINISH__FINISH_CANCELLED:
			finish_locked(r, GS_CFIN_CANCELLED, GS_CERR_NONE, NULL);
			break;
		default: {
			char msg[512];
			snprintf(msg, sizeof(msg), "engine: %s", ev->error && ev->error[0] ? ev->error : "failed");
			finish_locked(r, GS_CFIN_ERROR, GS_CERR_INTERNAL, msg);
		}
		}
	}
	goto out;
oom:
	finish_locked(r, GS_CFIN_ERROR, GS_CERR_INTERNAL, "coordinator: out of memory");
	*cancel = !engine_done;
out:
	if (r->dirty)
		wake(r);
	pthread_mutex_unlock(&r->mu);
	free(piece);
	return engine_done;
}

void gs_creq_out_clear(struct gs_creq_out *o)
{
	free(o->text);
	free(o->ids);
	free(o->lps);
	memset(o, 0, sizeof(*o));
}

bool gs_creq_take(struct gs_creq *r, struct gs_creq_out *o)
{
	bool any;

	memset(o, 0, sizeof(*o));
	pthread_mutex_lock(&r->mu);
	size_t upto = r->finish != GS_CFIN_NONE ? r->len : r->len - stop_holdback(r);
	if (upto < r->emitted)
		upto = r->emitted;
	size_t n = upto - r->emitted;
	any = n > 0 || r->n_ids > 0 || (r->finish != GS_CFIN_NONE && !r->finish_taken);
	if (!any) {
		r->dirty = false;
		pthread_mutex_unlock(&r->mu);
		return false;
	}
	o->text = malloc(n + 1);
	if (o->text) {
		memcpy(o->text, r->text ? r->text + r->emitted : "", n);
		o->text[n] = '\0';
		o->text_len = n;
		r->emitted = upto;
	}
	o->ids = r->ids;
	o->lps = r->lps;
	o->n_ids = r->n_ids;
	r->ids = NULL;
	r->lps = NULL;
	r->n_ids = r->cap_ids = 0;
	o->finish = r->finish;
	if (r->finish != GS_CFIN_NONE)
		r->finish_taken = true;
	o->err = r->err;
	memcpy(o->err_msg, r->err_msg, sizeof(o->err_msg));
	o->prompt_tokens = r->n_prompt;
	o->completion_tokens = r->completion_tokens;
	o->ttft_s = r->ttft;
	r->dirty = false;
	pthread_mutex_unlock(&r->mu);
	if (!o->text) {
		gs_creq_out_clear(o);
		o->finish = GS_CFIN_ERROR;
		o->err = GS_CERR_INTERNAL;
		snprintf(o->err_msg, sizeof(o->err_msg), "coordinator: out of memory");
	}
	return true;
}

bool gs_creq_wait(struct gs_creq *r, double timeout_s)
{
	struct timespec ts;
	bool ready;

	clock_gettime(CLOCK_REALTIME, &ts);
	double t = ts.tv_sec + ts.tv_nsec * 1e-9 + timeout_s;
	ts.tv_sec = (time_t)t;
	ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
	pthread_mutex_lock(&r->mu);
	while (!(ready = r->dirty || (r->finish != GS_CFIN_NONE && !r->finish_taken))) {
		if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT) {
			ready = r->dirty || (r->finish != GS_CFIN_NONE && !r->finish_taken);
			break;
		}
	}
	pthread_mutex_unlock(&r->mu);
	return ready;
}

/* Finish r here and tell its engine, if any, to stop it. */
static void end_request(struct gs_creq *r, enum gs_cfinish f, enum gs_cerr err, const char *msg, bool tell)
{
	struct gs_coord *c = r->c;
	struct engine *e = NULL;

	pthread_mutex_lock(&r->mu);
	bool changed = finish_locked(r, f, err, msg);
	pthread_mutex_unlock(&r->mu);
	pthread_mutex_lock(&c->mu);
	if (r->eng && !r->cancel_sent) {
		e = r->eng;
		r->cancel_sent = true;
	}
	pthread_mutex_unlock(&c->mu);
	if (e)
		engine_send_cancel(e, r->id);
	if (changed && tell)
		notify(r);
}

void gs_creq_cancel(struct gs_creq *r)
{
	end_request(r, GS_CFIN_CANCELLED, GS_CERR_NONE, NULL, false);
}

void gs_creq_release(struct gs_creq *r)
{
	struct gs_coord *c = r->c;
	bool running;

	pthread_mutex_lock(&r->mu);
	running = r->finish == GS_CFIN_NONE;
	r->notify = NULL;
	while (r->notifying > 0)
		pthread_cond_wait(&r->cv, &r->mu);
	pthread_mutex_unlock(&r->mu);
	if (running)
		gs_creq_cancel(r);
	pthread_mutex_lock(&c->mu);
	c->running--;
	pthread_mutex_unlock(&c->mu);
	creq_unref(r);
}

uint64_t gs_creq_id(const struct gs_creq *r)
{
	return r->id;
}

/* ---- submit ------------------------------------------------------------------------------ */

static enum gs_cerr invalid(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static enum gs_cerr invalid(char *why, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, cap, fmt, ap);
	va_end(ap);
	return GS_CERR_INVALID;
}

static bool model_matches(const struct gs_coord *c, const char *model)
{
	return !model || !model[0] || strcmp(model, c->served_name) == 0;
}

/* Text to tokens: chat messages through the template, or a raw prompt with <bos>. */
static enum gs_cerr spec_tokens(struct gs_coord *c, const struct gs_gen_spec *s, int32_t **ids, size_t *n,
				char *why, size_t cap)
{
	char *text = NULL;
	const char *src;
	bool add_bos;
	enum gs_status st;

	if (s->prompt && s->n_messages > 0)
		return invalid(why, cap, "give either prompt or messages, not both");
	if (s->prompt) {
		src = s->prompt;
		add_bos = true;
	} else {
		if (s->n_messages <= 0)
			return invalid(why, cap, "messages must not be empty");
		struct gs_chat_msg *m = calloc((size_t)s->n_messages, sizeof(*m));
		if (!m)
			return GS_CERR_INTERNAL;
		for (int i = 0; i < s->n_messages; i++) {
			m[i].role = s->roles[i];
			m[i].content = s->contents[i];
		}
		if (s->n_messages == 1 && s->roles[0] && strcmp(s->roles[0], "system") == 0) {
			free(m);
			return invalid(why, cap, "messages has only a system message; add a user message");
		}
		st = gs_chat_render(m, (size_t)s->n_messages, true, &text);
		free(m);
		if (st != GS_OK) {
			snprintf(why, cap, "%s", gs_last_error());
			gs_clear_error();
			return st == GS_ERR_INVALID_ARG ? GS_CERR_INVALID : GS_CERR_INTERNAL;
		}
		src = text;
		add_bos = false;
	}
	st = gs_tokenizer_encode(c->tok, src, strlen(src), add_bos, ids, n);
	free(text);
	if (st != GS_OK) {
		snprintf(why, cap, "%s", gs_last_error());
		gs_clear_error();
		return st == GS_ERR_INVALID_ARG ? GS_CERR_INVALID : GS_CERR_INTERNAL;
	}
	return GS_CERR_NONE;
}

static int32_t best_context(struct gs_coord *c)
{
	int32_t best = 0;
	pthread_mutex_lock(&c->mu);
	for (struct engine *e = c->engines; e; e = e->next)
		if (e->up && e->max_context > best)
			best = e->max_context;
	pthread_mutex_unlock(&c->mu);
	return best;
}

enum gs_cerr gs_coord_submit(struct gs_coord *c, enum gs_api api, const struct gs_gen_spec *s,
			     gs_creq_notify_fn notify_fn, void *user, struct gs_creq **out, char *why, size_t cap)
{
	const struct gs_coord_limits *L = &c->limits;
	struct gs_creq *r = NULL;
	int32_t *ids = NULL;
	size_t n_ids = 0;
	enum gs_cerr err;
	char msg[256];

	*out = NULL;
	why[0] = '\0';
	if (!model_matches(c, s->model)) {
		snprintf(why, cap, "The model `%s` does not exist; this server serves `%s`", s->model, c->served_name);
		return GS_CERR_NOT_FOUND;
	}
	if (s->max_tokens > L->max_tokens_limit)
		return invalid(why, cap, "max_tokens must be at most %d, got %d", L->max_tokens_limit, s->max_tokens);
	if (gs_sampling_params_validate(&s->sp, msg, sizeof(msg)) != GS_OK) {
		gs_clear_error();
		return invalid(why, cap, "%s", msg);
	}
	if (s->n_stop < 0 || s->n_stop > GS_COORD_MAX_STOP)
		return invalid(why, cap, "at most %d stop strings are allowed, got %d", GS_COORD_MAX_STOP, s->n_stop);
	for (int i = 0; i < s->n_stop; i++) {
		if (!s->stop[i] || !s->stop[i][0])
			return invalid(why, cap, "stop strings must not be empty");
		if (strlen(s->stop[i]) > GS_COORD_MAX_STOP_BYTES)
			return invalid(why, cap, "stop strings must be at most %d bytes", GS_COORD_MAX_STOP_BYTES);
	}
	if (s->top_logprobs < 0 || s->top_logprobs > GS_COORD_MAX_TOP_LOGPROBS)
		return invalid(why, cap, "top_logprobs must be an integer in [0, %d], got %d", GS_COORD_MAX_TOP_LOGPROBS,
			       s->top_logprobs);
	if (s->top_logprobs > 0 && !s->logprobs)
		return invalid(why, cap, "top_logprobs needs logprobs to be true");

	pthread_mutex_lock(&c->mu);
	bool busy = c->running >= L->max_concurrent;
	if (!busy)
		c->running++;
	pthread_mutex_unlock(&c->mu);
	if (busy) {
		snprintf(why, cap, "too many requests in flight (limit %d); retry later", L->max_concurrent);
		return GS_CERR_BUSY;
	}

	err = spec_tokens(c, s, &ids, &n_ids, why, cap);
	if (err != GS_CERR_NONE)
		goto fail;
	if ((int64_t)n_ids > L->max_prompt_tokens) {
		err = invalid(why, cap, "the prompt has %zu tokens, more than the limit of %d", n_ids, L->max_prompt_tokens);
		goto fail;
	}
	int32_t max_tokens = s->max_tokens;
	if (max_tokens <= 0) {
		int32_t ctx = best_context(c);
		max_tokens = L->default_max_tokens;
		if (ctx > 0 && ctx - (int32_t)n_ids < max_tokens)
			max_tokens = ctx - (int32_t)n_ids;
		if (max_tokens < 1)
			max_tokens = 1;
	}

	r = calloc(1, sizeof(*r));
	if (!r) {
		err = GS_CERR_INTERNAL;
		snprintf(why, cap, "coordinator: out of memory");
		goto fail;
	}
	r->c = c;
	r->api = api;
	atomic_init(&r->refs, 1);
	r->notify = notify_fn;
	r->user = user;
	r->prompt = ids;
	r->n_prompt = (int32_t)n_ids;
	ids = NULL;
	r->max_tokens = max_tokens;
	r->sp = s->sp;
	if (!s->has_seed && getrandom(&r->sp.seed, sizeof(r->sp.seed), 0) != sizeof(r->sp.seed))
		r->sp.seed = (uint64_t)(gs_now_s() * 1e9);
	for (int i = 0; i < s->n_stop; i++) {
		r->stop[i] = strdup(s->stop[i]);
		if (!r->stop[i]) {
			err = GS_CERR_INTERNAL;
			snprintf(why, cap, "coordinator: out of memory");
			goto fail_r;
		}
		r->n_stop++;
	}
	r->logprobs = s->logprobs;
	r->top_logprobs = s->top_logprobs;
	r->t_submit = gs_now_s();
	r->deadline = s->deadline > 0 ? s->deadline : r->t_submit + L->default_timeout_s;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	gs_detok_init(&r->dt, c->tok);
	list_init(r);

	pthread_mutex_lock(&c->mu);
	r->id = ++c->next_id;
	pthread_mutex_unlock(&c->mu);

	err = dispatch(c, r, NULL, why, cap);
	if (err != GS_CERR_NONE) {
		pthread_mutex_lock(&c->mu);
		c->running--;
		pthread_mutex_unlock(&c->mu);
		creq_unref(r);
		return err;
	}
	*out = r;
	return GS_CERR_NONE;

fail_r:
	for (int i = 0; i < r->n_stop; i++)
		free(r->stop[i]);
	free(r->prompt);
	free(r);
fail:
	free(ids);
	pthread_mutex_lock(&c->mu);
	c->running--;
	pthread_mutex_unlock(&c->mu);
	return err;
}

/* ---- engine link: reader thread ---------------------------------------------------------- */

static struct gs_creq *find_req_locked(struct engine *e, uint64_t id)
{
	for (struct gs_creq *r = e->head.next; r != &e->head; r = r->next)
		if (r->id == id)
			return r;
	return NULL;
}

static void handle_events(struct engine *e, const Gemmashard__Engine__TokenEvents *evs)
{
	struct gs_coord *c = e->c;

	for (size_t i = 0; i < evs->n_events; i++) {
		const Gemmashard__Engine__TokenEvent *ev = evs->events[i];
		bool cancel, done;
		int32_t n_new;

		pthread_mutex_lock(&c->mu);
		struct gs_creq *r = find_req_locked(e, ev->request_id);
		if (r) {
			atomic_fetch_add(&r->refs, 1);
			if (ev->n_tokens)
				r->engine_got_tokens = true;
		}
		pthread_mutex_unlock(&c->mu);
		if (!r)
			continue; /* already failed over or unknown: ignore */
		done = apply_event(r, ev, &cancel, &n_new);
		pthread_mutex_lock(&c->mu);
		c->generated_tokens += (uint64_t)n_new;
		bool send_cancel = cancel && !r->cancel_sent && r->eng == e;
		if (send_cancel)
			r->cancel_sent = true;
		bool drop_engine_ref = done && r->eng == e;
		if (drop_engine_ref)
			detach_locked(r);
		pthread_mutex_unlock(&c->mu);
		if (send_cancel)
			engine_send_cancel(e, r->id);
		notify(r);
		if (drop_engine_ref)
			creq_unref(r);
		creq_unref(r);
	}
}

/* The link is gone: move what had produced nothing yet, fail the rest. */
static void engine_lost(struct engine *e, const char *reason)
{
	struct gs_coord *c = e->c;
	struct gs_creq *moved[1024];
	int n_moved = 0;
	bool again = true;

	gs_log(GS_LOG_WARN, "coordinator: engine %s (%s) down: %s", e->id, e->peer, reason);
	while (again) {
		again = false;
		pthread_mutex_lock(&c->mu);
		if (e->up)
			c->engines_lost++;
		e->up = false;
		struct gs_creq *r = e->head.next;
		if (r == &e->head) {
			pthread_mutex_unlock(&c->mu);
			break;
		}
		bool can_move = !r->engine_got_tokens && !r->cancel_sent && !atomic_load(&c->stopping);
		detach_locked(r);
		pthread_mutex_unlock(&c->mu);
		again = true;
		pthread_mutex_lock(&r->mu);
		bool finished = r->finish != GS_CFIN_NONE;
		pthread_mutex_unlock(&r->mu);
		if (can_move && !finished && n_moved < (int)(sizeof(moved) / sizeof(moved[0]))) {
			moved[n_moved++] = r; /* keeps the engine reference until resubmitted */
			continue;
		}
		if (!finished) {
			char msg[256];
			snprintf(msg, sizeof(msg), "engine %s was lost mid-request (%s)", e->id, reason);
			pthread_mutex_lock(&r->mu);
			bool ch = finish_locked(r, GS_CFIN_ERROR, GS_CERR_UNAVAILABLE, msg);
			pthread_mutex_unlock(&r->mu);
			if (ch)
				notify(r);
		}
		creq_unref(r);
	}
	for (int i = 0; i < n_moved; i++) {
		struct gs_creq *r = moved[i];
		char why[256];
		enum gs_cerr err = dispatch(c, r, e, why, sizeof(why));
		if (err == GS_CERR_NONE) {
			pthread_mutex_lock(&c->mu);
			c->moved++;
			pthread_mutex_unlock(&c->mu);
			gs_log(GS_LOG_INFO, "coordinator: request %" PRIu64 " moved off engine %s", r->id, e->id);
		} else {
			char msg[512];
			snprintf(msg, sizeof(msg), "engine %s was lost and no other engine can take the request: %s",
				 e->id, why);
			pthread_mutex_lock(&r->mu);
			bool ch = finish_locked(r, GS_CFIN_ERROR, GS_CERR_UNAVAILABLE, msg);
			pthread_mutex_unlock(&r->mu);
			if (ch)
				notify(r);
		}
		creq_unref(r); /* the old engine's reference */
	}
}

static bool hello_ok(struct gs_coord *c, struct engine *e, const Gemmashard__Engine__EngineHello *h)
{
	snprintf(e->id, sizeof(e->id), "%s", h->engine_id && h->engine_id[0] ? h->engine_id : e->peer);
	if (!h->model_id || strcmp(h->model_id, c->served_name) != 0) {
		gs_log(GS_LOG_WARN, "coordinator: engine %s serves model \"%s\", this coordinator serves \"%s\": refused",
		       e->id, h->model_id ? h->model_id : "", c->served_name);
		return false;
	}
	if (h->tp < 1 || h->max_context < 2 || h->kv_blocks_total < 1 || h->max_seqs < 1) {
		gs_log(GS_LOG_WARN, "coordinator: engine %s sent an invalid hello (tp %d, context %d, blocks %d, seqs %d)",
		       e->id, h->tp, h->max_context, h->kv_blocks_total, h->max_seqs);
		return false;
	}
	if (h->kv_block_tokens != GS_KV_BLOCK_TOKENS) {
		gs_log(GS_LOG_WARN, "coordinator: engine %s uses %d-token KV blocks, expected %d: refused", e->id,
		       h->kv_block_tokens, GS_KV_BLOCK_TOKENS);
		return false;
	}
	if (h->vocab_size < gs_tokenizer_n_vocab(c->tok) - 1 && h->vocab_size < c->vocab) {
		gs_log(GS_LOG_WARN, "coordinator: engine %s has a vocabulary of %d, the tokenizer needs %d: refused",
		       e->id, h->vocab_size, c->vocab);
		return false;
	}
	e->tp = h->tp;
	e->max_context = h->max_context;
	e->kv_blocks_total = h->kv_blocks_total;
	e->max_seqs = h->max_seqs;
	e->vocab = h->vocab_size;
	e->hb_kv_free = h->kv_blocks_total;
	return true;
}

static void *engine_reader(void *arg)
{
	struct engine *e = arg;
	struct gs_coord *c = e->c;
	Gemmashard__Engine__EngineMessage *m = NULL;
	const char *reason = "link closed";
	char buf[600];

	if (gs_engine_msg_recv(e->fd, GS_LINK_MAX_FRAME, GS_HELLO_TIMEOUT_MS, &m) != GS_OK ||
	    m->body_case != GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_HELLO) {
		gs_log(GS_LOG_WARN, "coordinator: connection from %s did not start with a hello: %s", e->peer,
		       m ? "another message" : gs_last_error());
		gs_clear_error();
		goto out_gone;
	}
	if (!hello_ok(c, e, m->hello))
		goto out_gone;
	gemmashard__engine__engine_message__free_unpacked(m, NULL);
	m = NULL;
	pthread_mutex_lock(&c->mu);
	e->up = true;
	e->last_hb = gs_now_s();
	pthread_mutex_unlock(&c->mu);
	gs_log(GS_LOG_INFO, "coordinator: engine %s (%s) up: T=%d, context %d, %d KV blocks, %d seqs", e->id, e->peer,
	       e->tp, e->max_context, e->kv_blocks_total, e->max_seqs);

	while (!atomic_load(&c->stopping)) {
		struct pollfd p = { .fd = e->fd, .events = POLLIN };
		int pr = poll(&p, 1, 200);
		if (pr < 0 && errno == EINTR)
			continue;
		pthread_mutex_lock(&c->mu);
		bool up = e->up;
		pthread_mutex_unlock(&c->mu);
		if (!up) {
			reason = "heartbeats stopped";
			break;
		}
		if (pr == 0)
			continue;
		if (gs_engine_msg_recv(e->fd, GS_LINK_MAX_FRAME, 10000, &m) != GS_OK) {
			snprintf(buf, sizeof(buf), "%s", gs_last_error());
			gs_clear_error();
			reason = buf;
			break;
		}
		switch (m->body_case) {
		case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_EVENTS:
			handle_events(e, m->events);
			break;
		case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_HEARTBEAT: {
			const Gemmashard__Engine__Heartbeat *h = m->heartbeat;
			pthread_mutex_lock(&c->mu);
			e->last_hb = gs_now_s();
			e->hb_running = h->running;
			e->hb_waiting = h->waiting;
			e->hb_kv_free = h->kv_blocks_free;
			e->hb_steps = h->steps;
			e->hb_step_s = h->step_seconds_total;
			e->hb_tokens = h->tokens_generated;
			e->reserved_since_hb = 0;
			pthread_mutex_unlock(&c->mu);
			break;
		}
		case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_ERROR:
			gs_log(GS_LOG_WARN, "coordinator: engine %s reports error %d: %s", e->id, m->error->code,
			       m->error->message ? m->error->message : "");
			break;
		default:
			snprintf(buf, sizeof(buf), "unexpected message kind %d on the link", (int)m->body_case);
			reason = buf;
			gemmashard__engine__engine_message__free_unpacked(m, NULL);
			m = NULL;
			goto out_lost;
		}
		gemmashard__engine__engine_message__free_unpacked(m, NULL);
		m = NULL;
	}
out_lost:
	engine_lost(e, reason);
out_gone:
	if (m)
		gemmashard__engine__engine_message__free_unpacked(m, NULL);
	pthread_mutex_lock(&e->wmu);
	close(e->fd);
	e->fd = -1;
	pthread_mutex_unlock(&e->wmu);
	pthread_mutex_lock(&c->mu);
	e->up = false;
	e->gone = true;
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* Joins and frees engines whose reader has finished. */
static void reap_engines(struct gs_coord *c, bool all)
{
	for (;;) {
		struct engine *dead = NULL;
		pthread_mutex_lock(&c->mu);
		for (struct engine **pp = &c->engines; *pp; pp = &(*pp)->next) {
			if ((*pp)->gone || all) {
				dead = *pp;
				*pp = dead->next;
				break;
			}
		}
		pthread_mutex_unlock(&c->mu);
		if (!dead)
			return;
		if (!dead->gone) {
			pthread_mutex_lock(&dead->wmu);
			if (dead->fd >= 0)
				shutdown(dead->fd, SHUT_RDWR);
			pthread_mutex_unlock(&dead->wmu);
		}
		pthread_join(dead->thread, NULL);
		pthread_mutex_destroy(&dead->wmu);
		free(dead);
	}
}

static void *listener_main(void *arg)
{
	struct gs_coord *c = arg;

	while (!atomic_load(&c->stopping)) {
		struct pollfd p = { .fd = c->listen_fd, .events = POLLIN };
		if (poll(&p, 1, 200) <= 0)
			continue;
		struct sockaddr_storage sa;
		socklen_t sl = sizeof(sa);
		int fd = accept4(c->listen_fd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		int one = 1;
		struct timeval tv = { .tv_sec = 5 };
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		struct engine *e = calloc(1, sizeof(*e));
		if (!e) {
			close(fd);
			continue;
		}
		e->c = c;
		e->fd = fd;
		pthread_mutex_init(&e->wmu, NULL);
		list_init(&e->head);
		char host[INET6_ADDRSTRLEN] = "?", port[16] = "?";
		getnameinfo((struct sockaddr *)&sa, sl, host, sizeof(host), port, sizeof(port),
			    NI_NUMERICHOST | NI_NUMERICSERV);
		snprintf(e->peer, sizeof(e->peer), "%s:%s", host, port);
		snprintf(e->id, sizeof(e->id), "%s", e->peer);
		if (pthread_create(&e->thread, NULL, engine_reader, e) != 0) {
			close(fd);
			pthread_mutex_destroy(&e->wmu);
			free(e);
			continue;
		}
		pthread_mutex_lock(&c->mu);
		e->next = c->engines;
		c->engines = e;
		pthread_mutex_unlock(&c->mu);
		reap_engines(c, false);
	}
	return NULL;
}

/* Heartbeat timeouts, request deadlines, reaping. */
static void *monitor_main(void *arg)
{
	struct gs_coord *c = arg;

	while (!atomic_load(&c->stopping)) {
		struct timespec ts = { .tv_nsec = 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		double now = gs_now_s();
		struct gs_creq *late[256];
		int n_late = 0;

		pthread_mutex_lock(&c->mu);
		for (struct engine *e = c->engines; e; e = e->next) {
			if (e->up && now - e->last_hb > c->limits.heartbeat_timeout_s) {
				gs_log(GS_LOG_WARN, "coordinator: engine %s: no heartbeat for %.1f s", e->id,
				       now - e->last_hb);
				e->up = false; /* its reader fails the link within 200 ms */
				pthread_mutex_lock(&e->wmu);
				if (e->fd >= 0)
					shutdown(e->fd, SHUT_RDWR);
				pthread_mutex_unlock(&e->wmu);
			}
			for (struct gs_creq *r = e->head.next; r != &e->head && n_late < 256; r = r->next) {
				if (now > r->deadline && !r->cancel_sent) {
					atomic_fetch_add(&r->refs, 1);
					late[n_late++] = r;
				}
			}
		}
		pthread_mutex_unlock(&c->mu);
		for (int i = 0; i < n_late; i++) {
			char msg[128];
			snprintf(msg, sizeof(msg), "deadline exceeded after %.3f s", now - late[i]->t_submit);
			end_request(late[i], GS_CFIN_ERROR, GS_CERR_DEADLINE, msg, true);
			creq_unref(late[i]);
		}
		reap_engines(c, false);
	}
	return NULL;
}

/* ---- misc API ---------------------------------------------------------------------------- */

char *gs_coord_token_text(struct gs_coord *c, int32_t id)
{
	int b = gs_tokenizer_byte_value(c->tok, id);
	char *s = NULL;
	size_t n;

	if (b >= 0 && b >= 0x80) {
		if (asprintf(&s, "<0x%02X>", b) < 0)
			return NULL;
		return s;
	}
	if (gs_tokenizer_decode(c->tok, &id, 1, &s, &n) != GS_OK) {
		gs_clear_error();
		return strdup("");
	}
	return s;
}

void gs_coord_count_request(struct gs_coord *c, enum gs_api api, const char *status)
{
	pthread_mutex_lock(&c->mu);
	int i;
	for (i = 0; i < c->n_counts; i++)
		if (c->counts[i].api == api && strcmp(c->counts[i].status, status) == 0)
			break;
	if (i == c->n_counts && c->n_counts < (int)(sizeof(c->counts) / sizeof(c->counts[0]))) {
		c->counts[i].api = api;
		snprintf(c->counts[i].status, sizeof(c->counts[i].status), "%s", status);
		c->n_counts++;
	}
	if (i < c->n_counts)
		c->counts[i].n++;
	pthread_mutex_unlock(&c->mu);
}

static void hist_add(struct hist *h, const double *bounds, int nb, double v, uint64_t n)
{
	for (int i = 0; i < nb; i++)
		if (v <= bounds[i])
			h->b[i] += n;
	h->count += n;
	h->sum += v * (double)n;
}

void gs_coord_observe_tpot(struct gs_coord *c, double seconds_per_token, int32_t n_tokens)
{
	if (n_tokens <= 0)
		return;
	pthread_mutex_lock(&c->mu);
	hist_add(&c->tpot, tpot_buckets, GS_N_TPOT_BUCKETS, seconds_per_token, (uint64_t)n_tokens);
	pthread_mutex_unlock(&c->mu);
}

void gs_coord_observe_ttft(struct gs_coord *c, double seconds)
{
	pthread_mutex_lock(&c->mu);
	hist_add(&c->ttft, ttft_buckets, GS_N_TTFT_BUCKETS, seconds, 1);
	pthread_mutex_unlock(&c->mu);
}

bool gs_coord_authorized(const struct gs_coord *c, const char *authorization)
{
	if (!c->api_key)
		return true;
	if (!authorization || strncmp(authorization, "Bearer ", 7) != 0)
		return false;
	/* constant-time compare */
	const char *k = c->api_key, *g = authorization + 7;
	size_t lk = strlen(k), lg = strlen(g);
	unsigned char d = (unsigned char)(lk != lg);
	for (size_t i = 0; i < lk; i++)
		d |= (unsigned char)(k[i] ^ (i < lg ? g[i] : 0));
	return d == 0;
}

enum gs_cerr gs_coord_tokenize(struct gs_coord *c, const char *model, const char *text, bool add_bos,
			       int32_t **ids, size_t *n, char *why, size_t cap)
{
	*ids = NULL;
	*n = 0;
	if (!model_matches(c, model)) {
		snprintf(why, cap, "The model `%s` does not exist; this server serves `%s`", model, c->served_name);
		return GS_CERR_NOT_FOUND;
	}
	if (gs_tokenizer_encode(c->tok, text ? text : "", text ? strlen(text) : 0, add_bos, ids, n) != GS_OK) {
		snprintf(why, cap, "%s", gs_last_error());
		gs_clear_error();
		return GS_CERR_INVALID;
	}
	return GS_CERR_NONE;
}

enum gs_cerr gs_coord_model_info(struct gs_coord *c, const char *model, struct gs_model_info *info)
{
	if (!model_matches(c, model))
		return GS_CERR_NOT_FOUND;
	memset(info, 0, sizeof(*info));
	info->name = c->served_name;
	info->architecture = c->architecture;
	info->vocab_size = c->vocab;
	info->created = c->created;
	pthread_mutex_lock(&c->mu);
	for (struct engine *e = c->engines; e; e = e->next) {
		if (!e->up)
			continue;
		info->engines++;
		if (e->max_context > info->max_context)
			info->max_context = e->max_context;
		if (!info->tensor_parallel)
			info->tensor_parallel = e->tp;
	}
	pthread_mutex_unlock(&c->mu);
	return GS_CERR_NONE;
}

int gs_coord_healthy_engines(struct gs_coord *c)
{
	int n = 0;
	pthread_mutex_lock(&c->mu);
	for (struct engine *e = c->engines; e; e = e->next)
		n += e->up;
	pthread_mutex_unlock(&c->mu);
	return n;
}

const struct gs_coord_limits *gs_coord_get_limits(const struct gs_coord *c)
{
	return &c->limits;
}

/* ---- metrics ----------------------------------------------------------------------------- */

static void sb_hist(struct gs_sbuf *b, const char *name, const char *help, const struct hist *h, const double *bounds,
		    int nb)
{
	gs_sbuf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (int i = 0; i < nb; i++)
		gs_sbuf_printf(b, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, bounds[i], h->b[i]);
	gs_sbuf_printf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n%s_sum %.9g\n%s_count %" PRIu64 "\n", name, h->count, name,
		  h->sum, name, h->count);
}

char *gs_coord_metrics(struct gs_coord *c)
{
	static const char *const api_name[GS_API_COUNT] = { "grpc", "http" };
	struct gs_sbuf b = { 0 };
	const char *m = c->served_name;

	pthread_mutex_lock(&c->mu);
	gs_sbuf_printf(&b, "# HELP gemmashard_requests_total Client requests finished, by API and status.\n"
		      "# TYPE gemmashard_requests_total counter\n");
	for (int i = 0; i < c->n_counts; i++)
		gs_sbuf_printf(&b, "gemmashard_requests_total{api=\"%s\",status=\"%s\"} %" PRIu64 "\n",
			  api_name[c->counts[i].api], c->counts[i].status, c->counts[i].n);
	sb_hist(&b, "gemmashard_time_to_first_token_seconds", "Time from request to its first token.", &c->ttft,
		ttft_buckets, GS_N_TTFT_BUCKETS);
	sb_hist(&b, "gemmashard_time_per_output_token_seconds", "Time between streamed tokens.", &c->tpot, tpot_buckets,
		GS_N_TPOT_BUCKETS);
	int32_t waiting = 0, running = 0, up = 0;
	for (struct engine *e = c->engines; e; e = e->next) {
		if (!e->up)
			continue;
		up++;
		waiting += e->hb_waiting;
		running += e->hb_running;
	}
	gs_sbuf_printf(&b, "# HELP gemmashard_queue_depth Requests waiting for admission in the engines.\n"
		      "# TYPE gemmashard_queue_depth gauge\ngemmashard_queue_depth{model=\"%s\"} %d\n", m, waiting);
	gs_sbuf_printf(&b, "# HELP gemmashard_requests_running Requests running in the engines.\n"
		      "# TYPE gemmashard_requests_running gauge\ngemmashard_requests_running{model=\"%s\"} %d\n", m,
		  running);
	gs_sbuf_printf(&b, "# HELP gemmashard_requests_in_flight Client requests accepted and not yet finished.\n"
		      "# TYPE gemmashard_requests_in_flight gauge\ngemmashard_requests_in_flight %d\n", c->running);
	gs_sbuf_printf(&b, "# HELP gemmashard_engines_healthy Engines registered and healthy.\n"
		      "# TYPE gemmashard_engines_healthy gauge\ngemmashard_engines_healthy{model=\"%s\"} %d\n", m, up);
	gs_sbuf_printf(&b, "# HELP gemmashard_engines_lost_total Engines marked down (link lost or heartbeats stopped).\n"
		      "# TYPE gemmashard_engines_lost_total counter\ngemmashard_engines_lost_total %" PRIu64 "\n",
		  c->engines_lost);
	gs_sbuf_printf(&b, "# HELP gemmashard_requests_moved_total Requests resubmitted to another engine.\n"
		      "# TYPE gemmashard_requests_moved_total counter\ngemmashard_requests_moved_total %" PRIu64 "\n",
		  c->moved);
	gs_sbuf_printf(&b, "# HELP gemmashard_generated_tokens_total Tokens generated for clients.\n"
		      "# TYPE gemmashard_generated_tokens_total counter\ngemmashard_generated_tokens_total %" PRIu64 "\n",
		  c->generated_tokens);
	static const struct {
		const char *name, *type, *help;
	} per_engine[] = {
		{ "gemmashard_kv_blocks_used", "gauge", "KV blocks (global layers, per rank) in use." },
		{ "gemmashard_kv_blocks_free", "gauge", "KV blocks (global layers, per rank) free." },
		{ "gemmashard_engine_steps_total", "counter", "Engine steps." },
		{ "gemmashard_engine_step_seconds_total", "counter", "Engine time spent in steps." },
		{ "gemmashard_engine_tokens_total", "counter", "Tokens the engine sampled." },
	};
	for (size_t k = 0; k < sizeof(per_engine) / sizeof(per_engine[0]); k++) {
		gs_sbuf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", per_engine[k].name, per_engine[k].help, per_engine[k].name,
			  per_engine[k].type);
		for (struct engine *e = c->engines; e; e = e->next) {
			if (!e->up)
				continue;
			gs_sbuf_printf(&b, "%s{engine=\"%s\"} ", per_engine[k].name, e->id);
			switch (k) {
			case 0: gs_sbuf_printf(&b, "%d\n", e->kv_blocks_total - e->hb_kv_free); break;
			case 1: gs_sbuf_printf(&b, "%d\n", e->hb_kv_free); break;
			case 2: gs_sbuf_printf(&b, "%" PRIu64 "\n", e->hb_steps); break;
			case 3: gs_sbuf_printf(&b, "%.9g\n", e->hb_step_s); break;
			default: gs_sbuf_printf(&b, "%" PRIu64 "\n", e->hb_tokens); break;
			}
		}
	}
	pthread_mutex_unlock(&c->mu);
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
}

/* ---- life cycle -------------------------------------------------------------------------- */

static enum gs_status listen_on(const char *addr, int *out)
{
	char host[256];
	const char *colon = strrchr(addr, ':');
	if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof(host) || !colon[1])
		return gs_errorf(GS_ERR_INVALID_ARG, "engine listen address \"%s\" is not HOST:PORT", addr);
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = '\0';
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai;
	int rc = getaddrinfo(host, colon + 1, &hints, &ai);
	if (rc != 0)
		return gs_errorf(GS_ERR_INVALID_ARG, "engine listen address \"%s\": %s", addr, gai_strerror(rc));
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	if (fd < 0) {
		freeaddrinfo(ai);
		return gs_errorf(GS_ERR_IO, "socket: %s", strerror(errno));
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
		int e = errno;
		freeaddrinfo(ai);
		close(fd);
		return gs_errorf(GS_ERR_IO, "cannot listen for engines on %s: %s", addr, strerror(e));
	}
	freeaddrinfo(ai);
	*out = fd;
	return GS_OK;
}

static const char *base_name(const char *dir, char *buf, size_t cap)
{
	size_t n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/')
		n--;
	size_t s = n;
	while (s > 0 && dir[s - 1] != '/')
		s--;
	snprintf(buf, cap, "%.*s", (int)(n - s), dir + s);
	return buf;
}

enum gs_status gs_coord_create(const struct gs_coord_config *cfg, struct gs_coord **out)
{
	struct gs_coord *c = calloc(1, sizeof(*c));
	struct gs_config mc;
	char path[4096], name[256];
	enum gs_status st;

	*out = NULL;
	if (!c)
		return gs_errorf(GS_ERR_NOMEM, "coordinator: out of memory");
	c->listen_fd = -1;
	c->limits = cfg->limits;
	c->created = (double)time(NULL);
	pthread_mutex_init(&c->mu, NULL);

	snprintf(path, sizeof(path), "%s/config.json", cfg->model_dir);
	if ((st = gs_config_load(path, &mc)) != GS_OK)
		goto fail;
	snprintf(c->architecture, sizeof(c->architecture), "%s", mc.architecture);
	c->vocab = mc.vocab_size;
	gs_config_free(&mc);
	snprintf(path, sizeof(path), "%s/tokenizer.json", cfg->model_dir);
	if ((st = gs_tokenizer_load(path, &c->tok)) != GS_OK)
		goto fail;
	c->end_of_turn = gs_tokenizer_find(c->tok, "<end_of_turn>");
	c->detok_cap = gs_detok_max_out(c->tok);
	c->served_name = strdup(cfg->served_name && cfg->served_name[0] ? cfg->served_name
								       : base_name(cfg->model_dir, name, sizeof(name)));
	c->api_key = cfg->api_key && cfg->api_key[0] ? strdup(cfg->api_key) : NULL;
	if (!c->served_name || (cfg->api_key && cfg->api_key[0] && !c->api_key)) {
		st = gs_errorf(GS_ERR_NOMEM, "coordinator: out of memory");
		goto fail;
	}
	if ((st = listen_on(cfg->engine_listen, &c->listen_fd)) != GS_OK)
		goto fail;
	if (pthread_create(&c->listener, NULL, listener_main, c) != 0) {
		st = gs_errorf(GS_ERR_INTERNAL, "coordinator: cannot start the listener thread");
		goto fail;
	}
	if (pthread_create(&c->monitor, NULL, monitor_main, c) != 0) {
		atomic_store(&c->stopping, true);
		pthread_join(c->listener, NULL);
		st = gs_errorf(GS_ERR_INTERNAL, "coordinator: cannot start the monitor thread");
		goto fail;
	}
	*out = c;
	return GS_OK;
fail:
	if (c->listen_fd >= 0)
		close(c->listen_fd);
	gs_tokenizer_free(c->tok);
	free(c->served_name);
	free(c->api_key);
	pthread_mutex_destroy(&c->mu);
	free(c);
	return st;
}

void gs_coord_free(struct gs_coord *c)
{
	if (!c)
		return;
	atomic_store(&c->stopping, true);
	pthread_join(c->listener, NULL);
	pthread_join(c->monitor, NULL);
	close(c->listen_fd);
	/* Readers see `stopping` within 200 ms; each fails what is left on its engine. */
	reap_engines(c, true);
	gs_tokenizer_free(c->tok);
	free(c->served_name);
	free(c->api_key);
	pthread_mutex_destroy(&c->mu);
	free(c);
}
