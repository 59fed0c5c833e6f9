/* gemmashard coordinator: the engine links (gs_coord.h; ARCHITECTURE.md §6, §7): the listener that
 * accepts engine leaders, one reader thread per link (first the authentication: mutual TLS
 * with the cluster CA, or plaintext on loopback; then hello, token events, heartbeats), the
 * writes on a link (Submit, Cancel), what happens when a link is lost (requests that produced
 * nothing yet move to another engine, the rest fail), and the monitor thread (heartbeat
 * timeouts, request deadlines, reaping). Locks and threads: coord_internal.h. */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "coord_internal.h"
#include "gs_frame.h"
#include "gs_params_wire.h"
#include "gs_util.h"

#define GS_HELLO_TIMEOUT_MS 5000
#define GS_HANDSHAKE_TIMEOUT_MS 5000 /* TLS, before the hello's own 5 s */
#define GS_MAX_HANDSHAKING  64       /* connections not yet authenticated */
#define GS_AUTH_LOG_EVERY_S 5.0      /* one log line per refusal reason at most this often */

/* ---- engine link writes ------------------------------------------------------------------ */

static enum gs_status engine_send(struct engine *e, const Gemmashard__Engine__EngineMessage *m)
{
	pthread_mutex_lock(&e->wmu);
	enum gs_status st = e->s ? gs_engine_msg_send(e->s, m) : gs_errorf(GS_ERR_IO, "the link is closed");
	pthread_mutex_unlock(&e->wmu);
	return st;
}

void engine_send_cancel(struct engine *e, uint64_t id)
{
	Gemmashard__Engine__Cancel cm = GEMMASHARD__ENGINE__CANCEL__INIT;
	Gemmashard__Engine__EngineMessage m = GEMMASHARD__ENGINE__ENGINE_MESSAGE__INIT;
	cm.request_id = id;
	m.body_case = GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_CANCEL;
	m.cancel = &cm;
	if (engine_send(e, &m) != GS_OK) {
		gs_log(GS_LOG_WARN, "coordinator: cancel %" PRIu64 " to engine %s: %s", id, e->id, gs_last_error());
		gs_clear_error();
		pthread_mutex_lock(&e->wmu);
		if (e->fd >= 0)
			shutdown(e->fd, SHUT_RDWR); /* the reader notices and fails the link */
		pthread_mutex_unlock(&e->wmu);
	}
}

enum gs_status engine_send_submit(struct engine *e, struct gs_creq *r, int n)
{
	Gemmashard__Engine__SamplingParams sp = GEMMASHARD__ENGINE__SAMPLING_PARAMS__INIT;
	Gemmashard__Engine__Submit sub = GEMMASHARD__ENGINE__SUBMIT__INIT;
	Gemmashard__Engine__EngineMessage m = GEMMASHARD__ENGINE__ENGINE_MESSAGE__INIT;
	int32_t stop_id = r->model->end_of_turn, stop_ids[GS_COORD_MAX_STOP_IDS + 1];
	int n_stop = 0;

