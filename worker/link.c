#include "gs_link.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine.pb-c.h"
#include "gs_params_wire.h"
#include "gs_frame.h"
#include "gs_util.h"

#define LINK_RECV_TIMEOUT_MS    1000  /* for the rest of a frame once it has started */
#define LINK_CONNECT_TIMEOUT_MS 2000
#define LINK_IDLE_POLL_MS       50    /* longest wait for work while the engine is idle */
#define LINK_MSGS_PER_STEP      256   /* frames taken in between two engine steps */
#define LINK_RETRY_LOG_S        5.0
#define LINK_BACKOFF_MIN_S      0.1
#define LINK_BACKOFF_MAX_S      1.0
#define LINK_HANDSHAKE_MS       5000  /* TLS handshake, including the coordinator's acceptance */

/* A request in flight on this link: open addressing, linear probing, backward-shift removal. */
struct req_slot {
	uint64_t id;
	bool     used;
	bool     cancelled;   /* gs_engine_cancel already called */
	int32_t  n_top;       /* top_logprobs per token (the request's own) */
	int32_t  group;       /* its TokenEvent in the step being sent; -1 none */
};

struct req_table {
	struct req_slot *s;   /* [cap], cap a power of two */
	size_t           cap, n;
};

/* One step's events, as they go out: grown when more cancellations are pending than fit. */
struct step_buf {
	struct gs_token_event           *ev;        /* [cap] engine events */
	int32_t                          cap;
	int32_t                         *ev_group;  /* [cap] TokenEvent of each engine event */
	Gemmashard__Engine__TokenEvent  *te;        /* [cap] one per request of the step */
	Gemmashard__Engine__TokenEvent **te_ptr;    /* [cap] */
	int32_t                         *n_top;     /* [cap] per TokenEvent */
	int32_t                         *tokens;    /* [cap] */
	float                           *logprobs;  /* [cap] */
	int32_t                         *top_ids;   /* [cap × GS_MAX_TOP_LOGPROBS] */
	float                           *top_lps;   /* [cap × GS_MAX_TOP_LOGPROBS] */
};

struct link {
	struct gs_engine            *e;
	const struct gs_link_config *cfg;
	volatile sig_atomic_t       *stop;
	char                         host[256], port[16], engine_id[320];
	struct gs_stream            *s;               /* NULL: not connected */
	double                       up_since;        /* when the current link came up */
	double                       drop_logged;     /* last "link lost" line for a link that died at once */
	bool                         refused;         /* the last link died at once (the coordinator refused it) */
	double                       backoff_s;       /* wait before the next connect attempt */
	double                       next_hb;
	int32_t                      max_seqs;
	int32_t                      pending_cancels; /* gs_engine_cancel calls since the last step */
	enum gs_status               engine_st;       /* an engine failure while connecting */
	struct req_table             reqs;
	struct step_buf              b;
};

/* ---- requests in flight ---------------------------------------------------------------- */

static size_t req_hash(uint64_t id, size_t cap)
{
	id ^= id >> 30, id *= 0xbf58476d1ce4e5b9ull;
	id ^= id >> 27, id *= 0x94d049bb133111ebull;
	id ^= id >> 31;
	return (size_t)id & (cap - 1);
}

static struct req_slot *req_find(struct req_table *t, uint64_t id)
{
	for (size_t i = req_hash(id, t->cap);; i = (i + 1) & (t->cap - 1)) {
		if (!t->s[i].used)
			return NULL;
		if (t->s[i].id == id)
			return &t->s[i];
	}
}

/* Room for `more` entries (so the inserts after a successful submit cannot fail). */
static enum gs_status req_reserve(struct req_table *t, size_t more)
{
	struct req_slot *old = t->s;
	size_t old_cap = t->cap, cap = t->cap ? t->cap : 64;

	while (2 * (t->n + more) > cap)
		cap *= 2;
	if (cap == t->cap)
		return GS_OK;
	t->s = calloc(cap, sizeof(*t->s));
	if (!t->s) {
		t->s = old;
		return gs_errorf(GS_ERR_NOMEM, "out of memory for %zu requests in flight", t->n + 1);
	}
	t->cap = cap;
	for (size_t i = 0; i < old_cap; i++) {
		if (!old[i].used)
			continue;
		size_t j = req_hash(old[i].id, cap);
		while (t->s[j].used)
			j = (j + 1) & (cap - 1);
		t->s[j] = old[i];
	}
	free(old);
	return GS_OK;
}

static struct req_slot *req_insert(struct req_table *t, uint64_t id)
{
	size_t i = req_hash(id, t->cap);

