/* gemmashard coordinator: the life cycle and output of one client request (gs_coord.h):
 * error classes and finish reasons, references, finish and notify, the text (incremental
 * detokenising, stop strings and their holdback), ids and logprobs, and the gs_creq_* calls
 * of the front ends. Locks and threads: coord_internal.h. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coord_internal.h"
#include "gs_util.h"

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

/* ---- references, finish, notify ---------------------------------------------------------- */

void creq_unref(struct gs_creq *r)
{
	if (atomic_fetch_sub(&r->refs, 1) != 1)
		return;
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	for (int i = 0; i < r->n_stop; i++)
		free(r->stop[i]);
	free(r->prompt);
	free(r->response_format);
	if (r->images && atomic_fetch_sub(&r->images->refs, 1) == 1)
		free(r->images);
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
bool creq_finish_locked(struct gs_creq *r, enum gs_cfinish f, enum gs_cerr err, const char *msg)
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
void creq_notify(struct gs_creq *r)
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
bool creq_apply_event(struct gs_creq *r, const Gemmashard__Engine__TokenEvent *ev, bool *cancel, int32_t *n_new)
{
	const struct gs_coord_model *m = r->model;
	bool engine_done = ev->finish != GEMMASHARD__ENGINE__FINISH__FINISH_NONE;
	char *piece = NULL;

	*cancel = false;
	*n_new = 0;
	pthread_mutex_lock(&r->mu);
	if (r->finish != GS_CFIN_NONE)
		goto out; /* finished here already (stop string, cancel, deadline): drop */
	if (ev->n_tokens && r->ttft == 0)
		r->ttft = gs_now_s() - r->t_submit;
	piece = malloc(m->detok_cap);
	if (!piece) {
		creq_finish_locked(r, GS_CFIN_ERROR, GS_CERR_INTERNAL, "coordinator: out of memory");
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
		size_t k = gs_detok_push(&r->dt, id, piece, m->detok_cap);
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
			creq_finish_locked(r, GS_CFIN_STOP, GS_CERR_NONE, NULL);
			*cancel = !engine_done;
			goto out;
		}
	}
	if (engine_done) {
		switch (ev->finish) {
		case GEMMASHARD__ENGINE__FINISH__FINISH_STOP:
		case GEMMASHARD__ENGINE__FINISH__FINISH_LENGTH: {
			size_t k = gs_detok_flush(&r->dt, piece, m->detok_cap);
			if (!text_reserve(r, k))
				goto oom;
			memcpy(r->text + r->len, piece, k);
			r->len += k;
			r->text[r->len] = '\0';
			long cut = r->n_stop ? find_stop(r, k) : -1;
			if (cut >= 0)
				r->len = (size_t)cut, r->text[r->len] = '\0';
			creq_finish_locked(r, ev->finish == GEMMASHARD__ENGINE__FINISH__FINISH_STOP || cut >= 0
						      ? GS_CFIN_STOP : GS_CFIN_LENGTH,
					   GS_CERR_NONE, NULL);
			break;
		}
		case GEMMASHARD__ENGINE__FINISH__FINISH_CANCELLED:
			creq_finish_locked(r, GS_CFIN_CANCELLED, GS_CERR_NONE, NULL);
			break;
		default: {
			char msg[512];
			snprintf(msg, sizeof(msg), "engine: %s", ev->error && ev->error[0] ? ev->error : "failed");
			creq_finish_locked(r, GS_CFIN_ERROR, GS_CERR_INTERNAL, msg);
		}
		}
	}
	goto out;
oom:
	creq_finish_locked(r, GS_CFIN_ERROR, GS_CERR_INTERNAL, "coordinator: out of memory");
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
	o->model = r->model; /* immutable */
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
void creq_end(struct gs_creq *r, enum gs_cfinish f, enum gs_cerr err, const char *msg, bool tell)
{
	struct gs_coord *c = r->c;
	struct engine *e = NULL;

	pthread_mutex_lock(&r->mu);
	bool changed = creq_finish_locked(r, f, err, msg);
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
		creq_notify(r);
}

void gs_creq_cancel(struct gs_creq *r)
{
	creq_end(r, GS_CFIN_CANCELLED, GS_CERR_NONE, NULL, false);
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
	coord_log_content(r);
	pthread_mutex_lock(&c->mu);
	c->running--;
	pthread_mutex_unlock(&c->mu);
	creq_unref(r);
}

uint64_t gs_creq_id(const struct gs_creq *r)
{
	return r->id;
}