	gs_params_to_wire(&sp, &r->sp);
	sp.max_tokens = r->max_tokens;
	/* <end_of_turn> ends a chat turn as eos does (Gemma 3's generation_config), so ignore_eos
	 * drops it too; then the caller's stop_token_ids. */
	if (stop_id >= 0 && !r->ignore_eos)
		stop_ids[n_stop++] = stop_id;
	for (int i = 0; i < r->n_stop_ids && n_stop < GS_COORD_MAX_STOP_IDS + 1; i++)
		stop_ids[n_stop++] = r->stop_ids[i];
	sp.n_stop_ids = (size_t)n_stop;
	sp.stop_ids = n_stop ? stop_ids : NULL;
	sp.ignore_eos = r->ignore_eos;
	sp.top_logprobs = r->logprobs ? r->top_logprobs : 0;
	sp.logprobs = r->logprobs;
	if (r->response_format)
		sp.response_format = r->response_format;
	sp.n = n > 1 ? n : 0; /* choices r->id .. + n - 1 (consecutive ids), seeds r's + i */
	sub.request_id = r->id;
	sub.n_prompt = (size_t)r->n_prompt;
	sub.prompt = r->prompt;
	sub.params = &sp;
	ProtobufCBinaryData imgs[GS_COORD_MAX_IMAGES];
	if (r->images) { /* views into the shared blob, no copy */
		for (int32_t i = 0; i < r->images->n && i < GS_COORD_MAX_IMAGES; i++)
			imgs[i] = (ProtobufCBinaryData){ .len = r->images->each,
							 .data = r->images->px + r->images->each * (size_t)i };
		sub.n_images = (size_t)(r->images->n < GS_COORD_MAX_IMAGES ? r->images->n : GS_COORD_MAX_IMAGES);
		sub.images = imgs;
	}
	m.body_case = GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_SUBMIT;
	m.submit = &sub;
	return engine_send(e, &m);
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
		done = creq_apply_event(r, ev, &cancel, &n_new);
		pthread_mutex_lock(&c->mu);
		c->generated_tokens += (uint64_t)n_new;
		c->mstats[r->model->index].generated_tokens += (uint64_t)n_new;
		bool send_cancel = cancel && !r->cancel_sent && r->eng == e;
		if (send_cancel)
			r->cancel_sent = true;
		bool drop_engine_ref = done && r->eng == e;
		if (drop_engine_ref)
			creq_detach_locked(r);
		pthread_mutex_unlock(&c->mu);
		if (send_cancel)
			engine_send_cancel(e, r->id);
		creq_notify(r);
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
		creq_detach_locked(r);
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
			bool ch = creq_finish_locked(r, GS_CFIN_ERROR, GS_CERR_UNAVAILABLE, msg);
			pthread_mutex_unlock(&r->mu);
			if (ch)
				creq_notify(r);
		}
		creq_unref(r);
	}
	for (int i = 0; i < n_moved; i++) {
		struct gs_creq *r = moved[i];
		char why[256];
		enum gs_cerr err = coord_dispatch(c, r, e, why, sizeof(why));
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
			bool ch = creq_finish_locked(r, GS_CFIN_ERROR, GS_CERR_UNAVAILABLE, msg);
			pthread_mutex_unlock(&r->mu);
			if (ch)
				creq_notify(r);
		}
		creq_unref(r); /* the old engine's reference */
	}
}

/* The engine is refused at its hello: the reason goes to the log, is counted, and is sent to the
 * engine as an Error frame so that its own log says why (it reconnects later, with backoff). */