	GS_ASSERT(2 * (t->n + 1) <= t->cap);
	while (t->s[i].used)
		i = (i + 1) & (t->cap - 1);
	t->s[i] = (struct req_slot){ .id = id, .used = true, .group = -1 };
	t->n++;
	return &t->s[i];
}

static void req_remove(struct req_table *t, struct req_slot *r)
{
	size_t mask = t->cap - 1, hole = (size_t)(r - t->s), i = hole;

	t->s[hole].used = false;
	t->n--;
	/* Backward shift: move later members of the probe run into the hole when their home
	 * position does not lie cyclically in (hole, i]. */
	for (;;) {
		i = (i + 1) & mask;
		if (!t->s[i].used)
			return;
		size_t home = req_hash(t->s[i].id, t->cap);
		if (((i - home) & mask) >= ((i - hole) & mask)) {
			t->s[hole] = t->s[i];
			t->s[i].used = false;
			hole = i;
		}
	}
}

static void req_clear(struct req_table *t)
{
	if (t->s)
		memset(t->s, 0, t->cap * sizeof(*t->s));
	t->n = 0;
}

/* ---- buffers ------------------------------------------------------------------------- */

static void step_buf_free(struct step_buf *b)
{
	free(b->ev), free(b->ev_group), free(b->te), free(b->te_ptr), free(b->n_top);
	free(b->tokens), free(b->logprobs), free(b->top_ids), free(b->top_lps);
	memset(b, 0, sizeof(*b));
}

/* gs_engine_step wants room for every running sequence plus every pending cancellation. */
static enum gs_status step_buf_reserve(struct step_buf *b, int32_t need)
{
	struct step_buf nb = { 0 };
	size_t n, top;

	if (need <= b->cap)
		return GS_OK;
	nb.cap = need > 2 * b->cap ? need : 2 * b->cap;
	n = (size_t)nb.cap;
	top = n * GS_MAX_TOP_LOGPROBS;
	nb.ev = calloc(n, sizeof(*nb.ev));
	nb.ev_group = calloc(n, sizeof(*nb.ev_group));
	nb.te = calloc(n, sizeof(*nb.te));
	nb.te_ptr = calloc(n, sizeof(*nb.te_ptr));
	nb.n_top = calloc(n, sizeof(*nb.n_top));
	nb.tokens = calloc(n, sizeof(*nb.tokens));
	nb.logprobs = calloc(n, sizeof(*nb.logprobs));
	nb.top_ids = calloc(top, sizeof(*nb.top_ids));
	nb.top_lps = calloc(top, sizeof(*nb.top_lps));
	if (!nb.ev || !nb.ev_group || !nb.te || !nb.te_ptr || !nb.n_top || !nb.tokens || !nb.logprobs || !nb.top_ids ||
	    !nb.top_lps) {
		step_buf_free(&nb);
		return gs_errorf(GS_ERR_NOMEM, "out of memory for %d token events", need);
	}
	step_buf_free(b);
	*b = nb;
	return GS_OK;
}

/* ---- connection ---------------------------------------------------------------------- */

enum gs_status gs_link_parse_addr(const char *addr, char *host, size_t host_cap, char *port, size_t port_cap)
{
	const char *colon, *h = addr, *h_end;
	char *end;
	long p;

	if (!addr || !*addr)
		return gs_errorf(GS_ERR_INVALID_ARG, "coordinator address is empty (want HOST:PORT)");
	if (addr[0] == '[') {
		h = addr + 1;
		h_end = strchr(h, ']');
		colon = h_end && h_end[1] == ':' ? h_end + 1 : NULL;
	} else {
		colon = strrchr(addr, ':');
		h_end = colon;
		if (colon && memchr(addr, ':', (size_t)(colon - addr)))
			colon = NULL; /* a bare IPv6 address: needs brackets */
	}
	if (!colon || h_end == h)
		return gs_errorf(GS_ERR_INVALID_ARG, "coordinator address '%s' is not HOST:PORT ([V6ADDR]:PORT for IPv6)",
				 addr);
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (!colon[1] || *end || errno || p < 1 || p > 65535)
		return gs_errorf(GS_ERR_INVALID_ARG, "coordinator address '%s': port must be 1..65535", addr);
	if ((size_t)(h_end - h) >= host_cap || port_cap < 6)
		return gs_errorf(GS_ERR_INVALID_ARG, "coordinator address '%s': host name too long", addr);
	memcpy(host, h, (size_t)(h_end - h));
	host[h_end - h] = '\0';
	snprintf(port, port_cap, "%ld", p);
	return GS_OK;
}