static bool hello_refuse(struct engine *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool hello_refuse(struct engine *e, const char *fmt, ...)
{
	Gemmashard__Engine__Error er = GEMMASHARD__ENGINE__ERROR__INIT;
	Gemmashard__Engine__EngineMessage m = GEMMASHARD__ENGINE__ENGINE_MESSAGE__INIT;
	char msg[600];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	gs_log(GS_LOG_WARN, "coordinator: engine %s (%s) refused: %s", e->id, e->peer, msg);
	pthread_mutex_lock(&e->c->mu);
	e->c->hello_refused++;
	pthread_mutex_unlock(&e->c->mu);
	er.code = GS_ERR_INVALID_ARG;
	er.message = msg;
	m.body_case = GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_ERROR;
	m.error = &er;
	gs_stream_set_send_timeout(e->s, 200);
	if (engine_send(e, &m) == GS_OK) {
		/* Close gently: a reset would discard the frame before the engine reads it. What the
		 * engine sends meanwhile (heartbeats) is read and thrown away, for 0.5 s at most. */
		double end = gs_now_s() + 0.5;
		char junk[4096];
		size_t got = 1;
		shutdown(e->fd, SHUT_WR);
		while (got > 0 && gs_now_s() < end)
			if (gs_stream_read(e->s, junk, sizeof(junk), (int)((end - gs_now_s()) * 1e3) + 1, &got) != GS_OK)
				break;
	}
	gs_clear_error();
	return false;
}

static bool hello_ok(struct gs_coord *c, struct engine *e, const Gemmashard__Engine__EngineHello *h)
{
	const struct gs_coord_model *m = NULL;

	snprintf(e->id, sizeof(e->id), "%s", h->engine_id && h->engine_id[0] ? h->engine_id : e->peer);
	for (int i = 0; i < c->n_models && h->model_id; i++)
		if (strcmp(h->model_id, c->models[i].name) == 0)
			m = &c->models[i];
	if (!m) {
		char names[512];
		size_t k = 0;
		names[0] = '\0';
		for (int i = 0; i < c->n_models && k < sizeof(names); i++)
			k += (size_t)snprintf(names + k, sizeof(names) - k, "%s\"%s\"", i ? ", " : "", c->models[i].name);
		return hello_refuse(e, "the engine serves model \"%.128s\", which this coordinator does not serve "
				    "(it serves %s): start the engine with --served-name set to one of those, or the "
				    "coordinator with --model for it", h->model_id ? h->model_id : "", names);
	}
	if (h->tp < 1 || h->max_context < 2 || h->kv_blocks_total < 1 || h->max_seqs < 1)
		return hello_refuse(e, "invalid hello (tp %d, context %d, blocks %d, seqs %d)", h->tp, h->max_context,
				    h->kv_blocks_total, h->max_seqs);
	if (h->cp < 0 || h->cp > GS_COORD_MAX_CP)
		return hello_refuse(e, "invalid hello: %d context-parallel groups (1..%d)", h->cp, GS_COORD_MAX_CP);
	if (h->kv_block_tokens != GS_KV_BLOCK_TOKENS)
		return hello_refuse(e, "the engine uses %d-token KV blocks, the coordinator %d", h->kv_block_tokens,
				    GS_KV_BLOCK_TOKENS);
	if (h->vocab_size < gs_tokenizer_n_vocab(m->tok) - 1 && h->vocab_size < m->vocab_size)
		return hello_refuse(e, "the engine has a vocabulary of %d, model \"%s\"'s tokenizer needs %d", h->vocab_size,
				    m->name, m->vocab_size);
	/* vision: the engine's tower must take the images the coordinator prepares for this model */
	if (h->vision != m->vision.present)
		return hello_refuse(e, "the engine %s a vision tower, but model \"%s\"'s config.json (%s) %s one: the "
				    "engine and the coordinator load different checkpoints", h->vision ? "has" : "has no",
				    m->name, m->dir, m->vision.present ? "has" : "has no");
	if (m->vision.present && (h->image_size != m->vision.image_size ||
				  h->mm_tokens_per_image != m->vision.mm_tokens_per_image))
		return hello_refuse(e, "the engine's vision tower takes %dx%d images as %d tokens, model \"%s\"'s "
				    "config.json (%s) says %dx%d as %d", h->image_size, h->image_size,
				    h->mm_tokens_per_image, m->name, m->dir, m->vision.image_size, m->vision.image_size,
				    m->vision.mm_tokens_per_image);
	/* an engine built before the field existed computes in fp32 */
	const char *nm = h->numerics && h->numerics[0] ? h->numerics : "fp32";
	if (strcmp(nm, "fp32") != 0 && strcmp(nm, "bf16") != 0 && strcmp(nm, "cuda") != 0)
		return hello_refuse(e, "unknown numerics \"%.16s\" (fp32, bf16, cuda)", nm);
	e->model = m;
	e->vision = h->vision;
	snprintf(e->numerics, sizeof(e->numerics), "%s", nm);
	e->tp = h->tp;
	e->cp = h->cp > 0 ? h->cp : 1; /* an engine built before the field existed has none */
	e->max_context = h->max_context;
	e->kv_blocks_total = h->kv_blocks_total;
	e->max_seqs = h->max_seqs;
	e->vocab = h->vocab_size;
	e->hb_kv_free = h->kv_blocks_total;
	for (int32_t g = 0; g < e->cp; g++) { /* idle until the first heartbeat: all free */
		e->hb_group_free[g] = h->kv_blocks_total / e->cp;
		e->hb_group_used[g] = 0;
	}
	e->hb_sharded = 0;
	e->prefix_cache = h->prefix_cache;
	return true;
}

/* ---- engine link: authentication (ARCHITECTURE.md §7 "Security") ------------------------- */

/* Counts a refused connection; logs it unless the same reason was logged in the last 5 s. */
static void auth_refused(struct gs_coord *c, const char *peer, enum gs_auth_fail why, const char *reason)
{
	double now = gs_now_s();
	uint64_t more = 0;
	bool log;

	pthread_mutex_lock(&c->mu);
	c->auth_failures[why]++;
	log = c->auth_logged[why] == 0 || now - c->auth_logged[why] >= GS_AUTH_LOG_EVERY_S;
	if (log) {
		more = c->auth_unlogged[why];
		c->auth_unlogged[why] = 0;
		c->auth_logged[why] = now;
	} else {
		c->auth_unlogged[why]++;
	}
	pthread_mutex_unlock(&c->mu);
	if (log && more)
		gs_log(GS_LOG_WARN, "coordinator: engine connection from %s refused (%s): %s (and %" PRIu64 " more for "
		       "this reason since the last such line)", peer, gs_auth_fail_label(why), reason, more);
	else if (log)
		gs_log(GS_LOG_WARN, "coordinator: engine connection from %s refused (%s): %s", peer,
		       gs_auth_fail_label(why), reason);
}

/* A plaintext engine on a TLS port gets one plaintext Error frame saying why, so that its own
 * log explains the refusal. Nothing else ever goes to it. */
static void tell_plaintext_engine(int fd)
{
	Gemmashard__Engine__Error er = GEMMASHARD__ENGINE__ERROR__INIT;
	Gemmashard__Engine__EngineMessage m = GEMMASHARD__ENGINE__ENGINE_MESSAGE__INIT;
	struct gs_stream *s;
	int d = dup(fd);

	if (d < 0 || gs_stream_plain(d, &s) != GS_OK) {
		gs_clear_error();
		return;
	}
	gs_stream_set_send_timeout(s, 200);
	er.code = GS_ERR_INVALID_ARG;
	er.message = "this coordinator requires mutual TLS on the engine link: start the engine with --cluster-ca, "
		     "--cluster-cert and --cluster-key (deploy/make-cluster-certs.sh)";
	m.body_case = GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_ERROR;
	m.error = &er;
	if (gs_engine_msg_send(s, &m) == GS_OK) {
		/* Close gently: a reset would discard the frame before the engine reads it. What the
		 * engine sends meanwhile (its hello) is read and thrown away unparsed, for 0.5 s at most. */
		double end = gs_now_s() + 0.5;
		char junk[4096];
		size_t got = 1;
		shutdown(d, SHUT_WR);
		while (got > 0 && gs_now_s() < end)
			if (gs_stream_read(s, junk, sizeof(junk), (int)((end - gs_now_s()) * 1e3) + 1, &got) != GS_OK)
				break;
	}
	gs_clear_error();
	gs_stream_free(s);
}

/* Plaintext link: an engine that starts a TLS handshake here has certificates this
 * coordinator lacks; say so instead of reading its ClientHello as a frame. */
static bool plaintext_peer_wants_tls(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	unsigned char b[2];
	ssize_t n;

	if (poll(&p, 1, GS_HELLO_TIMEOUT_MS) <= 0)
		return false; /* the hello's own timeout reports it */
	n = recv(fd, b, sizeof(b), MSG_PEEK);
	return n > 0 && gs_net_looks_like_tls(b, (size_t)n);
}

/* Authenticates the connection (TLS) or wraps it (plaintext) into e->s. False: refused,
 * counted and logged; nothing was read from the peer as a message. */
static bool engine_link_open(struct engine *e)
{
	struct gs_coord *c = e->c;
	enum gs_auth_fail why = GS_AUTH_OK;
	struct gs_stream *s = NULL;
	enum gs_status st;

	/* The stream owns a descriptor of its own; e->fd stays for shutdown() from other threads. */
	int d = dup(e->fd);

	if (d < 0) {
		st = gs_errorf(GS_ERR_IO, "dup: %s", strerror(errno));
	} else if (c->tls) {
		st = gs_cluster_tls_accept(c->tls, d, GS_HANDSHAKE_TIMEOUT_MS, &s, &why);
		if (st != GS_OK)
			close(d);
		if (st != GS_OK && why == GS_AUTH_NOT_TLS) {
			char reason[512];
			snprintf(reason, sizeof(reason), "%s", gs_last_error());
			tell_plaintext_engine(e->fd);
			gs_errorf(st, "%s", reason);
		}
	} else if (plaintext_peer_wants_tls(e->fd)) {
		close(d);
		why = GS_AUTH_TLS_UNEXPECTED;
		st = gs_errorf(GS_ERR_IO, "the engine started a TLS handshake, but this coordinator has no cluster "
			       "certificates (plaintext engine link): give it --cluster-ca, --cluster-cert and "
			       "--cluster-key, or start the engine without them");
	} else {
		st = gs_stream_plain(d, &s);
	}
	if (st != GS_OK) {
		if (why == GS_AUTH_OK)
			gs_log(GS_LOG_WARN, "coordinator: engine connection from %s: %s", e->peer, gs_last_error());
		else
			auth_refused(c, e->peer, why, gs_last_error());
		gs_clear_error();
		return false;
	}
	pthread_mutex_lock(&e->wmu);
	e->s = s;
	pthread_mutex_unlock(&e->wmu);
	return true;
}

static void *engine_reader(void *arg)
{
	struct engine *e = arg;
	struct gs_coord *c = e->c;
	Gemmashard__Engine__EngineMessage *m = NULL;
	const char *reason = "link closed";
	char buf[600];
	bool opened = engine_link_open(e);

	atomic_fetch_sub(&c->handshaking, 1);
	if (!opened)
		goto out_gone;
	if (gs_engine_msg_recv(e->s, GS_LINK_MAX_FRAME, GS_HELLO_TIMEOUT_MS, &m) != GS_OK ||
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
	gs_log(GS_LOG_INFO, "coordinator: engine %s (%s) up over %s for model \"%s\": T=%d, C=%d, context %d, %d KV "
	       "blocks, %d seqs, %s%s", e->id, e->peer, gs_stream_describe(e->s), e->model->name, e->tp, e->cp,
	       e->max_context, e->kv_blocks_total, e->max_seqs, e->numerics, e->vision ? ", vision" : "");

	while (!atomic_load(&c->stopping)) {
		int pr = gs_stream_wait(e->s, 200);
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
		if (gs_engine_msg_recv(e->s, GS_LINK_MAX_FRAME, 10000, &m) != GS_OK) {
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
			/* per group: only a heartbeat with one figure per group of the hello's grid */
			if (h->n_kv_group_blocks_free == (size_t)e->cp && h->n_kv_group_blocks_used == (size_t)e->cp) {
				memcpy(e->hb_group_free, h->kv_group_blocks_free, sizeof(int32_t) * (size_t)e->cp);
				memcpy(e->hb_group_used, h->kv_group_blocks_used, sizeof(int32_t) * (size_t)e->cp);
			} else if (e->cp == 1 && h->kv_blocks_free >= 0 && h->kv_blocks_free <= e->kv_blocks_total) {
				/* an engine built before the fields existed */
				e->hb_group_free[0] = h->kv_blocks_free;
				e->hb_group_used[0] = e->kv_blocks_total - h->kv_blocks_free;
			}
			e->hb_sharded = h->sharded_running;
			e->hb_steps = h->steps;
			e->hb_step_s = h->step_seconds_total;
			e->hb_tokens = h->tokens_generated;
			e->hb_prefix_hit = h->prefix_cache_hit_tokens;
			e->hb_prefix_query = h->prefix_cache_query_tokens;
			e->hb_prefix_evictions = h->prefix_cache_evictions;
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
	gs_stream_free(e->s);
	e->s = NULL;
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
void coord_reap_engines(struct gs_coord *c, bool all)
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

void *coord_listener_main(void *arg)
{
	struct gs_coord *c = arg;
	double busy_logged = -1e30;

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
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		/* Each connection authenticates in its own thread (with a deadline); a crowd of silent
		 * peers is turned away here instead of piling up threads. */
		if (atomic_load(&c->handshaking) >= GS_MAX_HANDSHAKING) {
			close(fd);
			if (gs_now_s() - busy_logged >= GS_AUTH_LOG_EVERY_S) {
				gs_log(GS_LOG_WARN, "coordinator: %d engine connections are still authenticating; "
				       "closing new ones", GS_MAX_HANDSHAKING);
				busy_logged = gs_now_s();
			}
			continue;
		}
		struct engine *e = calloc(1, sizeof(*e));
		if (!e) {
			close(fd);
			continue;
		}
		e->c = c;
		e->fd = fd;
		pthread_mutex_init(&e->wmu, NULL);
		creq_list_init(&e->head);
		char host[INET6_ADDRSTRLEN] = "?", port[16] = "?";
		getnameinfo((struct sockaddr *)&sa, sl, host, sizeof(host), port, sizeof(port),
			    NI_NUMERICHOST | NI_NUMERICSERV);
		snprintf(e->peer, sizeof(e->peer), "%s:%s", host, port);
		snprintf(e->id, sizeof(e->id), "%s", e->peer);
		atomic_fetch_add(&c->handshaking, 1);
		if (pthread_create(&e->thread, NULL, engine_reader, e) != 0) {
			atomic_fetch_sub(&c->handshaking, 1);
			close(fd);
			pthread_mutex_destroy(&e->wmu);
			free(e);
			continue;
		}
		pthread_mutex_lock(&c->mu);
		e->next = c->engines;
		c->engines = e;
		pthread_mutex_unlock(&c->mu);
		coord_reap_engines(c, false);
	}
	return NULL;
}

/* Heartbeat timeouts, request deadlines, reaping. */
void *coord_monitor_main(void *arg)
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
			creq_end(late[i], GS_CFIN_ERROR, GS_CERR_DEADLINE, msg, true);
			creq_unref(late[i]);
		}
		coord_reap_engines(c, false);
	}
	return NULL;
}