static enum gs_status wait_connected(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int err = 0, r = poll(&p, 1, LINK_CONNECT_TIMEOUT_MS);
	socklen_t len = sizeof(err);

	if (r == 0)
		return gs_errorf(GS_ERR_IO, "connect timed out after %d ms", LINK_CONNECT_TIMEOUT_MS);
	if (r < 0)
		return gs_errorf(GS_ERR_IO, "connect: %s", strerror(errno));
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	return err ? gs_errorf(GS_ERR_IO, "connect: %s", strerror(err)) : GS_OK;
}

/* A connected socket, or -1 (reason in gs_last_error). */
static int link_connect(const char *host, const char *port)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *res = NULL;
	int rc = getaddrinfo(host, port, &hints, &res), fd = -1, one = 1;

	if (rc != 0) {
		gs_errorf(GS_ERR_IO, "resolving '%s': %s", host, gai_strerror(rc));
		return -1;
	}
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
		if (fd < 0) {
			gs_errorf(GS_ERR_IO, "socket: %s", strerror(errno));
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS && wait_connected(fd) == GS_OK)
			break;
		if (errno != EINPROGRESS)
			gs_errorf(GS_ERR_IO, "connect: %s", strerror(errno));
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return -1;
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0) {
		gs_errorf(GS_ERR_IO, "setting up the socket: %s", strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static void sleep_s(double s)
{
	struct timespec t = { .tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9) };
	nanosleep(&t, NULL); /* a signal cuts it short: the caller looks at the stop flag */
}

/* The stream over a connected socket: the TLS handshake (both certificates checked) or
 * plaintext. NULL with the reason in gs_last_error; fd is closed either way on failure. */
static struct gs_stream *link_open(struct link *l, int fd)
{
	enum gs_auth_fail why;
	struct gs_stream *s = NULL;

	if (!l->cfg->tls) {
		if (gs_stream_plain(fd, &s) != GS_OK)
			return NULL;
	} else if (gs_cluster_tls_connect(l->cfg->tls, fd, l->host, LINK_HANDSHAKE_MS, &s, &why) != GS_OK) {
		close(fd);
		if (why == GS_AUTH_CLOSED)
			gs_error_prefix(GS_ERR_IO, "TLS handshake (%s; is the coordinator running without --cluster-ca, "
					"--cluster-cert and --cluster-key?)", gs_auth_fail_label(why));
		else
			gs_error_prefix(GS_ERR_IO, "TLS handshake (%s)", gs_auth_fail_label(why));
		return NULL;
	}
	gs_stream_set_send_timeout(s, GS_LINK_SEND_TIMEOUT_S * 1000);
	return s;
}

/* Connect, retrying until it works or a stop is requested (false). */
static bool connect_loop(struct link *l)
{
	double last_log = -1e30;
	unsigned failed = 0;

	while (!*l->stop) {
		/* The followers wait for plans meanwhile: keep their watchdog fed. */
		if ((l->engine_st = gs_engine_keepalive(l->e)) != GS_OK)
			return false;
		if (l->backoff_s > 0)
			sleep_s(l->backoff_s);
		if (*l->stop)
			break;
		int fd = link_connect(l->host, l->port);
		bool reached = fd >= 0;
		l->s = reached ? link_open(l, fd) : NULL;
		if (l->s) {
			/* After links that died at once, as often as their "lost" lines only. */
			if (!l->refused || gs_now_s() - l->drop_logged >= LINK_RETRY_LOG_S)
				gs_log(GS_LOG_INFO, "connected to the coordinator at %s:%s as engine '%s' over %s%s",
				       l->host, l->port, l->engine_id, gs_stream_describe(l->s),
				       failed ? " (after retrying)" : "");
			gs_clear_error();
			return true;
		}
		failed++;
		if (gs_now_s() - last_log >= LINK_RETRY_LOG_S) {
			gs_log(GS_LOG_WARN, "%s the coordinator at %s:%s: %s (attempt %u; retrying)",
			       reached ? "no link with" : "cannot reach", l->host, l->port, gs_last_error(), failed);
			last_log = gs_now_s();
		}
		gs_clear_error();
		l->backoff_s = l->backoff_s < LINK_BACKOFF_MIN_S ? LINK_BACKOFF_MIN_S
			       : l->backoff_s * 2 < LINK_BACKOFF_MAX_S ? l->backoff_s * 2 : LINK_BACKOFF_MAX_S;
	}
	return false;
}

/* ---- messages out -------------------------------------------------------------------- */

/* Context parallelism: how many groups' figures the stats hold (1 without). */
static int32_t stats_groups(const struct gs_engine_stats *s)
{
	return s->cp > 1 ? (s->cp < GS_KV_MAX_CP ? s->cp : GS_KV_MAX_CP) : 1;
}

/* Global-layer blocks per rank over every group: what a sequence spread over them may take
 * (every group's pool is the leader's size). */
static int32_t kv_blocks_all_groups(const struct gs_engine_stats *s)
{
	int64_t n = (int64_t)s->kv_global_total * stats_groups(s);
	return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

static enum gs_status send_hello(struct link *l)
{
	Gemmashard__Engine__EngineMessage m = GEMMASHARD__ENGINE__ENGINE_MESSAGE__INIT;
	Gemmashard__Engine__EngineHello h = GEMMASHARD__ENGINE__ENGINE_HELLO__INIT;
	struct gs_engine_stats s;

	gs_engine_get_stats(l->e, &s);
	h.engine_id = l->engine_id;
	h.model_id = (char *)l->cfg->model_id;
	h.tp = l->cfg->tp;
	h.cp = l->cfg->cp;
	h.kv_block_tokens = GS_KV_BLOCK;
	h.kv_blocks_total = kv_blocks_all_groups(&s);
	h.max_context = s.max_context;
	h.vocab_size = l->cfg->vocab_size;
	h.max_seqs = s.max_seqs;
	h.numerics = (char *)(l->cfg->numerics ? l->cfg->numerics : "fp32");
	h.prefix_cache = s.prefix_cache;
	h.vision = l->cfg->vision; /* the coordinator checks the shape against its config.json */
	h.image_size = l->cfg->vision ? l->cfg->image_size : 0;
	h.mm_tokens_per_image = l->cfg->vision ? l->cfg->mm_tokens_per_image : 0;
	m.body_case = GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_HELLO;
	m.hello = &h;
	return gs_engine_msg_send(l->s, &m);
}

static enum gs_status send_heartbeat(struct link *l)
{
	Gemmashard__Engine__EngineMessage m = GEMMASHARD__ENGINE__ENGINE_MESSAGE__INIT;
	Gemmashard__Engine__Heartbeat h = GEMMASHARD__ENGINE__HEARTBEAT__INIT;
	struct gs_engine_stats s;
	int64_t free_all = 0;

	gs_engine_get_stats(l->e, &s);
	h.running = s.running;
	h.waiting = s.waiting;
	h.n_kv_group_blocks_free = h.n_kv_group_blocks_used = (size_t)stats_groups(&s);
	h.kv_group_blocks_free = s.kv_group_free;
	h.kv_group_blocks_used = s.kv_group_used;
	for (int32_t c = 0; c < stats_groups(&s); c++)
		free_all += s.kv_group_free[c];
	h.kv_blocks_free = s.cp > 1 ? (free_all > INT32_MAX ? INT32_MAX : (int32_t)free_all) : s.kv_global_free;
	h.kv_blocks_total = kv_blocks_all_groups(&s);
	h.sharded_running = s.sharded_running;
	h.steps = s.steps;
	h.last_step_ms = (float)(s.last_step_s * 1e3);
	h.step_seconds_total = s.step_s_total;
	h.tokens_generated = s.tokens_generated;
	h.prefix_cache_hit_tokens = s.prefix_hit_tokens;
	h.prefix_cache_query_tokens = s.prefix_query_tokens;
	h.prefix_cache_evictions = s.prefix_evictions;
	m.body_case = GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_HEARTBEAT;
	m.heartbeat = &h;
	l->next_hb = gs_now_s() + GS_LINK_HEARTBEAT_S;
	return gs_engine_msg_send(l->s, &m);
}

static enum gs_status send_events(struct link *l, int32_t n)
{
	Gemmashard__Engine__EngineMessage m = GEMMASHARD__ENGINE__ENGINE_MESSAGE__INIT;
	Gemmashard__Engine__TokenEvents evs = GEMMASHARD__ENGINE__TOKEN_EVENTS__INIT;

	evs.n_events = (size_t)n;
	evs.events = l->b.te_ptr;
	m.body_case = GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_EVENTS;
	m.events = &evs;
	return gs_engine_msg_send(l->s, &m);
}

/* A request that never started: one TokenEvent with FINISH_ERROR and the reason. */
static enum gs_status send_request_error(struct link *l, uint64_t id, const char *why)
{
	Gemmashard__Engine__TokenEvent *t = &l->b.te[0];

	gemmashard__engine__token_event__init(t);
	t->request_id = id;
	t->finish = GEMMASHARD__ENGINE__FINISH__FINISH_ERROR;
	t->error = (char *)why;
	l->b.te_ptr[0] = t;
	return send_events(l, 1);
}

static Gemmashard__Engine__Finish finish_proto(enum gs_finish f)
{
	static const Gemmashard__Engine__Finish map[] = {
		[GS_FINISH_NONE] = GEMMASHARD__ENGINE__FINISH__FINISH_NONE,
		[GS_FINISH_STOP] = GEMMASHARD__ENGINE__FINISH__FINISH_STOP,
		[GS_FINISH_LENGTH] = GEMMASHARD__ENGINE__FINISH__FINISH_LENGTH,
		[GS_FINISH_CANCELLED] = GEMMASHARD__ENGINE__FINISH__FINISH_CANCELLED,
	};
	_Static_assert(sizeof(map) / sizeof(map[0]) == GS_FINISH_COUNT, "finish map");
	return (unsigned)f < GS_FINISH_COUNT ? map[f] : GEMMASHARD__ENGINE__FINISH__FINISH_ERROR;
}

/* The engine's events of one step as TokenEvents: one per request, tokens in order, n_top
 * alternatives per token (the request's top_logprobs; padded with id -1 if fewer exist). */
static int32_t group_events(struct link *l, int32_t n_ev)
{
	struct step_buf *b = &l->b;
	int32_t ng = 0;
	size_t tok_off = 0, top_off = 0;

	for (int32_t i = 0; i < n_ev; i++) {
		const struct gs_token_event *x = &b->ev[i];
		struct req_slot *r = req_find(&l->reqs, x->id);
		int32_t g = r ? r->group : -1;

		for (int32_t j = 0; !r && j < ng && g < 0; j++)
			if (b->te[j].request_id == x->id)
				g = j; /* not in the table (cannot happen): still one TokenEvent per id */
		if (g < 0) {
			g = ng++;
			gemmashard__engine__token_event__init(&b->te[g]);
			b->te[g].request_id = x->id;
			b->n_top[g] = r ? r->n_top : x->n_top;
			b->te_ptr[g] = &b->te[g];
			if (r)
				r->group = g;
		}
		b->ev_group[i] = g;
		b->te[g].n_tokens += x->token >= 0;
	}
	/* Each TokenEvent's tokens and alternatives are contiguous slices of the step arrays. */
	for (int32_t g = 0; g < ng; g++) {
		Gemmashard__Engine__TokenEvent *t = &b->te[g];
		t->tokens = b->tokens + tok_off;
		t->logprobs = b->logprobs + tok_off;
		t->top_ids = b->top_ids + top_off;
		t->top_logprobs = b->top_lps + top_off;
		tok_off += t->n_tokens;
		top_off += t->n_tokens * (size_t)b->n_top[g];
		t->n_tokens = 0;
	}
	for (int32_t i = 0; i < n_ev; i++) {
		const struct gs_token_event *x = &b->ev[i];
		int32_t g = b->ev_group[i], nt = b->n_top[g];
		Gemmashard__Engine__TokenEvent *t = &b->te[g];

		if (x->token >= 0) {
			size_t k = t->n_tokens++;
			t->tokens[k] = x->token;
			t->logprobs[k] = x->logprob;
			for (int32_t j = 0; j < nt; j++) {
				t->top_ids[k * nt + j] = j < x->n_top ? x->top_ids[j] : -1;
				t->top_logprobs[k * nt + j] = j < x->n_top ? x->top_logprobs[j] : -INFINITY;
			}
			t->n_logprobs = t->n_tokens;
			t->n_top_ids = t->n_top_logprobs = t->n_tokens * (size_t)nt;
		}
		if (x->finish != GS_FINISH_NONE)
			t->finish = finish_proto(x->finish);
		t->prompt_tokens = x->n_prompt;
		t->completion_tokens = x->n_generated;
	}
	return ng;
}

/* One engine step. Engine failures are returned; a failed send only sets *lost. */
static enum gs_status step_once(struct link *l, bool send, bool *lost)
{
	int32_t n_ev = 0, ng;
	enum gs_status st;

	GS_TRY(step_buf_reserve(&l->b, l->max_seqs + l->pending_cancels));
	GS_TRY(gs_engine_step(l->e, l->b.ev, l->b.cap, &n_ev));
	l->pending_cancels = 0;
	if (!send || n_ev == 0)
		return GS_OK;
	ng = group_events(l, n_ev);
	st = send_events(l, ng);
	/* Finished requests leave the table whether or not the frame went out. */
	for (int32_t g = 0; g < ng; g++) {
		struct req_slot *r = req_find(&l->reqs, l->b.te[g].request_id);
		if (r && l->b.te[g].finish != GEMMASHARD__ENGINE__FINISH__FINISH_NONE)
			req_remove(&l->reqs, r);
		else if (r)
			r->group = -1;
	}
	if (st != GS_OK) {
		*lost = true;
		gs_error_prefix(st, "sending token events");
	}
	return GS_OK;
}

/* ---- messages in --------------------------------------------------------------------- */

/* Submit.images (each image_size^2 x 3 RGB bytes, seam 1) side by side for the engine, which
 * copies them. */
static enum gs_status submit_images(struct link *l, const Gemmashard__Engine__Submit *s, const struct gs_req_params *p)
{
	size_t each = (size_t)l->cfg->image_size * (size_t)l->cfg->image_size * 3;
	enum gs_status st;
	uint8_t *px;

	for (size_t i = 0; i < s->n_images; i++)
		if (s->images[i].len != each)
			return gs_errorf(GS_ERR_INVALID_ARG, "image %zu has %zu bytes, expected %zu (%dx%d RGB)", i,
					 s->images[i].len, each, (int)l->cfg->image_size, (int)l->cfg->image_size);
	if (!(px = malloc(each * s->n_images)))
		return gs_errorf(GS_ERR_NOMEM, "out of memory for %zu images", s->n_images);
	for (size_t i = 0; i < s->n_images; i++)
		memcpy(px + each * i, s->images[i].data, each);
	st = gs_engine_submit_images(l->e, s->request_id, s->prompt, (int32_t)s->n_prompt, p, px, (int32_t)s->n_images);
	free(px);
	return st;
}

/* A request problem is answered on the link; only a failed send is returned. */
static enum gs_status handle_submit(struct link *l, const Gemmashard__Engine__Submit *s)
{
	const Gemmashard__Engine__SamplingParams *sp = s->params;
	struct gs_req_params p = { 0 };
	enum gs_status st = GS_OK;
	int32_t n = sp && sp->n > 1 && sp->n <= GS_MAX_N ? sp->n : 1;
	char why[512];

	int32_t dup = -1; /* n > 1: the request ids request_id .. + n - 1 (the choices) */
	for (int32_t i = 0; i < n && dup < 0; i++)
		if (req_find(&l->reqs, s->request_id + (uint64_t)i))
			dup = i;
	if (dup >= 0)
		st = gs_errorf(GS_ERR_INVALID_ARG, "request_id %llu is already in flight on this engine",
			       (unsigned long long)(s->request_id + (uint64_t)dup));
	else if (sp && (sp->n < 0 || sp->n > GS_MAX_N))
		st = gs_errorf(GS_ERR_INVALID_ARG, "n must be in 1..%d, got %d", GS_MAX_N, sp->n);
	else if (!sp)
		st = gs_errorf(GS_ERR_INVALID_ARG, "request %llu has no sampling params", (unsigned long long)s->request_id);
	else if (sp->n_stop_ids > GS_MAX_STOP_IDS)
		st = gs_errorf(GS_ERR_INVALID_ARG, "at most %d stop ids, got %zu", GS_MAX_STOP_IDS, sp->n_stop_ids);
	else if (s->n_prompt > INT32_MAX)
		st = gs_errorf(GS_ERR_RANGE, "prompt of %zu tokens", s->n_prompt);
	else if (s->n_images && !l->cfg->vision)
		st = gs_errorf(GS_ERR_INVALID_ARG, "model `%s` does not take images (no vision tower)", l->cfg->model_id);
	else if (s->n_images > INT32_MAX / 2)
		st = gs_errorf(GS_ERR_INVALID_ARG, "%zu images in one request", s->n_images);
	else if ((st = gs_params_from_wire(sp, &p.sp)) == GS_OK)
		st = req_reserve(&l->reqs, (size_t)n);
	if (st == GS_OK) {
		p.max_tokens = sp->max_tokens;
		p.n_stop_ids = (int32_t)sp->n_stop_ids;
		if (sp->n_stop_ids)
			memcpy(p.stop_ids, sp->stop_ids, sizeof(int32_t) * sp->n_stop_ids);
		p.ignore_eos = sp->ignore_eos;
		p.top_logprobs = sp->top_logprobs;
		p.logprobs = sp->logprobs;
		p.response_format = sp->response_format && sp->response_format[0] ? sp->response_format : NULL;
		p.n = n;
		if (s->n_images)
			st = submit_images(l, s, &p);
		else
			st = gs_engine_submit(l->e, s->request_id, s->prompt, (int32_t)s->n_prompt, &p);
	}
	if (st == GS_OK) {
		for (int32_t i = 0; i < n; i++)
			req_insert(&l->reqs, s->request_id + (uint64_t)i)->n_top = p.top_logprobs;
		return GS_OK;
	}
	snprintf(why, sizeof(why), "%s", gs_last_error());
	gs_clear_error();
	/* every choice of the Submit gets the error: each is a request on the coordinator */
	for (int32_t i = 0; i < n; i++)
		if ((st = send_request_error(l, s->request_id + (uint64_t)i, why)) != GS_OK)
			return st;
	return GS_OK;
}

static void handle_cancel(struct link *l, uint64_t id)
{
	struct req_slot *r = req_find(&l->reqs, id);

	if (!r || r->cancelled)
		return; /* finished, never seen, or already on its way out */
	if (gs_engine_cancel(l->e, id) != GS_OK) {
		gs_log(GS_LOG_WARN, "cancelling request %llu: %s", (unsigned long long)id, gs_last_error());
		gs_clear_error();
		return;
	}
	r->cancelled = true;
	l->pending_cancels++;
}

static const char *body_name(Gemmashard__Engine__EngineMessage__BodyCase c)
{
	switch (c) {
	case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_HELLO: return "hello";
	case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_SUBMIT: return "submit";
	case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_CANCEL: return "cancel";
	case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_EVENTS: return "events";
	case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_HEARTBEAT: return "heartbeat";
	case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_ERROR: return "error";
	default: return "empty";
	}
}

/* Frames waiting on the link (the first wait up to timeout_ms). Any error ends the link. */
static enum gs_status read_messages(struct link *l, int timeout_ms)
{
	for (int i = 0; i < LINK_MSGS_PER_STEP && !*l->stop; i++) {
		Gemmashard__Engine__EngineMessage *m;
		enum gs_status st;
		int r = gs_stream_wait(l->s, i == 0 ? timeout_ms : 0);

		if (r < 0 && errno == EINTR)
			return GS_OK;
		if (r < 0)
			return gs_errorf(GS_ERR_IO, "poll: %s", strerror(errno));
		if (r == 0)
			return GS_OK;
		st = gs_engine_msg_recv(l->s, GS_LINK_MAX_FRAME, LINK_RECV_TIMEOUT_MS, &m);
		if (st != GS_OK)
			return st;
		switch (m->body_case) {
		case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_SUBMIT:
			st = handle_submit(l, m->submit);
			if (st != GS_OK)
				gs_error_prefix(st, "answering a refused request");
			break;
		case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_CANCEL:
			handle_cancel(l, m->cancel->request_id);
			break;
		case GEMMASHARD__ENGINE__ENGINE_MESSAGE__BODY_ERROR:
			st = gs_errorf(GS_ERR_FORMAT, "the coordinator sent an error (code %d, request %llu): %s",
				       m->error->code, (unsigned long long)m->error->request_id,
				       m->error->message ? m->error->message : "");
			break;
		default:
			st = gs_errorf(GS_ERR_FORMAT, "unexpected '%s' message from the coordinator", body_name(m->body_case));
			break;
		}
		gemmashard__engine__engine_message__free_unpacked(m, NULL);
		if (st != GS_OK)
			return st;
	}
	return GS_OK;
}

/* Close the link, cancel everything it had in flight and step the engine until it is idle
 * (nobody is left to hear those events). Returns only engine failures. */
static enum gs_status drop_link(struct link *l, const char *why)
{
	size_t n = l->reqs.n;
	bool lost = false, at_once = gs_now_s() - l->up_since <= 1.0;

	/* A link that died at once (a coordinator refusing us) must not turn into a busy loop, nor
	 * into a log line per attempt. */
	if (!at_once || gs_now_s() - l->drop_logged >= LINK_RETRY_LOG_S) {
		gs_log(GS_LOG_WARN, "link to the coordinator at %s:%s lost: %s; cancelling %zu request%s in flight, "
		       "then reconnecting", l->host, l->port, why, n, n == 1 ? "" : "s");
		if (at_once)
			l->drop_logged = gs_now_s();
	}
	gs_clear_error();
	gs_stream_free(l->s);
	l->s = NULL;
	l->refused = at_once;
	if (!at_once)
		l->backoff_s = 0;
	else
		l->backoff_s = l->backoff_s < LINK_BACKOFF_MIN_S ? LINK_BACKOFF_MIN_S
			       : l->backoff_s * 2 < LINK_BACKOFF_MAX_S ? l->backoff_s * 2 : LINK_BACKOFF_MAX_S;
	for (size_t i = 0; i < l->reqs.cap; i++) {
		struct req_slot *r = &l->reqs.s[i];
		if (r->used && !r->cancelled) {
			GS_TRY(gs_engine_cancel(l->e, r->id));
			l->pending_cancels++;
		}
	}
	req_clear(&l->reqs);
	while (!gs_engine_idle(l->e) && !*l->stop)
		GS_TRY(step_once(l, false, &lost));
	return GS_OK;
}

enum gs_status gs_link_serve(struct gs_engine *e, const struct gs_link_config *cfg, volatile sig_atomic_t *stop)
{
	struct link l = { .e = e, .cfg = cfg, .stop = stop, .s = NULL, .drop_logged = -1e30 };
	struct gs_engine_stats s;
	enum gs_status st, st2;
	char host[256];

	gs_engine_get_stats(e, &s);
	l.max_seqs = s.max_seqs;
	st = gs_link_parse_addr(cfg->coordinator, l.host, sizeof(l.host), l.port, sizeof(l.port));
	if (st == GS_OK)
		st = step_buf_reserve(&l.b, l.max_seqs + 64);
	if (st == GS_OK)
		st = req_reserve(&l.reqs, 1);
	if (st != GS_OK)
		goto out_shutdown;
	if (!cfg->tls) {
		bool loopback = false;
		if (gs_net_host_is_loopback(l.host, &loopback) != GS_OK)
			gs_clear_error(); /* resolving is retried by the connect loop, which reports it */
		gs_log(loopback ? GS_LOG_INFO : GS_LOG_WARN, "the link to the coordinator at %s:%s is plaintext and "
		       "unauthenticated%s; --cluster-ca, --cluster-cert and --cluster-key make it mutual TLS", l.host,
		       l.port, loopback ? " (loopback)" : ": prompts and tokens cross the network in the clear");
	}
	if (cfg->engine_id && *cfg->engine_id) {
		snprintf(l.engine_id, sizeof(l.engine_id), "%s", cfg->engine_id);
	} else {
		if (gethostname(host, sizeof(host)) != 0)
			snprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
		snprintf(l.engine_id, sizeof(l.engine_id), "%s:%ld", host, (long)getpid());
	}

	while (!*stop) {
		bool lost = false;
		int timeout_ms = 0;

		if (!l.s) {
			if (!connect_loop(&l)) {
				if ((st = l.engine_st) != GS_OK)
					goto out_engine_failed;
				break;
			}
			l.up_since = gs_now_s();
			st = send_hello(&l);
			if (st == GS_OK)
				st = send_heartbeat(&l);
			if (st != GS_OK && (st = drop_link(&l, gs_last_error())) != GS_OK)
				goto out_engine_failed;
			continue;
		}
		/* Idle: wait for work, but not past the next heartbeat. Busy: just look. */
		if (gs_engine_idle(e)) {
			double left = (l.next_hb - gs_now_s()) * 1e3;
			timeout_ms = left <= 0 ? 0 : left >= LINK_IDLE_POLL_MS ? LINK_IDLE_POLL_MS : (int)ceil(left);
		}
		st = read_messages(&l, timeout_ms);
		if (st != GS_OK) {
			if ((st = drop_link(&l, gs_last_error())) != GS_OK)
				goto out_engine_failed;
			continue;
		}
		if (*stop)
			break;
		if (!gs_engine_idle(e)) {
			if ((st = step_once(&l, true, &lost)) != GS_OK)
				goto out_engine_failed;
			if (lost) {
				if ((st = drop_link(&l, gs_last_error())) != GS_OK)
					goto out_engine_failed;
				continue;
			}
		}
		if (gs_engine_idle(e) && (st = gs_engine_keepalive(e)) != GS_OK)
			goto out_engine_failed;
		if (gs_now_s() >= l.next_hb && send_heartbeat(&l) != GS_OK) {
			gs_error_prefix(GS_ERR_IO, "sending a heartbeat");
			if ((st = drop_link(&l, gs_last_error())) != GS_OK)
				goto out_engine_failed;
		}
	}
	st = GS_OK;
	gs_log(GS_LOG_INFO, "stopping: %zu request%s in flight dropped", l.reqs.n, l.reqs.n == 1 ? "" : "s");

out_shutdown:
	st2 = gs_engine_shutdown(e);
	if (st == GS_OK)
		st = st2;
out_free:
	gs_stream_free(l.s);
	step_buf_free(&l.b);
	free(l.reqs.s);
	return st;

out_engine_failed:
	/* Followers may sit in some other collective: no shutdown plan, the caller ends the job. */
	gs_error_prefix(st, "engine step");
	goto out_free;
}
